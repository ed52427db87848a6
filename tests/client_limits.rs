//! The limits that keep one client from starving the others, each shown at work and counted
//! in `/status.json` and `/metrics`: a request body slower than `clientBodyMinRate` gets `408`,
//! an answer read slower than `clientSendMinRate` is cut off, a client address beyond
//! `clientMaxWorkers` waits for its turn while another address is served at once, and the
//! requests a client pipelined are dropped, not forwarded, once it has left. Each test also
//! runs the same client with the limit off (or within it), so it shows the limit and not
//! something else cutting the connection. `tests/one_client.rs` runs the attacks themselves.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::bystander::{BAD_CLIENT, BYSTANDER, Options, connect_from, get_from};
use common::*;

/// A tinylb in this process in front of `backend`, with its admin listener and `extra` keys.
fn lb_with_admin(backend: &Backend, extra: &str) -> (TestLb, SocketAddr) {
    let separator = if extra.is_empty() { "" } else { ", " };
    let lb = start_lb(
        &[backend],
        &format!(r#""adminAddress": "127.0.0.1:0"{separator}{extra}"#),
    );
    let admin = lb.lb().admin_addr().expect("the admin listener runs");
    (lb, admin)
}

/// A count under `clients` in `/status.json`.
fn client_count(admin: SocketAddr, name: &str) -> u64 {
    status_json(admin)["clients"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("clients.{name} is a count"))
}

/// The value of one sample line in `/metrics`, such as `tinylb_x{a="b"}`.
fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let raw = raw_exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&raw).to_string();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sample} in /metrics:\n{text}"))
}

/// Sends a POST announcing 100,000 bytes, then 10 bytes every 200 ms (50 B/s) for at most
/// `limit`. Returns what tinylb answered and when the connection closed, if it did.
fn trickle_upload(addr: SocketAddr, limit: Duration) -> (String, Option<Duration>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .expect("send the head");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        // The trickle itself: 10 bytes, then a pause (the read's timeout).
        if stream.write_all(&[b'x'; 10]).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => return (text(&answer), Some(started.elapsed())),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (text(&answer), Some(started.elapsed())),
        }
    }
    (text(&answer), None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn a_body_slower_than_client_body_min_rate_gets_408_and_is_counted() {
    let backend = Backend::start("a");
    let (lb, admin) = lb_with_admin(&backend, r#""clientTimeout": "1s""#);
    // 50 B/s against 500 B/s owed after the 1 s grace: cut a little after 1 s.
    let (answer, closed) = trickle_upload(lb.addr, Duration::from_secs(6));
    let closed = closed.unwrap_or_else(|| panic!("still open after 6 s: {answer:?}"));
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a 408 before the close: {answer:?}"
    );
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "cut after {closed:?}, expected soon after the 1 s grace"
    );
    assert!(wait_until(Duration::from_secs(3), || {
        client_count(admin, "slowBodies") == 1
    }));
    assert_eq!(
        metric(
            admin,
            r#"tinylb_clients_too_slow_total{direction="request_body"}"#
        ),
        1.0
    );
    assert!(
        backend
            .bodies()
            .iter()
            .all(|b| b.outcome != Outcome::Complete),
        "the backend never got a whole body: {:?}",
        backend.bodies()
    );
}

