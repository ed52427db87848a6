//! Running the `tinylb` binary as a child process: temp config files, a guard that kills the
//! child when the test ends, a reader that collects its stderr log lines, and [`ChildLb`], the
//! binary listening in front of backends.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{ProcStats, merge_keys, process_tree, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_tinylb");

/// How long a command that should stop at once (bad config, `--check`) may take.
pub const QUICK: Duration = Duration::from_secs(5);

/// A config file under the temp directory with a name unique to this process and label;
/// removed when dropped.
pub struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    pub fn new(label: &str, text: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("tinylb-cli-{}-{label}.json", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        TempConfig { path }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Kills the child when the test ends, pass or fail, so no tinylb outlives its test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn command(args: &[&str]) -> Command {
    command_of(Path::new(BIN), args)
}

/// Like [`command`] for another copy of the binary, at `exe`.
pub fn command_of(exe: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(exe);
    command.args(args);
    quiet(command)
}

/// tinylb with these arguments, run by `sh -c "LIMITS && exec tinylb ARGS"` so that `ulimit`
/// in `limits` applies to it.
pub fn command_with_limits(limits: &str, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", &format!(r#"{limits} && exec "$0" "$@""#), BIN])
        .args(args);
    quiet(command)
}

/// No RUST_LOG from the environment, no stdin, stdout and stderr piped.
fn quiet(mut command: Command) -> Command {
    command
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// What a command that ran to its end left behind.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs tinylb and waits (at most `timeout`, else the test fails) until it exits.
pub fn run_to_end(args: &[&str], timeout: Duration) -> Finished {
    let started = Instant::now();
    let mut child = KillOnDrop(command(args).spawn().expect("tinylb runs"));
    let mut status: Option<ExitStatus> = None;
    wait_until(timeout, || {
        status = child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let elapsed = started.elapsed();
    let status =
        status.unwrap_or_else(|| panic!("tinylb {args:?} still running after {timeout:?}"));
    let mut stdout = String::new();
    let mut stderr = String::new();
    let out = child.0.stdout.as_mut().expect("piped stdout");
    out.read_to_string(&mut stdout).expect("read stdout");
    let err = child.0.stderr.as_mut().expect("piped stderr");
    err.read_to_string(&mut stderr).expect("read stderr");
    Finished {
        code: status.code(),
        stdout,
        stderr,
        elapsed,
    }
}

/// A tinylb process left running; its stderr lines arrive over a channel from a reader thread.
pub struct Running {
    pub child: KillOnDrop,
    lines: Receiver<String>,
    /// Every stderr line received so far.
    pub log: Vec<String>,
}

impl Running {
    pub fn start(config: &TempConfig) -> Running {
        Running::spawn(command(&["--config", config.path()]))
    }

    /// Runs `command` (tinylb's stderr piped, as [`command`] makes it).
    pub fn spawn(mut command: Command) -> Running {
        let mut child = KillOnDrop(command.spawn().expect("tinylb runs"));
        let stderr = child.0.stderr.take().expect("piped stderr");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The process the test started: the master, or the server with `--no-master`. Signals
    /// go here.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The server process: the master's one child, or the process itself without a master.
    /// What a test measures about threads, descriptors and memory lives there.
    pub fn server_pid(&self) -> u32 {
        let master = self.pid();
        match process_tree(master).as_slice() {
            [_, server] => *server,
            _ => master,
        }
    }

    /// The position after every line received so far: later waits can look only past it.
    pub fn mark(&mut self) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.len()
    }

    /// The first line at or after position `from` that contains `needle`, waiting at most
    /// `timeout` for it.
    pub fn find_since(&mut self, from: usize, needle: &str, timeout: Duration) -> Option<String> {
        self.find_where(from, |line| line.contains(needle), timeout)
    }

    /// The first line at or after position `from` for which `wanted` holds, waiting at most
    /// `timeout` for it.
    pub fn find_where(
        &mut self,
        from: usize,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        loop {
            if let Some(line) = self.log[next.min(self.log.len())..]
                .iter()
                .find(|l| wanted(l))
            {
                return Some(line.clone());
            }
            next = self.log.len();
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => return None,
            }
        }
    }

    /// Like [`Running::find_since`], failing the test with the whole log when no line comes.
    pub fn wait_for_line_since(&mut self, from: usize, needle: &str, timeout: Duration) -> String {
        self.find_since(from, needle, timeout).unwrap_or_else(|| {
            panic!(
                "no stderr line with {needle:?} within {timeout:?}; stderr so far:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_since(0, needle, timeout)
    }

    /// Lines received at or after position `from` that contain `needle`.
    pub fn count_since(&mut self, from: usize, needle: &str) -> usize {
        self.mark();
        self.log[from..]
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for the start-up line and returns the address it names.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on", Duration::from_secs(10));
        parse_listening_addr(&line)
    }

    /// Waits for the admin listener's start-up line at or after position `from` and returns
    /// the address it names (`... admin listener on http://127.0.0.1:PORT/ ...`).
    pub fn admin_addr_since(&mut self, from: usize) -> SocketAddr {
        let line =
            self.wait_for_line_since(from, "admin listener on http://", Duration::from_secs(10));
        parse_admin_addr(&line)
    }

    /// The admin address that generation `number` logged at or after position `from`, waiting
    /// at most `timeout` for it: with `"adminAddress": "127.0.0.1:0"` each generation listens
    /// on a port of its own, and its log lines carry its number (`[tinylb::admin g2]`).
    pub fn admin_addr_of_generation(
        &mut self,
        from: usize,
        number: u64,
        timeout: Duration,
    ) -> SocketAddr {
        let mark = format!(" g{number}]");
        let wanted =
            |line: &str| line.contains(&mark) && line.contains("admin listener on http://");
        match self.find_where(from, wanted, timeout) {
            Some(line) => parse_admin_addr(&line),
            None => panic!(
                "generation {number} logged no admin listener within {timeout:?}; stderr so far:\n{}",
                self.log_text()
            ),
        }
    }

    /// Waits, from position `from`, until generation `number` serves and the one it replaced
    /// has begun to stop (it then no longer accepts admin connections on the socket they
    /// share, so every admin answer comes from the new one); returns the admin address that
    /// generation `number` logged.
    pub fn wait_for_swap_to(&mut self, from: usize, number: u64) -> SocketAddr {
        let needle = format!("generation {number} serves; generation ");
        let serves = self.wait_for_line_since(from, &needle, Duration::from_secs(15));
        let old = serves
            .split(&needle)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no old generation in {serves:?}"))
            .to_string();
        self.wait_for_line_since(
            from,
            &format!("g{old}] shutting down"),
            Duration::from_secs(15),
        );
        self.admin_addr_of_generation(from, number, Duration::from_secs(5))
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits until the process exits, then collects the rest of its stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.0.try_wait().expect("try_wait");
            status.is_some()
        });
        if status.is_some() {
            // The pipe closes with the process; the reader thread then ends the channel.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => self.log.push(line),
                    Err(RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout) => break,
                }
            }
        }
        status
    }

    /// Every stderr line so far, as one text.
    pub fn log_text(&mut self) -> String {
        self.mark();
        self.log.join("\n")
    }
}

/// `... admin listener on http://127.0.0.1:PORT/ ...` -> `127.0.0.1:PORT`.
fn parse_admin_addr(line: &str) -> SocketAddr {
    line.split("admin listener on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line:?}"))
}

/// `... listening on 127.0.0.1:PORT: listen ..., algorithm ...` -> `127.0.0.1:PORT`.
pub fn parse_listening_addr(line: &str) -> SocketAddr {
    line.split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(": ").next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Whether the line starts with a UTC timestamp like `2025-01-31T12:34:56`.
pub fn starts_with_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() >= 19
        && bytes[..19].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            _ => b.is_ascii_digit(),
        })
}

/// A config on 127.0.0.1:0 in front of the backends at `urls`, health checks every 100 ms; the
/// keys in `extra` replace these defaults.
pub fn lb_config(label: &str, urls: &[String], extra: &str) -> TempConfig {
    let servers: Vec<String> = urls.iter().map(|url| format!("\"{url}\"")).collect();
    let defaults = format!(
        r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "100ms", "servers": [{}]}}"#,
        servers.join(", ")
    );
    TempConfig::new(label, &merge_keys(&defaults, extra))
}

/// The tinylb binary listening in front of backends, on a config from [`lb_config`].
pub struct ChildLb {
    pub run: Running,
    pub addr: SocketAddr,
    _config: TempConfig,
}

impl ChildLb {
    pub fn start(label: &str, urls: &[String], extra: &str) -> ChildLb {
        let config = lb_config(label, urls, extra);
        let mut run = Running::start(&config);
        let addr = run.listening_addr();
        ChildLb {
            run,
            addr,
            _config: config,
        }
    }

    /// The server process (see [`Running::server_pid`]).
    pub fn pid(&self) -> u32 {
        self.run.server_pid()
    }

    /// What tinylb holds in all, master and server processes.
    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.run.pid())
    }
}
