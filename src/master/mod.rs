//! The master process: the classic answer of threaded servers to what a thread cannot fix.
//!
//! tiny_http can park a connection thread for good (see [`crate::client::Census`]), and a
//! panic can escape anywhere. No code inside a process can take such a thread back, but a
//! process can be replaced. So, as Apache's parent and nginx's master do, `tinylb` runs as a
//! small master that binds the listening socket, starts the server as a child process that
//! inherits it, and stays off the request path:
//!
//! - **Crash**: the child died. The master starts the next one at once (later while children
//!   keep dying young, [`restarts`]). The socket never closed, so connections that arrived
//!   meanwhile waited in its queue.
//! - **Recycle**: the child counted too many stuck connections and asked for a successor.
//! - **Upgrade**: SIGHUP. A fresh exec of the binary on disk, with the config file re-read; how
//!   settings that cannot change live (workers, queueSize, adminAddress) take effect.
//!
//! For a recycle and an upgrade the new child starts beside the old one, and once it says it
//! serves, the old one gets SIGTERM: it stops accepting, finishes its requests, tells its
//! keep-alive clients to reconnect, and exits, taking its stuck threads with it.
//! SIGTERM and SIGINT drain the child and exit 0. `--no-master` runs the server alone.
//!
//! A swap cannot wedge the master: a child that has not said it serves within `readyTimeout`
//! is killed (during a swap the old one serves on, and the failure is counted apart from the
//! upgrades), and a SIGHUP that arrives while a child is starting is carried out after it.
//! The master also keeps what must outlive a generation: the admin socket (bound here, so that
//! a second tinylb on the same `adminAddress` fails to start) and which backends drain.

pub mod children;
pub mod handoff;
pub mod restarts;
pub mod signals;
mod swaps;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use self::children::{Child, Inheritance, describe_exit};
use self::handoff::Message;
use self::restarts::CrashBackoff;
use crate::generation::{Cause, Generation, Restarts};
use crate::systemd;

/// What the master reacts to: all of it arrives on one channel, in order.
#[derive(Debug)]
pub enum Event {
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
    /// A child wrote a message.
    Said(u32, Message),
    /// A child exited (its status, if it could be had).
    Exited(u32, Option<std::process::ExitStatus>),
}

/// What the master takes from the config file, at start and again at each SIGHUP.
pub struct Settings {
    /// The config file, passed to each child.
    pub config_path: PathBuf,
    /// The admin socket, bound for the config's `adminAddress` (which it names).
    pub admin: Option<(SocketAddr, TcpListener)>,
    /// `readyTimeout`.
    pub ready_timeout: Duration,
}

/// The master's state.
struct Master {
    exe: PathBuf,
    config_path: PathBuf,
    /// The listening socket; closed when stopping, so that new connections are refused.
    listener: Option<TcpListener>,
    /// The admin socket every generation shares, and the `adminAddress` it was bound for.
    admin: Option<(SocketAddr, TcpListener)>,
    /// The backends that drain (URLs), as the serving child last said.
    draining: Vec<String>,
    /// How long a new child may take to say it serves.
    ready_timeout: Duration,
    /// A SIGHUP that came while a child was starting, to carry out once it is done.
    swap_pending: bool,
    events: crossbeam_channel::Sender<Event>,
    /// The child that serves (or is starting to, after a crash).
    current: Option<Child>,
    /// Whether `current` has said it serves.
    current_ready: bool,
    /// A successor starting beside `current`.
    next: Option<Child>,
    /// Children draining after a successor took over.
    retiring: Vec<Child>,
    generations: u64,
    restarts: Restarts,
    backoff: CrashBackoff,
    /// When a crashed child's successor is due.
    restart_at: Option<Instant>,
    /// Set by the first SIGTERM or SIGINT: no more children.
    stopping: bool,
    /// Whether any child ever served: until then a child's failure is the master's.
    ever_ready: bool,
    /// The last child's exit code while stopping, for the master's own.
    exit_code: u8,
}

