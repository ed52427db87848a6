//! The client's request body as the backend side reads it. It counts what was consumed (a
//! consumed body cannot be replayed on another backend), turns a body that ends early into
//! an error, because ureq spins forever on a reader that ends before Content-Length, and ends
//! a body that arrives slower than `clientBodyMinRate` allows ([`Pace`]).

use std::io::{self, BufReader, Read};
use std::net::SocketAddr;
use std::time::Instant;

use tiny_http::Request;

use super::connections::Connections;
use super::own_sockets::client_closed;
use super::request_check::Head;
use crate::chunked::ChunkedReader;
use crate::message::BodyFraming;
use crate::pace::Pace;

/// How a body read failed, for the answer the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFailure {
    /// The client left or sent less than it announced.
    Ended(String),
    /// The client sent it slower than its [`Pace`] allows, or paused longer than
    /// `clientTimeout`.
    TooSlow(String),
}

/// A request body being read; see the module doc.
pub struct ClientBody<'a> {
    source: BodySource<'a>,
    remaining: Option<u64>,
    bytes_read: u64,
    failure: Option<BodyFailure>,
    /// For chunked bodies decoded by tiny_http: to ask whether an end of body was really the
    /// client leaving.
    connections: &'a Connections,
    client: Option<SocketAddr>,
    pace: Pace,
    started: Instant,
    /// Set when the body's end was read: nothing of it is left in the connection.
    complete: &'a mut bool,
}

/// Where the body's bytes come from.
enum BodySource<'a> {
    /// No body: nothing is read at all.
    None,
    /// tiny_http's body reader: a decoded chunked body, or one framed by Content-Length.
    Framed(&'a mut dyn Read),
    /// A chunked body in the raw bytes tiny_http hands over for `Connection: upgrade`, decoded
    /// here (that connection ends after this request, so reading ahead does no harm).
    RawChunked(ChunkedReader<BufReader<&'a mut dyn Read>>),
    /// Not touched yet: tiny_http's `as_reader()` writes the client's `100 Continue`, so it
    /// is called at the first read, once the backend has taken the body (a backend asked with
    /// `Expect: 100-continue` that answers early never gets the client's body sent at all).
    NotStarted {
        request: &'a mut Request,
        raw_chunked: bool,
    },
    /// Being replaced (never seen outside `start`).
    Taken,
}

impl<'a> ClientBody<'a> {
    pub(super) fn new(
        request: &'a mut Request,
        head: &Head,
        connections: &'a Connections,
        client: Option<SocketAddr>,
        pace: Pace,
        complete: &'a mut bool,
    ) -> ClientBody<'a> {
        let remaining = match head.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        let source = match head.framing {
            BodyFraming::Empty => BodySource::None,
            BodyFraming::Chunked => BodySource::NotStarted {
                request,
                raw_chunked: head.body_is_raw,
            },
            BodyFraming::Length(_) => BodySource::NotStarted {
                request,
                raw_chunked: false,
            },
        };
        ClientBody {
            source,
            remaining,
            bytes_read: 0,
            failure: None,
            connections,
            client,
            pace,
            started: Instant::now(),
            complete,
        }
    }

    pub(super) fn empty(connections: &'a Connections, complete: &'a mut bool) -> ClientBody<'a> {
        ClientBody {
            source: BodySource::None,
            remaining: None,
            bytes_read: 0,
            failure: None,
            connections,
            client: None,
            pace: Pace::OFF,
            started: Instant::now(),
            complete,
        }
    }

    /// Whether any of the body was read (then the request cannot go to another backend).
    pub fn started(&self) -> bool {
        self.bytes_read > 0
    }

    /// Why the body failed, if the client's side of it did.
    pub fn take_failure(&mut self) -> Option<BodyFailure> {
        self.failure.take()
    }

    fn fail(&mut self, failure: BodyFailure, kind: io::ErrorKind) -> io::Error {
        let message = match &failure {
            BodyFailure::Ended(m) | BodyFailure::TooSlow(m) => m.clone(),
        };
        self.failure = Some(failure);
        io::Error::new(kind, message)
    }
}

impl ClientBody<'_> {
    /// Opens tiny_http's reader (which writes `100 Continue` if the client asked for it); the
    /// pace is counted from here.
    fn start(&mut self) {
        if let BodySource::NotStarted { .. } = self.source {
            let BodySource::NotStarted {
                request,
                raw_chunked,
            } = std::mem::replace(&mut self.source, BodySource::Taken)
            else {
                unreachable!("matched above");
            };
            let reader = request.as_reader();
            self.source = if raw_chunked {
                BodySource::RawChunked(ChunkedReader::new(BufReader::new(reader)))
            } else {
                BodySource::Framed(reader)
            };
            self.started = Instant::now();
        }
    }
}

impl Read for ClientBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.start();
        let limit = match self.remaining {
            Some(0) => return Ok(0),
            Some(n) => buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if self.pace.too_slow(self.bytes_read, self.started.elapsed()) {
            let message = format!(
                "the client sent {} body bytes in {:?}, slower than clientBodyMinRate",
                self.bytes_read,
                self.started.elapsed()
            );
            return Err(self.fail(BodyFailure::TooSlow(message), io::ErrorKind::TimedOut));
        }
        let (result, decoded_by_tiny_http) = match &mut self.source {
            BodySource::None | BodySource::NotStarted { .. } | BodySource::Taken => return Ok(0),
            BodySource::Framed(inner) => (inner.read(&mut buf[..limit]), true),
            BodySource::RawChunked(inner) => (inner.read(&mut buf[..limit]), false),
        };
        let read = match result {
            // tiny_http's chunked decoder ends a body cut mid-chunk as if it were complete.
            Ok(0)
                if self.remaining.is_some()
                    || (decoded_by_tiny_http
                        && client_closed(self.client.as_ref(), self.connections.local_port())) =>
            {
                let message = "the client closed the connection before sending its whole body";
                return Err(self.fail(
                    BodyFailure::Ended(message.into()),
                    io::ErrorKind::UnexpectedEof,
                ));
            }
            Ok(n) => n,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let message =
                    format!("the client sent nothing of its body for clientTimeout ({error})");
                return Err(self.fail(BodyFailure::TooSlow(message), error.kind()));
            }
            Err(error) => {
                let message = format!("reading the client's body failed: {error}");
                return Err(self.fail(BodyFailure::Ended(message), error.kind()));
            }
        };
        self.bytes_read += read as u64;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= read as u64;
        }
        if read == 0 || self.remaining == Some(0) {
            *self.complete = true;
        }
        Ok(read)
    }
}
