//! Who may ask the admin listener for what. It has no passwords (keep it on localhost), but a
//! web page open in the operator's browser can reach localhost too, so two checks stand
//! between such a page and the listener:
//!
//! - **Host.** A page on another site that re-points its own name at 127.0.0.1 (DNS rebinding)
//!   can read the answers, but its requests still carry its own name in `Host`. The listener
//!   answers only to `localhost` and IP literals (which is what its own address is); anything
//!   else gets `421 Misdirected Request`.
//! - **Proof of intent.** A page may send a `POST` anywhere without asking (a CORS "simple"
//!   request, e.g. `fetch(url, {method: 'POST', mode: 'no-cors'})`); it may not add a header
//!   of its own without the browser first asking the listener's permission (a preflight
//!   `OPTIONS`, which the listener never grants). So every request that changes something
//!   must carry [`INTENT_HEADER`]; `curl -H 'X-Tinylb-Admin: 1'` is the one flag it costs.
//!   This is the "custom request header" defence of OWASP's CSRF cheat sheet.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The header a request that changes state must carry, with any value.
pub const INTENT_HEADER: &str = "X-Tinylb-Admin";

/// Why a request is refused before it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` names something other than localhost or an IP address: `421`.
    ForeignHost,
    /// A request that may change state came without [`INTENT_HEADER`]: `403`.
    NoIntent,
}

/// Judges a request by its method, its `Host` header (`None` when it has none: HTTP/1.0 from
/// a script, never a browser) and whether it carries [`INTENT_HEADER`].
pub fn judge(method: &str, host: Option<&str>, has_intent: bool) -> Result<(), Refusal> {
    if host.is_some_and(|host| !is_local_name(host)) {
        return Err(Refusal::ForeignHost);
    }
    // Only reads are safe without proof: every other method, known or not, might change
    // something, now or once a route for it is added.
    let reads = matches!(method, "GET" | "HEAD");
    if !reads && !has_intent {
        return Err(Refusal::NoIntent);
    }
    Ok(())
}

/// Whether a `Host` value names `localhost` or an IP literal, with or without a port.
fn is_local_name(host: &str) -> bool {
    let (name, port) = split_port(host.trim());
    if !port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(inside) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inside.parse::<Ipv6Addr>().is_ok();
    }
    name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("localhost.")
        || name.parse::<Ipv4Addr>().is_ok()
}

/// The name and what follows its colon, if any: after the `]` of a bracketed IPv6 address,
/// else after the first colon (an IPv6 address without brackets then leaves a "port" that is
/// not a number, and is refused).
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.rfind("]:") {
            Some(end) => (&host[..=end], Some(&host[end + 2..])),
            None => (host, None),
        };
    }
    match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_this_machine_pass_and_others_get_421() {
        for (host, local) in [
            ("localhost", true),
            ("LocalHost:9090", true),
            ("localhost.", true),
            ("127.0.0.1", true),
            ("127.0.0.1:9090", true),
            ("10.1.2.3", true),
            ("[::1]", true),
            ("[::1]:9090", true),
            (" 127.0.0.1:9090 ", true),
            ("evil.example", false),
            ("evil.example:9090", false),
            ("localhost.evil.example", false),
            ("127.0.0.1.nip.io", false),
            ("::1", false),
            ("[::1", false),
            ("[evil]:9090", false),
            ("[::1]9090", false),
            ("[::1]:x99", false),
            ("127.0.0.1:", false),
            ("127.0.0.1:90x", false),
            ("localhost:9090:1", false),
            ("", false),
        ] {
            assert_eq!(is_local_name(host), local, "{host:?}");
            let expected = if local {
                Ok(())
            } else {
                Err(Refusal::ForeignHost)
            };
            assert_eq!(judge("GET", Some(host), false), expected, "{host:?}");
        }
    }

    #[test]
    fn only_reads_go_without_the_intent_header() {
        for (method, host, intent, expected) in [
            ("GET", None, false, Ok(())),
            ("HEAD", Some("localhost"), false, Ok(())),
            ("POST", Some("localhost"), false, Err(Refusal::NoIntent)),
            ("POST", None, false, Err(Refusal::NoIntent)),
            ("POST", Some("127.0.0.1:9090"), true, Ok(())),
            ("PUT", Some("localhost"), false, Err(Refusal::NoIntent)),
            ("DELETE", Some("localhost"), true, Ok(())),
            ("OPTIONS", Some("localhost"), false, Err(Refusal::NoIntent)),
            ("get", Some("localhost"), false, Err(Refusal::NoIntent)),
            // The host is judged first: a foreign page gets 421 even with the header.
            (
                "POST",
                Some("evil.example"),
                true,
                Err(Refusal::ForeignHost),
            ),
            (
                "POST",
                Some("evil.example"),
                false,
                Err(Refusal::ForeignHost),
            ),
        ] {
            assert_eq!(
                judge(method, host, intent),
                expected,
                "{method} {host:?} {intent}"
            );
        }
    }
}
