//! The slowest a client may read its answer (`clientSendMinRate`, see [`Pace`]), counted in
//! the bytes the client has taken, not in those handed to the kernel: a socket's send buffer
//! grows to megabytes, and a reader that never reads would otherwise look fast for as long as it
//! takes to fill it (at 500 B/s, hours). So once an answer has outlived the grace, the client's
//! socket is looked up (one walk over the descriptors, only for answers that slow) and the bytes
//! still waiting in its send queue (`SIOCOUTQ`) are not counted.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use super::connections::Connections;
use super::own_sockets::{OwnSocket, find_client_socket};
use crate::pace::Pace;

/// The rule for one answer and the client it goes to.
pub struct SendPace<'a> {
    /// The rule; [`Pace::OFF`] never cuts.
    pub rule: Pace,
    /// Where the client's socket is found, when it is needed.
    pub connections: Option<&'a Connections>,
    /// The client.
    pub peer: Option<SocketAddr>,
}

/// A writer that fails once the client has taken its answer slower than the rule allows. Each
/// write blocks for at most the socket's timeout (`clientTimeout`), so the check runs at least
/// that often.
pub(super) struct PacedWriter<'a> {
    inner: &'a mut dyn Write,
    pace: SendPace<'a>,
    started: Instant,
    written: u64,
    /// The client's socket, once looked up (`Some(None)`: it could not be found).
    socket: Option<Option<OwnSocket>>,
    too_slow: bool,
}

impl<'a> PacedWriter<'a> {
    pub(super) fn new(inner: &'a mut dyn Write, pace: SendPace<'a>) -> PacedWriter<'a> {
        PacedWriter {
            inner,
            pace,
            started: Instant::now(),
            written: 0,
            socket: None,
            too_slow: false,
        }
    }

    /// Whether the answer was cut off for being read too slowly.
    pub(super) fn was_too_slow(&self) -> bool {
        self.too_slow
    }

    fn check(&mut self) -> bool {
        let elapsed = self.started.elapsed();
        if !self.pace.rule.too_slow(0, elapsed) {
            // Still within the grace: nothing to look at.
            return false;
        }
        let (connections, peer) = (self.pace.connections, self.pace.peer);
        let socket = self.socket.get_or_insert_with(|| {
            connections.and_then(|c| find_client_socket(peer?, c.local_port()))
        });
        let unsent = socket.as_ref().map_or(0, OwnSocket::unsent);
        let taken = self.written.saturating_sub(unsent);
        self.too_slow = self.pace.rule.too_slow(taken, elapsed);
        self.too_slow
    }
}

impl Write for PacedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.check() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client reads slower than clientSendMinRate",
            ));
        }
        let written = self.inner.write(buf)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
