//! The watchdog: once a second it counts the client connections this process holds that no
//! thread serves any more, "stuck" ones, and past `maxStuckConnections` asks the master for a
//! successor. Only a new process frees them: each is a tiny_http thread parked for good (see
//! [`crate::client::Census`]).
//!
//! A connection counts as stuck when the client has sent nothing for longer than
//! `clientTimeout` (plus a second of slack), less the connections that are silent for a good
//! reason: a request being forwarded or queued (the client waits for its answer) and an open
//! tunnel. That subtraction can only undercount, so a busy process is never recycled for
//! connections it is serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::client::ClientSockets;
use crate::master::handoff::ChildEnd;
use crate::pool::PoolCounters;
use crate::tunnel::Tunnels;

/// How often the connections are counted.
const EVERY: Duration = Duration::from_secs(1);
/// Slack past `clientTimeout` before a silent connection counts: tiny_http notices a timed-out
/// read a little after the timeout.
const SLACK: Duration = Duration::from_secs(1);

/// What the watchdog needs to look at.
pub struct Watched {
    /// The client connections.
    pub sockets: ClientSockets,
    /// The workers and the queue, whose clients wait silently.
    pub pool: Arc<PoolCounters>,
    /// The tunnels, whose clients may be silent for long.
    pub tunnels: Arc<Tunnels>,
    /// `clientTimeout`.
    pub client_timeout: Duration,
    /// `maxStuckConnections`; 0 never asks for a successor.
    pub max_stuck: usize,
    /// The master, if there is one to ask.
    pub master: Option<Arc<ChildEnd>>,
}

/// Stuck connections counted at the last look, for the status page.
#[derive(Default)]
pub struct StuckCount(AtomicUsize);

impl StuckCount {
    /// The last count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Starts the watchdog thread; it stops when `stop`'s sender is dropped or sends.
pub fn spawn(
    watched: Watched,
    count: Arc<StuckCount>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let silent_for = watched.client_timeout + SLACK;
            let mut asked = false;
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
                let silent = watched.sockets.census(silent_for, Duration::ZERO).silent;
                let waiting = watched.pool.busy() + watched.pool.queued() + watched.tunnels.open();
                let stuck = silent.saturating_sub(waiting);
                count.0.store(stuck, Ordering::Relaxed);
                if asked || watched.max_stuck == 0 || stuck < watched.max_stuck {
                    continue;
                }
                asked = true;
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
