//! What passes between the master and a child when the child starts: the listening socket,
//! a pipe back to the master, and the [`Generation`]. Both ends are here, so the protocol can be
//! read in one place:
//!
//! - descriptor [`LISTEN_FD`] is the listening socket, shared by every generation;
//! - descriptor [`MASTER_FD`] is the write end of a pipe the master reads, one line per message:
//!   `ready` once the child serves, `replace <reason>` when it wants a successor;
//! - [`GENERATION_VAR`] says which generation this is and why;
//! - [`MASTER_PID_VAR`] lets the child check that its master still lives.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use parking_lot::Mutex;

use crate::generation::{GENERATION_VAR, Generation};

/// The listening socket's descriptor in a child (systemd's first one, too).
pub const LISTEN_FD: i32 = 3;
/// The pipe to the master, in a child.
pub const MASTER_FD: i32 = 4;
/// The master's process id, in a child's environment.
pub const MASTER_PID_VAR: &str = "TINYLB_MASTER_PID";

/// The child's end of the handoff.
pub struct ChildEnd {
    to_master: Mutex<std::fs::File>,
}

/// A child started by the master: its socket, its generation, and the way to talk back.
pub struct Handoff {
    /// The listening socket every generation shares.
    pub listener: TcpListener,
    /// Which generation this is.
    pub generation: Generation,
    /// The pipe to the master.
    pub master: ChildEnd,
}

impl Handoff {
    /// Takes what the master passed. Only for a process started with `--child`: it takes
    /// ownership of descriptors 3 and 4. The error says what is missing.
    pub fn take() -> Result<Handoff, String> {
        let generation = std::env::var(GENERATION_VAR)
            .ok()
            .and_then(|value| Generation::from_env(&value))
            .ok_or_else(|| format!("--child needs {GENERATION_VAR} from the master"))?;
        let master_pid: i32 = std::env::var(MASTER_PID_VAR)
            .ok()
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("--child needs {MASTER_PID_VAR} from the master"))?;
        // The master asked the kernel to send SIGTERM when it dies; if it died before that
        // request took effect, this process would be an orphan nobody supervises.
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != master_pid {
            return Err("the master process is gone".into());
        }
        for (fd, what) in [(LISTEN_FD, "listening socket"), (MASTER_FD, "master pipe")] {
            // SAFETY: fcntl on a descriptor number only reads its flags.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("--child needs the {what} on descriptor {fd}"));
            }
        }
        // SAFETY: the master put these descriptors there for this process alone, and nothing
        // else in this process uses them.
        let (listener, pipe) = unsafe {
            (
                TcpListener::from_raw_fd(LISTEN_FD),
                std::fs::File::from_raw_fd(MASTER_FD),
            )
        };
        for fd in [LISTEN_FD, MASTER_FD] {
            // SAFETY: sets close-on-exec on descriptors this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(Handoff {
            listener,
            generation,
            master: ChildEnd {
                to_master: Mutex::new(pipe),
            },
        })
    }
}

impl ChildEnd {
    /// Tells the master this child serves: the master then retires the one before it.
    pub fn ready(&self) {
        self.say("ready");
    }

    /// Asks the master for a successor; this child then drains and exits.
    pub fn replace_me(&self, reason: &str) {
        self.say(&format!("replace {reason}"));
    }

    fn say(&self, line: &str) {
        let line = format!("{}\n", line.replace('\n', " "));
        if let Err(error) = self.to_master.lock().write_all(line.as_bytes()) {
            log::error!("cannot tell the master {line:?}: {error}");
        }
    }
}

/// One message from a child, as the master reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The child serves.
    Ready,
    /// The child wants a successor, for this reason.
    Replace(String),
}

impl Message {
    /// Reads one line a child wrote; `None` for anything else.
    pub fn parse(line: &str) -> Option<Message> {
        match line.trim_end().split_once(' ') {
            None if line.trim_end() == "ready" => Some(Message::Ready),
            Some(("replace", reason)) => Some(Message::Replace(reason.to_string())),
            _ => None,
        }
    }
}

/// A pipe whose ends are not inherited by anything the master starts later.
pub(super) fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    // A Unix stream pair instead of pipe(2): std makes it close-on-exec without unsafe code.
    let (read, write) = UnixStream::pair()?;
    let into_file = |s: UnixStream| std::fs::File::from(std::os::fd::OwnedFd::from(s));
    Ok((into_file(read), into_file(write)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert_eq!(Message::parse("ready\n"), Some(Message::Ready));
        assert_eq!(
            Message::parse("replace 120 stuck connections\n"),
            Some(Message::Replace("120 stuck connections".into()))
        );
        for other in ["", "ready now", "replace", "hello world"] {
            assert_eq!(Message::parse(other), None, "{other:?}");
        }
    }
}
