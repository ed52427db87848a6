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

pub mod children;
pub mod handoff;
pub mod restarts;
pub mod signals;

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use self::children::{Child, describe_exit};
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

/// The master's state.
struct Master {
    exe: PathBuf,
    args: Vec<OsString>,
    /// The listening socket; closed when stopping, so that new connections are refused.
    listener: Option<TcpListener>,
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
/// (its exit code). `args` are the child's arguments (the config path). [`signals::block`]
/// must have run before any thread was started.
pub fn run(listener: TcpListener, args: Vec<OsString>) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            log::error!("cannot find tinylb's own binary: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match children::out_of_the_way(listener) {
        Ok(listener) => listener,
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
        args,
        listener: Some(listener),
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
            let wait = self.restart_at.map_or(Duration::from_secs(3600), |at| {
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
                Err(RecvTimeoutError::Timeout) => self.restart_if_due(),
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
        let child = children::start(&self.exe, &self.args, listener, generation, &self.events)?;
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
            // As the child stops accepting, the socket closes (unless systemd holds it too).
            self.listener = None;
        }
        for child in self.children() {
            child.signal(libc::SIGTERM);
        }
    }

    /// Starts a successor beside the current child (recycle or upgrade).
    fn replace(&mut self, cause: Cause, why: &str) {
        if self.stopping || self.next.is_some() || !self.current_ready {
            log::warn!(
                "{why}: not replacing the server process now (it is starting, being replaced, or stopping)"
            );
            return;
        }
        if cause == Cause::Upgrade {
            systemd::notify_reloading();
        }
        match self.start(cause) {
            Ok(child) => self.next = Some(child),
            Err(error) => {
                log::error!("{why}: cannot start a new server process: {error}");
                systemd::notify("READY=1");
            }
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
            }
            Message::Ready if self.current.as_ref().is_some_and(|c| c.pid == pid) => {
                self.current_ready = true;
                if !self.ever_ready {
                    self.ever_ready = true;
                    systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
                }
            }
            Message::Replace(reason) if self.current.as_ref().is_some_and(|c| c.pid == pid) => {
                log::warn!("generation asks to be replaced: {reason}");
                self.replace(Cause::Recycle, "recycle");
            }
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
            systemd::notify("READY=1");
            if self.current.is_none() && !self.stopping {
                // The running one had died meanwhile.
                self.restart_at = Some(Instant::now());
                self.restart_if_due();
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

/// "at once" or "in 250ms".
fn when(wait: Duration) -> String {
    if wait.is_zero() {
        "at once".into()
    } else {
        format!("in {}", crate::duration::format_duration(wait))
    }
}
