//! Shared test fixtures: real backends on 127.0.0.1 (a small hand-written HTTP/1.1 server whose
//! `stop()` really closes every connection, like a killed process), a load balancer started
//! in-process on port 0, HTTP clients, and `wait_until` so no test relies on a bare sleep.

#![allow(dead_code)]

pub mod backend;
pub mod process;
pub mod raw;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend::{Backend, Seen, pattern_sha256};
use crossbeam_channel::Receiver;
use tinylb::LoadBalancer;
use tinylb::config::Config;

/// A load balancer running in this test process; shut down gracefully when dropped.
pub struct TestLb {
    lb: Option<LoadBalancer>,
    pub addr: SocketAddr,
}

impl TestLb {
    /// Base URL for clients: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The running balancer, to look at backend health.
    pub fn lb(&self) -> &LoadBalancer {
        self.lb.as_ref().expect("running")
    }

    /// Graceful shutdown now, returning its report.
    pub fn shutdown(mut self) -> tinylb::ShutdownReport {
        let (_keep, abort): (_, Receiver<()>) = crossbeam_channel::bounded(1);
        self.lb.take().expect("running").shutdown(&abort)
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        if let Some(lb) = self.lb.take() {
            let (abort_now, abort) = crossbeam_channel::bounded(1);
            let _ = abort_now.send(());
            lb.shutdown(&abort);
        }
    }
}

/// Starts tinylb on 127.0.0.1:0 in front of `backends`. `extra` is more JSON keys, for example
/// `r#""algorithm": "ip-hash", "healthCheckInterval": "100ms""#` (or "" for none).
pub fn start_lb(backends: &[&Backend], extra: &str) -> TestLb {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    start_lb_with_servers(&servers.join(", "), extra)
}

/// Like [`start_lb`] with the `servers` JSON list written by the caller (for weights). The keys
/// in `extra` replace the test defaults (tinylb refuses a key given twice).
pub fn start_lb_with_servers(servers_json: &str, extra: &str) -> TestLb {
    let defaults = format!(
        r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "100ms", "healthCheckTimeout": "500ms",
            "servers": [{servers_json}]}}"#
    );
    let parse = |text: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("test config {text}: {e}"))
    };
    let mut keys = parse(&defaults);
    keys.extend(parse(&format!("{{{extra}}}")));
    let text = serde_json::Value::Object(keys).to_string();
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("bad test config {text}: {e}"));
    let lb = LoadBalancer::start(config).expect("tinylb starts");
    let addr = lb.local_addr();
    TestLb { lb: Some(lb), addr }
}

/// A ureq client that passes every status through, like a browser would show it.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// GET `url` and return (status, body as text, X-Backend header).
pub fn get(agent: &ureq::Agent, url: &str) -> (u16, String, Option<String>) {
    let mut response = agent.get(url).call().expect("request completes");
    let backend = response
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, body, backend)
}

/// Sends raw bytes on a new connection and returns everything the server sends until it
/// closes the connection or `timeout` passes with nothing more arriving.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; says which.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Whether tinylb currently considers backend `index` healthy.
pub fn is_healthy(lb: &TestLb, index: usize) -> bool {
    lb.lb().backends()[index].is_healthy()
}

/// A number from `/proc/PID/status`: `Threads`, or `VmRSS` / `VmHWM` in KiB.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// How many file descriptors the process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Reads one response from a raw connection: the status and the body, framed by
/// Content-Length, chunked, or (with neither) the end of the stream. Not for HEAD answers,
/// which have no body whatever their headers say: use [`read_full_response`].
pub fn read_response(reader: &mut impl std::io::BufRead) -> std::io::Result<(u16, Vec<u8>)> {
    read_full_response(reader, false).map(|response| (response.status, response.body))
}

/// How a response's body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A response that has no body by its nature (HEAD, 204, 304).
    NoBody,
    Length(usize),
    Chunked,
    Close,
}

/// One response read off a raw connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header lines in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body with the framing removed (chunks joined).
    pub body: Vec<u8>,
    pub framing: Framing,
}

/// Reads one response with its headers, skipping interim 1xx answers; `head_request` says the
/// answer has no body whatever its headers say (204 and 304 never have one).
pub fn read_full_response(
    reader: &mut impl std::io::BufRead,
    head_request: bool,
) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    let bad = |what: String| Error::new(ErrorKind::InvalidData, what);
    for _interim in 0..10 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5)?.parse().ok())
            .ok_or_else(|| bad(format!("not a status line: {line:?}")))?;
        let mut headers = Vec::new();
        for _ in 0..200 {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed inside the head",
                ));
            }
            let header = line.trim_end_matches(['\r', '\n']);
            if header.is_empty() {
                break;
            }
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {header:?}")))?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        let framing = if head_request || status == 204 || status == 304 {
            Framing::NoBody
        } else if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            read_chunked(reader, &mut body)?;
            Framing::Chunked
        } else if let Some(length) = value("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {length:?}")))?;
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
            Framing::Length(length)
        } else {
            reader.read_to_end(&mut body)?;
            Framing::Close
        };
        return Ok(Response {
            status,
            headers,
            body,
            framing,
        });
    }
    Err(bad("more than ten interim answers".to_string()))
}

fn read_chunked(reader: &mut impl std::io::BufRead, body: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let mut line = String::new();
    for _ in 0..1_000_000 {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| Error::new(ErrorKind::InvalidData, format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, if any, up to the blank line.
            for _ in 0..100 {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
            return Ok(());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_line(&mut line)?;
    }
    Err(Error::new(ErrorKind::InvalidData, "too many chunks"))
}

/// Starts tinylb in-process from a whole config.json text, for tests that need settings
/// `start_lb` fixes (its health-check interval, for one).
pub fn start_lb_from_json(text: &str) -> TestLb {
    let config = Config::parse(text).unwrap_or_else(|e| panic!("bad test config {text}: {e}"));
    let lb = LoadBalancer::start(config).expect("tinylb starts");
    let addr = lb.local_addr();
    TestLb { lb: Some(lb), addr }
}

/// A raw backend that passes health checks (HEAD gets `200`, then the connection closes) and
/// never answers anything else: it holds every other request open, reading nothing more, for
/// up to 10 s or until dropped. For `backendTimeout` tests.
pub struct HangingBackend {
    addr: SocketAddr,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl HangingBackend {
    pub fn start() -> HangingBackend {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("hanging backend binds");
        let addr = listener.local_addr().expect("bound");
        let stopping = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stopping, hits) = (Arc::clone(&stopping), Arc::clone(&hits));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let (stopping, hits) = (Arc::clone(&stopping), Arc::clone(&hits));
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf) {
                                Ok(n) if n > 0 && head.len() < 65536 => {
                                    head.extend_from_slice(&buf[..n])
                                }
                                _ => return,
                            }
                        }
                        if head.starts_with(b"HEAD ") {
                            let _ = stream.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            );
                            return;
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        let until = Instant::now() + Duration::from_secs(10);
                        while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    });
                }
            })
        };
        HangingBackend {
            addr,
            stopping,
            hits,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests held open (health checks not counted).
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HangingBackend {
    fn drop(&mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
