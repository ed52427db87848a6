//! Connections from tinylb to its own listener ("pings"), made from a thread of their own.
//!
//! tiny_http needs them for two reasons (see `incoming.rs`):
//!
//! - **accept() must not time out.** Accepted sockets inherit the listener's SO_RCVTIMEO (that
//!   is how tinylb bounds slow clients), so accept() times out too, which would end tiny_http's
//!   accept thread. One ping per half `clientTimeout` keeps it busy.
//! - **Connections from a burst can wait in tiny_http's thread pool** behind a thread that is
//!   already taken (its idle count is read stale), until some other connection ends. Every
//!   ping either starts a fresh pool thread, which takes one waiting connection when the ping
//!   ends, or wakes an idle one that does. So while requests arrive it pings once a round, and
//!   more when new connections arrive (a load test's opening burst): kept-alive connections
//!   already have their thread and need none.
//!
//! Pinging is a blocking connect, which takes microseconds on loopback but up to
//! `PING_TIMEOUT` when the accept queue is full, so it runs on a thread of its own, where it
//! delays no request.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

/// While requests are arriving, a round of pings this often.
const BUSY_PING: Duration = Duration::from_millis(50);
/// When idle, how often the pinger looks whether requests have started arriving.
const IDLE_LOOK: Duration = Duration::from_millis(250);
/// Longest wait for a ping's handshake.
const PING_TIMEOUT: Duration = Duration::from_millis(20);
/// While busy, a round is one ping plus one per new connection since the last round (each ping
/// frees one connection waiting in the pool), and at most this many: 320 a second free a burst
/// of 64 new connections in about 0.2 s; kept-alive traffic gets one ping a round.
const MAX_BUSY_PINGS: usize = 16;
/// How long after the last request the pinger keeps the busy rate.
const BUSY_FOR: Duration = Duration::from_secs(2);
/// How long after an accept failure file descriptors count as short (the listener's restart
/// back-off is at most 3.2 s, so this covers a restart and its first moments).
const STRUGGLING_FOR: Duration = Duration::from_secs(10);

/// What the intake tells the pinger; see [`Pinger`].
#[derive(Default)]
struct Signals {
    /// Requests taken from tiny_http so far.
    requests: AtomicUsize,
    /// Of them, the first requests of their connections.
    connections: AtomicUsize,
    /// When accept() last failed. For [`STRUGGLING_FOR`] after it, file descriptors count as
    /// short: then no busy pings, since each one holds two until a pool thread reads it, and
    /// those are what the listener is waiting for.
    last_accept_failure: Mutex<Option<Instant>>,
    /// Whether the pinger is idle and wants to be woken by the next request: the first burst
    /// after a quiet spell is when connections wait in tiny_http's pool.
    idle: AtomicBool,
}

