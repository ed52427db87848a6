//! Where a request ends, and what may be in it. Ambiguous framing (Content-Length beside
//! Transfer-Encoding, a bad or a second Content-Length, a coding other than chunked), a missing
//! Host and broken chunks are refused with 400 or 501 before a backend sees a byte, and so are
//! the requests pipelined behind them; chunked uploads that ask to close are never refused when
//! whole; and the two 2026 advisories against tiny_http 0.12.0 (CVE-2026-66752, request
//! smuggling through Transfer-Encoding values it does not parse; CVE-2026-66753, CR/LF injection
//! into header values) cannot reach through tinylb. Everything goes over raw sockets, so the
//! bytes are exactly the ones under test.

mod common;
use common::raw::{
    OnError, chunked_pieces, count_status_lines, exchange_in_pieces, fresh_get, send_until_close,
};
use common::scripted::{Act, ScriptedBackend};
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Refused: 400 (or 501), nothing forwarded, the connection closed.
// ---------------------------------------------------------------------------------------------

/// Sends `request` on 200 fresh connections, 8 clients at once; asserts that each gets exactly
/// one answer, with `status`, and is closed by tinylb within 2 s, that nothing reached the
/// backend, and that a normal request is served afterwards. Many attempts, because letting a
/// pipelined request through is a race between workers that a single try can miss. Returns the
/// first answer.
fn assert_refused_unforwarded(request: &[u8], status: u16) -> Response {
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
        assert_eq!(status_of(answer), Some(status), "{text:?}");
        if count_status_lines(answer) != 1 {
            extra_responses.push(text.into_owned());
        }
    }
    // The fixture records only requests whose body it read completely; a wrongly forwarded one
    // would land within moments.
    let landed = wait_until(Duration::from_millis(300), || !a.seen_proxied().is_empty());
    let forwarded: Vec<String> = a
        .seen_proxied()
        .into_iter()
        .map(|s| format!("{} {} ({} body bytes)", s.method, s.target, s.body_len))
        .collect();
    assert!(
        !landed && forwarded.is_empty(),
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
    assert_eq!(
        fresh_get(lb.addr, "/after", Duration::from_secs(5)),
        Some(200),
        "a normal request afterwards"
    );
    read_full_response(&mut &answers[0].0[..], false).expect("an answer")
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

#[test]
fn invalid_chunk_size_line_gets_400_and_no_complete_request_upstream() {
    let request = format!(
        "POST /bad-size HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n{}",
        smuggled()
    );
    assert_refused_unforwarded(request.as_bytes(), 400);
}

#[test]
fn chunk_longer_than_its_size_gets_400_and_no_complete_request_upstream() {
    let request = format!(
        "POST /long-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabcdefgh\r\n0\r\n\r\n{}",
        smuggled()
    );
    assert_refused_unforwarded(request.as_bytes(), 400);
}

// ---------------------------------------------------------------------------------------------
// Whole chunked uploads, and the advisories against tiny_http.
// ---------------------------------------------------------------------------------------------

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
        let pieces: [&[u8]; 4] = [
            head.as_bytes(),
            b"5\r\nhello\r\n",
            b"f\r\n, chunked world\r\n",
            b"0\r\n\r\n",
        ];
        let answer = exchange_in_pieces(lb.addr, &pieces, Duration::ZERO).expect("an answer");
        assert_eq!(
            (answer.status, answer.text()),
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
    // Sent once the body has been read (the backend has it whole): before that, tinylb cannot
    // tell this from a client leaving mid-chunk, since tiny_http's decoder reports both alike.
    assert!(
        wait_until(Duration::from_secs(5), || backend.seen_proxied().len() == 1),
        "the upload reached the backend"
    );
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
        let raw = ScriptedBackend::start(move |_| Act::Close(answer_line.clone().into_bytes()));
        // It answers health checks as it answers everything.
        let lb = start_lb_with_servers(
            &format!("\"{}\"", raw.url()),
            r#""healthCheckInterval": "1h""#,
        );
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
    pieces.extend(chunked_pieces(&vec![&chunk; 64]));
    let answer = exchange_in_pieces(lb.addr, &pieces, Duration::ZERO).expect("an answer");
    assert_eq!(answer.status, 200);
    // The pattern restarts every chunk, so hash what was sent rather than the long pattern.
    let mut sent = Vec::new();
    for _ in 0..64 {
        sent.extend_from_slice(&chunk);
    }
    assert_eq!(
        answer.text(),
        format!("{} {}\n", sha256_hex(&sent), sent.len())
    );
}
