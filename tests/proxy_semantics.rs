//! What a client gets through tinylb (design.md, "What the client gets" and "Headers"): backend
//! statuses, bodies, targets, methods and repeated headers byte for byte; hop-by-hop headers
//! removed and X-Forwarded-* set; 502/503/504 for refused, garbage, missing, slow or saturated
//! backends; 400/501 (unforwarded, connection closed) for ambiguous requests; a truncated
//! transfer when a backend dies mid-body; and 100 requests on one keep-alive connection.

mod common;
use common::raw::{
    OnError, RawServer, count_status_lines, keep_alive_connection, read_until_close,
    send_until_close,
};
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Raw HTTP on the client side: no client library can normalize or hide anything.
// ---------------------------------------------------------------------------------------------

/// One response as it came over the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    /// Every value of a header, case-insensitively, in arrival order.
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header, if present.
    fn header(&self, name: &str) -> Option<&str> {
        let values = self.values(name);
        assert!(values.len() <= 1, "{name} repeated: {:?}", self.headers);
        values.first().copied()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a status line and headers; the body is left in `reader`.
fn read_reply_head(reader: &mut impl BufRead) -> Reply {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status_line = status_line.trim_end().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let mut headers = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("header line");
        assert!(n > 0, "connection closed inside the response head");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Reply {
                status,
                status_line,
                headers,
                body: Vec::new(),
            };
        }
        let (name, value) = line.split_once(':').expect("header line has a colon");
        headers.push((name.to_string(), value.trim().to_string()));
    }
    panic!("more than 200 header lines");
}

/// Reads one whole response framed by Content-Length (or no body for HEAD and 1xx/204/304).
fn read_reply(reader: &mut impl BufRead, head_request: bool) -> Reply {
    let mut reply = read_reply_head(reader);
    if head_request || reply.status < 200 || reply.status == 204 || reply.status == 304 {
        return reply;
    }
    let length: usize = reply
        .header("content-length")
        .unwrap_or_else(|| panic!("no Content-Length: {:?}", reply.headers))
        .parse()
        .expect("numeric Content-Length");
    reply.body = vec![0; length];
    reader.read_exact(&mut reply.body).expect("whole body");
    reply
}

/// Splits a complete answer (everything until close) into head and the remaining bytes.
fn parse_answer(bytes: &[u8]) -> Reply {
    let mut reader = BufReader::new(bytes);
    let mut reply = read_reply_head(&mut reader);
    reader.read_to_end(&mut reply.body).unwrap();
    reply
}

/// Decodes a chunked body; says whether the final zero-size chunk arrived.
fn decode_chunked(mut bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    loop {
        let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return (data, false);
        };
        let size_text = std::str::from_utf8(&bytes[..end]).expect("ascii chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
        bytes = &bytes[end + 2..];
        if size == 0 {
            return (data, true);
        }
        if bytes.len() < size + 2 {
            data.extend_from_slice(&bytes[..size.min(bytes.len())]);
            return (data, false);
        }
        data.extend_from_slice(&bytes[..size]);
        assert_eq!(
            &bytes[size..size + 2],
            b"\r\n",
            "chunk not followed by CRLF"
        );
        bytes = &bytes[size + 2..];
    }
}