/// The ping thread; it stops when this is dropped.
pub struct Pinger {
    signals: Arc<Signals>,
    /// Wakes the thread; dropping it stops the thread.
    wake: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Pinger {
    /// Starts pinging `addr` (the listener's own address, on loopback when it listens on all
    /// addresses) at least every half `client_timeout`.
    pub fn start(addr: SocketAddr, client_timeout: Duration) -> std::io::Result<Pinger> {
        let signals = Arc::new(Signals::default());
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let thread_signals = Arc::clone(&signals);
        let thread = std::thread::Builder::new()
            .name("pinger".into())
            .spawn(move || {
                let mut rounds = Rounds::new(client_timeout / 2);
                loop {
                    let wait = rounds.wait();
                    thread_signals.idle.store(!rounds.busy(), Ordering::Relaxed);
                    match woken.recv_timeout(wait) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let seen = Seen {
                        requests: thread_signals.requests.load(Ordering::Relaxed),
                        connections: thread_signals.connections.load(Ordering::Relaxed),
                    };
                    let struggling = thread_signals
                        .last_accept_failure
                        .lock()
                        .is_some_and(|at| at.elapsed() < STRUGGLING_FOR);
                    for _ in 0..rounds.pings_now(seen, struggling) {
                        // Connecting is enough; the connection is closed at once, and tiny_http's
                        // thread for it reads end-of-file and ends.
                        let _ = TcpStream::connect_timeout(&addr, PING_TIMEOUT);
                    }
                }
            })?;
        Ok(Pinger {
            signals,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Called by the intake for each request it takes from tiny_http; `new_connection` when it
    /// is the first of its connection.
    pub fn saw_request(&self, new_connection: bool) {
        self.signals.requests.fetch_add(1, Ordering::Relaxed);
        if new_connection {
            self.signals.connections.fetch_add(1, Ordering::Relaxed);
        }
        if self.signals.idle.load(Ordering::Relaxed)
            && self.signals.idle.swap(false, Ordering::Relaxed)
            && let Some(wake) = &self.wake
        {
            let _ = wake.try_send(());
        }
    }

    /// Called by the intake when accept() failed (file descriptors may run short).
    pub fn accept_failed(&self) {
        *self.signals.last_accept_failure.lock() = Some(Instant::now());
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The intake's counts so far.
#[derive(Clone, Copy)]
struct Seen {
    requests: usize,
    connections: usize,
}

/// When to ping and how many times: the policy, apart from the thread and the sockets.
struct Rounds {
    idle_ping: Duration,
    last_ping: Instant,
    seen: Seen,
    last_request: Option<Instant>,
}

impl Rounds {
    fn new(idle_ping: Duration) -> Rounds {
        Rounds {
            idle_ping,
            last_ping: Instant::now(),
            seen: Seen {
                requests: 0,
                connections: 0,
            },
            last_request: None,
        }
    }

    fn busy(&self) -> bool {
        self.last_request.is_some_and(|at| at.elapsed() < BUSY_FOR)
    }

    /// How long to sleep before the next look.
    fn wait(&self) -> Duration {
        if self.busy() {
            BUSY_PING
        } else {
            IDLE_LOOK.min(self.idle_ping)
        }
    }

    /// Pings due now, given the intake's counts so far.
    fn pings_now(&mut self, seen: Seen, struggling: bool) -> usize {
        let new_requests = seen.requests.wrapping_sub(self.seen.requests);
        let new_connections = seen.connections.wrapping_sub(self.seen.connections);
        self.seen = seen;
        if new_requests > 0 {
            self.last_request = Some(Instant::now());
        }
        let pings = if self.busy() && !struggling {
            (1 + new_connections).min(MAX_BUSY_PINGS)
        } else if self.last_ping.elapsed() >= self.idle_ping {
            1
        } else {
            0
        };
        if pings > 0 {
            self.last_ping = Instant::now();
        }
        pings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of `requests` requests, `connections` of them new connections.
    fn seen(requests: usize, connections: usize) -> Seen {
        Seen {
            requests,
            connections,
        }
    }

    #[test]
    fn idle_means_one_ping_per_idle_period() {
        let mut rounds = Rounds::new(Duration::from_secs(3600));
        assert_eq!(rounds.pings_now(seen(0, 0), false), 0);
        rounds.last_ping = Instant::now() - Duration::from_secs(3601);
        assert_eq!(rounds.pings_now(seen(0, 0), false), 1);
        assert_eq!(rounds.pings_now(seen(0, 0), false), 0);
        assert_eq!(rounds.wait(), IDLE_LOOK);
    }

    #[test]
    fn new_connections_scale_the_pings_up_to_the_cap() {
        let mut rounds = Rounds::new(Duration::from_secs(3600));
        assert_eq!(rounds.pings_now(seen(1, 1), false), 2);
        assert_eq!(rounds.pings_now(seen(6, 6), false), 6);
        assert_eq!(
            rounds.pings_now(seen(100_000, 100_000), false),
            MAX_BUSY_PINGS
        );
        assert_eq!(rounds.wait(), BUSY_PING);
        // Still busy right after the traffic stops: one ping a round.
        assert_eq!(rounds.pings_now(seen(100_000, 100_000), false), 1);
    }

    #[test]
    fn kept_alive_traffic_gets_one_ping_a_round() {
        let mut rounds = Rounds::new(Duration::from_secs(3600));
        assert_eq!(rounds.pings_now(seen(16, 10), false), 11);
        assert_eq!(rounds.pings_now(seen(10_016, 10), false), 1);
        assert_eq!(rounds.pings_now(seen(20_016, 12), false), 3);
    }

    #[test]
    fn no_busy_pings_while_file_descriptors_run_short() {
        let mut rounds = Rounds::new(Duration::from_secs(3600));
        assert_eq!(rounds.pings_now(seen(1_000, 1_000), true), 0);
    }
}
