//! The admin listener on the operator's side (issue 21): nobody can hold it, and nobody but
//! the operator can change anything through it. Each test fails without the behaviour it
//! names:
//!
//! - a client from 127.0.0.3 that sends an admin request's head and then stalls, or trickles
//!   its body a byte a second, holds neither the admin listener (a bystander from 127.0.0.2
//!   still gets `/metrics`) nor, for the stalled one, a SIGTERM;
//! - a second tinylb on an `adminAddress` that a running one holds fails to start, while the
//!   next generation of the running one shares it;
//! - a drain or undrain without the `X-Tinylb-Admin` header, as a cross-site page in the
//!   operator's browser could send it, is refused with 403, and curl passes it with one `-H`;
//! - a `Host` that is neither the admin address, `localhost` nor an IP literal (DNS
//!   rebinding) gets 421.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::bystander::{
    BAD_CLIENT, BYSTANDER, Options, PROMPT, Record, assert_all_answered, connect_from,
    get_from_host, summary,
};
use common::operator::{PROOF, admin_exchange, admin_request, backend_states, set_draining};
use common::process::{Running, lb_config};
use common::{Backend, TestLb, start_lb, status_json, wait_until};

/// The master's shutdown grace period in the tests that stop it.
const GRACE: Duration = Duration::from_secs(2);
/// How long past the grace period tinylb may take to exit after SIGTERM.
const EXIT_MARGIN: Duration = Duration::from_secs(6);
/// An admin request's head announcing a body that never comes (or comes a byte at a time).
const STALLED_HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n";

/// tinylb (the master and its server process) with the admin listener on port 0 and a 2 s
/// grace period; its admin address.
fn start_with_admin(label: &str, backend: &Backend) -> (Running, SocketAddr) {
    let config = lb_config(
        label,
        &[backend.url()],
        r#""adminAddress": "127.0.0.1:0", "shutdownGracePeriod": "2s""#,
    );
    let mut run = Running::start(&config);
    let admin = run.admin_addr_since(0);
    // The config file may go now: the server read it, and no test here reloads it.
    drop(config);
    (run, admin)
}

/// A connection from the bad client's address to the admin listener that has sent
/// [`STALLED_HEAD`].
fn stalled_upload(admin: SocketAddr) -> TcpStream {
    let mut hostile = connect_from(BAD_CLIENT, Options::default(), admin, PROMPT)
        .expect("the bad client connects to the admin listener");
    hostile.write_all(STALLED_HEAD).expect("send the head");
    hostile
}

/// The bystander's `GET /metrics` to the admin listener (its address as `Host`), 10 times
/// half a second apart, each on a new connection from 127.0.0.2 and given [`PROMPT`].
fn metrics_bystander(admin: SocketAddr) -> Vec<Record> {
    let started = Instant::now();
    let host = admin.to_string();
    (0..10)
        .map(|i| {
            if i > 0 {
                // The scenario: an operator's scraper, twice a second for five seconds.
                std::thread::sleep(Duration::from_millis(500));
            }
            let at = started.elapsed();
            let outcome = get_from_host(BYSTANDER, admin, "/metrics", &host, PROMPT);
            Record {
                at,
                outcome,
                took: started.elapsed() - at,
            }
        })
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    socket.local_addr().expect("its address").port()
}

/// The admin listener's address of an in-process tinylb.
fn admin_of(lb: &TestLb) -> SocketAddr {
    lb.lb()
        .admin_addr()
        .expect("adminAddress is set, so the admin listener runs")
}

/// tinylb in-process with the admin listener on, in front of one live backend. Health checks
/// once a second with a generous limit, so that the backend never shows as down (which would
/// hide `draining` in its state).
fn start_in_process(backend: &Backend) -> TestLb {
    start_lb(
        &[backend],
        r#""adminAddress": "127.0.0.1:0", "healthCheckInterval": "1s", "healthCheckTimeout": "2s""#,
    )
}

