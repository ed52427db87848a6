//! Tunnels: after a backend answers an upgrade with `101 Switching Protocols` (a WebSocket,
//! say), bytes are copied both ways until either side closes. Each tunnel has two threads of its
//! own, one per direction, each a plain blocking copy loop, so an open WebSocket never holds one
//! of the fixed workers and 100 of them do not slow plain requests.
//!
//! Getting both directions out of tiny_http: for a request whose `Connection` header mentions
//! `upgrade`, tiny_http's `Request::upgrade` writes the 101 and returns the connection's raw
//! stream, including any bytes it had already buffered, but as one object that cannot be split.
//! So the client-to-backend thread reads from that stream, and the backend-to-client thread
//! writes through tinylb's own duplicate of the client socket. That is safe because:
//! - tiny_http has flushed the 101 before `upgrade` returns, and writes nothing after it;
//! - tiny_http reads no further request from a connection whose `Connection` header mentions
//!   `upgrade`, so nothing else reads the socket;
//! - the two directions of a TCP socket are independent: one thread reading while another
//!   writes (through a second descriptor of the same socket) is what sockets are made for.
//!
//! The number of open tunnels is bounded (`maxTunnels`; beyond it the handshake gets 503), and a
//! tunnel with no bytes either way for `tunnelIdleTimeout` is closed. On shutdown the open
//! tunnels get the grace period, then both their sockets are shut down.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::backend::OpenTunnel;

/// Bytes copied per read in each direction.
const COPY_BUFFER: usize = 16 * 1024;
/// A tunnel thread only copies through a heap buffer: a small stack is plenty.
const THREAD_STACK: usize = 128 * 1024;

/// The limits a reload may change.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    /// Most tunnels open at once; 0 means upgrades are never carried out.
    pub max_open: usize,
    /// A tunnel silent both ways for this long is closed.
    pub idle_timeout: Duration,
    /// Most tunnels one client address may hold open (`clientMaxTunnels`).
    pub per_client: usize,
}

impl TunnelLimits {
    /// The limits `config` sets (`maxTunnels`, `tunnelIdleTimeout`).
    pub fn of(config: &crate::config::Config) -> TunnelLimits {
        TunnelLimits {
            max_open: config.max_tunnels,
            idle_timeout: config.tunnel_idle_timeout,
            per_client: config.per_client.max_tunnels,
        }
    }
}

/// Every open tunnel, and the counters the status page shows.
pub struct Tunnels {
    limits: RwLock<TunnelLimits>,
    /// Open tunnels plus handshakes that reserved a place.
    open: AtomicUsize,
    opened_total: AtomicU64,
    refused_total: AtomicU64,
    next_id: AtomicU64,
    /// Each open tunnel, so shutdown can end them.
    running: Mutex<Vec<(u64, Weak<Tunnel>)>>,
    /// Open tunnels (and reserved places) by client address.
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a place for a tunnel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPlace {
    /// `maxTunnels` are open.
    AllTaken,
    /// The client's address holds `clientMaxTunnels` already.
    ClientsShareTaken,
}

impl Tunnels {
    /// No tunnels yet, with these limits.
    pub fn new(limits: TunnelLimits) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            limits: RwLock::new(limits),
            open: AtomicUsize::new(0),
            opened_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            running: Mutex::new(Vec::new()),
            by_client: Mutex::new(HashMap::new()),
        })
    }

    /// Takes over a reloaded config's limits; open tunnels keep running.
    pub fn set_limits(&self, limits: TunnelLimits) {
        *self.limits.write() = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> TunnelLimits {
        *self.limits.read()
    }

    /// Tunnels open now (handshakes under way included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Tunnels opened since start.
    pub fn opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }

    /// Handshakes answered 503 because `maxTunnels` were open.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Reserves a place for one tunnel of `client` before its handshake, or says why there is
    /// none: `maxTunnels` are open, or `clientMaxTunnels` of this client's. The place is given
    /// back when the [`Reservation`] (or the tunnel it became) ends.
    pub fn reserve(self: &Arc<Self>, client: IpAddr) -> Result<Reservation, NoPlace> {
        let limits = self.limits();
        {
            let mut by_client = self.by_client.lock();
            let held = by_client.entry(client).or_insert(0);
            if *held >= limits.per_client {
                if *held == 0 {
                    by_client.remove(&client);
                }
                self.refused_total.fetch_add(1, Ordering::Relaxed);
                return Err(NoPlace::ClientsShareTaken);
            }
            *held += 1;
        }
        let reserved = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limits.max_open).then_some(n + 1)
            })
            .is_ok();
        let reservation = Reservation {
            tunnels: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client,
            counted: reserved,
        };
        if !reserved {
            drop(reservation);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(NoPlace::AllTaken);
        }
        Ok(reservation)
    }

    /// Waits until every tunnel has ended or `deadline` passes; then shuts down the sockets of
    /// those still open and waits briefly for their threads. Returns how many were cut.
    pub fn close_all(&self, deadline: Instant) -> usize {
        while self.open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cut = self.open();
        // Collected first: the last handle to a tunnel may be one of these, and dropping it
        // takes the same lock to remove the tunnel from the list.
        let open: Vec<Arc<Tunnel>> = self
            .running
            .lock()
            .iter()
            .filter_map(|(_, tunnel)| tunnel.upgrade())
            .collect();
        for tunnel in &open {
            tunnel.cut();
        }
        drop(open);
        let stragglers = Instant::now() + Duration::from_secs(1);
        while self.open() > 0 && Instant::now() < stragglers {
            std::thread::sleep(Duration::from_millis(10));
        }
        cut
    }
}