/// The one request the backend got from tinylb (health checks aside); fails if not exactly one.
fn only_proxied(backend: &Backend) -> Seen {
    let seen = backend.seen_proxied();
    assert_eq!(
        seen.len(),
        1,
        "expected exactly one forwarded request, saw {seen:?}"
    );
    seen.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------------------
// A misbehaving backend on a raw TcpListener. It answers the health checks (HEAD) correctly, so
// tinylb considers it healthy, and misbehaves on every other request.
// ---------------------------------------------------------------------------------------------

type Misbehaviour = fn(&mut TcpStream, &AtomicBool);

struct RawBackend {
    server: RawServer,
    /// Requests other than HEAD health checks.
    hits: Arc<AtomicUsize>,
}

impl RawBackend {
    fn start(misbehave: Misbehaviour) -> RawBackend {
        let hits = Arc::new(AtomicUsize::new(0));
        let server = {
            let hits = Arc::clone(&hits);
            RawServer::start(move |stream, _, stopping| {
                serve_raw(stream, misbehave, stopping, &hits)
            })
        };
        RawBackend { server, hits }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve_raw(
    mut stream: TcpStream,
    misbehave: Misbehaviour,
    stopping: &AtomicBool,
    hits: &AtomicUsize,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    // Health checks may reuse the connection; a test never sends more than a handful.
    for _ in 0..1000 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        for _ in 0..200 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("HEAD ") {
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            if stream.write_all(ok).is_err() {
                return;
            }
            continue;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        misbehave(&mut stream, stopping);
        return; // closes the connection
    }
}

fn answer_garbage(stream: &mut TcpStream, _: &AtomicBool) {
    let _ = stream.write_all(b"garbage\r\n\r\n");
}

fn answer_status_line_only(stream: &mut TcpStream, _: &AtomicBool) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
}

/// Reads the request and then says nothing, holding the connection open (bounded: 10 s).
fn never_answer(_: &mut TcpStream, stopping: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopping.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn die_mid_length_body(stream: &mut TcpStream, _: &AtomicBool) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
    let _ = stream.write_all(&[b'x'; 1000]);
    let _ = stream.flush();
}

fn die_mid_chunked_body(stream: &mut TcpStream, _: &AtomicBool) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n");
    let _ = stream.write_all(&[b'x'; 1000]);
    let _ = stream.write_all(b"\r\n");
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------------------------
// Backend answered: its status, headers and body, byte for byte.
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_statuses_pass_through_unchanged() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let agent = client();
    for code in [404u16, 500, 503, 599] {
        let (status, body, backend) = get(&agent, &format!("{}/status/{code}", lb.url()));
        assert_eq!(status, code, "status of /status/{code}");
        assert_eq!(body, format!("status {code} from a\n"));
        assert_eq!(backend.as_deref(), Some("a"));
    }
    // On the wire too: the unusual status keeps its number.
    let answer = send_until_close(
        lb.addr,
        b"GET /status/599 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
        OnError::Panic,
    )
    .0;
    let reply = parse_answer(&answer);
    assert!(
        reply.status_line.starts_with("HTTP/1.1 599"),
        "{:?}",
        reply.status_line
    );
    assert_eq!(reply.text(), "status 599 from a\n");
    assert_eq!(a.proxied_count(), 5, "each request forwarded exactly once");
}

#[test]
fn redirects_are_returned_not_followed() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let mut response = client()
        .get(format!("{}/redirect", lb.url()))
        .call()
        .expect("request completes");
    assert_eq!(response.status().as_u16(), 302);
    assert_eq!(response.headers().get("location").unwrap(), "/elsewhere");
    assert_eq!(response.body_mut().read_to_string().unwrap(), "moved\n");
    let targets: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/redirect"],
        "tinylb must not follow the redirect itself"
    );
}

#[test]
fn compressed_body_passes_through_undecoded() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (answer, closed) = send_until_close(
        lb.addr,
        b"GET /gzip HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
        OnError::Panic,
    );
    assert!(closed.is_some(), "Connection: close was asked for");
    let reply = parse_answer(&answer);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(reply.header("content-length"), Some("8"));
    assert_eq!(reply.body, [0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        only_proxied(&a).header_values("accept-encoding"),
        ["gzip"],
        "the client's Accept-Encoding is passed on, not replaced"
    );
}

