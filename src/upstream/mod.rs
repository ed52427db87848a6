//! The backend side of the proxy: everything that knows ureq. It builds the request the backend
//! gets ([`Outgoing`]), keeps the connections to each backend origin ([`Connections`]: two ureq
//! Agents and a cached address, shared by the backends on that origin, with one budget for
//! idle connections over all origins: [`share_connections`]), sorts ureq's errors into [`crate::failure::Failure`]s, runs the health check's HEAD, and does
//! upgrade handshakes over a socket of its own ([`handshake()`]), because ureq cannot hand a
//! connection over after a `101`.
//!
//! The rest of tinylb sees only tinylb's types: an [`Outgoing`] request, a [`Response`] whose
//! body is a plain reader, a [`crate::failure::Failure`]. If ureq is ever replaced, this folder changes.

mod connections;
mod errors;
mod first_write;
mod handshake;
mod idle;
mod interim;
mod origins;
mod request;
mod resolve;
mod response_head;

use std::io::{self, Read};
use std::time::Instant;

use crate::failure::Failure;
use crate::message::framing::{AnswerBody, answer_body_of};
use crate::message::http;

pub use connections::{AgentSettings, Connections, HealthCheck, SendFailed};
pub use handshake::{Handshake, HandshakeTimeouts, Switched, handshake};
pub use idle::IdleBudget;
pub use origins::share_connections;
pub use request::{ClientHead, Outgoing};
/// A backend's answer, its head read and checked, its body not yet.
pub struct Response {
    inner: http::Response<ureq::Body>,
    connected: Option<Instant>,
    body: AnswerBody,
}

impl Response {
    /// Checks an answer's head before anything of it is relayed: a status outside 100–599, or
    /// a framing tinylb cannot relay (see [`crate::message::framing`]), is a broken answer
    /// (502), and the connection it came on is dropped with it.
    fn checked(
        inner: http::Response<ureq::Body>,
        head_request: bool,
        connected: Option<Instant>,
    ) -> Result<Response, Failure> {
        let status = inner.status().as_u16();
        if status > 599 {
            return Err(Failure::Broken(format!("status {status} (above 599)")));
        }
        let body = answer_body_of(status, head_request, inner.headers())
            .map_err(|bad| Failure::Broken(format!("answer framed with {}", bad.reason())))?;
        Ok(Response {
            inner,
            connected,
            body,
        })
    }

    /// The status code.
    pub fn status(&self) -> http::StatusCode {
        self.inner.status()
    }

    /// When the connection that answered was ready (the request's first byte written), for the
    /// stage timers; `None` when the timers are off.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected
    }

    /// The headers as the backend sent them.
    pub fn headers(&self) -> &http::HeaderMap {
        self.inner.headers()
    }

    /// How the body is framed, as the backend sent it (already checked).
    pub fn body_framing(&self) -> AnswerBody {
        self.body
    }

    /// The body, read as it arrives. Dropping it at its end returns the backend connection to
    /// the pool.
    pub fn into_body(self) -> ResponseBody {
        ResponseBody(self.inner.into_body().into_reader())
    }
}

/// A backend answer's body as a plain reader.
pub struct ResponseBody(ureq::BodyReader<'static>);

impl Read for ResponseBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
