//! Where a request ends, and what may be in it: chunked uploads that ask to close are never
//! refused when whole, requests with too many header fields are refused before a backend sees
//! them, and the two 2026 advisories against tiny_http 0.12.0 (CVE-2026-66752, request
//! smuggling through Transfer-Encoding values it does not parse; CVE-2026-66753, CR/LF
//! injection into header values) cannot reach through tinylb. Everything goes over raw sockets,
//! so the bytes are exactly the ones under test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::raw::RawServer;
use common::{Backend, raw_exchange, read_response, start_lb};

/// Writes `pieces` one write at a time (as a client streaming chunks does) and reads until the
/// connection closes.
fn send_pieces(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for piece in pieces {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn complete_chunked_uploads_that_ask_to_close_are_all_forwarded() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let body = b"hello, chunked world";
    let expected = format!("{} {}\n", sha256_hex(body), body.len());
    for n in 0..30 {
        let head = format!(
            "POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\
             X-Attempt: {n}\r\n\r\n"
        );
        let answer = send_pieces(
            lb.addr,
            &[
                head.as_bytes(),
                b"5\r\nhello\r\n",
                b"f\r\n, chunked world\r\n",
                b"0\r\n\r\n",
            ],
        );
        let (status, answer_body) = read_response(&mut &answer[..]).expect("an answer");
        assert_eq!(
            (status, String::from_utf8_lossy(&answer_body).into_owned()),
            (200, expected.clone()),
            "attempt {n}"
        );
    }
    assert_eq!(backend.seen_proxied().len(), 30);
}

#[test]
fn a_complete_chunked_upload_then_a_half_close_is_forwarded() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let mut stream = TcpStream::connect(lb.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    // The whole request is out; a client may say so with a half-close and wait for the answer.
    // Sent late enough that the body has been read: before that, tinylb cannot tell this from a
    // client leaving mid-chunk, since tiny_http's decoder reports both the same way.
    std::thread::sleep(Duration::from_millis(300));
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let (status, body) = read_response(&mut &answer[..]).expect("an answer");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} 5\n", sha256_hex(b"hello"))
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn more_than_100_header_fields_get_431_and_nothing_is_forwarded() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let request = |fields: usize, target: &str| {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
        for n in 1..fields {
            head.push_str(&format!("X-Field-{n}: {n}\r\n"));
        }
        // A pipelined request behind it must not be forwarded either.
        head.push_str("\r\nGET /behind HTTP/1.1\r\nHost: x\r\n\r\n");
        raw_exchange(lb.addr, head.as_bytes(), Duration::from_secs(5))
    };
    let at_limit = request(100, "/at-limit");
    assert!(at_limit.starts_with(b"HTTP/1.1 200"), "100 fields are fine");

    let answer = request(101, "/over-limit");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(text.contains("more than 100 header fields"), "{text}");
    let answer = request(1000, "/far-over");
    assert!(answer.starts_with(b"HTTP/1.1 431 "));

    let mut targets: Vec<String> = backend
        .seen_proxied()
        .into_iter()
        .map(|s| s.target)
        .collect();
    targets.sort();
    assert_eq!(targets, ["/at-limit", "/behind"]);
}

/// CVE-2026-66752: tiny_http reads any Transfer-Encoding as chunked and does not parse the
/// value. Each variant carries, inside its chunk data, a whole request to `/smuggled`; a
/// Content-Length, where present, covers only the chunk-size line, so a parser that believed
/// it would read `/smuggled` as the next request. A pipelined `/second` follows.
#[test]
fn cve_2026_66752_transfer_encoding_variants_never_smuggle_a_request() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let variants = [
        ("Transfer-Encoding: chunked, identity", false),
        ("Transfer-Encoding: identity, chunked", false),
        ("Transfer-Encoding: xchunked", false),
        ("Transfer-Encoding:\tchunked", true),
        ("Transfer-Encoding: CHUNKED", true),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            false,
        ),
        ("Transfer-Encoding : chunked", false),
    ];
    let mut cases = 0;
    for (index, (te, accepted)) in variants.iter().enumerate() {
        for with_length in [false, true] {
            let id = format!("{index}{}", if with_length { "cl" } else { "" });
            let smuggled = format!("GET /smuggled-{id} HTTP/1.1\r\nHost: x\r\n\r\n");
            let size_line = format!("{:x}\r\n", smuggled.len());
            let length = if with_length {
                format!("Content-Length: {}\r\n", size_line.len())
            } else {
                String::new()
            };
            let request = format!(
                "POST /first-{id} HTTP/1.1\r\nHost: x\r\n{te}\r\n{length}\r\n\
                 {size_line}{smuggled}\r\n0\r\n\r\n\
                 GET /second-{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let answer = raw_exchange(lb.addr, request.as_bytes(), Duration::from_secs(5));
            let (status, _) = read_response(&mut &answer[..]).expect("an answer");
            let seen = backend.seen_proxied();
            let first = seen.iter().find(|s| s.target == format!("/first-{id}"));
            let second = seen.iter().any(|s| s.target == format!("/second-{id}"));
            if *accepted && !with_length {
                assert_eq!(status, 200, "{te:?}: {}", String::from_utf8_lossy(&answer));
                let first = first.expect("forwarded");
                assert_eq!(
                    first.body_len,
                    smuggled.len() as u64,
                    "{te:?}: the body is data"
                );
                assert!(second, "{te:?}: the pipelined request is its own");
            } else {
                assert!(
                    matches!(status, 400 | 501),
                    "{te:?} (Content-Length: {with_length}) got {status}"
                );
                assert!(
                    first.is_none() && !second,
                    "{te:?}: nothing after a refusal"
                );
            }
            cases += 1;
        }
    }
    let smuggled: Vec<String> = backend
        .seen_proxied()
        .into_iter()
        .map(|s| s.target)
        .filter(|t| t.contains("smuggled"))
        .collect();
    assert!(smuggled.is_empty(), "smuggled through: {smuggled:?}");
    assert_eq!(cases, 14);
}