#[test]
fn path_and_query_reach_the_backend_byte_for_byte() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let targets = [
        "/a/../b?x=%20&y=%zz",
        "//double//slash/./x/",
        "/%2F%2e%2E/caf%C3%A9?q=a+b&q=c&&=",
        "/semi;colon=1?",
        "/~user/%7e?x=%2F",
    ];
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for target in targets {
        write!(writer, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reply = read_reply(&mut reader, false);
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        assert!(
            reply.text().contains(&format!("\ntarget {target}\n")),
            "{target}: backend reported {}",
            reply.text()
        );
    }
    let seen: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, targets);
}

#[test]
fn every_method_reaches_the_backend_unchanged() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    // (method, body): extension methods, WebDAV, and tokens that only look like standard ones.
    let methods: [(&str, &str); 12] = [
        ("GET", ""),
        ("POST", "hello"),
        ("PUT", "hello"),
        ("DELETE", ""),
        ("PATCH", "hello"),
        ("OPTIONS", ""),
        ("TRACE", ""),
        ("PROPFIND", "<propfind/>"),
        ("PURGE", ""),
        ("MKCOL", ""),
        ("get", ""),
        ("X-Custom_Token", ""),
    ];
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for (method, body) in methods {
        let length = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        write!(
            writer,
            "{method} /m HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}"
        )
        .unwrap();
        let reply = read_reply(&mut reader, false);
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        let text = reply.text();
        assert!(
            text.contains(&format!("\nmethod {method}\n")),
            "{method}: {text}"
        );
        assert!(
            text.contains(&format!("\nbody {} bytes\n", body.len())),
            "{method}: {text}"
        );
    }
    let seen: Vec<(String, u64)> = a
        .seen_proxied()
        .into_iter()
        .map(|s| (s.method, s.body_len))
        .collect();
    let expected: Vec<(String, u64)> = methods
        .iter()
        .map(|(m, b)| (m.to_string(), b.len() as u64))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn head_gets_the_headers_and_no_body() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let stream = TcpStream::connect(lb.addr).expect("connect");
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    writer
        .write_all(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = read_reply_head(&mut reader);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some("1000"),
        "{:?}",
        head.headers
    );
    assert_eq!(head.header("x-backend"), Some("a"));
    assert_eq!(head.header("connection"), None, "the connection stays open");

    // The next bytes on this connection must be the next response, not 1000 body bytes.
    writer
        .write_all(b"GET /status/201 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let started = Instant::now();
    let (tail, closed) = read_until_close(
        &mut stream.try_clone().unwrap(),
        started,
        Duration::from_secs(3),
        OnError::Panic,
    );
    rest.extend_from_slice(reader.buffer());
    rest.extend_from_slice(&tail);
    assert!(closed.is_some(), "Connection: close was asked for");
    assert!(
        rest.starts_with(b"HTTP/1.1 201"),
        "bytes after the HEAD response: {:?}",
        String::from_utf8_lossy(&rest[..rest.len().min(200)])
    );
    assert_eq!(parse_answer(&rest).text(), "status 201 from a\n");
    let seen: Vec<(String, String)> = a
        .seen_proxied()
        .into_iter()
        .map(|s| (s.method, s.target))
        .collect();
    assert_eq!(
        seen,
        [
            ("HEAD".to_string(), "/bytes/1000".to_string()),
            ("GET".to_string(), "/status/201".to_string())
        ]
    );
}

#[test]
fn repeated_headers_stay_separate_both_ways() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (answer, _) = send_until_close(
        lb.addr,
        b"GET /cookies HTTP/1.1\r\nHost: x\r\nX-Multi: one\r\nX-Multi: two\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
        OnError::Panic,
    );
    let reply = parse_answer(&answer);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.values("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(only_proxied(&a).header_values("x-multi"), ["one", "two"]);

    // And through an ordinary client.
    let response = client()
        .get(format!("{}/cookies", lb.url()))
        .call()
        .unwrap();
    let cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
}

// ---------------------------------------------------------------------------------------------
// Headers: hop-by-hop removed both ways, X-Forwarded-* set, Host kept.
// ---------------------------------------------------------------------------------------------

