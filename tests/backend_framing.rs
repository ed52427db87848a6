//! Relay what the backend meant, and nothing else (issue 22): tinylb owns the framing of every
//! answer it relays, whatever `Connection` header a backend sends (item 1); a transfer coding
//! other than plain `chunked` is a 502, on the normal and the declined-upgrade path alike
//! (item 2); absolute-form targets keep their path and query, and userinfo is refused (item 3);
//! a client can name away only hop-by-hop headers, and `Proxy-Authorization` stays with tinylb
//! (item 4); a failing idempotent request is tried at most once per backend (item 5);
//! duplicate and conflicting lengths (item 7); and the smaller things of item 8. Every backend
//! is a raw one scripted for its case, and every client a raw socket, so the bytes under test
//! are exactly the ones on the wire.

mod common;
use common::raw::keep_alive_connection;
use common::scripted::{Act, RawRequest, ScriptedBackend, ok};
use common::*;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Item 1: a backend's `Connection` header cannot remove tinylb's framing.
// ---------------------------------------------------------------------------------------------

/// A body of five bytes for each target, so that a pipelined second answer shows whether it
/// was kept apart from the first.
fn five_bytes_for(target: &str) -> &'static str {
    match target {
        "/one" => "hello",
        "/two" => "world",
        _ => "other",
    }
}

/// Item 1. A backend answers `Content-Length: 5` with `Connection: content-length` and keeps
/// its connection. The client's answer still has exactly one `Content-Length: 5` and the body
/// `hello`, and a second request pipelined behind the first gets its own whole answer (`world`)
/// on the same connection, not glued into the first body.
#[test]
fn a_backends_connection_header_cannot_remove_the_content_length() {
    let backend = ScriptedBackend::healthy_but(|request| {
        let body = five_bytes_for(&request.target);
        Act::Answer(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n{body}"
            )
            .into_bytes(),
        )
    });
    let lb = lb_in_front_of(&backend, "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send two pipelined requests");

    let first = read_head(&mut reader);
    assert_eq!(first.status, 200, "{:?}", first.headers);
    assert_eq!(
        first.values("content-length"),
        ["5"],
        "the first answer's head must carry exactly one Content-Length: 5: {:?}",
        first.headers
    );
    let mut body = [0u8; 5];
    reader.read_exact(&mut body).expect("the first body");
    assert_eq!(&body, b"hello");

    let second = read_full_response(&mut reader, false).expect("a second, separate answer");
    assert_eq!(
        (second.status, second.text()),
        (200, "world".to_string()),
        "{:?}",
        second.headers
    );
    assert_eq!(
        second.values("content-length"),
        ["5"],
        "{:?}",
        second.headers
    );
}

