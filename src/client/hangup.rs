//! Ending a client connection early. tiny_http owns the client socket and keeps a connection
//! open as long as the client's headers allow, but a proxy must sometimes end one itself: after
//! refusing a request whose body it did not read, or when a backend died half-way through a
//! response (the client must see a truncated transfer, not wait forever).
//!
//! tiny_http has no API for this, so [`Hangups::hang_up`] does two things from the outside:
//! it remembers the client address, so any further request tiny_http parses from that
//! connection is dropped unforwarded, and it half-closes the socket (`shutdown(Write)`, like
//! nginx's lingering close) so the client gets everything written so far and then end-of-file.
//! The socket is found by its address pair among the process's open descriptors (`own_sockets.rs`).

use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::own_sockets::{tcp_state, with_client_socket};

/// How long a hung-up address stays refused: longer than TCP's TIME_WAIT, so the same address
/// pair cannot be a new connection yet.
const REMEMBER_FOR: Duration = Duration::from_secs(60);

/// Client connections that tinylb has ended.
pub struct Hangups {
    /// The proxy's own port, to tell client sockets from backend sockets with the same peer.
    local_port: u16,
    recent: Mutex<Vec<(SocketAddr, Instant)>>,
    /// Lets the hot path skip the lock when nothing was ever hung up.
    count: AtomicUsize,
    /// Set when the process stops accepting: every answer from then on ends its connection.
    closing_all: AtomicBool,
}

impl Hangups {
    /// Hang-ups for the client connections accepted on `local_port`.
    pub fn new(local_port: u16) -> Hangups {
        Hangups {
            local_port,
            recent: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            closing_all: AtomicBool::new(false),
        }
    }

    /// From now on every answer says `Connection: close` and ends its connection, so that
    /// keep-alive clients reconnect (to whichever process accepts now) instead of sending
    /// their next request to a process that is about to exit.
    pub fn close_every_connection(&self) {
        self.closing_all.store(true, Ordering::Relaxed);
    }

    /// Whether the process is draining: see [`Hangups::close_every_connection`].
    pub fn closing_all(&self) -> bool {
        self.closing_all.load(Ordering::Relaxed)
    }

    /// Whether this request arrived on a connection tinylb already ended.
    pub fn is_hung_up(&self, client: Option<&SocketAddr>) -> bool {
        let Some(client) = client else { return false };
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut recent = self.recent.lock();
        recent.retain(|(_, at)| at.elapsed() < REMEMBER_FOR);
        self.count.store(recent.len(), Ordering::Relaxed);
        recent.iter().any(|(addr, _)| addr == client)
    }

    /// Refuses further requests from this connection. Call it before the request (and so its
    /// body reader) is released to tiny_http, which then parses whatever follows.
    pub fn remember(&self, client: Option<&SocketAddr>) {
        if let Some(client) = client {
            let mut recent = self.recent.lock();
            recent.push((*client, Instant::now()));
            self.count.store(recent.len(), Ordering::Relaxed);
        }
    }

    /// Sends end-of-file to the client after what was already written. Returns whether the
    /// socket was found.
    pub fn hang_up(&self, client: Option<&SocketAddr>) -> bool {
        self.remember(client);
        self.close_socket(client)
    }

    /// Whether the client has closed its side of the connection (its FIN has arrived).
    /// tiny_http's chunked decoder reports end-of-file inside a chunk as a clean end of the
    /// body, so a body that ends must be checked this way before it is passed on as complete.
    ///
    /// It asks the kernel for the TCP state rather than peeking for end-of-file: once a
    /// `Connection: close` request's body is read, tiny_http shuts down the read side of the
    /// socket itself, and a peek would then see an end-of-file the client never sent.
    pub fn client_closed(&self, client: Option<&SocketAddr>) -> bool {
        client.is_some_and(|client| client_closed(*client, self.local_port))
    }

    /// A socket of tinylb's own for this client's connection (a duplicate of tiny_http's), so
    /// a tunnel can write to the client while tiny_http's stream is read on another thread.
    pub fn client_socket(&self, client: Option<&SocketAddr>) -> Option<std::net::TcpStream> {
        let client = client?;
        with_client_socket(*client, self.local_port, |s| s.try_clone().ok()).flatten()
    }

    /// The second half of [`Hangups::hang_up`], for callers that already called `remember`.
    pub fn close_socket(&self, client: Option<&SocketAddr>) -> bool {
        match client {
            Some(client) => shutdown_client_socket(*client, self.local_port),
            None => false,
        }
    }
}

fn shutdown_client_socket(peer: SocketAddr, local_port: u16) -> bool {
    with_client_socket(peer, local_port, |s| s.shutdown(Shutdown::Write).is_ok()).unwrap_or(false)
}

/// Whether the peer's FIN has arrived: the TCP state is one of those past it.
fn client_closed(peer: SocketAddr, local_port: u16) -> bool {
    with_client_socket(peer, local_port, |socket| {
        // CLOSE_WAIT (8) and LAST_ACK (9) follow the peer's FIN; CLOSING (11), TIME_WAIT (6)
        // and CLOSE (7) come after it too.
        tcp_state(socket).is_some_and(|info| matches!(info.state, 6..=9 | 11))
    })
    .unwrap_or(false)
}
