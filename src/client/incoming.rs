//! Requests coming in: tiny_http's server on tinylb's listening socket, with the upkeep that
//! tiny_http needs from outside, so that the intake thread only sees [`Exchange`]s.
//!
//! - **An accept loop that dies for good** on the first accept error (for example too many open
//!   files), or by panicking inside tiny_http without reporting anything. [`Incoming`] notices
//!   both and starts a new tiny_http server on a clone of the same socket, with back-off. The
//!   old server is kept, and polled, until its connections have gone quiet: its keep-alive
//!   clients still send their requests through it.
//! - **accept() times out** with the client timeout the listening socket carries, so a
//!   [`Pinger`] keeps it busy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::net::TcpStream;
use std::os::fd::RawFd;

use super::census::ClientSockets;
use super::connections::Connections;
use super::exchange::Exchange;
use super::listener::Listener;
use super::pinger::Pinger;
use crate::error::StartError;

/// First wait before starting a new server after the accept loop died; doubles up to
/// [`MAX_BACKOFF`] while failures continue, so an exhausted machine is not hammered.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(3200);
/// A replaced server is dropped after this long without a request: by then its connections
/// have all timed out (each idle gap is bounded by `clientTimeout`).
const RETIRED_SERVER_LIFETIME: Duration = Duration::from_secs(600);
/// How often retired servers' connections are looked at while there are any.
const RETIRED_POLL: Duration = Duration::from_millis(50);
/// Longest wait for a request before the upkeep runs (and the caller sees its stop flag).
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// While draining, how often the accept thread is woken until it ends.
const DRAIN_WAKE: Duration = Duration::from_millis(20);
/// A draining process is done once no client has sent anything for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// Accept threads of tiny_http that panicked, process-wide; see [`watch_for_accept_panics`].
static ACCEPT_PANICS: AtomicUsize = AtomicUsize::new(0);

/// The source of client requests; see the module doc.
pub struct Incoming {
    /// The server whose accept thread is (believed) alive.
    current: tiny_http::Server,
    /// The descriptor its accept thread accepts on.
    current_fd: RawFd,
    /// Earlier servers whose accept thread died; their open connections still deliver requests.
    retired: Vec<(tiny_http::Server, Instant)>,
    /// Requests already taken from retired servers.
    waiting: VecDeque<Exchange>,
    listener: Listener,
    panics_seen: usize,
    /// When set, the accept loop is dead and a new server is due at this time.
    restart_at: Option<Instant>,
    backoff: Duration,
    last_failure: Option<Instant>,
    /// Keeps accept() alive and frees connections waiting in tiny_http's pool; stops with this,
    /// or when the process stops accepting.
    pinger: Option<Pinger>,
    connections: Arc<Connections>,
    /// Set once the process stops accepting; see [`Incoming::stop_accepting`].
    draining: Option<Draining>,
}

/// Where a process that stopped accepting stands.
struct Draining {
    /// tiny_http's accept thread has ended: no new connection can come to this process.
    accept_ended: bool,
    last_wake: Instant,
}

impl Incoming {
    /// Starts tiny_http on the listener, and the pinger.
    pub fn start(listener: Listener) -> Result<Incoming, StartError> {
        watch_for_accept_panics();
        let (current, current_fd) = listener
            .new_server()
            .map_err(|e| StartError::Listen(listener.local_addr(), e))?;
        let pinger = Pinger::start(listener.ping_addr(), listener.client_timeout)
            .map_err(StartError::Thread)?;
        Ok(Incoming {
            current,
            current_fd,
            retired: Vec::new(),
            waiting: VecDeque::new(),
            connections: Arc::new(Connections::new(listener.local_addr().port())),
            listener,
            panics_seen: ACCEPT_PANICS.load(Ordering::Relaxed),
            restart_at: None,
            backoff: FIRST_BACKOFF,
            last_failure: None,
            pinger: Some(pinger),
            draining: None,
        })
    }

    /// The next admitted request, or `None` after a short wait without one (at most a quarter
    /// second, less with a short `clientTimeout`), so the caller can look at its stop flag.
    pub fn next_exchange(&mut self) -> Option<Exchange> {
        if let Some(exchange) = self.waiting.pop_front() {
            return Some(exchange);
        }
        let wait = if self.retired.is_empty() && self.draining.is_none() {
            (self.listener.client_timeout / 4).min(IDLE_WAIT)
        } else {
            RETIRED_POLL
        };
        let received = match self.current.recv_timeout(wait) {
            Ok(request) => request,
            Err(error) => {
                match &mut self.draining {
                    Some(draining) => draining.accept_ended = true,
                    None => self.accept_loop_died(&format!("accept failed: {error}")),
                }
                None
            }
        };
        self.upkeep();
        received
            .and_then(|request| self.admit(request))
            .or_else(|| self.waiting.pop_front())
    }

    fn admit(&mut self, request: tiny_http::Request) -> Option<Exchange> {
        let exchange = Exchange::admit(request, &self.connections);
        if let Some(pinger) = &self.pinger {
            pinger.saw_request(exchange.first_on_connection());
        }
        Some(exchange)
    }

