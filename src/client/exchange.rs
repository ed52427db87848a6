//! One client request and its answer: the only handle the rest of tinylb has on a client. Every
//! rule about when tiny_http may have the connection back lives here, private:
//!
//! - a connection that must end is ended (its read side shut, and the ending recorded in the
//!   [`Connections`] table) *before* the request, and so its body reader, goes back to tiny_http:
//!   tiny_http then reads end-of-file instead of waiting for a body nobody will read, and
//!   whatever it still parses from the connection is discarded;
//! - the write side is shut *while* the writer is still held: once the writer is dropped,
//!   tiny_http may write an answer of its own (to bytes it parsed after this request) before
//!   the socket closes;
//! - nothing is written by a request that is discarded: dropping a tiny_http request unanswered
//!   would send a `500`.

use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;

use tiny_http::{HTTPVersion, Method, Request};

use super::answer::{self, Answer};
use super::body::ClientBody;
use super::connections::{Arrival, Connections};
use super::own_sockets::find_client_socket;
use super::phases::Phase;
use super::relay::{self, Buffers, ClientSide, CutShort, RelayOutcome};
use super::request_check::{self, Head, Rejection};
use super::send_pace::SendPace;
use crate::access_log::AccessLine;
use crate::pace::Pace;
use crate::stages::{self, Stamps};
use crate::upstream::Response;

/// A client request on its way through tinylb, with the verdict of its head check.
pub struct Exchange {
    request: Request,
    verdict: Result<Head, Rejection>,
    side: ClientSide,
    peer: Option<SocketAddr>,
    connections: Arc<Connections>,
    /// The client side's stamps: the previous answer's end and the intake taking this one.
    stamps: Stamps,
    /// Whether this is the first request tinylb took from its connection.
    first_on_connection: bool,
    /// How it stood with its connection when it arrived: a request from a connection tinylb
    /// had ended is discarded, never served.
    arrival: Arrival,
    /// Nothing of the body is left unread in the connection (true when there is none).
    body_complete: bool,
}

/// What the client got, for the access log and the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub body_bytes: u64,
    /// Why the answer stopped short of what the backend sent, if it did.
    pub cut_short: Option<CutShort>,
}

/// The client's two ends after a `101`, for a tunnel.
pub struct Switched {
    /// tiny_http's raw stream of the connection, read for the client's bytes.
    pub reader: Box<dyn std::io::Read + Send>,
    /// tinylb's own duplicate of the client socket, written with the backend's bytes.
    pub socket: TcpStream,
}

impl Exchange {
    /// Runs on the intake thread, which sees each connection's requests in order: notes the
    /// request in the connection table, and marks a connection as ending when its request will
    /// be refused, so that no request tiny_http parses after it (from a body tinylb will never
    /// read) can reach a worker and a backend. A request from a connection tinylb already
    /// ended comes back marked, to be [discarded](Exchange::discard).
    pub(super) fn admit(request: Request, connections: &Arc<Connections>) -> Exchange {
        let peer = request.remote_addr().copied();
        let taken = stages::stamp();
        let arrival = connections.arrive(peer.as_ref());
        let previous = match arrival {
            Arrival::Admitted { previous } => previous,
            Arrival::FromEndedConnection | Arrival::Undecided => None,
        };
        let first_on_connection = matches!(previous, None | Some(Phase::New(_)));
        let previous_answer = match previous {
            Some(Phase::Waiting(since)) if taken.is_some() => Some(since),
            _ => None,
        };
        let verdict = request_check::check_request(&request);
        if verdict.is_err() && matches!(arrival, Arrival::Admitted { .. }) {
            connections.mark_ending(peer.as_ref());
        }
        let body_complete = verdict
            .as_ref()
            .is_ok_and(|head| request_check::body_read_with_head(&request, head));
        let side = ClientSide {
            http10: *request.http_version() == HTTPVersion(1, 0),
            keep_alive: request_check::client_keeps_alive(&request),
            head_request: *request.method() == Method::Head,
        };
        Exchange {
            request,
            verdict,
            side,
            peer,
            connections: Arc::clone(connections),
            stamps: Stamps {
                previous_answer,
                taken,
                ..Stamps::default()
            },
            first_on_connection,
            arrival,
            body_complete,
        }
    }

    /// Whether this request came from a connection tinylb had already ended.
    pub fn is_from_ended_connection(&self) -> bool {
        self.arrival == Arrival::FromEndedConnection
    }

    /// Whether it may come from a new connection on the address and port of one tinylb ended:
    /// [`Exchange::settle`] decides, on a thread that may wait.
    pub fn is_undecided(&self) -> bool {
        self.arrival == Arrival::Undecided
    }

    /// Decides an undecided request (see [`Connections::settle`]): afterwards it is either a
    /// new connection's, admitted as any other, or the ended connection's.
    pub fn settle(&mut self) {
        if self.arrival != Arrival::Undecided {
            return;
        }
        self.arrival = if self.connections.settle(self.peer.as_ref()) {
            self.connections.arrive(self.peer.as_ref())
        } else {
            Arrival::FromEndedConnection
        };
        if let Arrival::Admitted { previous } = self.arrival {
            self.first_on_connection = matches!(previous, None | Some(Phase::New(_)));
            if self.verdict.is_err() {
                self.connections.mark_ending(self.peer.as_ref());
            }
        }
    }

