//! Running the `tinylb` binary as a child process: temp config files, a guard that kills the
//! child when the test ends, and a reader that collects its stderr log lines.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{Backend, wait_until};

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
    let mut command = Command::new(BIN);
    command
        .args(args)
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
        let mut child = KillOnDrop(
            command(&["--config", config.path()])
                .spawn()
                .expect("tinylb runs"),
        );
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

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(error) => panic!(
                    "no stderr line with {needle:?} ({error:?}); stderr so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits for the start-up line and returns the address it names.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on", Duration::from_secs(10));
        parse_listening_addr(&line)
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

    pub fn log_text(&self) -> String {
        self.log.join("\n")
    }
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

/// A config on 127.0.0.1:0 in front of the given backends, with `extra` keys.
pub fn lb_config(label: &str, backends: &[&Backend], extra: &str) -> TempConfig {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    let separator = if extra.is_empty() { "" } else { ", " };
    TempConfig::new(
        label,
        &format!(
            r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "100ms", "servers": [{}]{separator}{extra}}}"#,
            servers.join(", ")
        ),
    )
}