/// One admin client that sends a POST's head and then nothing holds up neither `/metrics` for
/// another client nor SIGTERM: tinylb shuts down cleanly (exit 0) within the grace period and
/// a margin, with that client still connected.
#[test]
fn a_stalled_admin_upload_holds_neither_the_admin_listener_nor_shutdown() {
    let backend = Backend::start("a");
    let (mut run, admin) = start_with_admin("guard-stalled", &backend);
    let before = get_from_host(BYSTANDER, admin, "/metrics", &admin.to_string(), PROMPT);
    assert_eq!(before, Ok(200), "/metrics before the bad client came");

    let hostile = stalled_upload(admin);
    let records = metrics_bystander(admin);
    eprintln!("with the upload stalled: {}", summary(&records));

    // SIGTERM with the stalled upload still open.
    let sent = Instant::now();
    run.signal("TERM");
    let exit = run.wait_exit(GRACE + EXIT_MARGIN);
    let took = sent.elapsed();
    drop(hostile);
    eprintln!("after SIGTERM: {exit:?} in {took:.2?}");

    assert_all_answered(
        &records,
        "an admin POST whose 5000 body bytes never come, held open from 127.0.0.3",
    );
    let log = run.log_text();
    let Some(exit) = exit else {
        panic!(
            "tinylb still ran {took:.1?} after SIGTERM (shutdownGracePeriod {GRACE:?}) while an \
             admin upload was stalled; stderr:\n{log}"
        );
    };
    // Exit code 1 would be the server's backstop cutting a shutdown that hung.
    assert_eq!(
        exit.code(),
        Some(0),
        "SIGTERM with an admin upload stalled ended tinylb after {took:.1?} with {exit:?}, not \
         a clean shutdown; stderr:\n{log}"
    );
}

