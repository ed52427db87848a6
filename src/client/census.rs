//! A look at every client connection this process holds, once a second from the watchdog,
//! read from the kernel (`TCP_INFO`'s time since data last arrived) and from the
//! [`Connections`] table, since tiny_http keeps no list. Each connection is judged by [`judge`]:
//!
//! - **the whole-head deadline** (`clientHeaderTimeout`): a connection waiting for a request
//!   head longer than that is ended: `408` if part of a head has arrived, silently if nothing
//!   has since its last answer. Its read side is shut, so tiny_http's thread reads end-of-file
//!   and lets the connection go; anything it parses from it afterwards is discarded.
//! - **stuck connections**: tiny_http reads every client with the socket's receive timeout
//!   (`clientTimeout`), so a connection it still reads cannot stay silent much longer than that,
//!   and one tinylb ended is closed at once. One that is silent longer while not being served,
//!   or still open after tinylb ended it, is held by a thread that no longer reads it: tiny_http
//!   0.12 parks a thread for good on a request line above HTTP/1.1 (an HTTP/2 preface). Every
//!   such socket counts, whatever its TCP state: one the client has reset has no peer address
//!   any more, but its thread and descriptors stay all the same.
//!
//! The look also keeps the table true: it learns each socket's inode, marks clients that have
//! left, and forgets connections whose socket is gone. A draining process also asks which
//! clients it must still wait for ([`ClientSockets::unfinished`]).

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, SocketAddr};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::answer::{self, Answer};
use super::connections::{Connections, Entry};
use super::identity::{self, Sighting, forgotten, sighting, states};
use super::own_sockets::{OwnSocket, TcpState, each_client_socket};
use super::phases::{Heard, Limits, Phase, Verdict, judge};
use super::relay::{Buffers, ClientSide};

/// The answer to a head that took too long.
const HEAD_TIMEOUT: Answer = Answer::new(
    408,
    "Request Timeout: the request head did not arrive within clientHeaderTimeout",
    true,
);

/// What one look found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Client connections open.
    pub open: usize,
    /// Of those, held by a thread that no longer reads them.
    pub stuck: usize,
    /// Connections ended for the head deadline with a `408`.
    pub ended_with_408: usize,
    /// Connections ended for the head deadline without an answer (nothing of a head arrived).
    pub ended_idle: usize,
}

/// The client connections of the listener on one port; cheap to clone to another thread.
#[derive(Clone)]
pub struct ClientSockets {
    pub(super) connections: Arc<Connections>,
}

/// An entry as the look started, to act on it only if it did not change meanwhile.
struct Judged {
    phase: Phase,
    inode: Option<u64>,
    version: u64,
    ended_at: Option<Instant>,
    ended_without_socket: bool,
}

/// One socket the look found, for the table.
struct Found {
    peer: SocketAddr,
    inode: u64,
    left: bool,
}

/// A connection past its head deadline, with the socket that was judged.
struct Overdue {
    peer: SocketAddr,
    version: Option<u64>,
    socket: OwnSocket,
    answer_408: bool,
}

impl ClientSockets {
    /// Judges every client connection (see the module doc): ends those past the head
    /// deadline, and counts the stuck ones. A walk over the process's descriptors with a few
    /// system calls per socket: some microseconds per connection.
    pub fn look(&self, limits: Limits) -> Census {
        let now = Instant::now();
        let (table, ours) = self.snapshot();
        let by_inode: HashMap<u64, SocketAddr> = table
            .iter()
            .filter_map(|(peer, judged)| judged.inode.map(|inode| (inode, *peer)))
            .collect();
        let mut census = Census::default();
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut overdue = Vec::new();
        self.each_socket(&ours, &mut seen, |socket, info| {
            let open = is_open(&info);
            census.open += usize::from(open);
            let peer = socket.stream.peer_addr().ok();
            let peer = peer.or_else(|| by_inode.get(&socket.inode).copied());
            let heard = Heard {
                since_received: Duration::from_millis(info.ms_since_received.into()),
                anything: info.bytes_received > 0,
            };
            let Some(peer) = peer else {
                // Closed before any look saw it: no entry names it, but a thread may hold it.
                if judge(Phase::New(now), heard, now, limits) == Verdict::Stuck {
                    census.stuck += 1;
                }
                return;
            };
            let judged = table
                .get(&peer)
                .filter(|j| j.inode.is_none_or(|inode| inode == socket.inode));
            let phase = judged.map_or(Phase::New(now), |j| j.phase);
            found.push(Found {
                peer,
                inode: socket.inode,
                left: info.client_left(),
            });
            match judge(phase, heard, now, limits) {
                Verdict::Stuck => census.stuck += 1,
                Verdict::Overdue { answer_408 } if open => overdue.push(Overdue {
                    peer,
                    version: judged.map(|j| j.version),
                    socket,
                    answer_408,
                }),
                Verdict::Fine | Verdict::Overdue { .. } => {}
            }
        });
        self.update(&table, &found, &seen, now);
        for overdue in overdue {
            match self.end_overdue(overdue) {
                Some(true) => census.ended_with_408 += 1,
                Some(false) => census.ended_idle += 1,
                None => {}
            }
        }
        census
    }

