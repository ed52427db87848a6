//! One client request and its answer: the only handle the rest of tinylb has on a client. Every
//! rule about when tiny_http may have the connection back lives here, private:
//!
//! - a connection that must end is remembered as ending *before* the request (and so its body
//!   reader) goes back to tiny_http, which then parses whatever follows; the intake drops
//!   anything parsed from it afterwards;
//! - the socket is half-closed *while* the writer is still held: once the writer is dropped,
//!   tiny_http may write an answer of its own (to bytes it parsed after this request) before
//!   the socket closes.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;

use tiny_http::{HTTPVersion, Method, Request};

use super::body::ClientBody;
use super::hangup::Hangups;
use super::phases::{Phase, Phases};
use super::relay::{self, Answer, Buffers, ClientSide, Relayed};
use super::request_check::{self, Head, Rejection};
use crate::access_log::AccessLine;
use crate::stages::{self, Stamps};
use crate::upstream::Response;

/// A client request on its way through tinylb, with the verdict of its head check.
pub struct Exchange {
    request: Request,
    verdict: Result<Head, Rejection>,
    side: ClientSide,
    peer: Option<SocketAddr>,
    hangups: Arc<Hangups>,
    phases: Arc<Phases>,
    /// The client side's stamps: the previous answer's end and the intake taking this one.
    stamps: Stamps,
    /// Whether this is the first request tinylb took from its connection.
    first_on_connection: bool,
}

/// What the client got, for the access log and the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub body_bytes: u64,
}

/// The client's two ends after a `101`, for a tunnel.
pub struct Switched {
    /// tiny_http's raw stream of the connection, read for the client's bytes.
    pub reader: Box<dyn std::io::Read + Send>,
    /// tinylb's own duplicate of the client socket, written with the backend's bytes.
    pub socket: TcpStream,
}

impl Exchange {
    /// Runs on the intake thread, which sees each connection's requests in order: drops a
    /// request whose connection tinylb already ended, and marks a connection as ending when its
    /// request will be refused, so that no request tiny_http parses after it (from a body
    /// tinylb will never read) can reach a worker and a backend.
    pub(super) fn admit(
        request: Request,
        hangups: &Arc<Hangups>,
        phases: &Arc<Phases>,
    ) -> Option<Exchange> {
        let peer = request.remote_addr().copied();
        if hangups.is_hung_up(peer.as_ref()) {
            log::debug!("dropping a request from {peer:?}: its connection was ended");
            // Nothing may be written: the connection was already ended.
            drop(request.into_writer());
            return None;
        }
        let taken = stages::stamp();
        let previous = phases.serving(peer.as_ref());
        let first_on_connection = matches!(previous, None | Some(Phase::New(_)));
        let previous_answer = match previous {
            Some(Phase::Waiting(since)) if taken.is_some() => Some(since),
            _ => None,
        };
        let verdict = request_check::check_request(&request);
        if verdict.is_err() {
            hangups.remember(peer.as_ref());
        }
        let side = ClientSide {
            http10: *request.http_version() == HTTPVersion(1, 0),
            keep_alive: request_check::client_keeps_alive(&request),
            head_request: *request.method() == Method::Head,
        };
        Some(Exchange {
            request,
            verdict,
            side,
            peer,
            hangups: Arc::clone(hangups),
            phases: Arc::clone(phases),
            stamps: Stamps {
                previous_answer,
                taken,
                ..Stamps::default()
            },
            first_on_connection,
        })
    }

    /// Whether this is the first request tinylb took from its connection: a new connection.
    pub fn first_on_connection(&self) -> bool {
        self.first_on_connection
    }

    /// The stage timers' stamps so far: when the previous answer on this connection ended and
    /// when the intake took this request.
    pub fn stamps(&self) -> Stamps {
        self.stamps
    }

    /// The head check's verdict: how to read the body, or why the request is refused.
    pub fn verdict(&self) -> Result<&Head, &Rejection> {
        self.verdict.as_ref()
    }

    /// The method, as received.
    pub fn method(&self) -> &str {
        self.request.method().as_str()
    }

    /// The request target, as received.
    pub fn target(&self) -> &str {
        self.request.url()
    }