#[test]
fn hop_by_hop_request_headers_do_not_reach_the_backend() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(
            b"GET /hop-request HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\
              Proxy-Connection: x\r\nX-End-To-End: kept\r\n\r\n",
        )
        .unwrap();
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = only_proxied(&a);
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
    ] {
        assert_eq!(
            seen.header_values(name),
            Vec::<String>::new(),
            "{name} reached the backend: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header_values("x-end-to-end"), ["kept"]);
}

#[test]
fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /hop HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hop\n");
    assert_eq!(reply.header("x-hop"), None, "{:?}", reply.headers);
    assert_eq!(reply.header("keep-alive"), None, "{:?}", reply.headers);
    assert_eq!(
        reply.header("connection"),
        None,
        "the backend's Connection: X-Hop leaked: {:?}",
        reply.headers
    );
    assert_eq!(reply.header("x-end"), Some("kept"));
}

#[test]
fn forwarding_headers_are_set_and_host_is_kept() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    // A client that already went through a proxy, and one that tries to spoof the scheme.
    writer
        .write_all(
            b"GET /fwd/1 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.1.2.3\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed.test\r\n\r\n",
        )
        .unwrap();
    assert_eq!(read_reply(&mut reader, false).status, 200);
    writer
        .write_all(b"GET /fwd/2 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-forwarded-server"), None, "opt-in only");

    let seen = a.seen_proxied();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header_values("host"), ["example.test"]);
    assert_eq!(
        seen[0].header_values("x-forwarded-for"),
        ["10.1.2.3, 127.0.0.1"]
    );
    assert_eq!(seen[0].header_values("x-forwarded-proto"), ["http"]);
    assert_eq!(seen[0].header_values("x-forwarded-host"), ["example.test"]);
    assert_eq!(
        seen[0].header_values("x-forwarded-server"),
        Vec::<String>::new()
    );

    assert_eq!(seen[1].header_values("host"), ["example.test:8080"]);
    assert_eq!(seen[1].header_values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen[1].header_values("x-forwarded-proto"), ["http"]);
    assert_eq!(
        seen[1].header_values("x-forwarded-host"),
        ["example.test:8080"]
    );
}

#[test]
fn forwarded_server_header_is_opt_in() {
    let a = Backend::start("a");
    let agent = client();

    let plain = start_lb(&[&a], "");
    let response = agent.get(format!("{}/who", plain.url())).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("x-forwarded-server"), None);

    let telling = start_lb(&[&a], r#""forwardedServerHeader": true"#);
    let response = agent.get(format!("{}/who", telling.url())).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let values: Vec<&str> = response
        .headers()
        .get_all("x-forwarded-server")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values, [a.url()]);
}

