//! Slow and idle clients: `clientTimeout` ends a connection that sends nothing, stalls in its
//! head or body, stops reading its answer, or idles between keep-alive requests; a busy
//! connection is not cut; 2,000 idle and slowloris connections leave normal requests fast with
//! bounded memory; connections opened together are all served at once; and
//! `clientHeaderTimeout`: a head trickled past it gets `408`, one inside it is answered.

mod common;
use common::process::ChildLb;
use common::raw::{OnError, fresh_get, keep_alive_connection, read_until_close};
use common::*;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
/// A disconnect "after about clientTimeout": not before 0.4 s, not after 3 s.
const EARLIEST_CUT: Duration = Duration::from_millis(400);
const LATEST_CUT: Duration = Duration::from_secs(3);
/// Descriptors tinylb opens and closes on its own (health checks, pooled backend connections).
const FD_MARGIN: usize = 4;

/// The 2,000-connection test takes this for writing; tests that measure timing take it for
/// reading, so the crowd's load does not skew their clocks.
static MACHINE: RwLock<()> = RwLock::new(());

fn timing_sensitive() -> RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fast_lb(backends: &[&Backend], extra: &str) -> TestLb {
    let separator = if extra.is_empty() { "" } else { ", " };
    start_lb(
        backends,
        &format!(r#""clientTimeout": "500ms"{separator}{extra}"#),
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Asserts the connection was closed between [`EARLIEST_CUT`] and [`LATEST_CUT`] after
/// `since`; returns what the server sent before closing.
fn assert_cut_after_timeout(stream: &mut TcpStream, since: Instant, what: &str) -> Vec<u8> {
    let (received, closed) = read_until_close(stream, since, LATEST_CUT, OnError::CountAsClose);
    let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {LATEST_CUT:?}"));
    eprintln!(
        "{what}: closed after {closed:?}, {} bytes received first",
        received.len()
    );
    assert!(
        closed >= EARLIEST_CUT,
        "{what}: closed after only {closed:?}, before clientTimeout"
    );
    received
}

/// Starts the tinylb binary in front of `backend` with `extra` config keys, once it answers.
/// Health checks run every second with a 1 s timeout, so a loaded machine cannot fail them.
fn start_binary(label: &str, backend: &Backend, extra: &str) -> (ChildLb, SocketAddr) {
    let mut lb = ChildLb::start(
        label,
        &[backend.url()],
        &format!(r#""healthCheckInterval": "1s", "healthCheckTimeout": "1s", {extra}"#),
    );
    let addr = lb.addr;
    let ready = wait_until(Duration::from_secs(5), || {
        fresh_get(addr, "/", Duration::from_secs(2)) == Some(200)
    });
    assert!(ready, "tinylb answers: {}", lb.run.log_text());
    (lb, addr)
}

#[test]
fn silent_client_is_disconnected_after_client_timeout() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], "");
    let since = Instant::now();
    let mut stream = connect(lb.addr);
    let received = assert_cut_after_timeout(&mut stream, since, "silent client");
    assert_eq!(
        String::from_utf8_lossy(&received),
        "",
        "a plain close, no answer"
    );
    assert_eq!(a.proxied_count(), 0);
}

#[test]
fn client_stalling_in_its_request_head_is_disconnected_and_nothing_is_forwarded() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], "");
    let mut stream = connect(lb.addr);
    stream
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: tinylb\r\nX-Half: abc")
        .unwrap();
    let since = Instant::now();
    let received = assert_cut_after_timeout(&mut stream, since, "client stalled in its head");
    assert_eq!(String::from_utf8_lossy(&received), "", "a plain close");
    assert_eq!(a.seen_proxied().len(), 0, "{:?}", a.seen_proxied());
    // The proxy still serves.
    assert_eq!(fresh_get(lb.addr, "/", Duration::from_secs(3)), Some(200));
    assert_eq!(a.proxied_count(), 1);
}

