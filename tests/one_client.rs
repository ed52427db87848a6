//! One client never hurts another. A bad client, connecting from 127.0.0.3, does what a broken
//! program or an attacker does to a threaded proxy: pipelines 530 slow requests and never reads
//! the answers, uploads one byte every two seconds, reads a huge download 4 KiB at a time,
//! reconnects from the port of a request tinylb refused, floods HTTP/2 prefaces, holds every
//! tunnel. Meanwhile, and for some seconds after it has left, an ordinary client, the
//! bystander from 127.0.0.2 (see `common/bystander.rs`), asks `GET /` ten times a second, and
//! every one of its requests must be answered 200 within 3 s. Besides: the requests a client
//! pipelined are not forwarded once it has left, pipelined requests that are not safe reach
//! the backend one at a time (RFC 9112 9.3.2), and SIGTERM ends tinylb within its grace period
//! whatever the clients do.
//!
//! tinylb runs as its binary, master and server process, with its default config (16 workers,
//! 8 per client address, a queue of 512, `clientTimeout` 20 s, `clientHeaderTimeout` 10 s, `maxStuckConnections`
//! 100, `maxTunnels` 256), health checks every second, and only the keys a test names.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::bystander::{
    BAD_CLIENT, BYSTANDER, Bystander, Options, assert_all_answered, connect_from,
    connect_from_port, describe, get_from, summary,
};
use common::process::{BIN, ChildLb};
use common::raw::{OnError, RawServer, fresh_get, peek_head, read_until_close};
use common::{Backend, Outcome, process_tree, read_response, status_json, status_of, wait_until};
use tungstenite::Message;

/// The HTTP/2 flood (2,000 connections, each a tiny_http thread) takes this for writing; the
/// other tests, whose bystander is timed, take it for reading.
static MACHINE: RwLock<()> = RwLock::new(());

fn shared_machine() -> RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a connect from a test client may take.
const CONNECT: Duration = Duration::from_secs(5);

/// tinylb's binary with its master, ready to answer. Dropping it kills every process of it,
/// the master first (so that it starts no other): a server process that cannot drain would
/// outlive the master's own guard, which only kills the master.
struct Lb {
    child: ChildLb,
    addr: SocketAddr,
    /// The first server process, which outlives a master that exited.
    server: u32,
}

