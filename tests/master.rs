//! The master process (src/master): it keeps the listening socket while server processes come
//! and go. Each test here runs the real binary and fails without the behaviour it names:
//!
//! - SIGKILL to the server process under load: the master starts the next one, and no
//!   connection is refused meanwhile;
//! - a flood of HTTP/2 prefaces (each parks a tiny_http thread for good): the server asks to be
//!   replaced, and tinylb's threads, descriptors and memory come back;
//! - SIGHUP under wrk at 64 connections: a new server process takes over with 0 failed
//!   requests, and settings that cannot change live take effect;
//! - systemd: a socket passed as descriptor 3 (`LISTEN_FDS`), and `READY=1`, `RELOADING=1`,
//!   `STOPPING=1` on `NOTIFY_SOCKET`;
//! - `--no-master`: one process.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{BIN, ChildLb, Running, TempConfig, command, lb_config};
use common::{Backend, client, get, mib, process_tree, read_response, status_json, wait_until};

/// Outcomes of a load loop, counted by kind.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    refused: AtomicUsize,
    /// Any other failure: a reset connection, a wrong status.
    failed: AtomicUsize,
}

/// `threads` clients, each sending one request per new connection (`Connection: close`) until
/// `stop` is set or `limit` has passed.
fn new_connection_load(
    addr: SocketAddr,
    threads: usize,
    limit: Duration,
) -> (
    Arc<Tally>,
    Arc<AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    let counter = match one_request(addr) {
                        Ok(200) => &tally.ok,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => &tally.refused,
                        _ => &tally.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tally, stop, handles)
}

fn one_request(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /load HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
    let (status, _) = read_response(&mut std::io::BufReader::new(stream))?;
    Ok(status)
}

/// The admin address the newest server process logged.
fn admin_addr(run: &mut Running, from: usize) -> SocketAddr {
    run.admin_addr_since(from)
}

#[test]
fn killing_the_server_process_under_load_refuses_no_connection() {
    let backend = Backend::start("a");
    let mut lb = ChildLb::start(
        "master-kill",
        &[backend.url()],
        r#""adminAddress": "127.0.0.1:0""#,
    );
    let (tally, stop, handles) = new_connection_load(lb.addr, 2, Duration::from_secs(60));
    assert!(wait_until(Duration::from_secs(10), || tally
        .ok
        .load(Ordering::Relaxed)
        >= 50));

    let first = lb.pid();
    let mark = lb.run.mark();
    let killed = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status();
    assert!(killed.expect("kill runs").success());
    lb.run.wait_for_line_since(
        mark,
        "died (killed by signal 9); starting the next at once",
        Duration::from_secs(5),
    );
    lb.run
        .wait_for_line_since(mark, "started generation 2 (pid", Duration::from_secs(5));
    let ok_at_restart = tally.ok.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(20), || {
            tally.ok.load(Ordering::Relaxed) >= ok_at_restart + 100
        }),
        "requests stopped being answered after the restart"
    );
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().expect("load thread");
    }
    assert_ne!(lb.pid(), first, "a new server process serves");
    assert_eq!(
        tally.refused.load(Ordering::Relaxed),
        0,
        "connections refused"
    );
    // Only a request inside the killed process at that moment can fail: one per client thread.
    let failed = tally.failed.load(Ordering::Relaxed);
    assert!(
        failed <= 2,
        "{failed} requests failed besides those in flight"
    );

    // The new generation says what happened, on all three views.
    let admin = admin_addr(&mut lb.run, mark);
    let process = &status_json(admin)["process"];
    assert_eq!(process["generation"], 2, "{process}");
    assert_eq!(process["startedBy"], "crash", "{process}");
    assert_eq!(process["restarts"]["crash"], 1, "{process}");
    let (status, metrics, _) = get(&client(), &format!("http://{admin}/metrics"));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tinylb_restarts_total{cause=\"crash\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tinylb_generation 2"), "{metrics}");
    let (_, page, _) = get(&client(), &format!("http://{admin}/"));
    assert!(
        page.contains("generation 2 (crash); restarts: 1 crash, 0 recycle, 0 upgrade, 0 failed"),
        "{page}"
    );
}