#[test]
fn client_stalling_in_its_body_is_disconnected_and_frees_the_only_worker() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], r#""workers": 1"#);
    let mut stream = connect(lb.addr);
    stream
        .write_all(b"POST /sha256 HTTP/1.1\r\nHost: tinylb\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    stream.write_all(&[b'x'; 30_000]).unwrap();
    let since = Instant::now();
    let received = assert_cut_after_timeout(&mut stream, since, "client stalled in its body");
    let answer = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a stalled body may get a 408 before the close, nothing else: {answer:?}"
    );
    // The only worker is free again: a normal request is answered at once.
    let started = Instant::now();
    assert_eq!(
        fresh_get(lb.addr, "/after", Duration::from_secs(3)),
        Some(200)
    );
    eprintln!(
        "after the stalled body: answered {:?}; answer was {answer:?}",
        started.elapsed()
    );
    let seen = a.seen_proxied();
    assert!(
        seen.iter().all(|s| s.body_len != 100_000),
        "the backend must never see the incomplete request as complete: {seen:?}"
    );
    assert_eq!(
        seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
        ["/after"]
    );
}

#[test]
fn client_not_reading_a_large_download_frees_the_worker_without_buffering_it() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let (lb, addr) = start_binary(
        "not-reading",
        &a,
        r#""clientTimeout": "500ms", "workers": 1"#,
    );
    let pid = lb.pid();
    assert_eq!(
        fresh_get(addr, "/bytes/100000", Duration::from_secs(3)),
        Some(200)
    );
    let rss_before = proc_status(pid, "VmRSS");

    let mut stalled = connect(addr);
    stalled
        .write_all(b"GET /bytes/50000000 HTTP/1.1\r\nHost: tinylb\r\n\r\n")
        .unwrap();
    let since = Instant::now();
    // Once the download holds the only worker, ask for something else: the answer can only
    // come once the stalled download has let the worker go.
    assert!(
        wait_until(Duration::from_secs(3), || a
            .seen_proxied()
            .iter()
            .any(|s| s.target == "/bytes/50000000")),
        "the download started"
    );
    let status = fresh_get(addr, "/", Duration::from_secs(5));
    let freed_after = since.elapsed();
    let hwm = proc_status(pid, "VmHWM");
    let rss = proc_status(pid, "VmRSS");
    assert_eq!(status, Some(200), "the only worker must be freed");
    assert!(
        freed_after < CLIENT_TIMEOUT + Duration::from_secs(3),
        "worker freed after {freed_after:?}"
    );

    // The stalled client gets what was in the socket buffers, then end of stream: a truncated
    // transfer, never 50 MB.
    let (received, closed) = read_until_close(
        &mut stalled,
        since,
        Duration::from_secs(10),
        OnError::CountAsClose,
    );
    eprintln!(
        "client not reading 50 MB: worker free after {freed_after:?}; the client had {} bytes \
         buffered, closed: {closed:?}; tinylb VmRSS {rss_before} KiB before, {rss} KiB after, \
         VmHWM {hwm} KiB",
        received.len()
    );
    assert!(closed.is_some(), "the stalled connection must be closed");
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        received.len() < 50_000_000,
        "got {} bytes: the download was not cut",
        received.len()
    );
    assert!(
        hwm < 40 * 1024,
        "tinylb's peak RSS {hwm} KiB: it must not hold the 50 MB"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_client_timeout() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /first HTTP/1.1\r\nHost: tinylb\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut reader).expect("first answer");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("target /first"));
    let since = Instant::now();
    assert!(reader.buffer().is_empty(), "nothing after the answer");
    let mut stream = reader.into_inner();
    let received = assert_cut_after_timeout(&mut stream, since, "idle keep-alive connection");
    assert_eq!(String::from_utf8_lossy(&received), "");
    assert_eq!(a.proxied_count(), 1);
}

