//! The HTTP/1.1 message rules both sides of the proxy share: which headers cross it, how a
//! body is framed, and how large a head may be. Hop-by-hop headers describe one connection, not
//! the message, so they are removed in both directions (RFC 9110 section 7.6.1), together with
//! every header the `Connection` header names.

pub mod framing;

/// The `http` crate's types (header maps, status codes, URIs), as ureq re-exports them: the
/// vocabulary both sides and the config use for what HTTP itself defines.
pub use ureq::http;

/// How a request body is framed, once the client's head has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Largest request head (target plus header lines) forwarded, as nginx's default (4 x 8 KiB).
/// The backend side sizes its per-connection output buffer from it, and every byte of that
/// buffer is memory held by each pooled connection.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Largest response head tinylb accepts from a backend; a larger one is a broken answer (502),
/// as in nginx (4 or 8 KiB by default) and HAProxy (about 15 KiB).
pub const MAX_RESPONSE_HEAD_BYTES: usize = 32 * 1024;

/// Headers that never cross a proxy, in lower case.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Only meaningful with an `Upgrade: h2c` offer, which tinylb never passes on.
    "http2-settings",
];

/// Headers a `Connection` token cannot remove: they are not hop-by-hop (RFC 9110 section
/// 7.6.1 lets a sender name only those), and tinylb itself decides them: the target's `Host`,
/// the body's framing, and what tinylb adds about the client and itself. A token naming one
/// of them is ignored.
const NEVER_NAMED_AWAY: &[&str] = &[
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-server",
];

/// The header names one message's `Connection` headers list, lower-cased.
#[derive(Debug, Default)]
pub struct ConnectionTokens(Vec<String>);

impl ConnectionTokens {
    /// Collects the tokens of every `Connection` header among `headers`.
    pub fn from_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut tokens = Vec::new();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("connection") {
                let value = String::from_utf8_lossy(value);
                tokens.extend(
                    value
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty() && !NEVER_NAMED_AWAY.contains(&t.as_str())),
                );
            }
        }
        ConnectionTokens(tokens)
    }

    /// Whether a header with this name belongs to the connection rather than the message.
    pub fn is_hop_by_hop(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self.0.iter().any(|t| name.eq_ignore_ascii_case(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_fixed_and_listed_hop_by_hop_headers() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("Connection", b"close, X-Secret".as_slice()),
            ("X-Secret", b"1"),
            ("Keep-Alive", b"timeout=5"),
            ("Set-Cookie", b"a=1"),
        ];
        let tokens = ConnectionTokens::from_headers(headers.iter().copied());
        assert!(tokens.is_hop_by_hop("x-secret"));
        assert!(tokens.is_hop_by_hop("Keep-Alive"));
        assert!(tokens.is_hop_by_hop("Transfer-Encoding"));
        assert!(!tokens.is_hop_by_hop("Set-Cookie"));
    }

    #[test]
    fn framing_host_and_forwarding_headers_cannot_be_named_away() {
        let headers: Vec<(&str, &[u8])> = vec![(
            "Connection",
            b"Host, content-length, X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, \
              x-forwarded-server, X-Custom"
                .as_slice(),
        )];
        let tokens = ConnectionTokens::from_headers(headers.iter().copied());
        for kept in NEVER_NAMED_AWAY {
            assert!(!tokens.is_hop_by_hop(kept), "{kept}");
        }
        assert!(tokens.is_hop_by_hop("x-custom"));
    }
}
