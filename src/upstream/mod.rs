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
mod origins;
mod request;
mod resolve;
mod response_head;

use std::io::{self, Read};
use std::time::Instant;

use crate::message::http;

pub use connections::{AgentSettings, Connections, HealthCheck};
pub use handshake::{Handshake, HandshakeTimeouts, Switched, handshake};
pub use idle::IdleBudget;
pub use origins::share_connections;
pub use request::{ClientHead, Outgoing};
/// A backend's answer, its head read, its body not yet.
pub struct Response(http::Response<ureq::Body>, Option<Instant>);

impl Response {
    /// The status code.
    pub fn status(&self) -> http::StatusCode {
        self.0.status()
    }

    /// When the connection that answered was ready (the request's first byte written), for the
    /// stage timers; `None` when the timers are off.
    pub fn connected_at(&self) -> Option<Instant> {
        self.1
    }

    /// The headers as the backend sent them.
    pub fn headers(&self) -> &http::HeaderMap {
        self.0.headers()
    }

    /// The body's length when it is known before reading it: ureq knows it for the bodies it
    /// frames itself, and a body framed by tinylb (a declined upgrade) has it only in the header.
    pub fn content_length(&self) -> Option<u64> {
        self.0.body().content_length().or_else(|| {
            let headers = self.0.headers();
            if headers.contains_key(http::header::TRANSFER_ENCODING) {
                return None;
            }
            headers
                .get(http::header::CONTENT_LENGTH)?
                .to_str()
                .ok()?
                .parse()
                .ok()
        })
    }

    /// The body, read as it arrives. Dropping it at its end returns the backend connection to
    /// the pool.
    pub fn into_body(self) -> ResponseBody {
        ResponseBody(self.0.into_body().into_reader())
    }
}

/// A backend answer's body as a plain reader.
pub struct ResponseBody(ureq::BodyReader<'static>);

impl Read for ResponseBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