#[test]
fn connection_busy_every_200ms_outlives_the_timeout() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    let started = Instant::now();
    let mut answered = 0;
    for i in 0..11 {
        if i > 0 {
            // The scenario: a pause shorter than clientTimeout between requests.
            std::thread::sleep(Duration::from_millis(200));
        }
        let head = format!("GET /req/{i} HTTP/1.1\r\nHost: tinylb\r\n\r\n");
        writer.write_all(head.as_bytes()).expect("connection open");
        let (status, body) = read_response(&mut reader)
            .unwrap_or_else(|e| panic!("request {i} after {:?}: {e}", started.elapsed()));
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains(&format!("target /req/{i}\n")));
        answered += 1;
    }
    let lived = started.elapsed();
    eprintln!("busy connection: {answered} requests over {lived:?}, still open");
    assert_eq!(answered, 11);
    assert!(lived >= Duration::from_secs(2), "{lived:?}");
    assert_eq!(a.proxied_count(), 11, "all on the one connection");
}

#[test]
fn a_head_trickled_within_client_header_timeout_is_answered() {
    // A slow but complete head: each gap inside clientTimeout, the whole inside
    // clientHeaderTimeout.
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], r#""clientHeaderTimeout": "6s""#);
    let stream = connect(lb.addr);
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    writer
        .write_all(b"GET /trickled HTTP/1.1\r\nHost: tinylb\r\nX-Trickle: ")
        .unwrap();
    let gap = CLIENT_TIMEOUT - Duration::from_millis(100);
    let mut trickled = 0;
    while started.elapsed() + gap < Duration::from_millis(2900) {
        // The scenario: one byte just inside each timeout.
        std::thread::sleep(gap);
        writer.write_all(b"a").expect("connection still open");
        trickled += 1;
    }
    writer.write_all(b"\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let answer = read_response(&mut BufReader::new(stream));
    let held = started.elapsed();
    eprintln!(
        "trickling 1 byte every {gap:?}: held the connection (and a tinylb thread) for \
         {held:?} with {trickled} bytes of header, then got {:?}",
        answer.as_ref().map(|(status, _)| status)
    );
    let (status, body) = answer.expect("the trickled request is answered");
    assert_eq!(status, 200);
    let expected = format!("header x-trickle: {}\n", "a".repeat(trickled));
    assert!(
        String::from_utf8_lossy(&body).contains(&expected),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(trickled >= 5, "{trickled}");
    assert!(held > Duration::from_millis(2400), "{held:?}");
}

/// Sends a head one byte every `gap` until the connection is closed or 6 s have passed;
/// returns what came back and when the connection closed.
fn trickle_until_closed(addr: SocketAddr, gap: Duration) -> (Vec<u8>, Option<Duration>) {
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    writer
        .write_all(b"GET /trickled HTTP/1.1\r\nHost: tinylb\r\nX-Trickle: ")
        .unwrap();
    let trickler = std::thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(6) {
            // The scenario: one byte well inside each clientTimeout.
            std::thread::sleep(gap);
            if writer.write_all(b"a").is_err() {
                return;
            }
        }
    });
    let result = read_until_close(
        &mut stream,
        started,
        Duration::from_secs(8),
        OnError::CountAsClose,
    );
    trickler.join().unwrap();
    result
}

