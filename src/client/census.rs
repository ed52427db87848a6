//! A look at every client connection this process holds, once a second from the watchdog,
//! read from the kernel (`TCP_INFO`'s time since data last arrived) and from [`Phases`], since
//! tiny_http keeps no list. Each connection is judged by [`judge`]:
//!
//! - **the whole-head deadline** (`clientHeaderTimeout`): a connection waiting for a request
//!   head longer than that is ended: `408` if part of a head has arrived, silently if nothing
//!   has since its last answer. Its read side is shut, so tiny_http's thread reads end-of-file
//!   and lets the connection go; anything it parses from it afterwards is dropped.
//! - **stuck connections**: tiny_http reads every client with the socket's receive timeout
//!   (`clientTimeout`), so a connection it still reads cannot stay silent much longer than that,
//!   and one tinylb ended is closed at once. One that is silent longer while not being served,
//!   or still open after tinylb ended it, is held by a thread that no longer reads it: tiny_http
//!   0.12 parks a thread for good on a request line above HTTP/1.1 (an HTTP/2 preface).
//!
//! A draining process also asks which clients it must still wait for ([`ClientSockets::unfinished`]).

use std::collections::HashSet;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hangup::Hangups;
use super::own_sockets::{each_client_socket, tcp_state};
use super::phases::{Heard, Limits, Phase, Phases, Verdict, judge};
use super::relay::{self, Answer, Buffers, ClientSide};

/// TCP states of a connection the client has not finished with: established, and close-wait
/// (the client sent its FIN, and the socket waits for tinylb, or a stuck thread, to close it).
const OPEN_STATES: [u8; 2] = [1, 8];

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
    pub(super) local_port: u16,
    pub(super) phases: Arc<Phases>,
    pub(super) hangups: Arc<Hangups>,
}

impl ClientSockets {
    /// Judges every client connection (see the module doc): ends those past the head
    /// deadline, and counts the stuck ones. A walk over the process's descriptors with a few
    /// system calls per socket: some microseconds per connection.
    pub fn look(&self, limits: Limits) -> Census {
        let now = Instant::now();
        let table = self.phases.snapshot();
        let mut census = Census::default();
        let mut seen = HashSet::new();
        let mut peers = Vec::new();
        let mut first_seen = Vec::new();
        let mut buffers = None;
        each_client_socket::<()>(self.local_port, |socket, inode| {
            let (Some(info), Ok(peer)) = (tcp_state(socket), socket.peer_addr()) else {
                return ControlFlow::Continue(());
            };
            if !seen.insert(inode) {
                return ControlFlow::Continue(());
            }
            peers.push(peer);
            let open = OPEN_STATES.contains(&info.state);
            census.open += usize::from(open);
            let Some(&phase) = table.get(&peer) else {
                first_seen.push(peer);
                return ControlFlow::Continue(());
            };
            let heard = Heard {
                since_received: Duration::from_millis(info.ms_since_received.into()),
                anything: info.bytes_received > 0,
            };
            match judge(phase, heard, now, limits) {
                Verdict::Fine => {}
                Verdict::Stuck => census.stuck += 1,
                Verdict::Overdue { answer_408 } if open => {
                    if self.phases.end_if_still(peer, phase) {
                        let buffers = buffers.get_or_insert_with(Buffers::default);
                        self.end(socket, peer, answer_408, buffers);
                        if answer_408 {
                            census.ended_with_408 += 1;
                        } else {
                            census.ended_idle += 1;
                        }
                    }
                }
                Verdict::Overdue { .. } => {}
            }
            ControlFlow::Continue(())
        });
        self.phases.update(&peers, &first_seen, now);
        census
    }

    /// Ends a connection whose head is overdue. Remembered first, so that a request tiny_http
    /// still parses from it is dropped; the read side is shut, which ends tiny_http's read.
    fn end(&self, socket: &TcpStream, peer: SocketAddr, answer_408: bool, buffers: &mut Buffers) {
        self.hangups.remember(Some(&peer));
        if answer_408 {
            let client = ClientSide {
                http10: false,
                keep_alive: false,
                head_request: false,
            };
            let mut writer = socket;
            if let Err(error) = relay::write_answer(&mut writer, &client, &HEAD_TIMEOUT, buffers) {
                log::debug!("could not send 408 to {peer}: {error}");
            }
        }
        let _ = socket.shutdown(Shutdown::Read);
    }

    /// Client connections a draining process must still wait for: those that sent something
    /// within `within`, and those whose request head has begun but was not yet taken (a
    /// connection that waited in the accept queue looks silent, though its request is there),
    /// unless silent longer than `stuck_after`: a thread no longer reads those.
    pub fn unfinished(&self, within: Duration, stuck_after: Duration) -> usize {
        let table = self.phases.snapshot();
        let mut seen = HashSet::new();
        let mut unfinished = 0;
        each_client_socket::<()>(self.local_port, |socket, inode| {
            let (Some(info), Ok(peer)) = (tcp_state(socket), socket.peer_addr()) else {
                return ControlFlow::Continue(());
            };
            if !OPEN_STATES.contains(&info.state) || !seen.insert(inode) {
                return ControlFlow::Continue(());
            }
            let since_received = Duration::from_millis(info.ms_since_received.into());
            let head_begun = match table.get(&peer) {
                None | Some(Phase::New(_)) => info.bytes_received > 0,
                Some(Phase::Waiting(since)) => since_received < since.elapsed(),
                Some(Phase::Serving | Phase::Ended(_)) => false,
            };
            if (head_begun && since_received < stuck_after) || since_received < within {
                unfinished += 1;
            }
            ControlFlow::Continue(())
        });
        unfinished
    }
}
