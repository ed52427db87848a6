//! Upgrade offers tinylb does not carry out are ignored, never refused (RFC 9110 section 7.8):
//! an `h2c` offer (curl's `--http2`, every request of Java's HttpClient on http://) is served
//! as HTTP/1.1 with the offer's headers dropped, bodies and all; an `Upgrade` header that
//! `Connection` does not name is an ordinary hop-by-hop header. With such an offer tiny_http
//! hands the body over undecoded, so these tests also check the body framing tinylb does itself,
//! and that the answer ends the connection at once.

mod common;
use common::backend::pattern_byte;
use common::raw::{
    OnError, chunked_pieces, exchange_in_pieces, fresh_get, keep_alive_connection, read_until_close,
};
use common::*;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What the JDK's HttpClient sends with its defaults on http:// (and curl --http2 alike).
const H2C_OFFER: &str = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                         HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n";

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern_byte).collect()
}

/// The pause between the pieces of a request body, so that each arrives on its own.
const PAUSE: Duration = Duration::from_millis(2);

/// `head`, then `body` as pieces.
fn pieces(head: &str, body: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut pieces = vec![head.as_bytes().to_vec()];
    pieces.extend(body);
    pieces
}

#[test]
fn an_h2c_offer_is_served_as_http11_with_the_offer_dropped() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let answer = raw_exchange(
        lb.addr,
        format!("GET /h2c HTTP/1.1\r\nHost: example.com\r\n{H2C_OFFER}\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("upgrade"), "{text}");
    let seen = backend.seen_proxied();
    assert_eq!(seen.len(), 1);
    for header in ["upgrade", "http2-settings", "connection"] {
        assert!(
            seen[0].header_values(header).is_empty(),
            "{header} reached the backend: {:?}",
            seen[0].headers
        );
    }
}

#[test]
fn a_post_with_an_h2c_offer_forwards_its_body_intact() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let body = pattern(300_000);
    let head = format!(
        "POST /sha256 HTTP/1.1\r\nHost: x\r\n{H2C_OFFER}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let body_pieces = body.chunks(50_000).map(<[u8]>::to_vec).collect();
    let answer =
        exchange_in_pieces(lb.addr, &pieces(&head, body_pieces), PAUSE).expect("an answer");
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    let expected = format!("{} {}\n", pattern_sha256(body.len() as u64), body.len());
    assert_eq!(answer.text(), expected);
}

#[test]
fn a_chunked_post_with_an_h2c_offer_is_decoded_by_tinylb() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let body = pattern(200_000);
    let head = format!(
        "POST /sha256 HTTP/1.1\r\nHost: x\r\n{H2C_OFFER}Transfer-Encoding: chunked\r\n\r\n"
    );
    let chunks: Vec<&[u8]> = body.chunks(7_000).collect();
    let answer = exchange_in_pieces(lb.addr, &pieces(&head, chunked_pieces(&chunks)), PAUSE)
        .expect("an answer");
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    let expected = format!("{} {}\n", pattern_sha256(body.len() as u64), body.len());
    assert_eq!(answer.text(), expected);
}

#[test]
fn a_chunked_post_with_an_h2c_offer_cut_mid_chunk_never_completes_upstream() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let head =
        format!("POST /cut HTTP/1.1\r\nHost: x\r\n{H2C_OFFER}Transfer-Encoding: chunked\r\n\r\n");
    let mut stream = TcpStream::connect(lb.addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut body = b"3e8\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 500]);
    stream.write_all(&body).unwrap();
    // The 500 bytes of the chunk have reached the backend before the client leaves.
    assert!(
        wait_until(Duration::from_secs(5), || backend
            .bodies()
            .first()
            .is_some_and(|body| body.bytes == 500)),
        "{:?}",
        backend.bodies()
    );
    drop(stream);
    // A later request proves the first was dealt with; the cut one is never seen complete.
    let after = raw_exchange(
        lb.addr,
        b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(after.starts_with(b"HTTP/1.1 200"));
    let targets: Vec<String> = backend
        .seen_proxied()
        .into_iter()
        .map(|s| s.target)
        .collect();
    assert_eq!(
        targets,
        ["/after"],
        "the cut upload reached the backend as complete"
    );
}

#[test]
fn an_upgrade_header_not_named_in_connection_is_dropped_and_keep_alive_kept() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for n in 0..2 {
        writer
            .write_all(
                format!("GET /plain/{n} HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\n\r\n").as_bytes(),
            )
            .unwrap();
        let (status, _) = read_response(&mut reader).expect("an answer on the same connection");
        assert_eq!(status, 200);
    }
    let seen = backend.seen_proxied();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.header_values("upgrade").is_empty()));
}

#[test]
fn a_websocket_offer_is_served_as_plain_http_when_max_tunnels_is_0() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], r#""maxTunnels": 0"#);
    let answer = raw_exchange(
        lb.addr,
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(5),
    );
    let (status, body) = read_response(&mut BufReader::new(&answer[..])).expect("an answer");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("target /chat"));
    let seen = backend.seen_proxied();
    assert!(
        seen[0].header_values("upgrade").is_empty(),
        "{:?}",
        seen[0].headers
    );
    assert_eq!(seen[0].header_values("sec-websocket-key").len(), 1);
}

#[test]
fn an_upgrade_offer_with_a_body_is_served_as_plain_http() {
    let backend = Backend::start("a");
    let lb = start_lb(&[&backend], "");
    let head = "POST /sha256 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
                Content-Length: 5\r\n\r\n";
    let answer = exchange_in_pieces(lb.addr, &pieces(head, vec![b"hello".to_vec()]), PAUSE)
        .expect("an answer");
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    assert_eq!(answer.text(), format!("{} 5\n", sha256_hex(b"hello")));
}

/// Upgrade offers served as plain HTTP are answered and the connection closed at once, even
/// though the client keeps its socket open: tiny_http hands such a connection over raw, so
/// nothing but tinylb's answer can end it.
#[test]
fn upgrade_offers_are_answered_and_closed_at_once_while_the_client_holds_the_socket_open() {
    let a = Backend::start("a");
    // A long client timeout, so that a close caused by it cannot pass for a prompt answer.
    let lb = start_lb(&[&a], r#""clientTimeout": "10s""#);
    let requests = [
        // A WebSocket handshake to a backend that does not speak WebSocket: its 200 is relayed.
        "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        // curl's h2c probe: served as HTTP/1.1.
        "GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    ];
    for request in requests {
        let mut stream = TcpStream::connect(lb.addr).expect("connect");
        stream.write_all(request.as_bytes()).unwrap();
        let started = Instant::now();
        // The socket stays open on our side; only tinylb can end this read.
        let (answer, closed) = read_until_close(
            &mut stream,
            started,
            Duration::from_secs(5),
            OnError::CountAsClose,
        );
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(status_of(&answer), Some(200), "{request:?} got {text:?}");
        let closed = closed.unwrap_or_else(|| panic!("{request:?}: connection left open"));
        eprintln!("upgrade offer: 200 and close after {closed:?} for {request:?}");
        assert!(
            closed < Duration::from_secs(1),
            "{request:?}: closed only after {closed:?}"
        );
    }
    assert_eq!(a.seen_proxied().len(), 2, "{:?}", a.seen_proxied());
    assert_eq!(
        fresh_get(lb.addr, "/after-upgrade", Duration::from_secs(5)),
        Some(200),
        "a normal request afterwards"
    );
}