/// An admin client that sends a POST's head and then one body byte a second (which a timeout
/// on each read never ends) does not hold the admin listener either.
#[test]
fn an_admin_upload_trickled_a_byte_a_second_does_not_hold_the_admin_listener() {
    let backend = Backend::start("a");
    let (_run, admin) = start_with_admin("guard-trickle", &backend);
    let mut hostile = stalled_upload(admin);
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // At most a minute, and only until the bystander is done or tinylb hangs up.
            for _ in 0..60 {
                if stop.load(Ordering::SeqCst) || hostile.write_all(b"x").is_err() {
                    return;
                }
                // The scenario: one body byte a second.
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let records = metrics_bystander(admin);
    stop.store(true, Ordering::SeqCst);
    trickle.join().expect("the trickling client");
    eprintln!("with the upload trickling: {}", summary(&records));
    assert_all_answered(
        &records,
        "an admin POST of 5000 bytes trickled a byte a second from 127.0.0.3",
    );
}

/// Two tinylbs cannot share an admin listener (each would answer for the other, by turns):
/// the second fails to start and says why, while the first keeps its admin listener, and its
/// own next generation (SIGHUP) takes the same address over.
#[test]
fn a_second_tinylb_on_the_same_admin_address_fails_to_start() {
    let backend = Backend::start("a");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let keys = format!(r#""adminAddress": "{admin}", "healthCheckInterval": "1s""#);
    let first_config = lb_config("guard-admin-first", &[backend.url()], &keys);
    let mut first = Running::start(&first_config);
    assert_eq!(first.admin_addr_since(0), admin);
    assert_eq!(status_json(admin)["process"]["generation"], 1);

    // The same adminAddress, and port 0: a listening port of its own.
    let second_config = lb_config("guard-admin-second", &[backend.url()], &keys);
    let mut second = Running::start(&second_config);
    let exit = second.wait_exit(Duration::from_secs(10));
    let log = second.log_text();
    let Some(exit) = exit else {
        panic!(
            "a second tinylb with adminAddress {admin}, which the first holds, still runs after \
             10 s; its stderr:\n{log}"
        );
    };
    assert_eq!(exit.code(), Some(1), "{exit:?}; stderr:\n{log}");
    assert!(
        log.contains("adminAddress") && log.contains(&admin.to_string()),
        "the second tinylb's stderr names neither adminAddress nor {admin}:\n{log}"
    );
    for _ in 0..5 {
        assert_eq!(
            status_json(admin)["process"]["generation"],
            1,
            "the first tinylb answers on its admin address"
        );
    }

    let mark = first.mark();
    first.signal("HUP");
    assert_eq!(
        first.wait_for_swap_to(mark, 2),
        admin,
        "the next generation listens on the same admin address"
    );
    let mut generation = serde_json::Value::Null;
    let moved = wait_until(Duration::from_secs(10), || {
        generation = status_json(admin)["process"]["generation"].clone();
        generation == 2
    });
    assert!(
        moved,
        "{admin} still answers for generation {generation} 10 s after generation 2 served"
    );
}

/// A drain is a CORS "simple" request, which any page in the operator's browser can send: a
/// state-changing admin request needs the `X-Tinylb-Admin` header (which a browser sends
/// cross-site only after a preflight that tinylb never allows), is refused with 403 and a
/// line naming the header otherwise, and changes nothing then; curl sends it with one `-H`.
#[test]
fn a_drain_needs_the_admin_header_and_curl_sends_it_with_one_flag() {
    let backend = Backend::start("a");
    let lb = start_in_process(&backend);
    let admin = admin_of(&lb);
    let browser = format!(
        "POST /backends/0/drain HTTP/1.1\r\nHost: {admin}\r\nOrigin: https://evil.example\r\n\
         Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\ndrain"
    );
    let refused = [
        (
            "a POST with no header (curl -X POST without -H)",
            admin_request(admin, "POST", "/backends/0/drain", &[]),
        ),
        (
            "a browser's no-cors fetch from https://evil.example",
            admin_exchange(admin, &browser),
        ),
    ];
    for (what, answer) in refused {
        assert_eq!(answer.status, 403, "{what}: {}", answer.text());
        assert!(
            answer.text().contains("X-Tinylb-Admin"),
            "{what}: the 403 does not say which header to send: {:?}",
            answer.text()
        );
        assert_eq!(
            backend_states(&status_json(admin)),
            ["up"],
            "{what} drained the backend"
        );
    }

    set_draining(admin, 0, true);
    assert_eq!(backend_states(&status_json(admin)), ["draining"]);

    let url = format!("http://{admin}/backends/0/undrain");
    let curl = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "5",
        ])
        .args([
            "--write-out",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            PROOF,
            &url,
        ])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let output = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success() && output.ends_with("\n200"),
        "curl -X POST -H '{PROOF}' {url}: {:?}, {output:?}, {}",
        curl.status,
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(backend_states(&status_json(admin)), ["up"]);
}

/// DNS rebinding: a page whose name came to resolve to 127.0.0.1 reaches the admin listener
/// with its own name as `Host`. Every admin request whose `Host` is not the admin address,
/// `localhost` or an IP literal gets 421; those (and an HTTP/1.0 request with no `Host`) are
/// answered.
#[test]
fn the_admin_listener_answers_only_its_own_hosts() {
    let backend = Backend::start("a");
    let lb = start_in_process(&backend);
    let admin = admin_of(&lb);
    let port = admin.port();
    let status_for = |host: Option<&str>| {
        let request = match host {
            Some(host) => {
                format!("GET /status.json HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            }
            None => "GET /status.json HTTP/1.0\r\n\r\n".to_string(),
        };
        let answer = admin_exchange(admin, &request);
        let start: String = answer.text().chars().take(120).collect();
        (answer.status, start)
    };

    for host in ["evil.example".to_string(), format!("evil.example:{port}")] {
        let (status, body) = status_for(Some(&host));
        assert_eq!(status, 421, "Host: {host}: {body}");
        assert!(
            !body.contains("\"backends\""),
            "Host: {host} was shown the status: {body}"
        );
    }
    let answered = [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "10.1.2.3".to_string(),
    ];
    for host in &answered {
        let (status, body) = status_for(Some(host));
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
    let (status, body) = status_for(None);
    assert_eq!(status, 200, "HTTP/1.0 with no Host: {body}");
}
