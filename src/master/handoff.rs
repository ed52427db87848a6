//! What passes between the master and a child when the child starts: the listening sockets,
//! a pipe back to the master, the [`Generation`] and which backends drain. Both ends are here,
//! so the protocol can be read in one place:
//!
//! - descriptor [`LISTEN_FD`] is the listening socket, shared by every generation;
//! - descriptor [`MASTER_FD`] is the write end of a pipe the master reads, one line per message:
//!   `ready` once the child serves, `replace <reason>` when it wants a successor, `draining
//!   <URLs separated by spaces>` whenever a backend starts or stops draining;
//! - descriptor [`ADMIN_FD`], when [`ADMIN_VAR`] is set, is the admin listener's socket, bound
//!   by the master for the address in that variable and shared by every generation;
//! - [`GENERATION_VAR`] says which generation this is and why;
//! - [`DRAINING_VAR`] lists the backends the generation before was draining;
//! - [`MASTER_PID_VAR`] lets the child check that its master still lives.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use parking_lot::Mutex;

use std::sync::Arc;

use crate::generation::{GENERATION_VAR, Generation};

/// The listening socket's descriptor in a child (systemd's first one, too).
pub const LISTEN_FD: i32 = 3;
/// The pipe to the master, in a child.
pub const MASTER_FD: i32 = 4;
/// The admin listener's socket, in a child (when [`ADMIN_VAR`] is set).
pub const ADMIN_FD: i32 = 5;
/// The master's process id, in a child's environment.
pub const MASTER_PID_VAR: &str = "TINYLB_MASTER_PID";
/// The `adminAddress` the master bound [`ADMIN_FD`] for, in a child's environment.
pub const ADMIN_VAR: &str = "TINYLB_ADMIN_ADDRESS";
/// The URLs of the backends that drain, separated by spaces, in a child's environment.
pub const DRAINING_VAR: &str = "TINYLB_DRAINING";

/// The child's end of the handoff.
pub struct ChildEnd {
    to_master: Mutex<std::fs::File>,
}

/// A child started by the master: its socket, its generation, and the way to talk back.
pub struct Handoff {
    /// The listening socket every generation shares.
    pub listener: TcpListener,
    /// The admin listener's socket, and the `adminAddress` it was bound for.
    pub admin: Option<(SocketAddr, TcpListener)>,
    /// The backends (by URL as written in the config) that drained in the generation before.
    pub draining: Vec<String>,
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
        // The master asked the kernel for SIGTERM when it dies, but exec clears that request
        // for a binary with file capabilities (`setcap cap_net_bind_service`, the usual way to
        // bind port 80 without root), so ask again here. If the master died before, this
        // process would be an orphan nobody supervises.
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; getppid cannot fail.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        if unsafe { libc::getppid() } != master_pid {
            return Err("the master process is gone".into());
        }
        let admin_address = match std::env::var(ADMIN_VAR) {
            Ok(value) => Some(
                value
                    .parse::<SocketAddr>()
                    .map_err(|_| format!("{ADMIN_VAR} is not an address: {value:?}"))?,
            ),
            Err(_) => None,
        };
        let draining = match std::env::var(DRAINING_VAR) {
            Ok(value) => parse_url_list(&value),
            Err(_) => Vec::new(),
        };
        let mut expected = vec![(LISTEN_FD, "listening socket"), (MASTER_FD, "master pipe")];
        if admin_address.is_some() {
            expected.push((ADMIN_FD, "admin socket"));
        }
        for &(fd, what) in &expected {
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
        // SAFETY: as above, for the admin socket the master put on its descriptor.
        let admin =
            admin_address.map(|address| (address, unsafe { TcpListener::from_raw_fd(ADMIN_FD) }));
        for &(fd, _) in &expected {
            // SAFETY: sets close-on-exec on descriptors this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(Handoff {
            listener,
            admin,
            draining,
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

    /// Tells the master which backends drain now, as `now` lists them (by URL). `now` runs
    /// under the pipe's lock, so that of two changes at once the later list arrives last.
    pub fn draining(&self, now: impl FnOnce() -> Vec<String>) {
        let mut pipe = self.to_master.lock();
        let list = url_list(&now());
        Self::write_line(&mut pipe, &format!("draining {list}"));
    }

    fn say(&self, line: &str) {
        Self::write_line(&mut self.to_master.lock(), line);
    }

    fn write_line(pipe: &mut std::fs::File, line: &str) {
        let line = format!("{}\n", line.replace('\n', " "));
        if let Err(error) = pipe.write_all(line.as_bytes()) {
            log::error!("cannot tell the master {line:?}: {error}");
        }
    }
}

/// What a server process is handed by whoever started it, beyond its config and socket.
pub struct Inherited {
    /// Which generation this process is, and why it was started.
    pub generation: Generation,
    /// The way to the master: to say it serves, to ask for a successor, to report drains.
    pub master: Option<Arc<ChildEnd>>,
    /// The admin socket, bound by the master for the config's `adminAddress` and shared by its
    /// generations; when `None`, the server binds that address itself.
    pub admin_socket: Option<std::net::TcpListener>,
    /// Backends to start draining: those the generation before was draining (URLs as
    /// written in the config).
    pub draining: Vec<String>,
}

impl Inherited {
    /// For a server process on its own (`--no-master`, or in a test).
    pub fn alone() -> Inherited {
        Inherited {
            generation: Generation::alone(),
            master: None,
            admin_socket: None,
            draining: Vec::new(),
        }
    }
}

/// Backend URLs as one line, separated by spaces (a URL has none).
pub(super) fn url_list(urls: &[String]) -> String {
    urls.join(" ")
}

/// The URLs of a [`url_list`].
fn parse_url_list(list: &str) -> Vec<String> {
    list.split_whitespace().map(String::from).collect()
}

/// One message from a child, as the master reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The child serves.
    Ready,
    /// The child wants a successor, for this reason.
    Replace(String),
    /// These backends (URLs) drain now.
    Draining(Vec<String>),
}

impl Message {
    /// Reads one line a child wrote; `None` for anything else.
    pub fn parse(line: &str) -> Option<Message> {
        match line.trim_end().split_once(' ') {
            None if line.trim_end() == "ready" => Some(Message::Ready),
            Some(("replace", reason)) => Some(Message::Replace(reason.to_string())),
            None if line.trim_end() == "draining" => Some(Message::Draining(Vec::new())),
            Some(("draining", list)) => Some(Message::Draining(parse_url_list(list))),
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
        let urls = vec!["http://a:1".to_string(), "http://b:2/x".to_string()];
        assert_eq!(
            Message::parse(&format!("draining {}\n", url_list(&urls))),
            Some(Message::Draining(urls))
        );
        assert_eq!(
            Message::parse(&format!("draining {}", url_list(&[]))),
            Some(Message::Draining(Vec::new()))
        );
        for other in ["", "ready now", "replace", "hello world"] {
            assert_eq!(Message::parse(other), None, "{other:?}");
        }
    }
}