/// CVE-2026-66753: tiny_http keeps a bare CR or LF inside a header value. No value tinylb
/// writes, to a backend or to a client, may carry one.
#[test]
fn cve_2026_66753_no_header_value_tinylb_writes_carries_cr_or_lf() {
    // Towards the backend: every way a client can put CR or LF into a value tinylb forwards or
    // derives (X-Forwarded-Host comes from Host, X-Forwarded-For extends the client's).
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    for (n, field) in [
        "X-A: a\rInjected: 1",
        "X-A: a\nInjected: 1",
        "X-Forwarded-For: 10.0.0.1\rInjected: 1",
        "User-Agent: curl\n\rInjected: 1",
    ]
    .iter()
    .enumerate()
    {
        let answer = raw_exchange(
            lb.addr,
            format!("GET /crlf-{n} HTTP/1.1\r\nHost: x\r\n{field}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        );
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "{field:?}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert_strict_head(&answer);
    }
    let host = raw_exchange(
        lb.addr,
        b"GET /crlf-host HTTP/1.1\r\nHost: x\rInjected: 1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(host.starts_with(b"HTTP/1.1 400 "));
    for seen in backend.seen_proxied() {
        for (name, value) in &seen.headers {
            assert!(!name.eq_ignore_ascii_case("injected"), "{:?}", seen.headers);
            assert!(!value.contains(['\r', '\n']), "{:?}", seen.headers);
        }
    }

    // Towards the client: a backend that puts a bare CR or LF into a value, or folds a line.
    // A bare LF ends a line (RFC 9112 section 2.2 lets a recipient read it so, and ureq does):
    // the backend then sent two fields, and tinylb writes each on a CRLF line of its own.
    for (bad, second_field_allowed) in [
        ("X-A: a\rInjected: 1", false),
        ("X-A: a\r\n Injected: 1", false),
        ("X-A: a\nInjected: 1", true),
    ] {
        let answer_line = format!("HTTP/1.1 200 OK\r\n{bad}\r\nContent-Length: 2\r\n\r\nok");
        let raw = RawServer::start(move |mut stream, _, _| {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(answer_line.as_bytes());
        });
        let lb = start_lb_raw(&raw);
        let answer = raw_exchange(
            lb.addr,
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_strict_head(&answer);
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        assert!(
            second_field_allowed || !head.contains("injected"),
            "{bad:?} reached the client: {text}"
        );
    }
}

/// A load balancer in front of a raw backend, which answers health checks as it answers
/// everything.
fn start_lb_raw(raw: &RawServer) -> common::TestLb {
    common::start_lb_with_servers(
        &format!("\"{}\"", raw.url()),
        r#""healthCheckInterval": "1h""#,
    )
}

/// Every line of the answer's head ends in CRLF and holds no other CR or LF.
fn assert_strict_head(answer: &[u8]) {
    let text = String::from_utf8_lossy(answer);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    for line in head.split("\r\n") {
        assert!(!line.contains(['\r', '\n']), "a bare CR or LF in {line:?}");
    }
}

#[test]
fn the_chunked_upload_in_pieces_matches_what_a_streaming_client_sends() {
    // 64 chunks of 16 KiB, each its own write, with Connection: close: the whole megabyte
    // arrives and is hashed by the backend.
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let chunk: Vec<u8> = (0..16 * 1024u64)
        .map(common::backend::pattern_byte)
        .collect();
    let mut pieces: Vec<Vec<u8>> = vec![
        b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    for _ in 0..64 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        pieces.push(piece);
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let answer = send_pieces(lb.addr, &refs);
    let (status, body) = read_response(&mut &answer[..]).expect("an answer");
    assert_eq!(status, 200);
    // The pattern restarts every chunk, so hash what was sent rather than the long pattern.
    let mut sent = Vec::new();
    for _ in 0..64 {
        sent.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} {}\n", sha256_hex(&sent), sent.len())
    );
}