    /// The table as the look starts, and tinylb's own descriptors of ended sockets, which the
    /// walk must not count as tiny_http's.
    fn snapshot(&self) -> (HashMap<SocketAddr, Judged>, HashSet<RawFd>) {
        let entries = self.connections.entries.lock();
        let ours = entries
            .values()
            .filter_map(|e| e.ended.as_ref()?.socket.as_ref())
            .map(|s| s.stream.as_raw_fd())
            .collect();
        let table = entries
            .iter()
            .map(|(peer, e)| {
                let judged = Judged {
                    phase: e.phase,
                    inode: e.inode,
                    version: e.version,
                    ended_at: e.ended.as_ref().map(|ended| ended.at),
                    ended_without_socket: e.ended.as_ref().is_some_and(|x| x.socket.is_none()),
                };
                (*peer, judged)
            })
            .collect();
        (table, ours)
    }

    /// Visits each client socket once (by inode), skipping tinylb's own duplicates.
    fn each_socket(
        &self,
        ours: &HashSet<RawFd>,
        seen: &mut HashSet<u64>,
        mut visit: impl FnMut(OwnSocket, TcpState),
    ) {
        each_client_socket::<()>(self.connections.local_port(), |socket, fd| {
            if ours.contains(&fd) || !seen.insert(socket.inode) {
                return ControlFlow::Continue(());
            }
            // The listening socket shares the port; only connections are clients.
            if let Some(info) = socket.tcp_state().filter(|i| i.state != states::LISTEN) {
                visit(socket, info);
            }
            ControlFlow::Continue(())
        });
    }

