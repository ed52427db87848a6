//! What tinylb remembers about each client connection, one table shared by the intake, the
//! workers and the watchdog. tiny_http tells tinylb nothing about connections: a request carries
//! only its client's address and port. Those name one open connection at a time, but a later
//! connection may reuse them at once (a client that closes with a reset, a busy front proxy, NAT).
//! So every entry is keyed by the address and port, and also knows its socket's inode once the
//! watchdog or an ending has seen the socket: an entry whose socket is gone is forgotten, and a
//! request from the same address and port then starts afresh.
//!
//! Each entry holds:
//! - the connection's [`Phase`], for the whole-head deadline and the stuck count;
//! - when tinylb **ended** it (a refused request whose body was not read, a head past its
//!   deadline, an answer cut off), tinylb's own duplicate of its socket: the read side is shut at
//!   once, so tiny_http parses little or nothing more, and whatever it still parses from it is
//!   discarded, while a request from a new connection on the same address and port (the old
//!   socket fully closed) is served;
//! - whether the client has **gone** (its FIN or reset arrived, as the watchdog last saw), so
//!   that its queued requests are dropped instead of sent to a backend.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::identity::{EndedSocket, Whose, whose};
use super::own_sockets::held_elsewhere;
use super::own_sockets::{OwnSocket, find_client_socket};
use super::phases::Phase;

/// How long a request that may be a new connection's waits for tiny_http to let go of the
/// ended socket before it is taken for the ended connection's.
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_millis(200);

/// One connection's entry.
#[derive(Debug)]
pub(super) struct Entry {
    pub phase: Phase,
    /// The socket's inode, once known.
    pub inode: Option<u64>,
    /// tinylb ended this connection; its own duplicate of the socket, if it was found.
    pub ended: Option<Ended>,
    /// The client's FIN or reset has arrived.
    pub gone: bool,
    /// Bumped at every change, so the watchdog only forgets an entry it judged unchanged.
    pub version: u64,
}

/// An ending: when, and the socket (none if it was already closed when tinylb looked, or not
/// looked for yet).
#[derive(Debug)]
pub(super) struct Ended {
    pub at: Instant,
    pub socket: Option<Arc<OwnSocket>>,
    /// Whether the socket was looked for (it is not while the refusal that ends the
    /// connection waits for its worker).
    pub looked: bool,
}

/// How a request's arrival stands with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Serve it. `previous` is the phase the connection was in: `None` or `New` for its first
    /// request, `Waiting` since the previous answer.
    Admitted { previous: Option<Phase> },
    /// It was parsed from a connection tinylb ended: never serve or answer it.
    FromEndedConnection,
    /// The connection tinylb ended is over on both sides, so this may be a new connection's;
    /// [`Connections::settle`] decides, off the intake.
    Undecided,
}

/// The table; see the module doc.
pub struct Connections {
    local_port: u16,
    pub(super) entries: Mutex<HashMap<SocketAddr, Entry>>,
    /// Entries ended or gone: the request path looks them up only while there are any.
    flagged: AtomicUsize,
    next_version: AtomicUsize,
    /// Set when the process stops accepting: every answer from then on ends its connection.
    closing_all: AtomicBool,
}

impl Connections {
    /// The table for the client connections accepted on `local_port`.
    pub fn new(local_port: u16) -> Connections {
        Connections {
            local_port,
            entries: Mutex::new(HashMap::new()),
            flagged: AtomicUsize::new(0),
            next_version: AtomicUsize::new(1),
            closing_all: AtomicBool::new(false),
        }
    }

