//! Swaps of the server process that cannot wedge the master, and a server process that never
//! runs unsupervised (issue 21). Each test runs the real binary (some a private copy of it,
//! to replace or to give file capabilities) and fails without the behaviour it names:
//!
//! - a successor that never says it is ready is killed after `readyTimeout`, counted as a
//!   failed restart and given no generation number, and the next SIGHUP swaps as usual;
//! - a SIGHUP that arrives during a swap is carried out after it;
//! - a SIGHUP with a config file that does not parse is refused by the master, and the running
//!   generation stays;
//! - a drained backend stays drained in the next generation, after a SIGHUP and after a crash;
//! - with `cap_net_bind_service` on the binary (which makes exec forget the parent-death
//!   signal), the server process still ends when its master is killed.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::operator::{set_draining, settled_states};
use common::process::{BIN, Running, TempConfig, command_of, lb_config};
use common::{Backend, client, get, process_tree, status_json, wait_until};

/// The admin listener on a port of its own in each generation.
const ADMIN: &str = r#""adminAddress": "127.0.0.1:0""#;
/// How long a swap may take, from SIGHUP to the new generation serving.
const SWAP: Duration = Duration::from_secs(15);
/// The `readyTimeout` of the test that needs one.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its deadline the master may take to kill a successor, or past its own death
/// the server may take to notice.
const MARGIN: Duration = Duration::from_secs(5);
/// A successor that starts and never becomes ready.
const SLEEPER: &str = "#!/bin/sh\nexec sleep 300\n";
/// The unprivileged user (nobody) that runs tinylb with file capabilities.
const NOBODY: u32 = 65534;

/// A copy of the tinylb binary in a directory of its own, to replace (as an upgrade does, by
/// renaming a new file over it) or to give file capabilities; removed with the directory.
struct PrivateBinary {
    dir: PathBuf,
    path: PathBuf,
}

