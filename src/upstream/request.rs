//! The request as the backend gets it: same method, path and query byte for byte, end-to-end
//! headers kept in order (repeated ones too), hop-by-hop ones dropped, `X-Forwarded-*` added,
//! and a framing header tinylb chose. Built once per client request; each attempt only adds the
//! backend's address.

use std::borrow::Cow;
use std::net::IpAddr;

use ureq::http::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::BackendUrl;
use crate::failure::Failure;
use crate::message::{BodyFraming, ConnectionTokens};

/// The client's request head, as the client side hands it over.
pub struct ClientHead<'a, H> {
    /// The method, as received.
    pub method: &'a str,
    /// The request target, as received.
    pub target: &'a str,
    /// Every header field in order, as (name, value).
    pub headers: H,
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// How the body is framed towards the backend.
    pub framing: BodyFraming,
}

/// A request ready to be sent to any backend.
pub struct Outgoing {
    method: http::Method,
    /// Origin-form path and query.
    path: String,
    headers: HeaderMap,
    /// Whether a body follows the head.
    pub has_body: bool,
}

fn bad(reason: &'static str) -> Failure {
    Failure::BadRequest(reason)
}

impl Outgoing {
    /// Rewrites the client's head for the backends; an error is the 400 the client gets.
    pub fn new<'a, H>(head: ClientHead<'a, H>) -> Result<Outgoing, Failure>
    where
        H: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        let path = origin_form(head.target).ok_or(bad("Bad Request: invalid request target"))?;
        let method = http::Method::from_bytes(head.method.as_bytes())
            .map_err(|_| bad("Bad Request: invalid method"))?;
        let tokens = ConnectionTokens::from_headers(
            head.headers
                .clone()
                .map(|(name, value)| (name, value.as_bytes())),
        );
        let absolute_authority = target_authority(head.target);
        let mut headers = HeaderMap::new();
        let mut forwarded_for: Option<String> = None;
        let mut host: Option<&str> = None;
        let mut expect_continue = false;
        for (name, value) in head.headers {
            if tokens.is_hop_by_hop(name)
                || [
                    "content-length",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    // Credentials for this proxy, not for the backend (Apache's mod_proxy
                    // drops it too).
                    "proxy-authorization",
                ]
                .iter()
                .any(|dropped| name.eq_ignore_ascii_case(dropped))
            {
                continue;
            }
            if name.eq_ignore_ascii_case("expect") {
                // Passed on only as `100-continue` with a body: the backend's early final
                // answer (a 413, a 401) then arrives before any of the body is sent, and is
                // relayed; the client's `100` follows the backend's. Anything else was for
                // this hop.
                if value.trim().eq_ignore_ascii_case("100-continue")
                    && head.framing != BodyFraming::Empty
                {
                    expect_continue = true;
                }
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                append_to_list(&mut forwarded_for, value.trim());
                continue;
            }
            let mut value = value;
            if name.eq_ignore_ascii_case("host") {
                // An absolute-form target names the host itself (RFC 9112, 3.2.2): it wins.
                value = absolute_authority.unwrap_or(value);
                host = Some(value);
            }
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad("Bad Request: invalid header name"))?;
            let value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| bad("Bad Request: invalid header value"))?;
            headers.append(name, value);
        }
        if let Some(ip) = head.client_ip {
            append_to_list(&mut forwarded_for, &ip.to_string());
        }
        let mut add = |name: &'static str, value: &str| -> Result<(), Failure> {
            let value = HeaderValue::from_str(value)
                .map_err(|_| bad("Bad Request: invalid header value"))?;
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        if let Some(list) = &forwarded_for {
            add("x-forwarded-for", list)?;
        }
        add("x-forwarded-proto", "http")?;
        if expect_continue {
            add("expect", "100-continue")?;
        }
        if let Some(host) = host {
            add("x-forwarded-host", host)?;
        }
        match head.framing {
            BodyFraming::Length(n) => add("content-length", &n.to_string())?,
            // ureq would send an empty chunked body for these methods; say "no body" plainly.
            BodyFraming::Empty
                if matches!(
                    method,
                    http::Method::POST | http::Method::PUT | http::Method::PATCH
                ) =>
            {
                add("content-length", "0")?
            }
            _ => {}
        }
        Ok(Outgoing {
            method,
            path: path.to_string(),
            headers,
            has_body: head.framing != BodyFraming::Empty,
        })
    }

    /// Whether it is a `HEAD` request, whose answer has no body whatever its headers say.
    pub fn is_head(&self) -> bool {
        self.method == http::Method::HEAD
    }

    /// The request for one backend: its origin and path prefix before the client's path.
    pub(super) fn to(&self, url: &BackendUrl) -> Result<http::Request<()>, Failure> {
        let mut request = http::Request::builder()
            .method(self.method.clone())
            .uri(format!("{}{}{}", url.origin, url.prefix, self.path))
            .version(http::Version::HTTP_11)
            .body(())
            .map_err(|_| bad("Bad Request: invalid request target"))?;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

fn append_to_list(list: &mut Option<String>, item: &str) {
    let list = list.get_or_insert_with(String::new);
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str(item);
}

/// The path and query to send upstream: an origin-form target as received, or the path and
/// query of an absolute-form one (`GET http://host/path?q`), which HTTP/1.1 servers must
/// accept (RFC 9112 section 3.2.2); an empty path is `/` (`http://host?q` is `/?q`). An
/// authority with userinfo (`http://user:pw@host/`) is refused: it is not a host, and RFC
/// 9110 section 4.2.4 forbids it in http URIs.
fn origin_form(target: &str) -> Option<Cow<'_, str>> {
    if target.starts_with('/') {
        return Some(Cow::Borrowed(target));
    }
    let rest = absolute_form_rest(target)?;
    let (authority, path_and_query) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(match path_and_query.strip_prefix('?') {
        Some(_) => Cow::Owned(format!("/{path_and_query}")),
        None if path_and_query.is_empty() => Cow::Borrowed("/"),
        None => Cow::Borrowed(path_and_query),
    })
}