/// Item 1. A backend answers chunked with `Connection: transfer-encoding`. The client still
/// gets a body framed by tinylb (chunked or with a length, never ended by a close), and its
/// connection stays usable for a pipelined second request.
#[test]
fn a_backends_connection_header_cannot_remove_the_chunking() {
    let backend = ScriptedBackend::healthy_but(|request| {
        let body = five_bytes_for(&request.target);
        Act::Answer(
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\
                 \r\n5\r\n{body}\r\n0\r\n\r\n"
            )
            .into_bytes(),
        )
    });
    let lb = lb_in_front_of(&backend, "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send two pipelined requests");
    for expected in ["hello", "world"] {
        let head = read_head(&mut reader);
        assert_eq!(head.status, 200, "{:?}", head.headers);
        let framing = framing_of(&head);
        assert!(
            matches!(framing, Framing::Chunked | Framing::Length(5)),
            "the answer for {expected} is framed by neither chunking nor a length: {:?}",
            head.headers
        );
        let body = read_body(&mut reader, framing);
        assert_eq!(
            String::from_utf8_lossy(&body),
            expected,
            "{:?}",
            head.headers
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 2: a transfer coding other than plain `chunked` is a 502.
// ---------------------------------------------------------------------------------------------

/// An answer with this `Transfer-Encoding` and a chunked body of `hello`.
fn answer_coded_as(transfer_encoding: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: {transfer_encoding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    .into_bytes()
}

/// Item 2. `Transfer-Encoding: gzip, chunked` from a backend: tinylb cannot tell the client
/// what the body is once it has removed the chunking, so it answers 502 instead of relaying
/// gzip bytes as if they were the body.
#[test]
fn gzip_then_chunked_from_a_backend_gives_502() {
    let backend = ScriptedBackend::healthy_but(|_| Act::Answer(answer_coded_as("gzip, chunked")));
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET /gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 502, "{}", described(&answer));
}

/// Item 2. `Transfer-Encoding: chunked, gzip` from a backend (chunked is not the last coding,
/// so the body is not even chunked as a whole): 502.
#[test]
fn chunked_then_gzip_from_a_backend_gives_502() {
    let backend = ScriptedBackend::healthy_but(|_| Act::Answer(answer_coded_as("chunked, gzip")));
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET /gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 502, "{}", described(&answer));
}

/// Item 2, on the declined-upgrade path. A WebSocket handshake that the backend answers with
/// a 200 (not 101) carrying `Transfer-Encoding: gzip, chunked`: 502 as on the normal path, and
/// none of the backend's chunk-size lines reach the client as body bytes.
#[test]
fn gzip_then_chunked_on_a_declined_upgrade_gives_502() {
    let backend = ScriptedBackend::healthy_but(|_| Act::Close(answer_coded_as("gzip, chunked")));
    let lb = lb_in_front_of(&backend, "");
    let answer = raw_exchange(lb.addr, WEBSOCKET_OFFER.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(
        backend.proxied().len(),
        1,
        "the handshake reached the backend"
    );
    assert_eq!(status_of(&answer), Some(502), "{text:?}");
    assert!(
        !text.contains("5\r\nhello\r\n0\r\n"),
        "the backend's chunk lines reached the client: {text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 3: absolute-form request targets keep their path and query; userinfo is refused.
// ---------------------------------------------------------------------------------------------

/// A backend that answers every request with a 200.
fn plain_backend() -> ScriptedBackend {
    ScriptedBackend::healthy_but(|_| Act::Answer(ok("seen")))
}

/// Sends a GET for `target` with `Host: other.example` through tinylb: the client's answer, and
/// the requests the backend saw.
fn get_target(target: &str) -> (Response, Vec<RawRequest>) {
    let backend = plain_backend();
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        &format!("GET {target} HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"),
    );
    (answer, backend.proxied())
}

/// Item 3. `GET http://other.example?a=/admin`: the path is empty (so `/`) and the query is
/// `a=/admin`; the backend gets `/?a=/admin`, not `/admin` (RFC 9112 section 3.2.2).
#[test]
fn an_absolute_target_with_a_query_and_no_path_keeps_its_query() {
    let (answer, seen) = get_target("http://other.example?a=/admin");
    assert_eq!(answer.status, 200, "{}", described(&answer));
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/?a=/admin"], "request targets the backend got");
}

/// Item 3. `GET http://other.example/x/y?q=1`: the backend gets `/x/y?q=1`.
#[test]
fn an_absolute_target_keeps_its_path_and_query() {
    let (answer, seen) = get_target("http://other.example/x/y?q=1");
    assert_eq!(answer.status, 200, "{}", described(&answer));
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/x/y?q=1"], "request targets the backend got");
}

/// Item 3. `GET http://user:pw@other.example/x`: userinfo is not a host. The client gets 400
/// and the backend sees no request at all.
#[test]
fn an_absolute_target_with_userinfo_is_refused_with_400() {
    let backend = plain_backend();
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET http://user:pw@other.example/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    );
    let forwarded = || {
        backend
            .proxied()
            .iter()
            .map(|r| format!("{} {} {:?}", r.method, r.target, r.headers))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        answer.status,
        400,
        "{}; the backend got {:?}",
        described(&answer),
        forwarded()
    );
    // A request forwarded anyway would have been logged before any answer came back; the
    // window only covers a forward that raced the 400.
    let landed = wait_until(Duration::from_millis(300), || !backend.proxied().is_empty());
    assert!(!landed, "forwarded: {:?}", forwarded());
}

// ---------------------------------------------------------------------------------------------
// Item 4: only hop-by-hop headers can be named away; Proxy-Authorization is not forwarded.
// ---------------------------------------------------------------------------------------------

/// Sends `head` (a whole request head, blank line included) through tinylb to a backend that
/// answers 200: the one request the backend saw.
fn forwarded_head(head: &str) -> RawRequest {
    let backend = plain_backend();
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(&lb, head);
    assert_eq!(answer.status, 200, "{}", described(&answer));
    let seen = backend.proxied();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    seen.into_iter().next().expect("one request")
}

/// Item 4. `Connection: host` from the client: `Host` is not hop-by-hop, so the backend still
/// gets `Host: example.test` (not its own address) and `X-Forwarded-Host: example.test`.
#[test]
fn a_client_cannot_name_host_away() {
    let seen =
        forwarded_head("GET /h HTTP/1.1\r\nHost: example.test\r\nConnection: host, close\r\n\r\n");
    assert_eq!(
        seen.header_values("host"),
        ["example.test"],
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_values("x-forwarded-host"),
        ["example.test"],
        "{:?}",
        seen.headers
    );
}

/// Item 4. `Connection: x-forwarded-for` with the client's own `X-Forwarded-For: 10.9.9.9`:
/// the header tinylb adds to cannot be named away, and the backend gets an `X-Forwarded-For`
/// that ends in the client's real address, 127.0.0.1.
#[test]
fn a_client_cannot_name_x_forwarded_for_away() {
    let seen = forwarded_head(
        "GET /xff HTTP/1.1\r\nHost: x\r\nConnection: x-forwarded-for, close\r\n\
         X-Forwarded-For: 10.9.9.9\r\n\r\n",
    );
    let values = seen.header_values("x-forwarded-for");
    assert_eq!(values.len(), 1, "{:?}", seen.headers);
    assert!(
        values[0].ends_with("127.0.0.1"),
        "X-Forwarded-For: {:?}",
        values[0]
    );
}

/// Item 4. Naming a header in `Connection` still works for headers that may be named away:
/// `Connection: x-custom` with `X-Custom: 1` leaves `X-Custom` out of the forwarded request.
#[test]
fn a_client_can_still_name_its_own_hop_by_hop_headers() {
    let seen = forwarded_head(
        "GET /custom HTTP/1.1\r\nHost: x\r\nConnection: x-custom, close\r\nX-Custom: 1\r\n\r\n",
    );
    assert!(
        seen.header_values("x-custom").is_empty(),
        "X-Custom was forwarded: {:?}",
        seen.headers
    );
}

/// Item 4. `Proxy-Authorization` is addressed to the proxy: the backend does not get it.
#[test]
fn proxy_authorization_is_not_forwarded() {
    let seen = forwarded_head(
        "GET /pa HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Connection: close\r\n\r\n",
    );
    assert!(
        seen.header_values("proxy-authorization").is_empty(),
        "Proxy-Authorization was forwarded: {:?}",
        seen.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Item 5: a failing idempotent request is tried at most once per backend.
// ---------------------------------------------------------------------------------------------

/// Two backends that pass the (one, first-round) health check and close every other
/// connection without answering; one `request` through tinylb. The client gets 502, and each
/// backend saw the request at most once, on at most one connection: the first try of each is
/// on a fresh connection (health checks use connections of their own and none are pooled), so
/// no second try on the same backend is due.
fn tried_at_most_once_per_backend(method: &str, request: &str) {
    let backends = [
        ScriptedBackend::healthy_but(|_| Act::Close(Vec::new())),
        ScriptedBackend::healthy_but(|_| Act::Close(Vec::new())),
    ];
    let servers = format!("\"{}\", \"{}\"", backends[0].url(), backends[1].url());
    // A long interval: no health check round after the first adds connections meanwhile.
    let lb = start_lb_with_servers(&servers, r#""healthCheckInterval": "1h""#);
    assert!(is_healthy(&lb, 0) && is_healthy(&lb, 1));

    let answer = ask(&lb, request);
    let seen: Vec<usize> = backends
        .iter()
        .map(|b| b.proxied().iter().filter(|r| r.method == method).count())
        .collect();
    let connections: Vec<usize> = backends.iter().map(|b| b.accepted_for_proxying()).collect();
    let report = format!(
        "{method}s seen per backend {seen:?}, connections other than health checks per backend \
         {connections:?}"
    );
    assert_eq!(answer.status, 502, "{}; {report}", described(&answer));
    assert!(
        seen.iter().all(|&n| n <= 1),
        "a backend got the {method} more than once: {report}"
    );
    assert_eq!(
        seen.iter().sum::<usize>(),
        2,
        "each backend tried once: {report}"
    );
    assert!(
        connections.iter().all(|&n| n <= 1),
        "a backend was tried on more than one connection: {report}"
    );
}

/// Item 5, GET.
#[test]
fn a_failing_get_reaches_each_backend_once() {
    tried_at_most_once_per_backend(
        "GET",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
}

/// Item 5, PUT (without a body, so that a body already sent is not what stops the retries).
#[test]
fn a_failing_put_reaches_each_backend_once() {
    tried_at_most_once_per_backend(
        "PUT",
        "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// Item 5, DELETE.
#[test]
fn a_failing_delete_reaches_each_backend_once() {
    tried_at_most_once_per_backend(
        "DELETE",
        "DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
}

// ---------------------------------------------------------------------------------------------
// Item 7: duplicate and conflicting lengths.
// ---------------------------------------------------------------------------------------------

/// Item 7. Two identical `Content-Length: 5` headers: the client gets one, and `hello`.
#[test]
fn two_identical_content_lengths_reach_the_client_as_one() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        )
    });
    let lb = lb_in_front_of(&backend, "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /cl HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 200, "{:?}", head.headers);
    assert_eq!(head.values("content-length"), ["5"], "{:?}", head.headers);
    let mut body = [0u8; 5];
    reader.read_exact(&mut body).expect("the body");
    assert_eq!(&body, b"hello");
}

/// Item 7. `Content-Length: 5, 5` (one header, a list of equal values): the client gets
/// `Content-Length: 5`.
#[test]
fn a_content_length_list_of_equal_values_reaches_the_client_as_one_value() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec())
    });
    let lb = lb_in_front_of(&backend, "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /cl HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 200, "{:?}", head.headers);
    assert_eq!(head.values("content-length"), ["5"], "{:?}", head.headers);
    let mut body = [0u8; 5];
    reader.read_exact(&mut body).expect("the body");
    assert_eq!(&body, b"hello");
}

/// Item 7. `Content-Length: 5` beside `Transfer-Encoding: chunked` from a backend is an
/// ambiguous answer (RFC 9112 section 6.3: a sign of smuggling): 502, as nginx 1.23+.
#[test]
fn content_length_beside_chunked_from_a_backend_gives_502() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET /cl-te HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 502, "{}", described(&answer));
}

/// Item 7, on the declined-upgrade path. A WebSocket handshake answered 200 with
/// `Content-Length: 5` and `Content-Length: 7`: 502, as on the normal path.
#[test]
fn conflicting_content_lengths_on_a_declined_upgrade_give_502() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Close(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
        )
    });
    let lb = lb_in_front_of(&backend, "");
    let answer = raw_exchange(lb.addr, WEBSOCKET_OFFER.as_bytes(), Duration::from_secs(5));
    assert_eq!(
        backend.proxied().len(),
        1,
        "the handshake reached the backend"
    );
    assert_eq!(
        status_of(&answer),
        Some(502),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

// ---------------------------------------------------------------------------------------------
// Item 8: smaller things.
// ---------------------------------------------------------------------------------------------

/// Item 8 (a). A `100 Continue` with a header (`X-Note: hi`, allowed on 1xx) before the final
/// `200 ok`: the client gets the 200 and `ok`, not a 502.
#[test]
fn a_100_continue_with_a_header_is_not_a_broken_answer() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(
            b"HTTP/1.1 100 Continue\r\nX-Note: hi\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    });
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET /continue HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (answer.status, answer.text()),
        (200, "ok".to_string()),
        "{:?}",
        answer.headers
    );
}