#[test]
fn with_client_body_min_rate_0_the_same_trickle_is_not_cut() {
    let backend = Backend::start("a");
    let (lb, admin) = lb_with_admin(&backend, r#""clientTimeout": "1s", "clientBodyMinRate": 0"#);
    let (answer, closed) = trickle_upload(lb.addr, Duration::from_secs(4));
    assert_eq!(closed, None, "cut although the check is off: {answer:?}");
    assert_eq!(client_count(admin, "slowBodies"), 0);
}

/// Reads `GET /bytes/N` from tinylb for at most `limit`: slowly (`slow`: 4 KiB every 100 ms,
/// with a small receive buffer) or as fast as it comes. Returns the bytes received and whether
/// tinylb closed the connection (rather than the limit ending the read).
fn download(addr: SocketAddr, size: u64, slow: bool, limit: Duration) -> (u64, bool) {
    let options = Options {
        receive_buffer: slow.then_some(4096),
        ..Options::default()
    };
    let mut stream =
        connect_from(BYSTANDER, options, addr, Duration::from_secs(5)).expect("connect");
    let head = format!("GET /bytes/{size} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut received = 0u64;
    let mut buf = vec![0u8; if slow { 4096 } else { 1 << 20 }];
    while started.elapsed() < limit && received < size {
        match stream.read(&mut buf) {
            Ok(0) => return (received, true),
            Ok(n) => received += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (received, true),
        }
        if slow {
            // The slow reader's pace.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (received, false)
}

#[test]
fn an_answer_read_slower_than_client_send_min_rate_is_cut_off_and_counted() {
    let backend = Backend::start("a");
    // 100 KB/s owed after a 1 s grace; the client reads about 40 KB/s.
    let (lb, admin) = lb_with_admin(
        &backend,
        r#""clientTimeout": "1s", "clientSendMinRate": 100000"#,
    );
    let size = 50_000_000;
    let (received, closed) = download(lb.addr, size, true, Duration::from_secs(10));
    assert!(closed, "still reading after 10 s ({received} bytes)");
    assert!(received < size, "cut off, not complete: {received} bytes");
    assert!(wait_until(Duration::from_secs(3), || {
        client_count(admin, "slowReaders") == 1
    }));
    assert_eq!(
        metric(
            admin,
            r#"tinylb_clients_too_slow_total{direction="response"}"#
        ),
        1.0
    );
    // A client that keeps up gets the whole of a smaller answer over the same limit.
    let (received, _) = download(lb.addr, 20_000_000, false, Duration::from_secs(10));
    assert!(received >= 20_000_000, "a fast reader got {received} bytes");
    assert_eq!(client_count(admin, "slowReaders"), 1);
}

#[test]
fn a_client_beyond_client_max_workers_waits_while_another_is_served_at_once() {
    let backend = Backend::start("a");
    let (lb, admin) = lb_with_admin(&backend, r#""workers": 4, "clientMaxWorkers": 1"#);
    let addr = lb.addr;
    let slow = |n: usize| {
        std::thread::spawn(move || {
            get_from(
                BAD_CLIENT,
                addr,
                &format!("/slow/800?n={n}"),
                Duration::from_secs(10),
            )
        })
    };
    let first = slow(1);
    assert!(wait_until(Duration::from_secs(5), || backend
        .proxied_count()
        == 1));
    let second = slow(2);
    assert!(wait_until(Duration::from_secs(5), || {
        client_count(admin, "waitedForTurn") == 1
    }));
    // Another address is served at once, though the first one's request waits.
    let started = Instant::now();
    assert_eq!(
        get_from(BYSTANDER, addr, "/", Duration::from_secs(5)),
        Ok(200)
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the other address waited {:?}",
        started.elapsed()
    );
    assert_eq!(first.join().unwrap(), Ok(200));
    assert_eq!(second.join().unwrap(), Ok(200));
    // The second reached the backend only after the first was answered.
    let seen = backend.seen_proxied();
    let arrived = |n: &str| {
        seen.iter()
            .find(|s| s.target.ends_with(n))
            .map(|s| s.arrived)
            .expect("both reached the backend")
    };
    let gap = arrived("n=2").duration_since(arrived("n=1"));
    assert!(
        gap >= Duration::from_millis(750),
        "the second of one address started {gap:?} after the first, within its 800 ms"
    );
}

#[test]
fn requests_a_client_pipelined_are_dropped_once_it_has_left_and_counted() {
    let backend = Backend::start("a");
    let (lb, admin) = lb_with_admin(&backend, "");
    let mut stream = TcpStream::connect(lb.addr).expect("connect");
    let request = b"GET /slow/2500 HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(&request.repeat(4)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || backend
        .proxied_count()
        == 1));
    drop(stream);
    // The watchdog sees the client gone within about a second, long before the first answer
    // (2.5 s) would let the second request go.
    assert!(
        wait_until(Duration::from_secs(8), || client_count(admin, "clientGone")
            == 3),
        "clients: {}",
        status_json(admin)["clients"]
    );
    assert_eq!(
        metric(
            admin,
            r#"tinylb_requests_not_forwarded_total{reason="client_gone"}"#
        ),
        3.0
    );
    assert_eq!(backend.proxied_count(), 1, "{:?}", backend.seen_proxied());
}
