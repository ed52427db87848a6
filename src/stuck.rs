//! The watchdog: once a second it has the client side judge every client connection
//! ([`ClientSockets::look`]): connections past the whole-head deadline (`clientHeaderTimeout`)
//! are ended, and "stuck" ones, which no thread serves any more, are counted. Past
//! `maxStuckConnections` it asks the master for a successor: only a new process frees them,
//! each being a tiny_http thread parked for good (see [`crate::client::Census`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::client::ClientSockets;
use crate::client::phases::Limits;
use crate::master::handoff::ChildEnd;

/// How long after asking for a successor the watchdog asks again, should this process still
/// be serving (the master may have been busy with another replacement) or, without a master,
/// logs its warning again.
const ASK_AGAIN: Duration = Duration::from_secs(60);
/// How often the connections are counted.
const EVERY: Duration = Duration::from_secs(1);
/// Slack past `clientTimeout` before a silent connection counts: tiny_http notices a timed-out
/// read a little after the timeout.
const SLACK: Duration = Duration::from_secs(1);

/// What the watchdog needs to look at.
pub struct Watched {
    /// The client connections.
    pub sockets: ClientSockets,
    /// `clientTimeout`.
    pub client_timeout: Duration,
    /// `clientHeaderTimeout`.
    pub header_timeout: Duration,
    /// `maxStuckConnections`; 0 never asks for a successor.
    pub max_stuck: usize,
    /// The master, if there is one to ask.
    pub master: Option<Arc<ChildEnd>>,
}

/// What the watchdog found, for the status page.
#[derive(Default)]
pub struct WatchdogCounts {
    stuck: AtomicUsize,
    head_timeouts: AtomicU64,
}

impl WatchdogCounts {
    /// Stuck connections at the last look.
    pub fn stuck(&self) -> usize {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Connections ended since start because their request head took too long.
    pub fn head_timeouts(&self) -> u64 {
        self.head_timeouts.load(Ordering::Relaxed)
    }
}

/// Starts the watchdog thread; it stops when `stop`'s sender is dropped or sends.
pub fn spawn(
    watched: Watched,
    counts: Arc<WatchdogCounts>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let limits = Limits {
                head: watched.header_timeout,
                silence: watched.client_timeout + SLACK,
            };
            let mut asked: Option<Instant> = None;
            let mut memory = GiveBack::default();
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
                let census = watched.sockets.look(limits);
                memory.after(census.open.max(threads_now()));
                let ended = census.ended_with_408 + census.ended_idle;
                counts.head_timeouts.fetch_add(ended as u64, Ordering::Relaxed);
                if census.ended_with_408 > 0 {
                    log::info!(
                        "answered {} client connections 408: their request head did not arrive within clientHeaderTimeout",
                        census.ended_with_408
                    );
                }
                if census.ended_idle > 0 {
                    log::debug!(
                        "closed {} idle client connections: no request within clientHeaderTimeout",
                        census.ended_idle
                    );
                }
                let stuck = census.stuck;
                counts.stuck.store(stuck, Ordering::Relaxed);
                let asked_lately = asked.is_some_and(|at| at.elapsed() < ASK_AGAIN);
                if asked_lately || watched.max_stuck == 0 || stuck < watched.max_stuck {
                    continue;
                }
                asked = Some(Instant::now());
                let reason = format!(
                    "{stuck} stuck client connections (maxStuckConnections is {})",
                    watched.max_stuck
                );
                match &watched.master {
                    Some(master) => {
                        log::warn!("{reason}: asking the master for a new server process");
                        master.replace_me(&reason);
                    }
                    None => log::warn!(
                        "{reason}: they stay until tinylb restarts (run it with its master to replace them)"
                    ),
                }
            }
        })
}

/// Returns memory to the system after a crowd of connections has gone. Each of tiny_http's
/// connection threads allocates from one of glibc's per-thread arenas, and glibc keeps what
/// they freed for reuse: after 5,000 idle connections closed, RSS stayed at 4 times its start.
/// `malloc_trim` hands the free pages of every arena back. It is counted in connections or
/// threads, whichever is more: tiny_http's threads outlive their connections by some seconds,
/// and free their memory only when they end.
#[derive(Default)]
struct GiveBack {
    /// Most connections (or threads) since memory was last given back.
    peak: usize,
}

impl GiveBack {
    /// Connections that must have come and gone before trimming is worth its pause (it walks
    /// every arena under its lock: about a millisecond).
    const CROWD: usize = 256;

    fn after(&mut self, open: usize) {
        self.peak = self.peak.max(open);
        if self.peak >= open + Self::CROWD && open <= self.peak / 2 {
            self.peak = open;
            trim();
        }
    }
}

/// This process's thread count (0 if it cannot be read).
fn threads_now() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|count| count.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
    unsafe { libc::malloc_trim(0) };
}

/// musl's allocator returns freed memory itself.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