    /// Whether its client has left: its FIN or reset arrived while it waited.
    pub fn client_gone(&self) -> bool {
        self.connections.is_gone(self.peer.as_ref())
    }

    /// Its connection (the client's address and port) and client address, which decide whose
    /// turn it is (see `tinylb::dispatch`).
    pub fn turn_key(&self) -> (SocketAddr, IpAddr) {
        let peer = self
            .peer
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        (peer, peer.ip())
    }

    /// Never answered: the connection ends (its read side shut first, so a body left unread is
    /// not waited for), and nothing is written. A connection already over is not looked for
    /// again: by its address and port alone, a newer connection could be found.
    pub fn discard(self) {
        let peer = self.peer.as_ref();
        if self.is_from_ended_connection() {
            self.connections.finish_ending(peer);
        } else if !self.client_gone() {
            self.connections.end(peer);
        }
        drop(self.request.into_writer());
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

    /// The request body as the backend side reads it, at no less than `pace`. Only a request
    /// that passed its check has one to read.
    pub fn body(&mut self, pace: Pace) -> ClientBody<'_> {
        match &self.verdict {
            Ok(head) => ClientBody::new(
                &mut self.request,
                head,
                &self.connections,
                self.peer,
                pace,
                &mut self.body_complete,
            ),
            Err(_) => ClientBody::empty(&self.connections, &mut self.body_complete),
        }
    }

    /// Answers with tinylb's own short answer; `answer.close` ends the connection after it.
    pub fn answer(self, answer: &Answer, buffers: &mut Buffers) -> Delivered {
        let peer = self.peer;
        let close = answer.close || self.must_close();
        let answer = &Answer { close, ..*answer };
        // Ended first: the request's body reader, dropped with it, would otherwise wait for
        // the whole of a body nobody reads.
        let ending = close.then(|| self.connections.end(peer.as_ref()));
        let mut writer = self.request.into_writer();
        let written = answer::write_answer(&mut *writer, &self.side, answer, buffers);
        if let Some(Some(socket)) = &ending {
            socket.shutdown(Shutdown::Write);
        }
        self.connections
            .answered(peer.as_ref(), self.side.keep_alive && !close);
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
            cut_short: None,
        }
    }

    /// Whether the answer must end the connection: part of the body is still unread, or the
    /// client would keep the connection but the process is draining (see
    /// [`Connections::close_every_connection`]) or tinylb ended it meanwhile.
    fn must_close(&self) -> bool {
        !self.body_complete
            || (self.side.keep_alive
                && (self.connections.closing_all()
                    || self.connections.is_ending(self.peer.as_ref())))
    }

    /// Relays a backend's answer at no less than `pace`; ends the connection when the answer's
    /// framing requires it. `forwarded_server` adds the seed article's `X-Forwarded-Server`
    /// header.
    pub fn relay(
        self,
        response: Response,
        forwarded_server: Option<&str>,
        pace: Pace,
        buffers: &mut Buffers,
    ) -> Delivered {
        let peer = self.peer;
        let must_close = self.must_close();
        let side = ClientSide {
            keep_alive: self.side.keep_alive && !must_close,
            ..self.side
        };
        let ending = must_close.then(|| self.connections.end(peer.as_ref()));
        let mut writer = self.request.into_writer();
        let pace = SendPace {
            rule: pace,
            connections: Some(&self.connections),
            peer,
        };
        let relayed = relay::relay_response(
            &mut *writer,
            response,
            &side,
            forwarded_server,
            pace,
            buffers,
        );
        let RelayOutcome {
            status,
            body_bytes,
            cut_short,
            hang_up,
        } = relayed.outcome(peer);
        let ending = match (ending, hang_up) {
            (Some(ending), _) => ending,
            (None, true) => self.connections.end(peer.as_ref()),
            (None, false) => None,
        };
        if let Some(socket) = ending {
            match cut_short {
                // What is still queued for a reader that slow would hold the connection open
                // for as long again: drop it.
                Some(CutShort::TooSlow) => socket.reset(),
                _ => socket.shutdown(Shutdown::Write),
            }
        }
        self.connections
            .answered(peer.as_ref(), side.keep_alive && !hang_up);
        drop(writer);
        Delivered {
            status,
            body_bytes,
            cut_short,
        }
    }

    /// Answers `101 Switching Protocols` with `headers` (end-to-end ones) and hands over the
    /// connection's two ends. Gives the exchange back if tinylb's duplicate of the client
    /// socket cannot be made, before anything was written.
    pub fn switch_protocols<'a>(
        self,
        protocol: &str,
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Switched, Box<Exchange>> {
        let found = self
            .peer
            .and_then(|peer| find_client_socket(peer, self.connections.local_port()));
        let Some(socket) = found.map(|own| own.stream) else {
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
