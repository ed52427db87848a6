//! Writing answers to the client through tiny_http's raw `into_writer()`: status line, headers
//! and body framing are all tinylb's, because tiny_http's own `Response` would re-chunk large
//! bodies, buffer whole bodies for HTTP/1.0 clients, and write a final chunk even when the
//! backend's body broke off (docs/crates.md). Bodies stream through one fixed buffer.
//!
//! The framing written to the client follows from how the backend's body was read, one
//! decision for every path ([`crate::message::framing`], whose table is also in
//! docs/framing.md):
//!
//! | the backend's body, as read | to an HTTP/1.1 client | to an HTTP/1.0 client |
//! |---|---|---|
//! | none (`HEAD`, `1xx`, `204`, `304`) | no body; `Content-Length` passed on for `HEAD` and `304` only | the same |
//! | `Content-Length: n` (one value, or equal ones) | `Content-Length: n`, head and first bytes in one write | the same |
//! | chunked, or until the backend closes | `Transfer-Encoding: chunked`, the head written before the body | until close |
//! | any other framing | never relayed: 502 before anything is written | the same |
//!
//! The backend's own `Content-Length` and `Transfer-Encoding` are never copied, so a header its
//! `Connection` names cannot take the framing away.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use super::send_pace::{PacedWriter, SendPace};
use crate::message::ConnectionTokens;
use crate::message::framing::AnswerBody;
use crate::message::http::{self, header};
use crate::upstream::Response;

/// Bytes of body moved per read; large enough that a 64 MiB download costs few system calls.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Room before the data for a chunk-size line (16 hex digits and CRLF) and after it for CRLF.
const LINE_ROOM: usize = 18;

/// What the client's request says about how to answer it.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    /// An HTTP/1.0 client cannot read chunked bodies.
    pub http10: bool,
    /// tiny_http will read another request from this connection after this one.
    pub keep_alive: bool,
    /// HEAD: headers only, whatever the backend says about length.
    pub head_request: bool,
}

impl ClientSide {
    /// `Connection: close` when tiny_http will close; `keep-alive` for HTTP/1.0 clients that
    /// asked for it (they close otherwise).
    pub(super) fn push_connection_header(&self, out: &mut Vec<u8>, must_close: bool) {
        if must_close || !self.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
}

/// A worker's reusable buffers, allocated once so the hot path does not allocate for bodies.
pub struct Buffers {
    pub(super) head: Vec<u8>,
    body: Box<[u8]>,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            head: Vec::with_capacity(4096),
            body: vec![0; LINE_ROOM + CHUNK_SIZE + 2].into_boxed_slice(),
        }
    }
}

/// How relaying a backend's response ended.
#[derive(Debug)]
pub enum Relayed {
    /// Everything the backend sent reached the client.
    Complete { status: u16, body_bytes: u64 },
    /// The client read slower than `clientSendMinRate` allows: the answer was cut off.
    ClientTooSlow { status: u16, body_bytes: u64 },
    /// The client stopped reading or went away.
    ClientGone {
        status: u16,
        body_bytes: u64,
        error: io::Error,
    },
    /// The backend's body broke off; the client got a transfer it can tell is truncated, and
    /// the caller must end the connection.
    BackendFailed {
        status: u16,
        body_bytes: u64,
        error: io::Error,
    },
    /// The body has no length and the client speaks HTTP/1.0: it ends at connection close, so
    /// the caller must end the connection.
    CloseDelimited { status: u16, body_bytes: u64 },
}

/// Why a client's answer stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutShort {
    /// The client read slower than `clientSendMinRate`.
    TooSlow,
    /// The client went away, or the backend's body broke off.
    Broken,
}

/// What a relay's ending means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RelayOutcome {
    pub status: u16,
    pub body_bytes: u64,
    /// Why the answer stopped short of what the backend sent, if it did.
    pub cut_short: Option<CutShort>,
    /// The connection must end: the answer was cut short, or its body ends with the close.
    pub hang_up: bool,
}