#[test]
fn an_http2_preface_flood_is_recycled_and_tinylb_returns_to_its_size() {
    const FLOOD: usize = 300;
    let backend = Backend::start("a");
    let mut lb = ChildLb::start(
        "master-flood",
        &[backend.url()],
        r#""clientTimeout": "2s", "maxStuckConnections": 50"#,
    );
    let addr = lb.addr;
    // A client doing normal keep-alive requests throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let agent = client();
            let (mut ok, mut failures) = (0, Vec::new());
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                match agent.get(&format!("http://{addr}/normal")).call() {
                    Ok(response) if response.status() == 200 => ok += 1,
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(error) => failures.push(error.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failures)
        })
    };
    assert!(wait_until(Duration::from_secs(10), || backend
        .seen_proxied()
        .len()
        >= 5));
    let before = lb.stats();

    let mark = lb.run.mark();
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .expect("preface");
            stream
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || {
        lb.stats().threads >= before.threads + FLOOD as i64 / 2
    }));
    let flooded = lb.stats();
    lb.run
        .wait_for_line_since(mark, "asks to be replaced", Duration::from_secs(20));
    lb.run
        .wait_for_line_since(mark, "generation 1 (pid", Duration::from_secs(20));
    let recovered = wait_until(Duration::from_secs(30), || {
        let now = lb.stats();
        now.threads <= before.threads + 4 && now.fds <= before.fds + 4
    });
    let after = lb.stats();
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = normal.join().expect("normal client");
    drop(flood);
    assert!(
        recovered,
        "not back within 30 s: before {before:?}, flooded {flooded:?}, after {after:?}"
    );
    assert!(
        after.rss_kib <= before.rss_kib * 3 / 2 + 2048,
        "RSS {:.1} MiB before, {:.1} MiB flooded, {:.1} MiB after",
        mib(before.rss_kib),
        mib(flooded.rss_kib),
        mib(after.rss_kib)
    );
    assert!(failures.is_empty(), "{} ok, failures: {failures:?}", ok);
    assert!(ok >= 20, "only {ok} normal requests");
}

/// wrk's summary, failing the test if wrk is not installed.
fn run_wrk(addr: SocketAddr, connections: usize, seconds: u32) -> std::process::Child {
    Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            &format!("http://{addr}/"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wrk is needed for this test (apt-get install wrk)")
}

#[test]
fn sighup_swaps_the_server_under_wrk_with_no_failed_request() {
    let backends = [Backend::start("a"), Backend::start("b")];
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let mut lb = ChildLb::start("master-swap", &urls, "");
    let mut wrk = run_wrk(lb.addr, 64, 5);
    for generation in [2, 3] {
        std::thread::sleep(Duration::from_millis(1500));
        let mark = lb.run.mark();
        lb.run.signal("HUP");
        lb.run.wait_for_line_since(
            mark,
            &format!(
                "generation {generation} serves; generation {} (pid",
                generation - 1
            ),
            Duration::from_secs(10),
        );
        lb.run.wait_for_line_since(
            mark,
            &format!("generation {} (pid", generation - 1),
            Duration::from_secs(10),
        );
    }
    let mut report = String::new();
    wrk.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut report)
        .expect("wrk output");
    assert!(wrk.wait().expect("wrk ends").success(), "{report}");
    let requests: u64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no request count in {report}"));
    assert!(requests >= 1000, "{report}");
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    let log = lb.run.log_text();
    assert!(
        log.contains("generation 2 (pid") && log.contains("finished (exit code 0)"),
        "{log}"
    );
}

#[test]
fn sighup_applies_settings_that_cannot_change_live() {
    let backend = Backend::start("a");
    let config = lb_config(
        "master-workers",
        &[backend.url()],
        r#""workers": 2, "adminAddress": "127.0.0.1:0", "healthCheckInterval": "1s""#,
    );
    let mut run = Running::start(&config);
    let admin = admin_addr(&mut run, 0);
    assert_eq!(status_json(admin)["workers"], 2);
    let mut keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config.path()).expect("config"))
            .expect("JSON");
    keys["workers"] = 5.into();
    std::fs::write(config.path(), keys.to_string()).expect("write");
    // The live reload applies what it can and says what needs the swap.
    run.wait_for_line(
        "workers cannot change while tinylb runs; send SIGHUP",
        Duration::from_secs(10),
    );
    assert_eq!(status_json(admin)["workers"], 2);
    let mark = run.mark();
    run.signal("HUP");
    assert_eq!(
        run.wait_for_swap_to(mark, 2),
        admin,
        "generations share the admin socket"
    );
    let status = status_json(admin);
    assert_eq!(status["workers"], 5, "{status}");
    assert_eq!(status["process"]["startedBy"], "upgrade", "{status}");
    assert_eq!(status["process"]["restarts"]["upgrade"], 1, "{status}");
}

