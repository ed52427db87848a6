//! The front door: a tiny_http server on a listening socket tinylb binds itself, and the intake
//! thread that moves each parsed request into the bounded channel. When the channel is full the
//! intake answers 503 with `Retry-After` at once, so an overload gets fast refusals instead of a
//! queue that grows without bound.
//!
//! tiny_http has two weaknesses this module works around from outside:
//!
//! - **No client timeouts.** tinylb sets SO_RCVTIMEO/SO_SNDTIMEO on the listening socket, which
//!   accepted sockets inherit. The catch: accept() then times out as well, which would end
//!   tiny_http's accept thread, so a [`Pinger`] thread connects to the listener more often than
//!   the timeout to keep accept() busy.
//! - **An accept loop that dies for good** on the first accept error (for example too many open
//!   files), or by panicking inside tiny_http without reporting anything. The intake notices
//!   both and starts a new tiny_http server on a clone of the same socket, with back-off. The
//!   old server is kept, and polled, until its connections have gone quiet: its keep-alive
//!   clients still send their requests through it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::forward::{Forwarder, Job};
use crate::pinger::Pinger;
use crate::relay::Buffers;
use crate::socket_options;

/// First wait before starting a new server after the accept loop died; doubles up to
/// [`MAX_BACKOFF`] while failures continue, so an exhausted machine is not hammered.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(3200);
/// Connections the kernel may hold before tiny_http accepts them; std's default of 128 drops
/// connection attempts in a burst, and the clients only retry a second later.
const LISTEN_BACKLOG: i32 = 1024;
/// A replaced server is dropped after this long without a request: by then its connections
/// have all timed out (each idle gap is bounded by `clientTimeout`).
const RETIRED_SERVER_LIFETIME: Duration = Duration::from_secs(600);

/// How often the intake looks at retired servers' connections while there are any.
const RETIRED_POLL: Duration = Duration::from_millis(50);
/// Longest the intake waits for a request before it looks at its other duties (retired
/// servers, a panicked accept thread, a due restart, the stop flag).
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// Accept threads of tiny_http that panicked, process-wide; see [`watch_for_accept_panics`].
static ACCEPT_PANICS: AtomicUsize = AtomicUsize::new(0);

/// The bound listening socket, kept so that a new tiny_http server can be started on it.
pub struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
    client_timeout: Duration,
}

impl Listener {
    /// Binds the proxy's address and sets the socket options every client connection inherits.
    /// The error names the address, since "address in use" alone does not say which one.
    pub fn bind(addr: SocketAddr, client_timeout: Duration) -> Result<Listener, String> {
        let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
        let socket = TcpListener::bind(addr).map_err(fail)?;
        let local_addr = socket.local_addr().map_err(fail)?;
        socket_options::set_client_timeouts(&socket, client_timeout).map_err(fail)?;
        socket_options::set_nodelay(&socket).map_err(fail)?;
        socket_options::set_backlog(&socket, LISTEN_BACKLOG).map_err(fail)?;
        Ok(Listener {
            socket,
            local_addr,
            client_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn new_server(&self) -> std::io::Result<tiny_http::Server> {
        let socket = self.socket.try_clone()?;
        tiny_http::Server::from_listener(socket, None)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Where the intake connects to keep accept() from timing out.
    fn ping_addr(&self) -> SocketAddr {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.local_addr.port())
    }
}

/// Starts the intake thread. It stops when `stopping` is set (within a quarter second), and
/// then drops `queue`, which lets the workers drain and exit, and every tiny_http server, which
/// stops accepting.
pub fn spawn_intake(
    listener: Listener,
    queue: Sender<Job>,
    forwarder: Arc<Forwarder>,
    stopping: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    watch_for_accept_panics();
    let server = listener
        .new_server()
        .map_err(|e| format!("cannot listen on {}: {e}", listener.local_addr))?;
    let pinger = Pinger::start(listener.ping_addr(), listener.client_timeout)
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let mut intake = Intake {
        current: server,
        retired: Vec::new(),
        listener,
        panics_seen: ACCEPT_PANICS.load(Ordering::Relaxed),
        restart_at: None,
        backoff: FIRST_BACKOFF,
        last_failure: None,
        pinger,
        queue,
        forwarder,
        buffers: Buffers::default(),
        refusals: RefusalLog::default(),
    };
    std::thread::Builder::new()
        .name("intake".into())
        .spawn(move || intake.run(&stopping))
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// The intake thread's state.
struct Intake {
    /// The server whose accept thread is (believed) alive.
    current: tiny_http::Server,
    /// Earlier servers whose accept thread died; their open connections still deliver requests.
    retired: Vec<(tiny_http::Server, Instant)>,
    listener: Listener,
    panics_seen: usize,
    /// When set, the accept loop is dead and a new server is due at this time.
    restart_at: Option<Instant>,
    backoff: Duration,
    last_failure: Option<Instant>,
    /// Keeps accept() alive and frees connections waiting in tiny_http's pool; stops with the
    /// intake.
    pinger: Pinger,
    queue: Sender<Job>,
    forwarder: Arc<Forwarder>,
    buffers: Buffers,
    refusals: RefusalLog,
}

impl Intake {
    fn run(&mut self, stopping: &AtomicBool) {
        let idle_wait = (self.listener.client_timeout / 4).min(IDLE_WAIT);
        while !stopping.load(Ordering::Relaxed) {
            let wait = if self.retired.is_empty() {
                idle_wait
            } else {
                RETIRED_POLL
            };
            match self.current.recv_timeout(wait) {
                Ok(Some(request)) => self.dispatch(request),
                Ok(None) => {}
                Err(error) => self.accept_loop_died(&format!("accept failed: {error}")),
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
    }

    fn dispatch(&mut self, request: tiny_http::Request) {
        self.pinger.saw_request();
        let Some(job) = self.forwarder.admit(request) else {
            return;
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.refusals.count_one();
                self.forwarder.refuse_busy(job, &mut self.buffers);
            }
            // The workers are gone: only during shutdown, and the request answers 500 itself.
            Err(TrySendError::Disconnected(_)) => {}
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
        self.pinger.accept_failed();
        log::error!(
            "the listener on {} stopped accepting ({reason}); accepting again in {:?}",
            self.listener.local_addr,
            self.backoff
        );
        self.restart_at = Some(Instant::now() + self.backoff);
    }

    fn restart(&mut self) {
        match self.listener.new_server() {
            Ok(server) => {
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

    /// Moves requests from retired servers' connections into the queue; drops servers that
    /// have been quiet long enough that they can have no connections left.
    fn poll_retired(&mut self) {
        let mut index = 0;
        while index < self.retired.len() {
            match self.retired[index].0.try_recv() {
                Ok(Some(request)) => {
                    self.retired[index].1 = Instant::now();
                    self.dispatch(request);
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
                // The intake logs the one line about it; the details are for debugging.
                log::debug!("tiny_http's accept thread panicked: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Counts 503s for a full queue and logs them at most once a second: under overload a line per
/// refusal would cost more than the refusal itself.
#[derive(Default)]
struct RefusalLog {
    since_last_line: u64,
    last_line: Option<Instant>,
}

impl RefusalLog {
    fn count_one(&mut self) {
        self.since_last_line += 1;
        if self
            .last_line
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            log::warn!(
                "every worker is busy and the queue is full: answered {} requests with 503",
                self.since_last_line
            );
            self.since_last_line = 0;
            self.last_line = Some(Instant::now());
        }
    }
}