/// What follows the scheme of an absolute-form target.
fn absolute_form_rest(target: &str) -> Option<&str> {
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        .then(|| &target[scheme_end + 3..])
}

/// The authority of an absolute-form target (`http://example.com/x` gives `example.com`).
fn target_authority(target: &str) -> Option<&str> {
    let rest = absolute_form_rest(target)?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_origin_form() {
        for (target, expected) in [
            ("/a/../b?x=%20", Some("/a/../b?x=%20")),
            ("http://example.com/p?q", Some("/p?q")),
            ("HTTP://example.com/p", Some("/p")),
            ("https://example.com/p", Some("/p")),
            ("http://example.com", Some("/")),
            ("http://other.example?a=/admin", Some("/?a=/admin")),
            ("http://other.example:8080?a", Some("/?a")),
            ("http://user:pw@other.example/x", None),
            ("http://@other.example/x", None),
            ("http:///x", None),
            ("ftp://example.com/x", None),
            ("example.com:443", None),
            ("*", None),
        ] {
            assert_eq!(origin_form(target).as_deref(), expected, "{target}");
        }
    }

    #[test]
    fn absolute_form_targets_name_their_host() {
        assert_eq!(
            target_authority("http://example.com/p?q"),
            Some("example.com")
        );
        assert_eq!(
            target_authority("http://example.com:8080"),
            Some("example.com:8080")
        );
        assert_eq!(target_authority("/p"), None);
        assert_eq!(target_authority("http://a.example?q"), Some("a.example"));
        assert_eq!(target_authority("http://user:pw@a.example/"), None);
    }

    #[test]
    fn headers_are_rewritten_for_the_backend() {
        let fields = [
            ("Host", "client.example"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("Expect", "100-continue"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Connection", "Host, X-Forwarded-For"),
            ("Content-Length", "999"),
            ("Accept", "a"),
            ("Accept", "b"),
        ];
        let outgoing = Outgoing::new(ClientHead {
            method: "POST",
            target: "/p?q",
            headers: fields.iter().copied(),
            client_ip: Some("192.0.2.7".parse().unwrap()),
            framing: BodyFraming::Length(3),
        })
        .unwrap();
        let url = BackendUrl {
            original: "http://127.0.0.1:9/api".into(),
            origin: "http://127.0.0.1:9".into(),
            prefix: "/api".into(),
        };
        let request = outgoing.to(&url).unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:9/api/p?q");
        let h = request.headers();
        assert_eq!(h["host"], "client.example");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "client.example");
        assert_eq!(h["content-length"], "3");
        assert_eq!(h.get_all("accept").iter().count(), 2);
        assert_eq!(h["expect"], "100-continue");
        for gone in ["connection", "x-hop", "proxy-authorization"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
    }
}