    /// The proxy's port, which tells its client sockets from its backend sockets.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    pub(super) fn version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed) as u64
    }

    /// A request from `peer` was parsed: is it served, and what was its connection doing?
    /// Runs on the intake, which sees each connection's requests in order.
    pub fn arrive(&self, peer: Option<&SocketAddr>) -> Arrival {
        let Some(peer) = peer else {
            return Arrival::Admitted { previous: None };
        };
        let version = self.version();
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(peer) else {
            entries.insert(*peer, Entry::serving(version));
            return Arrival::Admitted { previous: None };
        };
        if let Some(ended) = &entry.ended {
            match whose(ended.as_seen_now()) {
                Whose::Ended => return Arrival::FromEndedConnection,
                Whose::NewIfReleased => return Arrival::Undecided,
                Whose::New => {
                    *entry = Entry::serving(version);
                    self.flagged.fetch_sub(1, Ordering::Relaxed);
                    return Arrival::Admitted { previous: None };
                }
            }
        }
        entry.version = version;
        Arrival::Admitted {
            previous: Some(std::mem::replace(&mut entry.phase, Phase::Serving)),
        }
    }

    /// The answer to `peer` is written and the connection stays open (`keep_alive`): its next
    /// head is due within the deadline. A connection that closes after its answer is forgotten,
    /// so that a new connection from the same address and port starts afresh; an ended one is
    /// left as it is.
    pub fn answered(&self, peer: Option<&SocketAddr>, keep_alive: bool) {
        let Some(peer) = peer else { return };
        let version = self.version();
        let mut entries = self.entries.lock();
        match entries.get_mut(peer) {
            // Ended: from here the close grace runs, and a socket still open after it is stuck.
            Some(entry) if entry.ended.is_some() && entry.phase == Phase::Serving => {
                entry.phase = Phase::Ended(Instant::now());
            }
            Some(entry) if entry.ended.is_some() => {}
            Some(entry) if keep_alive => {
                entry.phase = Phase::Waiting(Instant::now());
                entry.version = version;
            }
            Some(entry) => {
                if entry.gone {
                    self.flagged.fetch_sub(1, Ordering::Relaxed);
                }
                entries.remove(peer);
            }
            None if keep_alive => {
                let mut entry = Entry::serving(version);
                entry.phase = Phase::Waiting(Instant::now());
                entries.insert(*peer, entry);
            }
            None => {}
        }
    }

    /// Ends `peer`'s connection: nothing more it sends is served. Shuts the read side of its
    /// socket now (tiny_http then reads end-of-file, and a body left unread is not waited for)
    /// and returns tinylb's own duplicate of it, to shut the write side once the answer in
    /// progress is written. Finding the socket costs a walk over the process's descriptors,
    /// once per ending.
    pub fn end(&self, peer: Option<&SocketAddr>) -> Option<Arc<OwnSocket>> {
        let peer = peer?;
        if let Some(Some(ended)) = self.entries.lock().get(peer).map(|e| e.ended.as_ref())
            && ended.looked
        {
            return ended.socket.clone();
        }
        let socket = find_client_socket(*peer, self.local_port).map(Arc::new);
        if let Some(socket) = &socket {
            socket.shutdown(Shutdown::Read);
        }
        let version = self.version();
        let mut entries = self.entries.lock();
        let entry = entries
            .entry(*peer)
            .or_insert_with(|| Entry::serving(version));
        match &mut entry.ended {
            Some(ended) if ended.looked => ended.socket.clone(),
            Some(ended) => {
                ended.looked = true;
                ended.socket = socket.clone();
                entry.inode = socket.as_ref().map(|s| s.inode).or(entry.inode);
                socket
            }
            None => {
                self.mark_ended(entry, socket.clone(), version);
                socket
            }
        }
    }

    /// For a request discarded from a connection tinylb ended: shuts the ended socket's read
    /// side now if the refusal that ended it has not been written yet (the discarded request's
    /// unread body would otherwise be waited for), and does nothing once it has, or once the
    /// entry is gone (the socket is then closed, and another connection may have its address).
    pub fn finish_ending(&self, peer: Option<&SocketAddr>) {
        let Some(peer) = peer else { return };
        let pending = self
            .entries
            .lock()
            .get(peer)
            .and_then(|e| e.ended.as_ref())
            .is_some_and(|ended| !ended.looked);
        if pending {
            self.end(Some(peer));
        }
    }

    /// Marks `peer`'s connection as ending before its refusal is written, from the intake, so
    /// that whatever tiny_http parses from it next (it may already be parsing the bytes after
    /// a body it read with the head) is discarded. The socket is looked for when the refusal
    /// is written ([`Connections::end`]).
    pub fn mark_ending(&self, peer: Option<&SocketAddr>) {
        let Some(peer) = peer else { return };
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(peer)
            && entry.ended.is_none()
        {
            if !entry.gone {
                self.flagged.fetch_add(1, Ordering::Relaxed);
            }
            entry.ended = Some(Ended {
                at: Instant::now(),
                socket: None,
                looked: false,
            });
        }
    }

    /// Decides an `Arrival::Undecided` request, on a thread that may wait: it is a new
    /// connection's once tiny_http no longer holds the ended socket (a request tiny_http parsed
    /// from that socket would hold it), which happens within moments of the client's close.
    /// Returns whether it is a new connection's; the entry then starts afresh.
    pub fn settle(&self, peer: Option<&SocketAddr>) -> bool {
        let Some(peer) = peer else { return true };
        let ended_socket = match self.entries.lock().get(peer).map(|e| e.ended.as_ref()) {
            Some(Some(ended)) => ended.socket.clone(),
            // Settled by an earlier request of the same connection.
            _ => return true,
        };
        let released = ended_socket.is_none_or(|socket| {
            let deadline = Instant::now() + SETTLE_WITHIN;
            loop {
                if !held_elsewhere(&socket, self.local_port) {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(SETTLE_WITHIN / 20);
            }
        });
        if released {
            let mut entries = self.entries.lock();
            if entries.get(peer).is_some_and(|e| e.ended.is_some()) {
                self.forget(&mut entries, peer);
            }
        }
        released
    }

    /// Records an ending in `entry` (not ended yet): from [`Connections::end`] and the watchdog.
    pub(super) fn mark_ended(
        &self,
        entry: &mut Entry,
        socket: Option<Arc<OwnSocket>>,
        version: u64,
    ) {
        if !entry.gone {
            self.flagged.fetch_add(1, Ordering::Relaxed);
        }
        entry.inode = socket.as_ref().map(|s| s.inode).or(entry.inode);
        entry.ended = Some(Ended {
            at: Instant::now(),
            socket,
            looked: true,
        });
        entry.version = version;
        if entry.phase != Phase::Serving {
            entry.phase = Phase::Ended(Instant::now());
        }
    }

    /// Whether tinylb has ended `peer`'s connection: its answer must close it.
    pub fn is_ending(&self, peer: Option<&SocketAddr>) -> bool {
        self.flagged(peer, |entry| entry.ended.is_some())
    }

    /// Whether `peer`'s client has left (as the watchdog last saw): its queued requests are
    /// not worth a backend's time.
    pub fn is_gone(&self, peer: Option<&SocketAddr>) -> bool {
        self.flagged(peer, |entry| entry.gone)
    }

    fn flagged(&self, peer: Option<&SocketAddr>, test: impl Fn(&Entry) -> bool) -> bool {
        let Some(peer) = peer else { return false };
        if self.flagged.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.entries.lock().get(peer).is_some_and(test)
    }

    /// Marks the connections whose client has left; from the watchdog.
    pub(super) fn mark_gone(&self, entries: &mut HashMap<SocketAddr, Entry>, peer: &SocketAddr) {
        if let Some(entry) = entries.get_mut(peer)
            && !entry.gone
        {
            if entry.ended.is_none() {
                self.flagged.fetch_add(1, Ordering::Relaxed);
            }
            entry.gone = true;
        }
    }

    /// Removes an entry, keeping the count of flagged ones right; from the watchdog.
    pub(super) fn forget(&self, entries: &mut HashMap<SocketAddr, Entry>, peer: &SocketAddr) {
        if let Some(entry) = entries.remove(peer)
            && (entry.gone || entry.ended.is_some())
        {
            self.flagged.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// From now on every answer says `Connection: close` and ends its connection, so that
    /// keep-alive clients reconnect (to whichever process accepts now) instead of sending
    /// their next request to a process that is about to exit.
    pub fn close_every_connection(&self) {
        self.closing_all.store(true, Ordering::Relaxed);
    }

    /// Whether the process is draining: see [`Connections::close_every_connection`].
    pub fn closing_all(&self) -> bool {
        self.closing_all.load(Ordering::Relaxed)
    }

    /// Connections known to the table, for tests and the status page.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Entry {
    /// A connection the watchdog found before any request of it: waiting for its first head.
    pub(super) fn first_seen(version: u64, at: Instant, inode: u64) -> Entry {
        Entry {
            phase: Phase::New(at),
            inode: Some(inode),
            ..Entry::serving(version)
        }
    }

    pub(super) fn serving(version: u64) -> Entry {
        Entry {
            phase: Phase::Serving,
            inode: None,
            ended: None,
            gone: false,
            version,
        }
    }
}

impl Ended {
    /// What the kernel says of the ended socket now, for the identity rules.
    pub(super) fn as_seen_now(&self) -> EndedSocket {
        match &self.socket {
            _ if !self.looked => EndedSocket::NotLookedFor,
            Some(socket) => EndedSocket::Found(socket.tcp_state().map(|s| s.state)),
            None => EndedSocket::NotFound(self.at.elapsed()),
        }
    }
}