impl Lb {
    /// The default config with health checks every second (a 1 s timeout, so that a loaded
    /// machine cannot fail them) and the keys in `extra`, in front of the backend at `url`.
    fn start(label: &str, url: &str, extra: &str) -> Lb {
        let keys = [
            r#""healthCheckInterval": "1s", "healthCheckTimeout": "1s""#,
            extra,
        ]
        .into_iter()
        .filter(|keys| !keys.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
        let mut child = ChildLb::start(&format!("one-client-{label}"), &[url.to_string()], &keys);
        let addr = child.addr;
        let ready = wait_until(Duration::from_secs(10), || {
            fresh_get(addr, "/", Duration::from_secs(2)) == Some(200)
        });
        assert!(ready, "tinylb answers: {}", child.run.log_text());
        let server = child.pid();
        Lb {
            child,
            addr,
            server,
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let mut pids = process_tree(self.child.run.pid());
        pids.push(self.server);
        for pid in pids {
            // Only a tinylb of this test's binary: a pid that ended may have been reused.
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if command.starts_with(BIN.as_bytes()) {
                // SAFETY: kill takes no pointers.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Pipelined requests in [`pipeline_slow_gets`].
const PIPELINED: usize = 530;

/// A connection from the bad client that sends [`PIPELINED`] `GET /slow/2000` in one write: the
/// first 8 take the workers, the next 512 fill the queue, the rest find it full.
fn pipeline_slow_gets(addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(BAD_CLIENT, Options::default(), addr, CONNECT)
        .expect("the bad client connects");
    let pipeline = "GET /slow/2000 HTTP/1.1\r\nHost: x\r\n\r\n".repeat(PIPELINED);
    stream
        .write_all(pipeline.as_bytes())
        .expect("send the pipeline");
    stream
}

/// `/slow/` requests the backend has received.
fn slow_requests_seen(backend: &Backend) -> usize {
    backend
        .seen_proxied()
        .iter()
        .filter(|seen| seen.target.starts_with("/slow/"))
        .count()
}

/// `count` connections from the bad client, each sending a POST head that announces 99,999
/// body bytes, then one body byte every 2 s, until `stop` is set or `limit` has passed; then
/// they close. The thread returns how many body bytes went out.
fn slow_uploads(
    addr: SocketAddr,
    count: usize,
    limit: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    let streams: Vec<TcpStream> = (0..count)
        .map(|_| {
            let mut stream = connect_from(BAD_CLIENT, Options::default(), addr, CONNECT)
                .expect("an uploader connects");
            stream
                .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n")
                .expect("send the head");
            stream
        })
        .collect();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0;
        for _ in 0..limit.as_secs() / 2 {
            // The scenario: one body byte every 2 s on each connection (the wait ends early
            // only when the test stops the uploads).
            if wait_until(Duration::from_secs(2), || stop.load(Ordering::SeqCst))
                || started.elapsed() > limit
            {
                break;
            }
            for mut stream in &streams {
                if stream.write_all(b"x").is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    })
}

/// The bystander asks on for this long after the bad client has left.
const AFTERWARDS: Duration = Duration::from_secs(4);

#[test]
fn a_client_pipelining_530_slow_requests_without_reading_hurts_no_one_and_is_forgotten_when_it_leaves()
 {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let lb = Lb::start("pipeline", &backend.url(), "");
    let bystander = Bystander::start(lb.addr);
    let bad = pipeline_slow_gets(lb.addr);
    // The scenario: the bad client keeps its connection for 8 s and reads nothing.
    std::thread::sleep(Duration::from_secs(8));
    let while_there = slow_requests_seen(&backend);
    drop(bad);
    let left_at = bystander.clock();
    // The scenario: a second for the requests under way when it left to end.
    std::thread::sleep(Duration::from_secs(1));
    let before = slow_requests_seen(&backend);
    // The measuring window, with the bystander still asking.
    std::thread::sleep(Duration::from_secs(5));
    let after_leaving = slow_requests_seen(&backend) - before;
    let records = bystander.finish();
    eprintln!(
        "a client pipelined {PIPELINED} GET /slow/2000 and left at {left_at:.1?}: the backend \
         received {while_there} of them while it was there, {after_leaving} from 1 s to 6 s \
         after it left; {}",
        summary(&records)
    );
    assert_all_answered(
        &records,
        "a client pipelined 530 slow GETs without reading the answers",
    );
    assert!(
        after_leaving <= 2,
        "the backend received {after_leaving} of the pipelined /slow requests from 1 s to 6 s \
         after their client had closed its connection: tinylb goes on forwarding the requests of \
         a client that left"
    );
}

#[test]
fn pipelined_posts_reach_the_backend_one_at_a_time_and_are_answered_in_order() {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let lb = Lb::start("pipelined-posts", &backend.url(), "");
    let stream = connect_from(BAD_CLIENT, Options::default(), lb.addr, CONNECT).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let pipeline: String = (1..=4)
        .map(|n| {
            format!("POST /slow/500?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        })
        .collect();
    (&stream)
        .write_all(pipeline.as_bytes())
        .expect("send the pipeline");
    let mut reader = BufReader::new(&stream);
    let mut targets = Vec::new();
    for n in 1..=4 {
        let (status, body) =
            read_response(&mut reader).unwrap_or_else(|e| panic!("answer {n}: {e}"));
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "answer {n}: {body}");
        let target = body
            .lines()
            .find_map(|line| line.strip_prefix("target "))
            .unwrap_or("none")
            .to_string();
        targets.push(target);
    }
    // The backend holds each POST for 500 ms before answering: forwarded one at a time, each
    // arrives at least that long after the one before.
    let mut arrivals: Vec<Instant> = backend
        .seen_proxied()
        .iter()
        .filter(|seen| seen.target.starts_with("/slow/500"))
        .map(|seen| seen.arrived)
        .collect();
    arrivals.sort();
    let gaps: Vec<Duration> = arrivals
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .collect();
    eprintln!(
        "4 pipelined POST /slow/500: answers for {targets:?}; they reached the backend \
         {gaps:.2?} apart"
    );
    assert_eq!(
        targets,
        [
            "/slow/500?n=1",
            "/slow/500?n=2",
            "/slow/500?n=3",
            "/slow/500?n=4"
        ],
        "the answers in the order of the requests"
    );
    assert_eq!(arrivals.len(), 4, "each POST reached the backend once");
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_millis(450)),
        "the 4 pipelined POSTs reached the backend {gaps:.2?} apart, while it holds each for \
         500 ms: they were handled at the same time, but only requests with safe methods may \
         be handled in parallel (RFC 9112 9.3.2)"
    );
}

#[test]
fn eight_uploads_of_a_byte_every_two_seconds_hurt_no_one() {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let lb = Lb::start("slow-uploads", &backend.url(), "");
    let bystander = Bystander::start(lb.addr);
    let stop = Arc::new(AtomicBool::new(false));
    // The uploads end after 12 s, closing their connections.
    let sent = slow_uploads(lb.addr, 8, Duration::from_secs(12), stop)
        .join()
        .expect("the uploads");
    let left_at = bystander.clock();
    // The scenario: the bystander asks on after the bad client has left.
    std::thread::sleep(AFTERWARDS);
    let records = bystander.finish();
    let forwarded = backend
        .bodies()
        .iter()
        .filter(|body| body.outcome != Outcome::Complete)
        .count();
    eprintln!(
        "8 uploads, {sent} body bytes in all, left at {left_at:.1?}; the backend saw {forwarded} \
         incomplete bodies; {}",
        summary(&records)
    );
    assert_all_answered(&records, "8 connections uploaded a body one byte every 2 s");
}

#[test]
fn eight_downloads_read_4_kib_every_half_second_hurt_no_one() {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let lb = Lb::start("slow-readers", &backend.url(), "");
    let bystander = Bystander::start(lb.addr);
    let options = Options {
        receive_buffer: Some(4096),
        ..Options::default()
    };
    let readers: Vec<JoinHandle<usize>> = (0..8)
        .map(|_| {
            let mut stream =
                connect_from(BAD_CLIENT, options, lb.addr, CONNECT).expect("a reader connects");
            stream
                .write_all(b"GET /bytes/200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("ask for 200 MB");
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("a read timeout");
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                let mut received = 0;
                for _ in 0..24 {
                    // The scenario: 4 KiB every half second, for 12 s; then the reader closes.
                    std::thread::sleep(Duration::from_millis(500));
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => received += n,
                        Err(_) => {}
                    }
                }
                received
            })
        })
        .collect();
    let received: usize = readers
        .into_iter()
        .map(|reader| reader.join().expect("a reader"))
        .sum();
    let left_at = bystander.clock();
    // The scenario: the bystander asks on after the bad client has left.
    std::thread::sleep(AFTERWARDS);
    let records = bystander.finish();
    eprintln!(
        "8 slow readers of /bytes/200000000 got {received} bytes in all and left at \
         {left_at:.1?}; {}",
        summary(&records)
    );
    assert_all_answered(
        &records,
        "8 connections read a large download 4 KiB every half second",
    );
}

/// A request tinylb refuses with 400 (the chunk size is not hexadecimal).
const MALFORMED: &[u8] =
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n";

#[test]
fn a_refused_request_does_not_poison_its_address_and_port() {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let lb = Lb::start("refused", &backend.url(), "");
    // Below the kernel's ephemeral range (32768 and up), so no connect elsewhere takes it.
    let port = 20_000 + (std::process::id() % 10_000) as u16;
    let rounds = refuse_then_reconnect(lb.addr, &[port; 20]);
    assert!(
        rounds >= 15,
        "the kernel let only {rounds} of 20 rounds reconnect from the same port"
    );
}

/// The same, 2,000 times in a row, each round from a port of its own: the client's next
/// connection arrives while the worker that refused the first one is still finishing, which
/// once lost about one GET in 250 (the new connection's request was taken for the ended one's
/// and discarded).
#[test]
fn refusals_and_reconnects_in_a_row_lose_no_request() {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let lb = Lb::start("refused-many", &backend.url(), "");
    let first = 10_000 + (std::process::id() % 8_000) as u16;
    let ports: Vec<u16> = (first..first + 2_000).collect();
    let rounds = refuse_then_reconnect(lb.addr, &ports);
    assert!(
        rounds >= 1_900,
        "the kernel let only {rounds} of 2,000 rounds reconnect from the same port"
    );
}

/// One round per entry of `ports`: a request tinylb refuses with 400 and a close, then at once
/// a GET from the same address and port, which must be answered 200 within 3 s (the test
/// fails at the first that is not). Returns the rounds answered; a round the kernel does not
/// let reconnect is skipped, not tinylb's doing.
fn refuse_then_reconnect(lb: SocketAddr, ports: &[u16]) -> usize {
    let (mut rounds, mut skipped, mut retries) = (0, Vec::new(), 0);
    let mut slowest = Duration::ZERO;
    for (round, &port) in ports.iter().enumerate() {
        let (mut refused, tries) = match connect_from_port(BAD_CLIENT, port, lb) {
            Ok(connected) => connected,
            Err(error) => {
                skipped.push(format!("round {round}, first connect: {error}"));
                continue;
            }
        };
        retries += tries;
        refused
            .write_all(MALFORMED)
            .expect("send the malformed request");
        let (answer, closed) = read_until_close(
            &mut refused,
            Instant::now(),
            Duration::from_secs(5),
            OnError::CountAsClose,
        );
        assert_eq!(
            status_of(&answer),
            Some(400),
            "round {round}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            closed.is_some(),
            "round {round}: the 400 ends the connection"
        );
        drop(refused);

        // At once, from the same address and port. A connect the kernel does not allow is
        // not tinylb's doing: that round is skipped.
        let (again, tries) = match connect_from_port(BAD_CLIENT, port, lb) {
            Ok(connected) => connected,
            Err(error) => {
                skipped.push(format!("round {round}, reconnect: {error}"));
                continue;
            }
        };
        retries += tries;
        let sent = Instant::now();
        again
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("a read timeout");
        (&again)
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send the GET");
        let answer = read_response(&mut BufReader::new(&again));
        let took = sent.elapsed();
        slowest = slowest.max(took);
        let outcome = match answer {
            Ok((200, _)) if took <= Duration::from_secs(3) => {
                rounds += 1;
                continue;
            }
            Ok((status, _)) => format!("status {status}"),
            Err(error) => describe(&error),
        };
        panic!(
            "round {round}: a GET from {BAD_CLIENT}:{port}, right after tinylb refused a request \
             from that address and port and closed the connection, got {outcome} after \
             {took:.2?} instead of a 200 within 3 s ({retries} connects retried so far)"
        );
    }
    eprintln!(
        "{} rounds from {BAD_CLIENT}: {rounds} answered 200 (slowest {slowest:.2?}), {retries} \
         connects retried, skipped: {skipped:?}",
        ports.len()
    );
    rounds
}

/// The HTTP/2 connection preface: tiny_http 0.12 parks the thread that reads it for good.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn http2_prefaces_closed_at_once_are_recycled_and_later_clients_answered() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let backend = Backend::start("a");
    let mut lb = Lb::start(
        "h2-flood",
        &backend.url(),
        r#""adminAddress": "127.0.0.1:0""#,
    );
    let addr = lb.addr;
    let mark = lb.child.run.mark();
    let flood_started = Instant::now();
    // 2,000 connections in batches of 100, so that neither side holds many at once.
    for _batch in 0..20 {
        let batch: Vec<TcpStream> = (0..100)
            .map(|_| {
                let mut stream = connect_from(BAD_CLIENT, Options::default(), addr, CONNECT)
                    .expect("the flood connects");
                stream.write_all(PREFACE).expect("send the preface");
                stream
            })
            .collect();
        // The scenario: each of these clients closes within 0.2 s.
        std::thread::sleep(Duration::from_millis(100));
        drop(batch);
    }
    let flooded_in = flood_started.elapsed();
    let replaced = lb
        .child
        .run
        .find_since(mark, "started generation 2", Duration::from_secs(60));
    let replaced_after = flood_started.elapsed();
    let serving = replaced.is_some()
        && lb
            .child
            .run
            .find_since(mark, "generation 2 serves", Duration::from_secs(10))
            .is_some();
    // Until the old process has exited, its flood sockets are still open (their threads are
    // parked), and a new connection from a reused port can meet one; "later" begins once it
    // is gone.
    let old_gone = serving
        && lb
            .child
            .run
            .find_where(
                mark,
                |line| line.contains("generation 1 (pid") && line.contains(") finished ("),
                Duration::from_secs(30),
            )
            .is_some();

    // Later clients from the same address, each on a new connection; at most 5 failures are
    // tried, each costing 3 s.
    let mut failures = Vec::new();
    let mut answered = 0;
    for i in 0..300 {
        let sent = Instant::now();
        let outcome = get_from(
            BAD_CLIENT,
            addr,
            &format!("/later/{i}"),
            Duration::from_secs(3),
        );
        let took = sent.elapsed();
        if outcome == Ok(200) && took <= Duration::from_secs(3) {
            answered += 1;
        } else {
            failures.push(format!("GET {i}: {outcome:?} after {took:.2?}"));
            if failures.len() == 5 {
                break;
            }
        }
    }
    eprintln!(
        "2,000 HTTP/2 prefaces, each closed within 0.2 s, sent in {flooded_in:.1?}; a new server \
         process: {replaced:?} ({replaced_after:.1?} after the flood began; serving: \
         {serving}); then {answered} GETs answered, failures: {failures:?}"
    );
    assert!(
        replaced.is_some(),
        "no new server process within 60 s of 2,000 HTTP/2 prefaces whose clients closed at \
         once: their connections were never counted as stuck"
    );
    assert!(serving, "generation 2 took over");
    assert!(old_gone, "generation 1 finished within 30 s of the swap");
    let process = &status_json(lb.child.run.admin_addr_since(mark))["process"];
    assert_eq!(process["generation"], 2, "{process}");
    assert_eq!(process["startedBy"], "recycle", "{process}");
    assert!(
        failures.is_empty(),
        "after the recycle, {answered} fresh GETs from {BAD_CLIENT} were answered, then: {failures:?}"
    );
}

/// A backend that answers plain requests (health checks) with 200 and echoes every text and
/// binary message of the WebSockets it accepts.
struct EchoBackend {
    server: RawServer,
    /// WebSockets open now.
    open: Arc<AtomicUsize>,
}

impl EchoBackend {
    fn start() -> EchoBackend {
        let open = Arc::new(AtomicUsize::new(0));
        let server = {
            let open = Arc::clone(&open);
            RawServer::start(move |stream, _, _| echo(stream, &open))
        };
        EchoBackend { server, open }
    }
}

fn echo(stream: TcpStream, open: &AtomicUsize) {
    let Some(head) = peek_head(&stream).map(|head| head.to_ascii_lowercase()) else {
        return;
    };
    if !head.contains("upgrade: websocket") {
        let mut stream = stream;
        let _ = stream.read(&mut vec![0; head.len()]);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        return;
    }
    let Ok(mut socket) = tungstenite::accept(stream) else {
        return;
    };
    open.fetch_add(1, Ordering::SeqCst);
    while let Ok(message) = socket.read() {
        if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
            break;
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// A WebSocket handshake through tinylb from `source`: the socket, or the status (or error)
/// that refused it.
fn websocket_from(
    source: std::net::Ipv4Addr,
    addr: SocketAddr,
    path: &str,
) -> Result<tungstenite::WebSocket<TcpStream>, String> {
    let stream = connect_from(source, Options::default(), addr, CONNECT)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    match tungstenite::client(format!("ws://{addr}{path}"), stream) {
        Ok((socket, response)) if response.status() == 101 => Ok(socket),
        Ok((_, response)) => Err(format!("status {}", response.status())),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(format!("status {}", response.status()))
        }
        Err(error) => Err(error.to_string()),
    }
}

#[test]
fn a_client_holding_every_tunnel_leaves_one_for_another_client() {
    let _shared = shared_machine();
    let backend = EchoBackend::start();
    let lb = Lb::start("tunnels", &backend.server.url(), r#""maxTunnels": 4"#);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for i in 0..6 {
        match websocket_from(BAD_CLIENT, lb.addr, &format!("/bad/{i}")) {
            Ok(socket) => held.push(socket),
            Err(why) => refused.push(format!("handshake {}: {why}", i + 1)),
        }
    }
    let bystander = websocket_from(BYSTANDER, lb.addr, "/bystander");
    eprintln!(
        "maxTunnels 4: the bad client holds {} tunnels (the backend {} WebSockets), refused: \
         {refused:?}; the bystander's handshake: {:?}",
        held.len(),
        backend.open.load(Ordering::SeqCst),
        bystander.as_ref().map(|_| 101)
    );
    let mut socket = bystander.unwrap_or_else(|why| {
        panic!(
            "the bystander's WebSocket got {why} while the bad client held {} tunnels \
             (maxTunnels 4)",
            held.len()
        )
    });
    socket
        .send(Message::text("hello from 127.0.0.2"))
        .expect("send");
    let echoed = socket.read().expect("the echo");
    assert_eq!(echoed, Message::text("hello from 127.0.0.2"));
    drop(held);
}

#[test]
fn sigterm_ends_tinylb_within_its_grace_period_whatever_clients_do() {
    let _shared = shared_machine();
    let backend = Backend::start("a");
    let mut lb = Lb::start("sigterm", &backend.url(), r#""shutdownGracePeriod": "2s""#);
    let pipeline = pipeline_slow_gets(lb.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let uploads = slow_uploads(lb.addr, 2, Duration::from_secs(30), Arc::clone(&stop));
    assert!(
        wait_until(Duration::from_secs(5), || slow_requests_seen(&backend) >= 1),
        "the pipelined requests reach the backend"
    );
    let signalled = Instant::now();
    lb.child.run.signal("TERM");
    let mut status = None;
    wait_until(Duration::from_secs(7), || {
        status = lb.child.run.child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let took = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    drop(pipeline);
    let sent = uploads.join().expect("the uploads");
    eprintln!(
        "SIGTERM with a pipelining client and 2 slow uploaders ({sent} body bytes) open: the \
         master {} after {took:.1?}",
        match status {
            Some(status) => format!("exited ({status})"),
            None => "still ran".to_string(),
        }
    );
    assert!(
        status.is_some(),
        "the master still ran {took:.1?} after SIGTERM with shutdownGracePeriod 2s; log:\n{}",
        lb.child.run.log_text()
    );
}