/// Runs the master until SIGTERM or SIGINT (exit 0), or until the first child fails to start
/// (its exit code). [`signals::block`] must have run before any thread was started.
pub fn run(listener: TcpListener, settings: Settings) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            log::error!("cannot find tinylb's own binary: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (listener, admin) = match keep_sockets(listener, settings.admin) {
        Ok(sockets) => sockets,
        Err(error) => {
            log::error!("cannot keep the listening socket: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (events, received) = crossbeam_channel::unbounded();
    if let Err(error) = signals::spawn(events.clone()) {
        log::error!("cannot start a thread: {error}");
        return ExitCode::FAILURE;
    }
    let mut master = Master {
        exe,
        config_path: settings.config_path,
        listener: Some(listener),
        admin,
        draining: Vec::new(),
        ready_timeout: settings.ready_timeout,
        swap_pending: false,
        events,
        current: None,
        current_ready: false,
        next: None,
        retiring: Vec::new(),
        generations: 0,
        restarts: Restarts::default(),
        backoff: CrashBackoff::default(),
        restart_at: None,
        stopping: false,
        ever_ready: false,
        exit_code: 0,
    };
    match master.start(Cause::Start) {
        Ok(child) => master.current = Some(child),
        Err(error) => {
            log::error!("cannot start the server process: {error}");
            return ExitCode::FAILURE;
        }
    }
    master.serve(&received)
}

impl Master {
    fn serve(&mut self, events: &Receiver<Event>) -> ExitCode {
        loop {
            let due = [self.restart_at, self.ready_deadline()];
            let wait = due
                .into_iter()
                .flatten()
                .min()
                .map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                });
            match events.recv_timeout(wait) {
                Ok(Event::Signal(signal)) => self.on_signal(signal),
                Ok(Event::Said(pid, message)) => self.on_message(pid, message),
                Ok(Event::Exited(pid, status)) => {
                    if let Some(code) = self.on_exit(pid, status) {
                        return code;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.restart_if_due();
                    self.kill_if_not_ready();
                }
                Err(RecvTimeoutError::Disconnected) => return ExitCode::FAILURE,
            }
        }
    }

    /// Starts generation `generations + 1`, started because of `cause`.
    fn start(&mut self, cause: Cause) -> std::io::Result<Child> {
        let mut restarts = self.restarts;
        restarts.count(cause);
        let generation = Generation {
            supervised: true,
            number: self.generations + 1,
            cause,
            restarts,
            started: Instant::now(),
        };
        let Some(listener) = &self.listener else {
            return Err(std::io::Error::other("stopping"));
        };
        let inheritance = Inheritance {
            listener,
            admin: self
                .admin
                .as_ref()
                .map(|(address, socket)| (*address, socket)),
            draining: &self.draining,
            generation,
        };
        let args = [OsString::from("--config"), self.config_path.clone().into()];
        let child = children::start(&self.exe, &args, &inheritance, &self.events)?;
        self.generations += 1;
        self.restarts = restarts;
        log::info!(
            "started generation {} (pid {}, {})",
            generation.number,
            child.pid,
            cause.name()
        );
        Ok(child)
    }

    fn on_signal(&mut self, signal: i32) {
        if signal == libc::SIGHUP {
            self.replace(Cause::Upgrade, "SIGHUP");
            return;
        }
        if self.stopping {
            log::info!("second signal: cutting the drain short");
        } else {
            log::info!("stopping: draining the server process");
            systemd::notify("STOPPING=1");
            self.stopping = true;
            self.restart_at = None;
            self.swap_pending = false;
            // As the child stops accepting, the socket closes (unless systemd holds it too).
            self.listener = None;
        }
        for child in self.children() {
            child.signal(libc::SIGTERM);
        }
    }

    fn on_message(&mut self, pid: u32, message: Message) {
        match message {
            Message::Ready if self.next.as_ref().is_some_and(|c| c.pid == pid) => {
                let next = self.next.take().expect("checked");
                if let Some(old) = self.current.take() {
                    log::info!(
                        "generation {} serves; generation {} (pid {}) drains",
                        next.generation.number,
                        old.generation.number,
                        old.pid
                    );
                    old.signal(libc::SIGTERM);
                    self.retiring.push(old);
                }
                self.current = Some(next);
                self.current_ready = true;
                systemd::notify("READY=1");
                self.swap_if_pending();
            }
            Message::Ready if self.current.as_ref().is_some_and(|c| c.pid == pid) => {
                self.current_ready = true;
                if !self.ever_ready {
                    self.ever_ready = true;
                    systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
                }
                self.swap_if_pending();
            }
            Message::Replace(reason) if self.current.as_ref().is_some_and(|c| c.pid == pid) => {
                log::warn!("generation asks to be replaced: {reason}");
                self.replace(Cause::Recycle, "recycle");
            }
            // From whichever generation answered the admin request: they share its socket.
            Message::Draining(urls) => self.draining = urls,
            other => log::debug!("ignored {other:?} from pid {pid}"),
        }
    }

    /// Handles a child's exit; returns the master's exit code when it is done.
    fn on_exit(&mut self, pid: u32, status: Option<std::process::ExitStatus>) -> Option<ExitCode> {
        let how = describe_exit(status);
        if let Some(index) = self.retiring.iter().position(|c| c.pid == pid) {
            let old = self.retiring.swap_remove(index);
            log::info!(
                "generation {} (pid {pid}) finished ({how})",
                old.generation.number
            );
        } else if self.next.as_ref().is_some_and(|c| c.pid == pid) {
            let failed = self.next.take().expect("checked");
            log::error!(
                "generation {} (pid {pid}) failed to start ({how}); the running one stays",
                failed.generation.number
            );
            // It never served: its number goes to the next one, and it counts as a failure,
            // not as the upgrade or recycle it was meant to be.
            self.generations = failed.generation.number - 1;
            self.restarts.uncount(failed.generation.cause);
            self.restarts.failed += 1;
            systemd::notify("READY=1");
            if self.current.is_none() && !self.stopping {
                // The running one had died meanwhile.
                self.restart_at = Some(Instant::now());
                self.restart_if_due();
            } else {
                self.swap_if_pending();
            }
        } else if self.current.as_ref().is_some_and(|c| c.pid == pid) {
            let gone = self.current.take().expect("checked");
            let ready = std::mem::replace(&mut self.current_ready, false);
            if self.stopping {
                self.exit_code = status.and_then(|s| s.code()).map_or(1, |c| c as u8);
            } else if !self.ever_ready {
                // The first child could not start (bad config, admin port in use): its own
                // log line said why, and its exit code is the master's.
                return Some(ExitCode::from(
                    status.and_then(|s| s.code()).map_or(1, |c| c as u8),
                ));
            } else if self.next.is_none() {
                let wait = self.backoff.after_crash(gone.started.elapsed());
                log::error!(
                    "generation {} (pid {pid}) died ({how}{}); starting the next {}",
                    gone.generation.number,
                    if ready { "" } else { ", before it served" },
                    when(wait)
                );
                self.restart_at = Some(Instant::now() + wait);
                self.restart_if_due();
            }
        }
        if self.stopping && self.children().next().is_none() {
            log::info!("stopped");
            return Some(ExitCode::from(self.exit_code));
        }
        None
    }

    fn restart_if_due(&mut self) {
        if self.restart_at.is_none_or(|at| Instant::now() < at) || self.stopping {
            return;
        }
        self.restart_at = None;
        match self.start(Cause::Crash) {
            Ok(child) => self.current = Some(child),
            Err(error) => {
                let wait = self.backoff.after_crash(Duration::ZERO);
                log::error!(
                    "cannot start a new server process: {error}; trying again {}",
                    when(wait)
                );
                self.restart_at = Some(Instant::now() + wait);
            }
        }
    }

    /// Every child alive.
    fn children(&self) -> impl Iterator<Item = &Child> {
        self.current
            .iter()
            .chain(self.next.iter())
            .chain(self.retiring.iter())
    }
}

/// Moves the sockets every child inherits out of the way of the descriptors they are placed
/// at ([`children::out_of_the_way`]).
fn keep_sockets(
    listener: TcpListener,
    admin: Option<(SocketAddr, TcpListener)>,
) -> std::io::Result<(TcpListener, Option<(SocketAddr, TcpListener)>)> {
    let listener = children::out_of_the_way(listener)?;
    let admin = match admin {
        Some((address, socket)) => Some((address, children::out_of_the_way(socket)?)),
        None => None,
    };
    Ok((listener, admin))
}

/// "at once" or "in 250ms".
fn when(wait: Duration) -> String {
    if wait.is_zero() {
        "at once".into()
    } else {
        format!("in {}", crate::duration::format_duration(wait))
    }
}