/// A place for one tunnel; given back when dropped.
pub struct Reservation {
    tunnels: Arc<Tunnels>,
    id: u64,
    client: IpAddr,
    /// Whether it holds one of the `maxTunnels` places (it always holds its client's).
    counted: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.tunnels.running.lock().retain(|(id, _)| *id != self.id);
        if self.counted {
            self.tunnels.open.fetch_sub(1, Ordering::Relaxed);
        }
        let mut by_client = self.tunnels.by_client.lock();
        if let Some(held) = by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// The two ends of a switched connection, ready to be joined.
pub struct Ends {
    /// tiny_http's raw client stream, read for the client's bytes.
    pub client_reader: Box<dyn Read + Send>,
    /// tinylb's own duplicate of the client socket, written with the backend's bytes.
    pub client_socket: TcpStream,
    /// The connection to the backend.
    pub backend: TcpStream,
    /// Bytes the backend sent right after its 101, owed to the client first.
    pub early: Vec<u8>,
    /// Counts the tunnel on its backend (least-connections weighs it) while it is open.
    pub counted: OpenTunnel,
}

impl Reservation {
    /// Starts the two copying threads. `label` names the tunnel in log lines.
    pub fn start(self, ends: Ends, label: String) -> io::Result<()> {
        let idle_timeout = self.tunnels.limits().idle_timeout;
        // Reads wake up a few times per idle period to see whether the other direction moved.
        let wake_every = (idle_timeout / 4).max(Duration::from_millis(50));
        ends.client_socket.set_read_timeout(Some(wake_every))?;
        ends.backend.set_read_timeout(Some(wake_every))?;
        self.tunnels.opened_total.fetch_add(1, Ordering::Relaxed);
        log::debug!("tunnel {label} open");
        let tunnels = Arc::clone(&self.tunnels);
        let id = self.id;
        let tunnel = Arc::new(Tunnel {
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            idle_timeout,
            client: ends.client_socket,
            backend: ends.backend,
            client_stream: Mutex::new(None),
            _counted: ends.counted,
            label,
            _place: self,
        });
        tunnels.running.lock().push((id, Arc::downgrade(&tunnel)));

        let up = Arc::clone(&tunnel);
        let client_reader = ends.client_reader;
        let down = Arc::clone(&tunnel);
        let early = ends.early;
        let spawned = std::thread::Builder::new()
            .name("tunnel-up".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let mut client_reader = client_reader;
                up.copy(&mut client_reader, &up.backend, &[], "client");
                // Dropping tiny_http's stream shuts the whole socket down; the backend may still
                // be talking to a client that only half-closed, so it lives as long as the tunnel.
                *up.client_stream.lock() = Some(client_reader);
            })
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("tunnel-down".into())
                    .stack_size(THREAD_STACK)
                    .spawn(move || down.copy(&down.backend, &down.client, &early, "backend"))
            });
        if let Err(error) = spawned {
            // A thread that did start finds its sockets shut and ends.
            tunnel.cut();
            return Err(error);
        }
        Ok(())
    }
}

/// What both threads of one tunnel share. The place in [`Tunnels`] is given back when the last
/// thread drops its handle.
struct Tunnel {
    started: Instant,
    /// Milliseconds from `started` to the last byte moved either way.
    last_activity_ms: AtomicU64,
    idle_timeout: Duration,
    client: TcpStream,
    backend: TcpStream,
    /// tiny_http's stream once its direction is done, kept until the whole tunnel is.
    client_stream: Mutex<Option<Box<dyn Read + Send>>>,
    _counted: OpenTunnel,
    label: String,
    _place: Reservation,
}

impl Tunnel {
    /// Copies `from` into `to` until `from` ends (then passes the end on with a half-close, as
    /// the peer would see it without a proxy), an error occurs, or the tunnel idles out.
    fn copy(&self, mut from: impl Read, mut to: &TcpStream, first: &[u8], source: &str) {
        if !first.is_empty() && to.write_all(first).is_err() {
            self.cut();
            return;
        }
        let mut buffer = vec![0u8; COPY_BUFFER];
        let mut moved = first.len() as u64;
        loop {
            match from.read(&mut buffer) {
                Ok(0) => {
                    log::debug!(
                        "tunnel {}: the {source} closed after {moved} bytes",
                        self.label
                    );
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(read) => {
                    if let Err(error) = to.write_all(&buffer[..read]) {
                        log::debug!("tunnel {}: writing failed ({error})", self.label);
                        self.cut();
                        return;
                    }
                    moved += read as u64;
                    self.touch();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.idle_for() >= self.idle_timeout {
                        log::info!(
                            "tunnel {}: closed after {} without traffic",
                            self.label,
                            crate::duration::format_duration(self.idle_timeout)
                        );
                        self.cut();
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    log::debug!("tunnel {}: the {source} failed ({error})", self.label);
                    self.cut();
                    return;
                }
            }
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Ends both directions at once: the other thread's read returns and it exits too.
    fn cut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.backend.shutdown(Shutdown::Both);
    }
}