impl Relayed {
    /// What it means for the connection, with its one log line (to `peer`).
    pub(super) fn outcome(self, peer: Option<SocketAddr>) -> RelayOutcome {
        let (status, body_bytes, cut_short, hang_up) = match self {
            Relayed::Complete { status, body_bytes } => (status, body_bytes, None, false),
            Relayed::ClientGone {
                status,
                body_bytes,
                error,
            } => {
                log::debug!("{status} to {peer:?}: client went away ({error})");
                (status, body_bytes, Some(CutShort::Broken), true)
            }
            Relayed::ClientTooSlow { status, body_bytes } => {
                log::info!(
                    "{status} to {peer:?}: cut off after {body_bytes} body bytes, read slower than clientSendMinRate"
                );
                (status, body_bytes, Some(CutShort::TooSlow), true)
            }
            Relayed::BackendFailed {
                status,
                body_bytes,
                error,
            } => {
                log::warn!(
                    "{status} to {peer:?}: backend body broke off ({error}); closing the client connection"
                );
                (status, body_bytes, Some(CutShort::Broken), true)
            }
            Relayed::CloseDelimited { status, body_bytes } => {
                log::debug!("{status} to {peer:?}: connection closed to end the body");
                (status, body_bytes, None, true)
            }
        };
        RelayOutcome {
            status,
            body_bytes,
            cut_short,
            hang_up,
        }
    }
}

/// How the response body is framed towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Streams a backend's response to the client: status, end-to-end headers, then the body in
/// framing tinylb chooses, cut off if the client reads slower than `pace` allows.
/// `forwarded_server` adds the seed article's debug header.
pub fn relay_response(
    writer: &mut dyn Write,
    response: Response,
    client: &ClientSide,
    forwarded_server: Option<&str>,
    pace: SendPace<'_>,
    buffers: &mut Buffers,
) -> Relayed {
    let mut paced = PacedWriter::new(writer, pace);
    let relayed = relay_to(&mut paced, response, client, forwarded_server, buffers);
    match relayed {
        Relayed::ClientGone {
            status, body_bytes, ..
        } if paced.was_too_slow() => Relayed::ClientTooSlow { status, body_bytes },
        relayed => relayed,
    }
}

