//! The checks a request head must pass before anything is forwarded. tiny_http parses leniently
//! (it reads any Transfer-Encoding as chunked, ignores a Content-Length it cannot parse, takes the
//! first of two), and a proxy that forwards what its parser misread is the classic request
//! smuggling hole. So ambiguous framing is refused here, before a backend sees a byte.

use tiny_http::{HTTPVersion, Request};

/// How the client's request body is framed, once the head has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, decoded by tiny_http.
    Chunked,
}

/// A request refused before forwarding; the connection is closed after the answer because the
/// body (if any) was not read and the next request's start is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400 for a malformed request, 501 for what tinylb does not implement.
    pub status: u16,
    /// One line for the client and the log.
    pub reason: &'static str,
}

fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

/// Longest request target forwarded. tiny_http reads any length; the http crate refuses
/// targets past 64 KiB with a vaguer error, and nginx's default limit is 8 KiB.
pub const MAX_TARGET_BYTES: usize = 16 * 1024;
/// Largest request head (target plus header lines) forwarded, as nginx's default (4 x 8 KiB).
/// ureq's output buffer for each backend connection is sized from it (`backend.rs`), and every
/// byte of that buffer is memory held by each pooled connection.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Checks size, framing, Host and upgrades; returns how to read the body.
pub fn check_request(request: &Request) -> Result<BodyFraming, Rejection> {
    if request.url().len() > MAX_TARGET_BYTES {
        return Err(reject(414, "the request target is longer than 16 KiB"));
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
    if values("Upgrade").next().is_some()
        || values("Connection").any(|v| v.to_ascii_lowercase().contains("upgrade"))
    {
        return Err(reject(
            501,
            "protocol upgrades (WebSocket, h2c) are not supported",
        ));
    }
    let codings: Vec<&str> = values("Transfer-Encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let has_transfer_encoding = !codings.is_empty();
    let only_chunked = codings.len() == 1 && codings[0].eq_ignore_ascii_case("chunked");
    let mut lengths = values("Content-Length").peekable();
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

/// Digits only: no sign, no spaces inside, no list.
fn parse_content_length(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

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
    use super::parse_content_length;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length("42"), Some(42));
        assert_eq!(parse_content_length(" 7 "), Some(7));
        assert_eq!(parse_content_length("abc"), None);
        assert_eq!(parse_content_length("+5"), None);
        assert_eq!(parse_content_length("5, 5"), None);
        assert_eq!(parse_content_length(""), None);
    }
}