/// Item 8 (b). A status code above 599 (`HTTP/1.1 600 Weird`) is not HTTP: 502.
#[test]
fn a_status_above_599_gives_502() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(b"HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET /600 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 502, "{}", described(&answer));
}

/// Item 8 (c). A `204` with `Content-Length: 5` (and, as a 204 must, no body): the client's
/// 204 carries no Content-Length (RFC 9110 section 8.6 forbids one on a 204).
#[test]
fn a_204_reaches_the_client_without_a_content_length() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_vec())
    });
    let lb = lb_in_front_of(&backend, "");
    let answer = ask(
        &lb,
        "GET /204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 204, "{}", described(&answer));
    assert!(
        answer.values("content-length").is_empty(),
        "the 204 kept a Content-Length: {:?}",
        answer.headers
    );
}

/// Item 8 (d). With `forwardedServerHeader`, a backend's own `X-Forwarded-Server: evil` does
/// not reach the client: it gets exactly one X-Forwarded-Server, tinylb's (the backend's URL).
#[test]
fn the_forwarded_server_header_is_tinylbs_alone() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Answer(
            b"HTTP/1.1 200 OK\r\nX-Forwarded-Server: evil\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let lb = lb_in_front_of(&backend, r#""forwardedServerHeader": true"#);
    let answer = ask(
        &lb,
        "GET /xfs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 200, "{}", described(&answer));
    assert_eq!(
        answer.values("x-forwarded-server"),
        [backend.url().as_str()],
        "{:?}",
        answer.headers
    );
}

/// Item 8 (e). A chunked answer whose chunk lines end in a bare LF (`5\nhello\n0\n\n`), from a
/// backend that then keeps its connection open: the client gets at least a status line (any)
/// within 3 s, not after `backendTimeout` (10 s).
#[test]
fn bare_lf_chunk_lines_do_not_hold_the_answer_until_the_backend_timeout() {
    let backend = ScriptedBackend::healthy_but(|_| {
        Act::Hold(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n".to_vec())
    });
    let lb = lb_in_front_of(&backend, r#""backendTimeout": "10s""#);
    let mut stream = TcpStream::connect(lb.addr).expect("connect");
    stream
        .write_all(b"GET /bare-lf HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let sent = Instant::now();
    let (got, when) = read_until_status_line(&mut stream, Duration::from_secs(3));
    let when = when.unwrap_or_else(|| {
        panic!(
            "no status line within 3 s (backendTimeout is 10 s); got {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    eprintln!(
        "bare-LF chunk lines: a status line after {:?}: {:?}",
        when - sent,
        String::from_utf8_lossy(&got)
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// A WebSocket handshake that asks to close the connection after the answer.
const WEBSOCKET_OFFER: &str = "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                               Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                               Sec-WebSocket-Version: 13\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// Item 6: a backend's early final answer to a large upload reaches the client.

/// A backend that reads request heads only: a `HEAD` (the health check) gets 200, anything
/// else `413` at once, without reading the body, and the connection is then held open (as a
/// server that answers early and waits does) for at most 15 s: reading whatever of the body
/// still comes and counting it (`count_body`), or reading nothing more.
fn early_refuser(count_body: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let body_bytes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&body_bytes);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if head.starts_with(b"HEAD") {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large",
                );
                let until = Instant::now() + Duration::from_secs(15);
                if !count_body {
                    std::thread::sleep(Duration::from_secs(15));
                    return;
                }
                // Whatever of the body still comes is counted, not read as a request.
                let mut sink = [0u8; 65536];
                while Instant::now() < until {
                    match stream.read(&mut sink) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            seen.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    (addr, body_bytes)
}

/// Item 6. A client uploading 3 MB with `Expect: 100-continue` to a backend that answers 413
/// without reading the body: the client's first answer is that 413 (no `100 Continue` before
/// it, so it never sends the body), within 3 s, and the backend gets none of the body.
#[test]
fn an_early_413_reaches_a_client_that_expects_100_continue() {
    let (backend, body_bytes) = early_refuser(true);
    let lb = start_lb_with_servers(&format!("\"http://{backend}\""), "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(
            b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .expect("send the head");
    let started = Instant::now();
    let answer = read_full_response(&mut reader, false).expect("an answer without the body");
    assert_eq!(
        (answer.status, answer.text()),
        (413, "too large".to_string()),
        "after {:?}: {:?}",
        started.elapsed(),
        answer.headers
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 413 took {:?}",
        started.elapsed()
    );
    assert_eq!(
        body_bytes.load(Ordering::Relaxed),
        0,
        "the backend got body bytes"
    );
}

/// Item 6, with curl, which sends `Expect: 100-continue` for uploads over 1 MiB: `curl -T` of
/// 20 MB (more than the sockets between them hold) to a backend that answers 413 and then
/// reads nothing gets the 413 within curl's 10 s
/// (not a 504 after `backendTimeout`, once the socket buffers are full).
#[test]
fn curl_uploading_20_mb_gets_the_backends_early_413() {
    let (backend, _) = early_refuser(false);
    let lb = start_lb_with_servers(&format!("\"http://{backend}\""), "");
    let file = std::env::temp_dir().join(format!("tinylb-early-{}.bin", std::process::id()));
    std::fs::write(&file, vec![b'x'; 20_000_000]).expect("write the upload");
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "10",
            "-T",
        ])
        .arg(&file)
        .arg(format!("{}/upload", lb.url()))
        .output()
        .expect("run curl");
    let _ = std::fs::remove_file(&file);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "413", "{output:?}");
}

/// tinylb in front of `backend` alone.
fn lb_in_front_of(backend: &ScriptedBackend, extra: &str) -> TestLb {
    start_lb_with_servers(&format!("\"{}\"", backend.url()), extra)
}

/// Sends `request` on a new connection and reads one answer (5 s at most per read).
fn ask(lb: &TestLb, request: &str) -> Response {
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer.write_all(request.as_bytes()).expect("send");
    read_full_response(&mut reader, false)
        .unwrap_or_else(|e| panic!("no whole answer to {request:?}: {e}"))
}

/// Reads one answer's head (skipping interim ones), leaving its body in `reader`.
fn read_head(reader: &mut BufReader<TcpStream>) -> Response {
    read_full_response(reader, true).unwrap_or_else(|e| panic!("no answer head: {e}"))
}

/// How the body after `head` is framed, by its headers.
fn framing_of(head: &Response) -> Framing {
    let values = |name| head.values(name);
    if values("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"))
    {
        Framing::Chunked
    } else if let [length] = values("content-length")[..] {
        Framing::Length(length.parse().expect("a numeric Content-Length"))
    } else {
        Framing::Close
    }
}

/// Reads a body framed by a length or by chunking. A close-delimited body is not read (it
/// would wait for the connection's end): it is returned empty.
fn read_body(reader: &mut BufReader<TcpStream>, framing: Framing) -> Vec<u8> {
    match framing {
        Framing::Length(length) => {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).expect("the body");
            body
        }
        Framing::Chunked => {
            let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            // Whole chunked bodies of the backends here are a few dozen bytes: read up to the
            // last chunk, at most 200 reads.
            for _ in 0..200 {
                if chunked.ends_with(b"\r\n0\r\n\r\n") {
                    break;
                }
                let mut byte = [0u8; 1];
                reader.read_exact(&mut byte).expect("the chunked body");
                chunked.push(byte[0]);
            }
            read_full_response(&mut &chunked[..], false)
                .expect("a whole chunked body")
                .body
        }
        Framing::NoBody | Framing::Close => Vec::new(),
    }
}

/// A response described for an assertion message: status, headers and body.
fn described(answer: &Response) -> String {
    format!(
        "got {} {:?} {:?}",
        answer.status,
        answer.headers,
        answer.text()
    )
}

/// Reads from `stream` until a whole status line (`HTTP/1.x NNN ...\r\n`) has arrived or
/// `limit` passes: what arrived, and when the status line was complete.
fn read_until_status_line(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if got.starts_with(b"HTTP/1.") && got.contains(&b'\n') {
            return (got, Some(Instant::now()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, None);
        }
        stream.set_read_timeout(Some(left)).expect("set a timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (got, None),
        }
    }
}