    /// Stops taking new connections, for good, without closing the listening socket (another
    /// process may share it), and from now on ends every connection after its answer. Requests
    /// on connections already open keep coming through [`Incoming::next_exchange`] until
    /// [`Incoming::drained`].
    pub fn stop_accepting(&mut self) {
        if self.draining.is_some() {
            return;
        }
        self.connections.close_every_connection();
        self.pinger = None;
        // A loop already dead (and waiting for its restart) has nothing to stop.
        let accept_ended = self.restart_at.is_some();
        if let Err(error) = self.listener.stop_accepting(self.current_fd) {
            log::error!("cannot stop accepting: {error}");
        }
        self.restart_at = None;
        self.draining = Some(Draining {
            accept_ended,
            last_wake: Instant::now() - DRAIN_WAKE,
        });
    }

    /// After [`Incoming::stop_accepting`]: whether this process is done with its clients. Its
    /// accept loop has ended, every request taken was handed out, no connection has a request
    /// head begun and not yet taken, and no client has sent anything for a quarter second.
    /// Connections still open are idle (or stuck): they end with the process.
    pub fn drained(&self) -> bool {
        let Some(draining) = &self.draining else {
            return false;
        };
        draining.accept_ended
            && self.waiting.is_empty()
            && self
                .sockets()
                .unfinished(DRAIN_QUIET, self.listener.client_timeout)
                == 0
    }

    /// The connection table, which the dispatch asks whether a connection ended.
    pub fn connections(&self) -> Arc<Connections> {
        Arc::clone(&self.connections)
    }

    /// The client connections of this listener, for the watchdog's look.
    pub fn sockets(&self) -> ClientSockets {
        ClientSockets {
            connections: Arc::clone(&self.connections),
        }
    }

    /// Restarts a dead accept loop when due, and takes requests from retired servers.
    fn upkeep(&mut self) {
        if let Some(draining) = &mut self.draining {
            // An accept() already waiting when the socket was swapped out returns only with a
            // connection: make one. If another process accepts it, that one sees an empty
            // connection and closes it.
            if !draining.accept_ended && draining.last_wake.elapsed() >= DRAIN_WAKE {
                draining.last_wake = Instant::now();
                let _ = TcpStream::connect_timeout(&self.listener.ping_addr(), DRAIN_WAKE);
            }
            self.poll_retired();
            return;
        }
        let panics = ACCEPT_PANICS.load(Ordering::Relaxed);
        if panics != self.panics_seen {
            self.panics_seen = panics;
            self.accept_loop_died("tiny_http's accept thread panicked");
        }
        self.poll_retired();
        if self.restart_at.is_some_and(|at| Instant::now() >= at) {
            self.restart();
        }
    }

    /// Schedules a new server, backing off while failures keep coming.
    fn accept_loop_died(&mut self, reason: &str) {
        if self.restart_at.is_some() {
            return;
        }
        let recently_failed = self
            .last_failure
            .is_some_and(|at| at.elapsed() < MAX_BACKOFF * 4);
        self.backoff = if recently_failed {
            (self.backoff * 2).min(MAX_BACKOFF)
        } else {
            FIRST_BACKOFF
        };
        self.last_failure = Some(Instant::now());
        if let Some(pinger) = &self.pinger {
            pinger.accept_failed();
        }
        log::error!(
            "the listener on {} stopped accepting ({reason}); accepting again in {:?}",
            self.listener.local_addr(),
            self.backoff
        );
        self.restart_at = Some(Instant::now() + self.backoff);
    }

    fn restart(&mut self) {
        match self.listener.new_server() {
            Ok((server, fd)) => {
                self.current_fd = fd;
                let old = std::mem::replace(&mut self.current, server);
                self.retired.push((old, Instant::now()));
                self.restart_at = None;
            }
            Err(error) => {
                log::error!("cannot accept again yet: {error}");
                self.restart_at = None;
                self.accept_loop_died("could not start a new server");
            }
        }
    }

    /// Takes requests from retired servers' connections; drops servers that have been quiet
    /// long enough that they can have no connections left.
    fn poll_retired(&mut self) {
        let mut index = 0;
        while index < self.retired.len() {
            match self.retired[index].0.try_recv() {
                Ok(Some(request)) => {
                    self.retired[index].1 = Instant::now();
                    if let Some(exchange) = self.admit(request) {
                        self.waiting.push_back(exchange);
                    }
                }
                _ if self.retired[index].1.elapsed() > RETIRED_SERVER_LIFETIME => {
                    self.retired.swap_remove(index);
                }
                _ => index += 1,
            }
        }
    }
}

/// Installs (once per process) a panic hook that counts panics of tiny_http's accept thread.
/// Under file-descriptor exhaustion that thread can panic in tiny_http's
/// `RefinedTcpStream::new` (a `try_clone().unwrap()`), and nothing reaches `recv()`.
fn watch_for_accept_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_accept_thread = info.location().is_some_and(|l| {
                l.file().contains("tiny_http") && l.file().ends_with("refined_tcp_stream.rs")
            });
            if in_accept_thread {
                ACCEPT_PANICS.fetch_add(1, Ordering::Relaxed);
                // The one line about it comes from `accept_loop_died`; the details are for
                // debugging.
                log::debug!("tiny_http's accept thread panicked: {info}");
            } else {
                previous(info);
            }
        }));
    });
}