impl PrivateBinary {
    /// Copies the binary to `under`/tinylb-bin-PID-LABEL/tinylb, readable and runnable by
    /// every user.
    fn new(label: &str, under: &Path) -> PrivateBinary {
        let dir = under.join(format!("tinylb-bin-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the binary's directory");
        set_mode(&dir, 0o755);
        let path = dir.join("tinylb");
        std::fs::copy(BIN, &path).expect("copy the tinylb binary");
        set_mode(&path, 0o755);
        PrivateBinary { dir, path }
    }

    /// Puts `contents` in place of the binary the way an upgrade does: written beside it,
    /// then renamed over it (the running processes keep the old file).
    fn replace_with(&self, contents: &[u8]) {
        let next = self.dir.join("tinylb.next");
        std::fs::write(&next, contents).expect("write the replacement");
        set_mode(&next, 0o755);
        std::fs::rename(&next, &self.path).expect("rename the replacement over the binary");
    }

    /// The real tinylb binary again.
    fn restore(&self) {
        self.replace_with(&std::fs::read(BIN).expect("read the tinylb binary"));
    }

    /// tinylb (as the master) from this copy, on `config`.
    fn command(&self, config: &TempConfig) -> Command {
        command_of(&self.path, &["--config", config.path()])
    }
}

impl Drop for PrivateBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Whether process `pid` still runs: it exists and is not a zombie waiting to be reaped.
fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMMAND) STATE ...`, where COMMAND may hold spaces and parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// A process's command line, its arguments joined by spaces ("" once it is gone).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Whether a log line is the master's: a server process's lines carry its generation after
/// the target (`[tinylb::reload g1]`), the master's do not (`[tinylb::master]`).
fn from_master(line: &str) -> bool {
    line.split('[')
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .is_some_and(|target| !target.contains(' '))
}

/// The master's children other than `except`.
fn other_children(master: u32, except: u32) -> Vec<u32> {
    process_tree(master)
        .into_iter()
        .filter(|&pid| pid != master && pid != except)
        .collect()
}

/// `GET /` through tinylb's listening port must be answered 200 by a backend.
fn assert_served(addr: SocketAddr, when: &str) {
    let (status, body, _) = get(&client(), &format!("http://{addr}/{when}"));
    assert_eq!(status, 200, "{when}: {body}");
}

/// Waits until only the master and one server process are left (a swapped-out generation has
/// finished), and returns that server's pid.
fn sole_server(run: &Running) -> u32 {
    let master = run.pid();
    let mut tree = Vec::new();
    let alone = wait_until(SWAP, || {
        tree = process_tree(master);
        tree.len() == 2
    });
    assert!(
        alone,
        "the master (pid {master}) does not have exactly one child: {tree:?}"
    );
    tree[1]
}

/// Kills process `pid` when dropped, if it still runs `exe`: a server that outlived its master
/// is no child of this test's, so nothing else would stop it.
struct KillIfLeft {
    pid: u32,
    exe: PathBuf,
}

impl Drop for KillIfLeft {
    fn drop(&mut self) {
        if is_running(self.pid) && cmdline(self.pid).contains(self.exe.to_str().unwrap_or("?")) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// A successor that never says it is ready (the binary on disk replaced by a script that only
/// sleeps) is killed after `readyTimeout` while the running generation keeps serving; the
/// master says so, counts it as a failed restart and not as an upgrade, gives it no
/// generation number, and carries out the next SIGHUP (once the binary is back) as usual.
#[test]
fn a_successor_that_never_becomes_ready_is_killed_and_the_next_sighup_swaps() {
    let backend = Backend::start("a");
    let binary = PrivateBinary::new("never-ready", &std::env::temp_dir());
    let config = lb_config(
        "swap-never-ready",
        &[backend.url()],
        &format!(r#"{ADMIN}, "readyTimeout": "2s", "healthCheckInterval": "1s""#),
    );
    let mut run = Running::spawn(binary.command(&config));
    let addr = run.listening_addr();
    assert_served(addr, "before");
    let serving = run.server_pid();
    assert_ne!(serving, run.pid(), "a master and a server process");

    binary.replace_with(SLEEPER.as_bytes());
    let mark = run.mark();
    run.signal("HUP");
    let mut sleepers = Vec::new();
    let started = wait_until(Duration::from_secs(5), || {
        sleepers = other_children(run.pid(), serving);
        sleepers.iter().any(|&pid| cmdline(pid).contains("sleep"))
    });
    assert!(
        started,
        "no successor running the script that sleeps within 5 s of SIGHUP: children \
         {sleepers:?}; stderr:\n{}",
        run.log_text()
    );
    let sleeper = sleepers
        .into_iter()
        .find(|&pid| cmdline(pid).contains("sleep"))
        .expect("found above");
    let killed = wait_until(READY_TIMEOUT + MARGIN, || !is_running(sleeper));
    assert!(
        killed,
        "the successor that never became ready (pid {sleeper}: {}) still runs {:?} after \
         SIGHUP with readyTimeout {READY_TIMEOUT:?}; stderr:\n{}",
        cmdline(sleeper),
        READY_TIMEOUT + MARGIN,
        run.log_text()
    );
    run.wait_for_line_since(mark, "did not become ready", Duration::from_secs(5));
    assert!(is_running(serving), "the running generation stays");
    assert_served(addr, "after-the-failed-swap");

    binary.restore();
    let mark = run.mark();
    run.signal("HUP");
    let admin = run.wait_for_swap_to(mark, 2);
    let process = &status_json(admin)["process"];
    assert_eq!(process["generation"], 2, "{process}");
    assert_eq!(process["restarts"]["upgrade"], 1, "{process}");
    assert_eq!(process["restarts"]["failed"], 1, "{process}");
    assert_served(addr, "after-the-swap");
}

/// A SIGHUP that arrives while a swap is under way is remembered and carried out after it:
/// two SIGHUPs 10 ms apart make two swaps. (A swap takes a few milliseconds when nothing
/// slows it, so a second backend that never answers its health check makes each new server
/// process take a second, its first health-check round, before it is ready.)
#[test]
fn a_sighup_during_a_swap_is_carried_out_after_it() {
    let backend = Backend::start("a");
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a backend that never answers");
    let silent_url = format!("http://{}", silent.local_addr().expect("its address"));
    let config = lb_config(
        "swap-twice",
        &[backend.url(), silent_url],
        &format!(r#"{ADMIN}, "healthCheckInterval": "1s", "healthCheckTimeout": "1s""#),
    );
    let mut run = Running::start(&config);
    let addr = run.listening_addr();
    let first_admin = run.admin_addr_since(0);
    assert_served(addr, "before");
    assert_eq!(status_json(first_admin)["process"]["generation"], 1);

    let mark = run.mark();
    run.signal("HUP");
    // The scenario: the second SIGHUP comes while the first swap is under way.
    std::thread::sleep(Duration::from_millis(10));
    run.signal("HUP");
    let admin = run.wait_for_swap_to(mark, 3);
    let process = &status_json(admin)["process"];
    assert_eq!(process["generation"], 3, "{process}");
    assert_eq!(process["restarts"]["upgrade"], 2, "{process}");
    assert_served(addr, "after");
    drop(silent);
}

/// A SIGHUP with a config file that is not JSON: the master says why it does not swap (an
/// error naming SIGHUP), the running generation stays and serves, and the failed attempt
/// uses up neither an upgrade nor a generation number; with the file fixed, SIGHUP swaps.
#[test]
fn a_sighup_with_a_broken_config_keeps_the_running_generation() {
    let backend = Backend::start("a");
    let config = lb_config(
        "swap-broken-config",
        &[backend.url()],
        &format!(r#"{ADMIN}, "healthCheckInterval": "1s""#),
    );
    let good = std::fs::read_to_string(config.path()).expect("read the config");
    let mut run = Running::start(&config);
    let addr = run.listening_addr();
    assert_served(addr, "before");
    let serving = run.server_pid();

    std::fs::write(config.path(), "{\"port\": ").expect("break the config");
    let mark = run.mark();
    run.signal("HUP");
    let said = run.find_where(
        mark,
        |line| from_master(line) && line.contains("ERROR") && line.contains("SIGHUP"),
        Duration::from_secs(10),
    );
    assert!(
        said.is_some(),
        "no error line of the master's naming SIGHUP within 10 s of a SIGHUP with a broken \
         config; stderr:\n{}",
        run.log_text()
    );
    assert_served(addr, "after-the-refused-sighup");
    assert!(is_running(serving), "the running generation stays");

    std::fs::write(config.path(), &good).expect("fix the config");
    let mark = run.mark();
    run.signal("HUP");
    let admin = run.wait_for_swap_to(mark, 2);
    let process = &status_json(admin)["process"];
    assert_eq!(process["generation"], 2, "{process}");
    assert_eq!(process["restarts"]["upgrade"], 1, "{process}");
}

/// Draining is the operator's decision, not a process's: a drained backend is still drained
/// in the generation a SIGHUP starts, and in the one started after a crash, until it is
/// undrained, which lasts across a SIGHUP too.
#[test]
fn a_drain_survives_sighup_and_a_crash_restart() {
    let backends = [Backend::start("a"), Backend::start("b")];
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let config = lb_config(
        "swap-drain",
        &urls,
        &format!(r#"{ADMIN}, "healthCheckInterval": "1s", "healthCheckTimeout": "2s""#),
    );
    let mut run = Running::start(&config);
    let addr = run.listening_addr();
    let admin = run.admin_addr_since(0);
    assert_served(addr, "before");
    set_draining(admin, 0, true);
    assert_eq!(settled_states(admin), ["draining", "up"], "generation 1");

    let mark = run.mark();
    run.signal("HUP");
    let admin = run.wait_for_swap_to(mark, 2);
    assert_eq!(
        settled_states(admin),
        ["draining", "up"],
        "generation 2, after SIGHUP"
    );

    let server = sole_server(&run);
    let mark = run.mark();
    let killed = Command::new("kill")
        .args(["-KILL", &server.to_string()])
        .status();
    assert!(killed.expect("kill runs").success());
    run.wait_for_line_since(mark, "started generation 3 (pid", Duration::from_secs(10));
    let admin = run.admin_addr_of_generation(mark, 3, Duration::from_secs(10));
    // Answered through the master's socket, so generation 3 serves.
    assert_served(addr, "after-the-crash");
    assert_eq!(
        settled_states(admin),
        ["draining", "up"],
        "generation 3, after a crash"
    );

    set_draining(admin, 0, false);
    assert_eq!(
        settled_states(admin),
        ["up", "up"],
        "generation 3, undrained"
    );
    let mark = run.mark();
    run.signal("HUP");
    let admin = run.wait_for_swap_to(mark, 4);
    assert_eq!(
        settled_states(admin),
        ["up", "up"],
        "generation 4, after undrain and SIGHUP"
    );
}

/// With file capabilities on the binary (`setcap cap_net_bind_service=+ep`, the usual way to
/// bind port 80 without root) and tinylb run by an unprivileged user, exec clears the
/// parent-death signal the master set for its child; the server must still end when the
/// master is killed (and the listening port then refuses), not keep the port unsupervised.
/// Needs root (to set the capability and to run tinylb as nobody) and `setcap`.
#[test]
fn the_server_never_outlives_its_master_with_file_capabilities() {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: needs root, to set file capabilities on a copy of tinylb and to run it as \
             an unprivileged user (as root, exec keeps the parent-death signal, so the test \
             would prove nothing)"
        );
        return;
    }
    let binary = with_capability("caps");
    let backend = Backend::start("a");
    let config = lb_config("caps", &[backend.url()], r#""healthCheckInterval": "1s""#);
    set_mode(Path::new(config.path()), 0o644);
    let mut command = binary.command(&config);
    command.uid(NOBODY).gid(NOBODY);
    let mut run = Running::spawn(command);
    let addr = run.listening_addr();
    assert_served(addr, "before");
    let master = run.pid();
    let server = run.server_pid();
    assert_ne!(server, master, "a master and a server process");
    let _left = KillIfLeft {
        pid: server,
        exe: binary.path.clone(),
    };
    assert!(
        effective_capabilities(server) & (1 << CAP_NET_BIND_SERVICE) != 0,
        "the server runs without the file's capability (CapEff {:x}): the scenario did not \
         happen",
        effective_capabilities(server)
    );

    run.child.0.kill().expect("kill -9 the master");
    let _ = run.child.0.wait();
    let gone = wait_until(MARGIN, || !is_running(server));
    assert!(
        gone,
        "the server process (pid {server}: {}) still runs {MARGIN:?} after its master (pid \
         {master}) was killed with SIGKILL",
        cmdline(server)
    );
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{addr} after tinylb is gone: {refused:?}"
    );
}

/// The capability bit of `cap_net_bind_service`.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// A process's effective capabilities (`CapEff` in /proc/PID/status).
fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff for pid {pid}"))
}

/// A copy of the binary with `cap_net_bind_service=+ep`, in the temp directory or, if its
/// file system takes no capabilities, under the target directory.
fn with_capability(label: &str) -> PrivateBinary {
    let mut failures = Vec::new();
    for under in [
        std::env::temp_dir(),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ] {
        let binary = PrivateBinary::new(label, &under);
        let setcap = Command::new("setcap")
            .args(["cap_net_bind_service=+ep"])
            .arg(&binary.path)
            .output()
            .expect(
                "setcap is needed for this test (apt-get install libcap2-bin; \
                 scripts/test-setup.sh installs it)",
            );
        if setcap.status.success() {
            return binary;
        }
        failures.push(format!(
            "{}: {}",
            binary.path.display(),
            String::from_utf8_lossy(&setcap.stderr).trim()
        ));
    }
    panic!("setcap failed everywhere: {failures:?}");
}
