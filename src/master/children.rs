//! Starting a child and watching it, on the master's side. Each child runs the same binary
//! with `--child`; a thread per child reads its messages and, when the pipe closes, waits for
//! its exit, and both become [`Event`]s on the master's one channel.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Instant;

use crossbeam_channel::Sender;

use super::Event;
use super::handoff::{
    self, ADMIN_FD, ADMIN_VAR, DRAINING_VAR, LISTEN_FD, MASTER_FD, MASTER_PID_VAR, Message,
};
use crate::generation::{GENERATION_VAR, Generation};

/// A child as the master knows it.
#[derive(Debug)]
pub struct Child {
    /// Its process id.
    pub pid: u32,
    /// Its generation.
    pub generation: Generation,
    /// When it was started.
    pub started: Instant,
}

impl Child {
    /// Sends `signal` (SIGTERM: drain and exit).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; at worst the process is already gone.
        unsafe { libc::kill(self.pid as i32, signal) };
    }

    /// Kills the child and whatever it started (its process group: a script in tinylb's place
    /// may have started a `sleep`), for a child that never served.
    pub fn kill_group(&self) {
        // SAFETY: as above; the child leads a process group of its own (`start`).
        unsafe { libc::killpg(self.pid as i32, libc::SIGKILL) };
    }
}

/// What a child inherits from the master, besides its arguments.
pub struct Inheritance<'a> {
    /// The listening socket, [`out_of_the_way`].
    pub listener: &'a TcpListener,
    /// The admin socket ([`out_of_the_way`]) and the `adminAddress` it was bound for.
    pub admin: Option<(SocketAddr, &'a TcpListener)>,
    /// The backends (URLs) that drain.
    pub draining: &'a [String],
    /// Which generation the child is.
    pub generation: Generation,
}

/// Starts `exe --child ARGS` with what it inherits: the listening socket on descriptor 3, a
/// pipe back on descriptor 4, the admin socket on descriptor 5 (see [`handoff`]). The child
/// gets SIGTERM if the master dies, and a process group of its own: a Ctrl-C at the terminal
/// reaches the master only, which then drains the child once (a second SIGINT to the child
/// would cut its drain short).
pub fn start(
    exe: &Path,
    args: &[OsString],
    inheritance: &Inheritance,
    events: &Sender<Event>,
) -> std::io::Result<Child> {
    let generation = inheritance.generation;
    let (from_child, to_master) = handoff::pipe()?;
    let to_master = out_of_the_way(to_master)?;
    let listen_fd = inheritance.listener.as_raw_fd();
    let pipe_fd = to_master.as_raw_fd();
    let admin_fd = inheritance.admin.map(|(_, socket)| socket.as_raw_fd());
    let draining = handoff::url_list(inheritance.draining);
    let mut command = Command::new(exe);
    command
        .arg("--child")
        .args(args)
        .env(GENERATION_VAR, generation.to_env())
        .env(MASTER_PID_VAR, std::process::id().to_string())
        .env(DRAINING_VAR, draining)
        .env_remove(ADMIN_VAR)
        // Only the master talks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .process_group(0);
    if let Some((address, _)) = inheritance.admin {
        command.env(ADMIN_VAR, address.to_string());
    }
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, sigprocmask) between fork and
    // exec.
    unsafe {
        command.pre_exec(move || {
            place(listen_fd, LISTEN_FD)?;
            place(pipe_fd, MASTER_FD)?;
            if let Some(admin_fd) = admin_fd {
                place(admin_fd, ADMIN_FD)?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The master blocks its signals in every thread (see `signals`); a signal mask
            // survives exec, and the child must get SIGTERM.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut process = command.spawn()?;
    // The master's copy of the write end must close, or the pipe never reports the child gone.
    drop(to_master);
    let pid = process.id();
    let events = events.clone();
    std::thread::Builder::new()
        .name(format!("child-{pid}"))
        .spawn(move || {
            for line in BufReader::new(from_child).lines() {
                let Ok(line) = line else { break };
                match Message::parse(&line) {
                    Some(message) => {
                        let _ = events.send(Event::Said(pid, message));
                    }
                    None => log::warn!("child {pid} said something unknown: {line:?}"),
                }
            }
            let status = process.wait();
            let _ = events.send(Event::Exited(pid, status.ok()));
        })?;
    Ok(Child {
        pid,
        generation,
        started: Instant::now(),
    })
}

/// Puts descriptor `from` at number `to`, inheritable. Runs between fork and exec.
fn place(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: async-signal-safe calls on descriptors of the forked child.
    let result = unsafe {
        if from == to {
            // dup2 onto itself would keep close-on-exec.
            libc::fcntl(to, libc::F_SETFD, 0)
        } else {
            libc::dup2(from, to)
        }
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How a child's exit reads in the log.
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        },
        None => "exit status unknown".into(),
    }
}

/// Moves a descriptor to a number of 10 or more, so that putting the child's descriptors at
/// 3, 4 and 5 cannot overwrite one not yet placed.
pub fn out_of_the_way<T: From<OwnedFd> + Into<OwnedFd>>(file: T) -> std::io::Result<T> {
    let fd: OwnedFd = file.into();
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that this process then owns.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if moved < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `moved` is a fresh descriptor of the same file, owned by nothing else.
    Ok(T::from(unsafe { OwnedFd::from_raw_fd(moved) }))
}