#[test]
fn a_head_trickled_past_client_header_timeout_gets_408_and_nothing_is_forwarded() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = fast_lb(&[&a], r#""clientHeaderTimeout": "1500ms""#);
    let (received, closed) = trickle_until_closed(lb.addr, Duration::from_millis(200));
    let closed = closed.expect("the trickler is cut off");
    eprintln!("trickled head: 408 and closed after {closed:?}");
    // The deadline, plus at most a second for the watchdog to see the connection and one
    // more for its next look.
    assert!(closed >= Duration::from_millis(1500), "{closed:?}");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    let response = read_full_response(&mut &received[..], false).expect("a whole answer");
    assert_eq!(
        response.status,
        408,
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        response.text().contains("clientHeaderTimeout"),
        "{}",
        response.text()
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(a.proxied_count(), 0, "nothing of the request was forwarded");
    // A normal request is unaffected.
    assert_eq!(
        fresh_get(lb.addr, "/after", Duration::from_secs(2)),
        Some(200)
    );
}

#[test]
fn a_connection_that_sends_nothing_is_closed_silently_at_client_header_timeout() {
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let lb = start_lb(
        &[&a],
        r#""clientTimeout": "10s", "clientHeaderTimeout": "1s""#,
    );
    let since = Instant::now();
    let mut stream = connect(lb.addr);
    let (received, closed) = read_until_close(
        &mut stream,
        since,
        Duration::from_secs(5),
        OnError::CountAsClose,
    );
    let closed = closed.expect("closed before clientTimeout");
    assert!(closed >= Duration::from_secs(1), "{closed:?}");
    assert_eq!(
        String::from_utf8_lossy(&received),
        "",
        "no 408 without a head"
    );
}

#[test]
fn thousand_idle_and_thousand_slowloris_connections_leave_normal_requests_fast() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tinylb::client::socket_options::raise_open_files_limit()
        .expect("raise this process's fd limit");
    let a = Backend::start("a");
    let (lb, addr) = start_binary("crowd", &a, r#""clientTimeout": "5s""#);
    let pid = lb.pid();
    let threads_before = proc_status(pid, "Threads");
    let rss_before = proc_status(pid, "VmRSS");
    let fds_before = open_fds(pid);

    // The first connections are opened one by one so that each takes one of tiny_http's idle
    // pool threads (a burst would queue them behind each other, see
    // `connections_opened_together_are_all_answered_promptly`); after that every connection
    // gets a new thread. std's listen backlog is 128: opening faster than tinylb accepts would
    // overflow it and cost 1 s SYN retransmits, so the rest open in accepted batches of 50.
    let opened = Instant::now();
    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for batch in 0..40 {
        for i in 0..50 {
            let mut stream = connect(addr);
            if batch == 0 && i < 8 {
                // The scenario: a client pacing its first connections. Which pool thread takes
                // a connection shows nowhere outside tiny_http, so there is nothing to poll.
                std::thread::sleep(Duration::from_millis(20));
            }
            if batch % 2 == 1 {
                stream
                    .write_all(b"GET /slowloris HTTP/1.1\r\nHost: tinylb\r\n")
                    .unwrap();
                slow.push(stream);
            } else {
                idle.push(stream);
            }
        }
        // Each accepted connection costs tinylb two descriptors (tiny_http clones the socket);
        // the margin is for health-check and pooled backend connections coming and going.
        let open = idle.len() + slow.len();
        let accepted = wait_until(Duration::from_secs(3), || {
            open_fds(pid) + FD_MARGIN >= fds_before + 2 * open
        });
        assert!(
            accepted,
            "{open} connections open, tinylb has {} fds ({fds_before} at start)",
            open_fds(pid)
        );
    }
    let open_took = opened.elapsed();

    let header = b"X-Slowloris: abcdefghij";
    let mut slowest = Duration::ZERO;
    let (mut peak_threads, mut peak_rss, mut peak_fds) = (0, 0, 0);
    for (round, byte) in header.iter().take(7).enumerate() {
        let tick = Instant::now();
        for stream in &mut slow {
            stream
                .write_all(&[*byte])
                .expect("slowloris connection open");
        }
        let started = Instant::now();
        let status = fresh_get(addr, &format!("/normal/{round}"), Duration::from_secs(3));
        let took = started.elapsed();
        assert_eq!(status, Some(200), "round {round}");
        slowest = slowest.max(took);
        peak_threads = peak_threads.max(proc_status(pid, "Threads"));
        peak_rss = peak_rss.max(proc_status(pid, "VmRSS"));
        peak_fds = peak_fds.max(open_fds(pid));
        // The scenario: the slowloris paces itself, one byte per connection every 300 ms.
        std::thread::sleep(Duration::from_millis(300).saturating_sub(tick.elapsed()));
    }
    let hwm = proc_status(pid, "VmHWM");
    eprintln!(
        "1000 idle + 1000 slowloris connections (opened in {open_took:?}): slowest normal \
         request {slowest:?}; tinylb threads {threads_before} -> {peak_threads}, fds \
         {fds_before} -> {peak_fds}, VmRSS {rss_before} KiB -> {peak_rss} KiB, VmHWM {hwm} KiB"
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(hwm < 200 * 1024, "VmHWM {hwm} KiB");
    assert!(
        peak_fds + FD_MARGIN >= fds_before + 4000,
        "every connection still open: {peak_fds} fds"
    );
    assert!(
        peak_threads >= threads_before + 1900,
        "nearly every connection holds a thread: {peak_threads}"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "measured before clientTimeout could end the idle connections"
    );

    drop(idle);
    drop(slow);
    let closed = Instant::now();
    let settled = wait_until(Duration::from_secs(10), || {
        proc_status(pid, "Threads") <= threads_before + 4
    });
    let threads_after = proc_status(pid, "Threads");
    eprintln!(
        "after closing them: {threads_after} threads after {:?}, {} fds, VmRSS {} KiB",
        closed.elapsed(),
        open_fds(pid),
        proc_status(pid, "VmRSS")
    );
    assert!(
        settled,
        "threads {threads_after}, {threads_before} at start"
    );
    assert_eq!(fresh_get(addr, "/", Duration::from_secs(3)), Some(200));
    let seen: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(
        seen.iter().filter(|t| t.starts_with("/normal/")).count(),
        7,
        "{seen:?}"
    );
    assert!(!seen.iter().any(|t| t == "/slowloris"), "{seen:?}");
}

#[test]
fn connections_opened_together_are_all_answered_promptly() {
    // A browser opens several connections at once. tiny_http hands each new connection to an
    // idle pool thread if it believes one is waiting; in a burst it can queue several behind
    // the same thread, and a queued connection then waits until some other connection ends.
    let _quiet = timing_sensitive();
    let a = Backend::start("a");
    let (lb, addr) = start_binary("together", &a, r#""clientTimeout": "5s""#);
    // The burst: tinylb is paused while eight connections complete their handshakes, so they
    // wait in the kernel's backlog and tiny_http accepts them back to back, as under load.
    lb.run.signal("STOP");
    let streams: Vec<TcpStream> = (0..8).map(|_| connect(addr)).collect();
    lb.run.signal("CONT");
    let started = Instant::now();
    let answers: Vec<(Option<u16>, Duration)> = std::thread::scope(|scope| {
        let readers: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(i, stream)| {
                scope.spawn(move || {
                    let head = format!("GET /together/{i} HTTP/1.1\r\nHost: tinylb\r\n\r\n");
                    (&*stream).write_all(head.as_bytes()).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(3)))
                        .unwrap();
                    let status = read_response(&mut BufReader::new(stream))
                        .ok()
                        .map(|(status, _)| status);
                    (status, started.elapsed())
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    eprintln!("8 connections opened together, (status, answered after): {answers:?}");
    let slow: Vec<_> = answers
        .iter()
        .filter(|(status, took)| *status != Some(200) || *took > Duration::from_secs(1))
        .collect();
    assert!(
        slow.is_empty(),
        "{} of 8 connections were not answered within 1 s: {answers:?}",
        slow.len()
    );
    drop(streams);
    let together = a
        .seen_proxied()
        .iter()
        .filter(|s| s.target.starts_with("/together/"))
        .count();
    assert_eq!(together, 8);
}
