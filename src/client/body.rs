//! The client's request body as the backend side reads it. It counts what was consumed (a
//! consumed body cannot be replayed on another backend) and turns a body that ends early into
//! an error, because ureq spins forever on a reader that ends before Content-Length.

use std::io::{self, BufReader, Read};
use std::net::SocketAddr;

use tiny_http::Request;

use super::hangup::Hangups;
use super::request_check::Head;
use crate::chunked::ChunkedReader;
use crate::message::BodyFraming;

/// A request body being read; see the module doc.
pub struct ClientBody<'a> {
    source: BodySource<'a>,
    remaining: Option<u64>,
    bytes_read: u64,
    failure: Option<String>,
    /// For chunked bodies decoded by tiny_http: to ask whether an end of body was really the
    /// client leaving.
    hangups: &'a Hangups,
    client: Option<SocketAddr>,
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
}

impl<'a> ClientBody<'a> {
    pub(super) fn new(
        request: &'a mut Request,
        head: &Head,
        hangups: &'a Hangups,
        client: Option<SocketAddr>,
    ) -> ClientBody<'a> {
        let remaining = match head.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        // Only touch the reader when there is a body: as_reader() sends `100 Continue`.
        let source = match head.framing {
            BodyFraming::Empty => BodySource::None,
            BodyFraming::Chunked if head.body_is_raw => {
                BodySource::RawChunked(ChunkedReader::new(BufReader::new(request.as_reader())))
            }
            BodyFraming::Length(_) | BodyFraming::Chunked => {
                BodySource::Framed(request.as_reader())
            }
        };
        ClientBody {
            source,
            remaining,
            bytes_read: 0,
            failure: None,
            hangups,
            client,
        }
    }

    pub(super) fn empty(hangups: &'a Hangups) -> ClientBody<'a> {
        ClientBody {
            source: BodySource::None,
            remaining: None,
            bytes_read: 0,
            failure: None,
            hangups,
            client: None,
        }
    }

    /// Whether any of the body was read (then the request cannot go to another backend).
    pub fn started(&self) -> bool {
        self.bytes_read > 0
    }

    /// Why the body failed, if the client's side of it did: the client left or sent less than
    /// it announced.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }
}

impl Read for ClientBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = match self.remaining {
            Some(0) => return Ok(0),
            Some(n) => buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let (result, decoded_by_tiny_http) = match &mut self.source {
            BodySource::None => return Ok(0),
            BodySource::Framed(inner) => (inner.read(&mut buf[..limit]), true),
            BodySource::RawChunked(inner) => (inner.read(&mut buf[..limit]), false),
        };
        let read = match result {
            // tiny_http's chunked decoder ends a body cut mid-chunk as if it were complete.
            Ok(0)
                if self.remaining.is_some()
                    || (decoded_by_tiny_http
                        && self.hangups.client_closed(self.client.as_ref())) =>
            {
                let message = "the client closed the connection before sending its whole body";
                self.failure = Some(message.into());
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
            }
            Ok(n) => n,
            Err(error) => {
                self.failure = Some(format!("reading the client's body failed: {error}"));
                return Err(error);
            }
        };
        self.bytes_read += read as u64;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= read as u64;
        }
        Ok(read)
    }
}