// ---------------------------------------------------------------------------------------------
// tinylb's own answers: 502, 503, 504.
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_backend_gives_502_then_503_once_marked_down() {
    let mut a = Backend::start("a");
    // Healthy at start, and no health round for an hour: only the failed request can notice.
    let lb = start_lb(&[&a], r#""healthCheckInterval": "1h""#);
    assert!(is_healthy(&lb, 0));
    a.stop();
    let agent = client();
    let (status, body, _) = get(&agent, &format!("{}/first", lb.url()));
    assert_eq!(status, 502, "{body}");
    assert!(
        !is_healthy(&lb, 0),
        "a refused connection marks the backend down at once"
    );
    for _ in 0..3 {
        let (status, body, _) = get(&agent, &format!("{}/later", lb.url()));
        assert_eq!(status, 503);
        assert_eq!(body, "No healthy server available\n");
    }
}

#[test]
fn garbage_from_backend_gives_502() {
    let garbage = RawBackend::start(answer_garbage);
    let lb = start_lb_with_servers(&format!("\"{}\"", garbage.url()), "");
    assert!(is_healthy(&lb, 0), "the raw backend passes health checks");
    let (status, body, backend) = get(&client(), &format!("{}/x", lb.url()));
    assert_eq!(status, 502, "{body}");
    assert_eq!(backend, None, "tinylb's own answer");
    assert_eq!(garbage.hits(), 1, "one attempt: there is no other backend");
}

#[test]
fn status_line_without_headers_then_close_gives_502() {
    let broken = RawBackend::start(answer_status_line_only);
    let lb = start_lb_with_servers(&format!("\"{}\"", broken.url()), "");
    assert!(is_healthy(&lb, 0));
    let (status, body, _) = get(&client(), &format!("{}/x", lb.url()));
    assert_eq!(status, 502, "{body}");
    // A connection that closes before a whole answer looks like a pooled connection the
    // backend closed just as the request went out, so a GET gets one more try on a fresh
    // connection before the 502; never more.
    assert_eq!(broken.hits(), 2);
}

#[test]
fn idempotent_request_is_retried_on_another_backend_after_garbage() {
    let garbage = RawBackend::start(answer_garbage);
    let a = Backend::start("a");
    let lb = start_lb_with_servers(&format!("\"{}\", \"{}\"", garbage.url(), a.url()), "");
    let agent = client();
    for i in 0..4 {
        let (status, body, backend) = get(&agent, &format!("{}/r/{i}", lb.url()));
        assert_eq!(status, 200, "{body}");
        assert_eq!(backend.as_deref(), Some("a"));
    }
    assert!(
        garbage.hits() >= 1,
        "round robin sent some requests to the garbage backend first"
    );
    assert_eq!(a.proxied_count(), 4);
}

#[test]
fn post_is_not_replayed_after_garbage() {
    let garbage = RawBackend::start(answer_garbage);
    let a = Backend::start("a");
    let lb = start_lb_with_servers(&format!("\"{}\", \"{}\"", garbage.url(), a.url()), "");
    let agent = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let response = agent
            .post(format!("{}/p/{i}", lb.url()))
            .send("hello")
            .expect("request completes");
        statuses.push(response.status().as_u16());
    }
    let bad = statuses.iter().filter(|&&s| s == 502).count();
    let good = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(bad + good, 4, "{statuses:?}");
    assert!(
        bad >= 1,
        "round robin sent some POSTs to the garbage backend: {statuses:?}"
    );
    assert_eq!(
        garbage.hits(),
        bad,
        "each 502 is one POST the garbage backend got"
    );
    assert_eq!(
        a.proxied_count(),
        good,
        "no POST was sent a second time: {statuses:?}"
    );
}

#[test]
fn silent_backend_gives_504_after_backend_timeout() {
    let silent = RawBackend::start(never_answer);
    let lb = start_lb_with_servers(
        &format!("\"{}\"", silent.url()),
        r#""backendTimeout": "300ms""#,
    );
    let started = Instant::now();
    let (status, body, _) = get(&client(), &format!("{}/slow", lb.url()));
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_millis(250),
        "504 before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "504 took {took:?}");
    assert_eq!(silent.hits(), 1, "a timed-out request is not retried");
}

#[test]
fn no_healthy_backend_gives_503() {
    let mut a = Backend::start("a");
    let mut b = Backend::start("b");
    a.stop();
    b.stop();
    let lb = start_lb(&[&a, &b], "");
    assert!(!is_healthy(&lb, 0) && !is_healthy(&lb, 1));
    let agent = client();
    for _ in 0..3 {
        let (status, body, backend) = get(&agent, &format!("{}/x", lb.url()));
        assert_eq!(status, 503);
        assert_eq!(body, "No healthy server available\n");
        assert_eq!(backend, None);
    }
}