fn relay_to(
    writer: &mut dyn Write,
    response: Response,
    client: &ClientSide,
    forwarded_server: Option<&str>,
    buffers: &mut Buffers,
) -> Relayed {
    let code = response.status().as_u16();
    // tinylb frames the answer itself, from what the backend's framing was read as: the
    // backend's own Content-Length and Transfer-Encoding are never copied, so no `Connection`
    // token can take the framing away.
    let (framing, passed_on_length) = match response.body_framing() {
        AnswerBody::None { length } => (Framing::None, length),
        AnswerBody::Length(n) => (Framing::Length(n), Some(n)),
        AnswerBody::Chunked | AnswerBody::UntilClose if client.http10 => {
            (Framing::UntilClose, None)
        }
        AnswerBody::Chunked | AnswerBody::UntilClose => (Framing::Chunked, None),
    };

    let Buffers { head, body } = buffers;
    head.clear();
    push_status_line(head, code);
    let headers = response.headers();
    let tokens = ConnectionTokens::from_headers(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| ("connection", v.as_bytes())),
    );
    for (name, value) in headers {
        let replaced = name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || (forwarded_server.is_some() && name.as_str() == "x-forwarded-server");
        if replaced || tokens.is_hop_by_hop(name.as_str()) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(server) = forwarded_server {
        head.extend_from_slice(b"X-Forwarded-Server: ");
        head.extend_from_slice(server.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = passed_on_length {
        // Written into the buffer, no allocation.
        let _ = write!(head, "Content-Length: {length}\r\n");
    }
    if framing == Framing::Chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    client.push_connection_header(head, framing == Framing::UntilClose);
    head.extend_from_slice(b"\r\n");

    if framing == Framing::None {
        return match writer.write_all(head).and_then(|()| writer.flush()) {
            Ok(()) => Relayed::Complete {
                status: code,
                body_bytes: 0,
            },
            Err(error) => Relayed::ClientGone {
                status: code,
                body_bytes: 0,
                error,
            },
        };
    }

    // Held in an Option so it can be dropped as soon as the body is complete: that returns the
    // backend connection to the keep-alive pool before the last write to the client, so the
    // client's next request finds it there.
    // A body of known length goes out with the head in one write. A chunked or close-delimited
    // one is a stream whose first bytes may take long (or never parse): its head goes first,
    // so the client is not left waiting for it until `backendTimeout`.
    let streamed = matches!(
        response.body_framing(),
        AnswerBody::Chunked | AnswerBody::UntilClose
    );
    let mut reader = Some(response.into_body());
    let mut body_bytes = 0u64;
    let mut first = true;
    if streamed {
        if let Err(error) = writer.write_all(head).and_then(|()| writer.flush()) {
            return Relayed::ClientGone {
                status: code,
                body_bytes,
                error,
            };
        }
        head.clear();
        first = false;
    }
    loop {
        let data = &mut body[LINE_ROOM..LINE_ROOM + CHUNK_SIZE];
        let Some(source) = reader.as_mut() else {
            break;
        };
        let read = match source.read(data) {
            Ok(n) => n,
            Err(error) => {
                // Send what we have (the head, at least) but never a final chunk.
                let _ = writer.write_all(head).and_then(|()| writer.flush());
                return Relayed::BackendFailed {
                    status: code,
                    body_bytes,
                    error,
                };
            }
        };
        body_bytes += read as u64;
        if read == 0 {
            reader = None;
        }
        let piece: &[u8] = if read == 0 {
            if framing == Framing::Chunked {
                b"0\r\n\r\n"
            } else {
                b""
            }
        } else if framing == Framing::Chunked {
            frame_chunk(body, read)
        } else {
            &body[LINE_ROOM..LINE_ROOM + read]
        };
        let written = if first {
            first = false;
            head.extend_from_slice(piece);
            writer.write_all(head)
        } else {
            writer.write_all(piece)
        };
        if let Err(error) = written.and_then(|()| writer.flush()) {
            return Relayed::ClientGone {
                status: code,
                body_bytes,
                error,
            };
        }
        head.clear();
        if read == 0 {
            break;
        }
    }
    if let Framing::Length(expected) = framing
        && body_bytes != expected
    {
        let error = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "backend body shorter than its Content-Length",
        );
        return Relayed::BackendFailed {
            status: code,
            body_bytes,
            error,
        };
    }
    if framing == Framing::UntilClose {
        return Relayed::CloseDelimited {
            status: code,
            body_bytes,
        };
    }
    Relayed::Complete {
        status: code,
        body_bytes,
    }
}

/// Wraps the `len` data bytes at `buf[LINE_ROOM..]` in chunk framing, in place: the size line
/// goes in the room before the data and CRLF after it, so a chunk costs one write and no copy.
fn frame_chunk(buf: &mut [u8], len: usize) -> &[u8] {
    let size_line = format!("{len:x}\r\n");
    let start = LINE_ROOM - size_line.len();
    buf[start..LINE_ROOM].copy_from_slice(size_line.as_bytes());
    buf[LINE_ROOM + len..LINE_ROOM + len + 2].copy_from_slice(b"\r\n");
    &buf[start..LINE_ROOM + len + 2]
}

pub(super) fn push_status_line(out: &mut Vec<u8>, code: u16) {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_framed_in_place() {
        let mut buf = vec![0u8; LINE_ROOM + 10 + 2];
        buf[LINE_ROOM..LINE_ROOM + 10].copy_from_slice(b"0123456789");
        assert_eq!(frame_chunk(&mut buf, 10), b"a\r\n0123456789\r\n");
    }

    #[test]
    fn unknown_statuses_get_an_empty_reason() {
        let mut out = Vec::new();
        push_status_line(&mut out, 599);
        assert_eq!(out, b"HTTP/1.1 599 \r\n");
        out.clear();
        push_status_line(&mut out, 404);
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\n");
    }
}