/// A datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new(label: &str) -> NotifySocket {
        let path =
            std::env::temp_dir().join(format!("tinylb-notify-{}-{label}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        NotifySocket { socket, path }
    }

    fn next(&self) -> String {
        let mut buffer = [0; 512];
        let n = self.socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn systemd_passes_the_socket_and_hears_ready_reloading_and_stopping() {
    let backend = Backend::start("a");
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    // The config names the very address systemd bound: binding it again would fail, so a
    // served request proves tinylb used the descriptor it was given.
    let config = TempConfig::new(
        "systemd",
        &format!(
            r#"{{"port": "{addr}", "servers": ["{}"], "healthCheckInterval": "1s"}}"#,
            backend.url()
        ),
    );
    // A client that connects before tinylb even runs waits in the socket's queue.
    let mut early = TcpStream::connect(addr).expect("connect before start");
    early
        .write_all(b"GET /early HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .expect("send");

    let notify = NotifySocket::new("activation");
    let mut systemd = Command::new("sh");
    // As systemd does: the socket as descriptor 3, LISTEN_FDS=1, LISTEN_PID = tinylb's pid.
    systemd
        .args([
            "-c",
            r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --config "$1""#,
            BIN,
            config.path(),
        ])
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let fd = socket.as_raw_fd();
    // SAFETY: dup2 and fcntl only, between fork and exec.
    unsafe {
        systemd.pre_exec(move || {
            if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else {
                libc::dup2(fd, 3);
            }
            Ok(())
        });
    }
    let mut run = Running::spawn(systemd);
    drop(socket);

    let ready = notify.next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", run.pid())), "{ready}");
    let (status, body) = read_response(&mut std::io::BufReader::new(early)).expect("early answer");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("target /early"));
    run.wait_for_line(
        "listening on the socket systemd passed",
        Duration::from_secs(5),
    );

    run.signal("HUP");
    let reloading = notify.next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(notify.next(), "READY=1");
    assert_eq!(one_request(addr).expect("served after the swap"), 200);

    run.signal("TERM");
    assert_eq!(notify.next(), "STOPPING=1");
    let exit = run.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{exit:?}");
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_refused() {
    let config = TempConfig::new(
        "systemd-bad",
        r#"{"port": "127.0.0.1:0", "servers": ["http://127.0.0.1:9"]}"#,
    );
    let mut shell = Command::new("sh");
    // Descriptor 3 is /dev/null: not what systemd would pass.
    shell
        .args([
            "-c",
            r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --config "$1" 3</dev/null"#,
            BIN,
            config.path(),
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut run = Running::spawn(shell);
    let exit = run.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.and_then(|s| s.code()), Some(1), "{exit:?}");
    assert!(
        run.log_text()
            .contains("descriptor 3 from systemd is not a listening TCP socket")
    );
}

#[test]
fn no_master_runs_the_server_in_one_process() {
    let backend = Backend::start("a");
    let config = lb_config("no-master", &[backend.url()], "");
    let mut alone = Running::spawn(command(&["--no-master", "--config", config.path()]));
    let addr = alone.listening_addr();
    assert_eq!(one_request(addr).expect("served"), 200);
    assert_eq!(
        process_tree(alone.pid()).len(),
        1,
        "--no-master starts no child"
    );
    alone.signal("TERM");
    let exit = alone.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.and_then(|s| s.code()), Some(0));

    let mut supervised = Running::start(&config);
    let addr = supervised.listening_addr();
    assert_eq!(one_request(addr).expect("served"), 200);
    assert_eq!(
        process_tree(supervised.pid()).len(),
        2,
        "a master and one server process"
    );
}
