//! Overload against the tinylb binary (issue 3, "Load"): 2,000 concurrent connections against
//! the default 16 workers and 512 queue slots each get the backend's answer or a fast 503 with
//! Retry-After, none hangs, memory stays bounded and descriptors are given back, and tinylb
//! serves normally afterwards.

mod common;
use common::process::ChildLb;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Samples a process's stats every 20 ms on a thread of its own and keeps the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<ProcStats>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut max = ProcStats::default();
                // Bounded: a test stops it within a minute.
                for _ in 0..3000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let now = ProcStats::of(pid);
                    max.threads = max.threads.max(now.threads);
                    max.rss_kib = max.rss_kib.max(now.rss_kib);
                    max.fds = max.fds.max(now.fds);
                    // The sampling period.
                    std::thread::sleep(Duration::from_millis(20));
                }
                max
            })
        };
        Sampler { stop, handle }
    }

    /// The maxima seen, with the process's own high-water mark of resident memory.
    fn finish(self, pid: u32) -> ProcStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut max = self.handle.join().expect("sampler thread");
        max.hwm_kib = ProcStats::of(pid).hwm_kib;
        max
    }
}

/// A response parsed off a raw connection.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: bool,
    from_backend: bool,
    took: Duration,
}

/// Parses `bytes` as one response framed by Content-Length; `None` while incomplete.
fn parse_answer(bytes: &[u8], took: Duration) -> Option<Result<Answer, String>> {
    let response = match read_full_response(&mut &bytes[..], false) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
        Err(e) => return Some(Err(e.to_string())),
        Ok(response) => response,
    };
    if !matches!(response.framing, Framing::Length(_)) {
        return Some(Err(format!(
            "not framed by Content-Length: {:?}",
            response.headers
        )));
    }
    Some(Ok(Answer {
        status: response.status,
        retry_after: response.header("retry-after").is_some(),
        from_backend: response.header("x-backend").is_some(),
        took,
    }))
}

/// One client connection of the overload, read without blocking.
struct Client {
    stream: Option<TcpStream>,
    sent: Instant,
    received: Vec<u8>,
    outcome: Option<Result<Answer, String>>,
}

impl Client {
    /// Reads what has arrived; closes the connection once the whole answer is in (a client
    /// that has its answer leaves). Returns whether anything happened.
    fn poll(&mut self, scratch: &mut [u8]) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        let result = match stream.read(scratch) {
            Ok(0) => Err("connection closed before a whole answer".to_string()),
            Ok(n) => {
                self.received.extend_from_slice(&scratch[..n]);
                match parse_answer(&self.received, self.sent.elapsed()) {
                    Some(result) => result,
                    None => return true,
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) => Err(format!("read failed: {e}")),
        };
        self.outcome = Some(result);
        self.stream = None;
        true
    }
}

/// One pass over every open client; returns how many made progress.
fn poll_all(clients: &mut [Client], scratch: &mut [u8]) -> usize {
    clients
        .iter_mut()
        .map(|client| client.poll(scratch) as usize)
        .sum()
}

/// The kernel's count of connections dropped because a listen queue was full (all sockets of
/// this network namespace: other processes' overflows count too).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

const CONNECTIONS: usize = 2000;
/// Longest a connection may wait for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

