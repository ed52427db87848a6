//! The checks a request head must pass before anything is forwarded. tiny_http parses leniently
//! (it reads any Transfer-Encoding as chunked, ignores a Content-Length it cannot parse, takes the
//! first of two), and a proxy that forwards what its parser misread is the classic request
//! smuggling hole. So ambiguous framing is refused here, before a backend sees a byte.

use tiny_http::{HTTPVersion, Request};

use super::answer::Answer;
use crate::message::{BodyFraming, MAX_HEAD_BYTES};

/// A request refused before forwarding; the connection is closed after the answer because the
/// body (if any) was not read and the next request's start is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400 for a malformed request, 501 for what tinylb does not implement.
    pub status: u16,
    /// One line for the client and the log.
    pub reason: &'static str,
}

impl Rejection {
    /// The answer that refuses the request and ends its connection.
    pub fn answer(&self) -> Answer {
        Answer::new(self.status, self.reason, true)
    }
}

fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

/// Longest request target forwarded. tiny_http reads any length; the http crate refuses
/// targets past 64 KiB with a vaguer error, and nginx's default limit is 8 KiB.
pub const MAX_TARGET_BYTES: usize = 16 * 1024;
/// Most header fields a request may have, as Apache's `LimitRequestFields` (HAProxy allows
/// 101). Past it the answer is 431 and nothing is forwarded.
pub const MAX_HEADER_FIELDS: usize = 100;

/// What the checks learned about a request head that passed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// How the body is framed.
    pub framing: BodyFraming,
    /// tiny_http hands over the connection's raw bytes as the body, not a decoded body: it does
    /// so whenever the first `Connection` header mentions `upgrade`. tinylb must then frame the
    /// body itself, and tiny_http reads no further request from the connection.
    pub body_is_raw: bool,
    /// The protocols to offer the backend (`websocket`), when the request is an upgrade tinylb
    /// can carry out as a tunnel. Offers it will not carry out (`h2c`) are not here: they are
    /// dropped and the request is served as HTTP/1.1.
    pub upgrade: Option<String>,
}

impl Head {
    /// Whether the request has no body (so none is left unread when it is refused).
    pub fn has_no_body(&self) -> bool {
        self.framing == BodyFraming::Empty
    }
}

/// Checks size, framing and Host; returns how to read the body and whether to tunnel.
pub fn check_request(request: &Request) -> Result<Head, Rejection> {
    if request.url().len() > MAX_TARGET_BYTES {
        return Err(reject(414, "the request target is longer than 16 KiB"));
    }
    if request.headers().len() > MAX_HEADER_FIELDS {
        return Err(reject(431, "the request has more than 100 header fields"));
    }
    let head_bytes = request.url().len()
        + request
            .headers()
            .iter()
            .map(|h| h.field.as_str().len() + h.value.len() + 4)
            .sum::<usize>();
    if head_bytes > MAX_HEAD_BYTES {
        return Err(reject(431, "the request headers are larger than 32 KiB"));
    }
    let values = |name: &'static str| {
        request
            .headers()
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    let is_http11 = *request.http_version() >= HTTPVersion(1, 1);
    if is_http11 && values("Host").next().is_none() {
        return Err(reject(400, "HTTP/1.1 request without a Host header"));
    }
    if values("Host").count() > 1 {
        return Err(reject(400, "more than one Host header"));
    }
    let framing = body_framing(values("Transfer-Encoding"), values("Content-Length"))?;
    let body_is_raw = values("Connection")
        .next()
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    let names_upgrade = values("Connection")
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    // A tunnel needs the raw connection from tiny_http, an HTTP/1.1 handshake without a body
    // (a body would have to be relayed before the switch), and a protocol worth tunnelling.
    let upgrade = (body_is_raw && names_upgrade && is_http11 && framing == BodyFraming::Empty)
        .then(|| tunnelled_protocols(values("Upgrade")))
        .flatten();
    Ok(Head {
        framing,
        body_is_raw,
        upgrade,
    })
}

/// The body framing from the `Transfer-Encoding` and `Content-Length` values. Anything
/// ambiguous is refused: tiny_http reads any Transfer-Encoding as chunked and ignores a
/// Content-Length it cannot parse, so a proxy forwarding what it misread would smuggle.
fn body_framing<'a>(
    transfer_encodings: impl Iterator<Item = &'a str>,
    lengths: impl Iterator<Item = &'a str>,
) -> Result<BodyFraming, Rejection> {
    let codings: Vec<&str> = transfer_encodings
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let has_transfer_encoding = !codings.is_empty();
    let only_chunked = codings.len() == 1 && codings[0].eq_ignore_ascii_case("chunked");
    let mut lengths = lengths.peekable();
    let has_content_length = lengths.peek().is_some();
    if has_transfer_encoding && has_content_length {
        return Err(reject(400, "both Content-Length and Transfer-Encoding"));
    }
    if has_transfer_encoding {
        return if only_chunked {
            Ok(BodyFraming::Chunked)
        } else {
            Err(reject(
                501,
                "unsupported Transfer-Encoding; only chunked is accepted",
            ))
        };
    }
    let mut length: Option<u64> = None;
    for value in lengths {
        let parsed = parse_content_length(value).ok_or(reject(400, "invalid Content-Length"))?;
        if !addressable(parsed, usize::MAX as u64) {
            return Err(reject(
                400,
                "Content-Length is larger than this machine can address",
            ));
        }
        if length.is_some_and(|l| l != parsed) {
            return Err(reject(400, "conflicting Content-Length headers"));
        }
        length = Some(parsed);
    }
    Ok(match length {
        None | Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
    })
}