    /// Brings the table up to what the look found: inodes learned, clients that left marked,
    /// new connections entered, and connections whose socket is gone forgotten. An entry that
    /// changed while the look ran (a request was admitted) is left alone.
    fn update(
        &self,
        table: &HashMap<SocketAddr, Judged>,
        found: &[Found],
        seen: &HashSet<u64>,
        now: Instant,
    ) {
        let connections = &self.connections;
        let mut entries = connections.entries.lock();
        let mut present = HashSet::new();
        for f in found {
            present.insert(f.peer);
            let unchanged = |entry: &Entry| {
                table
                    .get(&f.peer)
                    .is_some_and(|j| j.version == entry.version)
            };
            let Some(entry) = entries.get_mut(&f.peer) else {
                entries.insert(
                    f.peer,
                    Entry::first_seen(connections.version(), now, f.inode),
                );
                continue;
            };
            let old_open = entry.inode.is_some_and(|old| seen.contains(&old));
            match sighting(entry.inode, f.inode, old_open) {
                Sighting::Same => {}
                Sighting::Learned => entry.inode = Some(f.inode),
                Sighting::Beside => continue,
                // Unless a request was admitted meanwhile (it came on the newer connection).
                Sighting::Newer if !unchanged(entry) => entry.inode = Some(f.inode),
                Sighting::Newer => {
                    connections.forget(&mut entries, &f.peer);
                    entries.insert(
                        f.peer,
                        Entry::first_seen(connections.version(), now, f.inode),
                    );
                }
            }
            if f.left {
                connections.mark_gone(&mut entries, &f.peer);
            }
        }
        let vanished: Vec<SocketAddr> = table
            .iter()
            .filter(|(peer, judged)| {
                let ended_without_socket_for = judged
                    .ended_without_socket
                    .then(|| judged.ended_at.map(|at| at.elapsed()))
                    .flatten();
                forgotten(
                    judged.inode,
                    judged.inode.is_some_and(|inode| seen.contains(&inode)),
                    present.contains(*peer),
                    ended_without_socket_for,
                )
            })
            .filter(|(peer, judged)| {
                entries
                    .get(*peer)
                    .is_some_and(|e| e.version == judged.version)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in vanished {
            connections.forget(&mut entries, &peer);
        }
        // An ended socket closed on both sides needs no copy of tinylb's any more: a request
        // from its address and port is a new connection's after the close grace anyway.
        for entry in entries.values_mut() {
            if let Some(ended) = &mut entry.ended
                && ended.at.elapsed() > super::phases::CLOSE_GRACE
                && ended.socket.as_ref().is_some_and(|s| {
                    s.tcp_state()
                        .is_none_or(|t| identity::addresses_free(t.state))
                })
            {
                ended.socket = None;
            }
        }
    }

    /// Ends a connection whose head is overdue, if it is still in the phase that was judged:
    /// marked ended first, so that a request tiny_http still parses from it is discarded; the
    /// read side is shut, which ends tiny_http's read. The `408` is written only if the kernel
    /// takes it at once. Returns whether a `408` was due, or `None` if it was left alone.
    fn end_overdue(&self, overdue: Overdue) -> Option<bool> {
        let connections = &self.connections;
        let socket = Arc::new(overdue.socket);
        {
            let version = connections.version();
            let mut entries = connections.entries.lock();
            let entry = entries
                .entry(overdue.peer)
                .or_insert_with(|| Entry::serving(version));
            let judged_unchanged = overdue.version.is_none_or(|v| v == entry.version)
                && entry.ended.is_none()
                && entry.phase != Phase::Serving;
            if !judged_unchanged {
                return None;
            }
            connections.mark_ended(entry, Some(Arc::clone(&socket)), version);
        }
        // The 408 first: once the read side is shut, tiny_http reads end-of-file and closes
        // the connection, and a write after that would be lost.
        if overdue.answer_408 {
            let mut buffers = Buffers::default();
            let client = ClientSide {
                http10: false,
                keep_alive: false,
                head_request: false,
            };
            let mut bytes = Vec::new();
            let _ = answer::write_answer(&mut bytes, &client, &HEAD_TIMEOUT, &mut buffers);
            if !socket.write_now(&bytes) {
                log::debug!("could not send 408 to {}", overdue.peer);
            }
        }
        socket.shutdown(Shutdown::Both);
        Some(overdue.answer_408)
    }

    /// Client connections a draining process must still wait for: those that sent something
    /// within `within`, and those whose request head has begun but was not yet taken (a
    /// connection that waited in the accept queue looks silent, though its request is there),
    /// unless silent longer than `stuck_after`: a thread no longer reads those.
    pub fn unfinished(&self, within: Duration, stuck_after: Duration) -> usize {
        let (table, ours) = self.snapshot();
        let mut seen = HashSet::new();
        let mut unfinished = 0;
        self.each_socket(&ours, &mut seen, |socket, info| {
            let Ok(peer) = socket.stream.peer_addr() else {
                return;
            };
            if !is_open(&info) {
                return;
            }
            let since_received = Duration::from_millis(info.ms_since_received.into());
            let phase = table
                .get(&peer)
                .filter(|j| j.inode.is_none_or(|inode| inode == socket.inode))
                .map(|j| j.phase);
            let head_begun = match phase {
                None | Some(Phase::New(_)) => info.bytes_received > 0,
                Some(Phase::Waiting(since)) => since_received < since.elapsed(),
                Some(Phase::Serving | Phase::Ended(_)) => false,
            };
            if (head_begun && since_received < stuck_after) || since_received < within {
                unfinished += 1;
            }
        });
        unfinished
    }
}

/// A connection the client has not finished with (see [`identity::client_not_done`]).
fn is_open(info: &TcpState) -> bool {
    identity::client_not_done(info.state)
}