fn median(sorted: &[Duration]) -> Duration {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

#[test]
fn two_thousand_concurrent_connections_get_an_answer_or_a_fast_503() {
    let limit = tinylb::client::socket_options::raise_open_files_limit().expect("raise fd limit");
    assert!(
        limit >= CONNECTIONS as u64 + 500,
        "open files limit {limit} too low"
    );
    let a = Backend::start("a");
    let b = Backend::start("b");
    // Default workers (16) and queue (512).
    let lb = ChildLb::start("overload", &[a.url(), b.url()], "");
    let (addr, pid) = (lb.addr, lb.pid());
    let before = ProcStats::of(pid);
    let overflows_before = listen_overflows();
    let sampler = Sampler::start(pid);

    // Each request holds a worker 20 ms: the 8 workers one address may hold answer about 400 a
    // second, so 2,000 sent within a second fill the queue, and the rest must be refused at once.
    let request = b"GET /slow/20 HTTP/1.1\r\nHost: overload\r\n\r\n";
    let started = Instant::now();
    let mut scratch = vec![0u8; 16 * 1024];
    let mut clients: Vec<Client> = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to tinylb");
        stream.write_all(request).expect("send request");
        stream.set_nonblocking(true).expect("non-blocking");
        clients.push(Client {
            stream: Some(stream),
            sent: Instant::now(),
            received: Vec::new(),
            outcome: None,
        });
        if i % 50 == 49 {
            poll_all(&mut clients, &mut scratch);
        }
    }
    let all_sent = started.elapsed();
    wait_until(ANSWER_WITHIN, || {
        while poll_all(&mut clients, &mut scratch) > 0 {}
        clients.iter().all(|c| c.stream.is_none())
    });
    let all_answered = started.elapsed();
    let during = sampler.finish(pid);
    let overflows = listen_overflows() - overflows_before;

    let hung = clients.iter().filter(|c| c.stream.is_some()).count();
    let mut ok = Vec::new();
    let mut busy = Vec::new();
    let mut problems = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        match &client.outcome {
            Some(Ok(answer)) if answer.status == 200 && answer.from_backend => ok.push(answer.took),
            Some(Ok(answer)) if answer.status == 503 && answer.retry_after => {
                busy.push(answer.took)
            }
            Some(Ok(answer)) => problems.push(format!("connection {i}: {answer:?}")),
            Some(Err(e)) => problems.push(format!("connection {i}: {e}")),
            None => {}
        }
    }
    ok.sort();
    busy.sort();
    eprintln!(
        "overload: {CONNECTIONS} connections sent in {all_sent:?}, all answered after \
         {all_answered:?}: {} x 200 (median {:?}, max {:?}), {} x 503 (median {:?}, max {:?}), \
         {hung} unanswered, {} other; listen queue overflows meanwhile: {overflows}",
        ok.len(),
        median(&ok),
        ok.last().copied().unwrap_or_default(),
        busy.len(),
        median(&busy),
        busy.last().copied().unwrap_or_default(),
        problems.len(),
    );
    eprintln!(
        "overload: tinylb before: {} threads, {} fds, {:.1} MiB RSS; during: up to {} threads, \
         {} fds, {:.1} MiB RSS, VmHWM {:.1} MiB",
        before.threads,
        before.fds,
        mib(before.rss_kib),
        during.threads,
        during.fds,
        mib(during.rss_kib),
        mib(during.hwm_kib),
    );

    assert_eq!(
        hung, 0,
        "connections without an answer after {ANSWER_WITHIN:?}"
    );
    assert!(
        problems.is_empty(),
        "{} answers were neither 200 from a backend nor 503 with Retry-After: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert_eq!(ok.len() + busy.len(), CONNECTIONS);
    // Whatever entered the queue was served. Every connection comes from 127.0.0.1, one client
    // address, which may hold half the 16 workers and keep half the 512 slots waiting.
    assert!(ok.len() >= 8 + 256, "only {} served", ok.len());
    assert!(!busy.is_empty(), "the queue never filled: not an overload");
    assert_eq!(
        a.proxied_count() + b.proxied_count(),
        ok.len(),
        "a refused request never reaches a backend"
    );
    // A refusal waits for no worker, only for tinylb to accept and parse the request: within
    // milliseconds in a release build; a debug build on a loaded machine took up to a second.
    let fast = if cfg!(debug_assertions) {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(250)
    };
    assert!(
        median(&busy) < fast,
        "refusals are not fast: median {:?}",
        median(&busy)
    );
    assert!(
        during.hwm_kib < 300 * 1024,
        "VmHWM {:.1} MiB",
        mib(during.hwm_kib)
    );

    // Afterwards: a normal request is served at once, and the connections' descriptors are
    // given back (the listener, the backend pool, the log pipes: a few dozen at most).
    let asked = Instant::now();
    let (status, body, backend) = get(&client(), &format!("http://{addr}/after"));
    let took = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(backend.is_some());
    assert!(
        took < Duration::from_secs(2),
        "the request after took {took:?}"
    );
    let settled = wait_until(Duration::from_secs(5), || {
        ProcStats::of(pid).fds <= before.fds + 20
    });
    let after = ProcStats::of(pid);
    eprintln!(
        "overload: a request afterwards took {took:?}; tinylb then held {} fds and {} threads",
        after.fds, after.threads
    );
    assert!(
        settled,
        "tinylb still holds {} fds (before the load: {})",
        after.fds, before.fds
    );
}