/// The offered protocols tinylb passes on, comma-separated, or `None` if none is left. HTTP/2
/// offers (`h2c`, what curl's `--http2` and Java's HttpClient send) are dropped: a tunnel would
/// hide every later request from the balancer, and RFC 9110 section 7.8 lets a server ignore
/// an upgrade it will not perform.
fn tunnelled_protocols<'a>(upgrade_values: impl Iterator<Item = &'a str>) -> Option<String> {
    let kept: Vec<&str> = upgrade_values
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_http2(p))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

fn is_http2(protocol: &str) -> bool {
    let name = protocol.split('/').next().unwrap_or(protocol);
    ["h2c", "h2"]
        .iter()
        .any(|p| protocol.eq_ignore_ascii_case(p))
        || (name.eq_ignore_ascii_case("HTTP") && protocol[name.len()..].starts_with("/2"))
}

/// Whether tiny_http can take a body of `length` on a machine whose `usize` ends at `max`: it
/// parses Content-Length as a `usize`, and one it cannot parse means "no body" to it, so the
/// body's bytes would be read as the next request (on 32-bit targets, anything from 4 GiB).
fn addressable(length: u64, max: u64) -> bool {
    length <= max
}

/// Digits only: no sign, no spaces inside, no list.
fn parse_content_length(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Whether the whole body was read along with the head, so that nothing of it is left in the
/// connection: there is none, or tiny_http read it at once (it does for a Content-Length up to
/// 1 KiB without `Expect: 100-continue`; docs/crates.md).
pub fn body_read_with_head(request: &Request, head: &Head) -> bool {
    let expects_continue = request.headers().iter().any(|h| h.field.equiv("Expect"));
    match head.framing {
        BodyFraming::Empty => true,
        BodyFraming::Length(n) => {
            n <= TINY_HTTP_READS_AHEAD && !expects_continue && !head.body_is_raw
        }
        BodyFraming::Chunked => false,
    }
}

/// The largest body tiny_http reads with its head (`new_request` in its request.rs).
const TINY_HTTP_READS_AHEAD: u64 = 1024;

/// Whether tiny_http keeps this connection open after the response; mirrors its own rule
/// (tiny_http client.rs), which looks at the first `Connection` header only.
pub fn client_keeps_alive(request: &Request) -> bool {
    let connection = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Connection"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    let http10 = *request.http_version() == HTTPVersion(1, 0);
    match connection {
        Some(v) if v.contains("close") || v.contains("upgrade") => false,
        Some(v) => !http10 || v.contains("keep-alive"),
        None => !http10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length("42"), Some(42));
        assert_eq!(parse_content_length(" 7 "), Some(7));
        assert_eq!(parse_content_length("abc"), None);
        assert_eq!(parse_content_length("+5"), None);
        assert_eq!(parse_content_length("5, 5"), None);
        assert_eq!(parse_content_length(""), None);
    }

    #[test]
    fn a_length_a_32_bit_machine_cannot_hold_is_not_addressable_there() {
        let u32_max = u64::from(u32::MAX);
        assert!(addressable(u32_max, u32_max));
        assert!(!addressable(u32_max + 1, u32_max));
        assert!(addressable(u64::MAX, u64::MAX));
        assert!(addressable(0, 0));
    }

    #[test]
    fn http2_offers_are_dropped_and_others_kept() {
        let offer = |v: &'static str| tunnelled_protocols(std::iter::once(v));
        assert_eq!(offer("h2c"), None);
        assert_eq!(offer("H2C, HTTP/2.0"), None);
        assert_eq!(offer("websocket"), Some("websocket".into()));
        assert_eq!(offer("h2c, websocket"), Some("websocket".into()));
        assert_eq!(offer("HTTP/1.1, foo/2"), Some("HTTP/1.1, foo/2".into()));
        assert_eq!(offer(" , "), None);
    }

    #[test]
    fn framing_refuses_every_ambiguous_transfer_encoding() {
        let framing = |te: &[&'static str], cl: &[&'static str]| {
            body_framing(te.iter().copied(), cl.iter().copied()).map_err(|r| r.status)
        };
        assert_eq!(framing(&["chunked"], &[]), Ok(BodyFraming::Chunked));
        assert_eq!(framing(&["CHUNKED"], &[]), Ok(BodyFraming::Chunked));
        assert_eq!(framing(&[], &["5"]), Ok(BodyFraming::Length(5)));
        assert_eq!(framing(&[], &["0"]), Ok(BodyFraming::Empty));
        assert_eq!(framing(&[], &["5", "5"]), Ok(BodyFraming::Length(5)));
        assert_eq!(framing(&["chunked"], &["5"]), Err(400));
        assert_eq!(framing(&["chunked, identity"], &[]), Err(501));
        assert_eq!(framing(&["identity, chunked"], &[]), Err(501));
        assert_eq!(framing(&["xchunked"], &[]), Err(501));
        assert_eq!(framing(&["chunked", "chunked"], &[]), Err(501));
        assert_eq!(framing(&[], &["5", "6"]), Err(400));
        assert_eq!(framing(&[], &["-1"]), Err(400));
    }
}