#[test]
fn full_queue_gives_fast_503_with_retry_after() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], r#""workers": 1, "queueSize": 1"#);
    let url = lb.url();

    let occupy = {
        let url = url.clone();
        std::thread::spawn(move || get(&client(), &format!("{url}/slow/2000")))
    };
    assert!(
        wait_until(Duration::from_secs(3), || a
            .seen_proxied()
            .iter()
            .any(|s| s.target == "/slow/2000")),
        "the slow request reached the backend"
    );
    let queued = {
        let url = url.clone();
        std::thread::spawn(move || get(&client(), &format!("{url}/queued")))
    };
    std::thread::sleep(Duration::from_millis(200)); // let the second request take the queue slot

    let started = Instant::now();
    let mut response = client()
        .get(format!("{url}/third"))
        .call()
        .expect("answered");
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        retry_after
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|secs| secs >= 1),
        "{:?}",
        response.headers()
    );
    let body = response.body_mut().read_to_string().unwrap();
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");

    let (status, _, _) = occupy.join().unwrap();
    assert_eq!(status, 200);
    let (status, _, _) = queued.join().unwrap();
    assert_eq!(
        status, 200,
        "the queued request is served once the worker is free"
    );
    let targets: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/slow/2000", "/queued"],
        "the refused request was not forwarded ({body})"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed or ambiguous requests: 400 (or 501), not forwarded, connection closed.
// ---------------------------------------------------------------------------------------------