    /// Every header field in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str(), h.value.as_str()))
    }

    /// The client's address and port.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The client's address.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.peer.map(|a| a.ip())
    }

    /// The client's side of an access log line, taken before the request is answered.
    pub fn access_line(&self) -> AccessLine {
        let header = |name: &'static str| {
            self.request
                .headers()
                .iter()
                .find(|h| h.field.equiv(name))
                .map(|h| h.value.as_str())
        };
        AccessLine::new(
            self.client_ip(),
            &format!(
                "{} {} HTTP/{}",
                self.request.method(),
                self.request.url(),
                self.request.http_version()
            ),
            header("Referer"),
            header("User-Agent"),
        )
    }

    /// The request body as the backend side reads it. Only a request that passed its check has
    /// one to read.
    pub fn body(&mut self) -> ClientBody<'_> {
        match &self.verdict {
            Ok(head) => ClientBody::new(&mut self.request, head, &self.hangups, self.peer),
            Err(_) => ClientBody::empty(&self.hangups),
        }
    }

    /// Answers with tinylb's own short answer; `answer.close` ends the connection after it.
    pub fn answer(self, answer: &Answer, buffers: &mut Buffers) -> Delivered {
        let peer = self.peer;
        let draining = self.side.keep_alive && self.hangups.closing_all();
        let answer = &Answer {
            close: answer.close || draining,
            ..*answer
        };
        if answer.close {
            self.hangups.remember(peer.as_ref());
        }
        let mut writer = self.request.into_writer();
        let written = relay::write_answer(&mut *writer, &self.side, answer, buffers);
        if answer.close {
            self.hangups.close_socket(peer.as_ref());
        }
        self.phases.answered(peer.as_ref(), self.side.keep_alive);
        drop(writer);
        let body_bytes = match written {
            Ok(()) if self.side.head_request => 0,
            Ok(()) => answer.body_len() as u64,
            Err(error) => {
                log::debug!("could not send {} to {peer:?}: {error}", answer.status);
                0
            }
        };
        Delivered {
            status: answer.status,
            body_bytes,
        }
    }

    /// Relays a backend's answer; ends the connection when the answer's framing requires it.
    /// `forwarded_server` adds the seed article's `X-Forwarded-Server` header.
    pub fn relay(
        self,
        response: Response,
        forwarded_server: Option<&str>,
        buffers: &mut Buffers,
    ) -> Delivered {
        let peer = self.peer;
        // A draining process ends every connection after its answer (see `Hangups`).
        let draining = self.side.keep_alive && self.hangups.closing_all();
        let side = ClientSide {
            keep_alive: self.side.keep_alive && !draining,
            ..self.side
        };
        if draining {
            self.hangups.remember(peer.as_ref());
        }
        let mut writer = self.request.into_writer();
        let relayed =
            relay::relay_response(&mut *writer, response, &side, forwarded_server, buffers);
        let (status, body_bytes, hang_up) = match relayed {
            Relayed::Complete { status, body_bytes } => (status, body_bytes, false),
            Relayed::ClientGone {
                status,
                body_bytes,
                error,
            } => {
                log::debug!("{status} to {peer:?}: client went away ({error})");
                (status, body_bytes, true)
            }
            Relayed::BackendFailed {
                status,
                body_bytes,
                error,
            } => {
                log::warn!(
                    "{status} to {peer:?}: backend body broke off ({error}); closing the client connection"
                );
                (status, body_bytes, true)
            }
            Relayed::CloseDelimited { status, body_bytes } => {
                log::debug!("{status} to {peer:?}: connection closed to end the body");
                (status, body_bytes, true)
            }
        };
        if hang_up || draining {
            self.hangups.hang_up(peer.as_ref());
        }
        self.phases.answered(peer.as_ref(), self.side.keep_alive);
        drop(writer);
        Delivered { status, body_bytes }
    }

    /// Answers `101 Switching Protocols` with `headers` (end-to-end ones) and hands over the
    /// connection's two ends. Gives the exchange back if tinylb's duplicate of the client
    /// socket cannot be made, before anything was written.
    pub fn switch_protocols<'a>(
        self,
        protocol: &str,
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Switched, Box<Exchange>> {
        let Some(socket) = self.hangups.client_socket(self.peer.as_ref()) else {
            return Err(Box::new(self));
        };
        // tiny_http writes `Connection: upgrade` and `Upgrade` itself.
        let mut answer = tiny_http::Response::empty(101);
        for (name, value) in headers {
            match tiny_http::Header::from_bytes(name.as_bytes(), value) {
                Ok(header) => answer.add_header(header),
                Err(()) => log::debug!("dropped a non-ASCII {name} header from a 101"),
            }
        }
        let reader = self.request.upgrade(protocol, answer);
        Ok(Switched { reader, socket })
    }
}