/// Sends `request` on many fresh connections (several clients at once); asserts that each gets
/// exactly one answer with `status` and is closed by tinylb within 2 s, and that nothing reached
/// the backend. Many attempts, because letting a pipelined request through is a race between
/// workers that a single try can miss.
fn assert_refused_unforwarded(request: &[u8], status: u16) -> Reply {
    const CLIENTS: usize = 8;
    const ATTEMPTS_EACH: usize = 25;
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let answers: Vec<(Vec<u8>, Option<Duration>)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    (0..ATTEMPTS_EACH)
                        .map(|_| {
                            send_until_close(
                                lb.addr,
                                request,
                                Duration::from_secs(2),
                                OnError::Panic,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut extra_responses = Vec::new();
    for (answer, closed) in &answers {
        let text = String::from_utf8_lossy(answer);
        assert!(
            closed.is_some(),
            "tinylb kept the connection open after: {text:?}"
        );
        assert_eq!(parse_answer(answer).status, status, "{text:?}");
        if count_status_lines(answer) != 1 {
            extra_responses.push(text.into_owned());
        }
    }
    std::thread::sleep(Duration::from_millis(300)); // a wrongly forwarded request would land now
    let forwarded: Vec<String> = a
        .seen_proxied()
        .into_iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    assert!(
        forwarded.is_empty(),
        "forwarded after {} attempts: {forwarded:?}",
        answers.len()
    );
    assert!(
        extra_responses.is_empty(),
        "{} of {} connections got more than one response, the first: {:?}",
        extra_responses.len(),
        answers.len(),
        extra_responses[0]
    );
    parse_answer(&answers[0].0)
}

/// What an attacker hides in a body: requests a lenient parser would read as the next ones.
/// Ten of them, pipelined, so that a worker picking one up before the refusal is recorded shows.
fn smuggled() -> String {
    "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10)
}

#[test]
fn content_length_with_transfer_encoding_is_refused_and_nothing_is_smuggled() {
    let body = format!("0\r\n\r\n{}", smuggled());
    let request = format!(
        "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let reply = assert_refused_unforwarded(request.as_bytes(), 400);
    assert!(
        reply
            .text()
            .contains("Content-Length and Transfer-Encoding"),
        "{}",
        reply.text()
    );
}

#[test]
fn invalid_content_length_is_refused() {
    let request = format!(
        "POST /cl-abc HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        smuggled()
    );
    assert_refused_unforwarded(request.as_bytes(), 400);
}

#[test]
fn conflicting_content_lengths_are_refused() {
    let smuggled = smuggled();
    let request = format!(
        "POST /cl-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{smuggled}",
        5 + smuggled.len()
    );
    assert_refused_unforwarded(request.as_bytes(), 400);
}

#[test]
fn transfer_encoding_other_than_chunked_gets_501() {
    let request = "POST /te-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n";
    assert_refused_unforwarded(request.as_bytes(), 501);
}

#[test]
fn http11_request_without_host_is_refused() {
    assert_refused_unforwarded(b"GET /no-host HTTP/1.1\r\nX-Other: 1\r\n\r\n", 400);
}

// ---------------------------------------------------------------------------------------------
// Backend failed half-way through the body: a truncation the client can detect.
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_dying_mid_body_closes_the_client_connection_short() {
    let dying = RawBackend::start(die_mid_length_body);
    let lb = start_lb_with_servers(&format!("\"{}\"", dying.url()), "");
    // A keep-alive request: only tinylb closing the connection can end this read.
    let (answer, closed) = send_until_close(
        lb.addr,
        b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
        OnError::Panic,
    );
    let closed = closed.expect("tinylb must close the connection when the backend body breaks off");
    let reply = parse_answer(&answer);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-length"),
        Some("100000"),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.len() <= 1000, "{} body bytes", reply.body.len());
    assert!(reply.body.iter().all(|&b| b == b'x'));
    assert!(closed < Duration::from_secs(3));
    assert_eq!(
        dying.hits(),
        1,
        "a response that had started is not retried"
    );
}

#[test]
fn backend_dying_mid_chunked_body_never_gets_a_final_chunk() {
    let dying = RawBackend::start(die_mid_chunked_body);
    let lb = start_lb_with_servers(&format!("\"{}\"", dying.url()), "");
    let (answer, closed) = send_until_close(
        lb.addr,
        b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
        OnError::Panic,
    );
    assert!(
        closed.is_some(),
        "tinylb must close the connection when the backend body breaks off"
    );
    let reply = parse_answer(&answer);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("transfer-encoding"),
        Some("chunked"),
        "{:?}",
        reply.headers
    );
    let (data, complete) = decode_chunked(&reply.body);
    assert!(
        !complete,
        "the client got a final chunk for a body that broke off: {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(!reply.body.ends_with(b"0\r\n\r\n"));
    assert!(
        data.len() <= 1000 && data.iter().all(|&b| b == b'x'),
        "{} bytes",
        data.len()
    );
    assert_eq!(dying.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Keep-alive.
// ---------------------------------------------------------------------------------------------

#[test]
fn hundred_requests_share_one_keep_alive_connection() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for i in 0..100 {
        write!(writer, "GET /k/{i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reply = read_reply(&mut reader, false);
        assert_eq!(reply.status, 200, "request {i}");
        assert_eq!(
            reply.header("connection"),
            None,
            "request {i}: {:?}",
            reply.headers
        );
        assert!(
            reply.text().contains(&format!("\ntarget /k/{i}\n")),
            "request {i}: {}",
            reply.text()
        );
    }
    assert_eq!(a.proxied_count(), 100);
    let targets: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("/k/{i}")).collect();
    assert_eq!(targets, expected);
}

/// `backendKeepAlive` (nginx's upstream `keepalive`) decides whether tinylb reuses its
/// connections to a backend: by default 20 sequential requests share one, with 0 each opens
/// its own. Health checks run once an hour here, so only the first round's check adds one.
#[test]
fn backend_keep_alive_decides_whether_backend_connections_are_reused() {
    for (extra, fewest, most) in [("", 1, 2), (r#", "backendKeepAlive": 0"#, 20, 21)] {
        let a = Backend::start("a");
        let lb = start_lb(&[&a], &format!(r#""healthCheckInterval": "1h"{extra}"#));
        let before = a.connections_accepted();
        let agent = client();
        for i in 0..20 {
            let (status, body, _) = get(&agent, &format!("{}/pool/{i}", lb.url()));
            assert_eq!(status, 200, "{extra}: request {i}: {body}");
        }
        let opened = a.connections_accepted() - before;
        assert!(
            (fewest..=most).contains(&opened),
            "config {{{extra}}}: 20 requests opened {opened} backend connections, \
             expected {fewest} to {most}"
        );
    }
}
