//! Shared test fixtures: real backends on 127.0.0.1 (a small hand-written HTTP/1.1 server whose
//! `stop()` really closes every connection, like a killed process, and raw ones scripted by the
//! test), tinylb started in-process on port 0 or as its binary, clients on raw sockets, the one
//! response reader, and `wait_until`.
//!
//! No test waits for a condition with a bare sleep: [`wait_until`] polls the condition with a
//! deadline (and a stderr line is awaited on its channel), and a check that something does
//! *not* happen watches for it over a stated window, failing as soon as it does
//! (`assert!(!wait_until(window, || it_happened()))`). The sleeps that remain are the scenario
//! itself, and each says so where it is: a client that paces, trickles or stays idle on
//! purpose, a backend that answers late, a load or an exhaustion kept up for a stated time, a
//! measuring window, a sampler's period.

#![allow(dead_code)]

pub mod backend;
pub mod bystander;
pub mod operator;
pub mod process;
pub mod raw;
pub mod scripted;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend::{Backend, BodySeen, Outcome, Seen, hex, pattern_sha256, sha256_hex};
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

    /// Starts the config watcher on `path`, whose text `loaded` the balancer was started from.
    pub fn watch_config(&mut self, path: &str, loaded: &str) {
        self.lb
            .as_mut()
            .expect("running")
            .watch_config(path.into(), loaded.to_string())
            .expect("the watcher starts");
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
    start_lb_from_json(&merge_keys(&defaults, extra))
}

/// Starts tinylb in-process from a whole config.json text.
pub fn start_lb_from_json(text: &str) -> TestLb {
    let config = Config::parse(text).unwrap_or_else(|e| panic!("bad test config {text}: {e}"));
    let lb = LoadBalancer::start(config).expect("tinylb starts");
    let addr = lb.local_addr();
    TestLb { lb: Some(lb), addr }
}

/// The JSON object `defaults` with the keys of `extra` (`"a": 1, "b": 2`, or "") put in, each
/// replacing a default of the same name.
pub fn merge_keys(defaults: &str, extra: &str) -> String {
    let parse = |text: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("test config {text}: {e}"))
    };
    let mut keys = parse(defaults);
    keys.extend(parse(&format!("{{{extra}}}")));
    serde_json::Value::Object(keys).to_string()
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

/// GETs `base` + `path` `n` times in a row with `agent`; every answer must be a 200 naming its
/// backend. Returns the backends' names, in order.
pub fn answered_by(agent: &ureq::Agent, base: &str, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (status, body, backend) = get(agent, &format!("{base}{path}"));
            assert_eq!(status, 200, "request {i} to {path}: {body}");
            backend.expect("every fixture answer names its backend")
        })
        .collect()
}

/// How many of `names` are `name`.
pub fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// Sends raw bytes on a new connection and returns everything the server sends until it
/// closes the connection or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    raw::send_until_close(addr, request, timeout, raw::OnError::CountAsClose).0
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

/// What a process holds right now (signed, so that differences can be taken).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcStats {
    pub threads: i64,
    pub fds: i64,
    pub rss_kib: i64,
    /// Peak resident memory since start.
    pub hwm_kib: i64,
}

impl ProcStats {
    /// What a tinylb holds in all: the process and its children (the master and its server
    /// processes). A process that ends while being read counts as nothing.
    pub fn of(pid: u32) -> ProcStats {
        let mut total = ProcStats::default();
        for pid in process_tree(pid) {
            let field = |name: &str| proc_status_if_alive(pid, name).unwrap_or(0) as i64;
            total.threads += field("Threads");
            total.fds += open_fds(pid) as i64;
            total.rss_kib += field("VmRSS");
            total.hwm_kib += field("VmHWM");
        }
        total
    }
}

/// `pid` and its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tree[index]))
            .unwrap_or_default();
        tree.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        index += 1;
    }
    tree
}

fn proc_status_if_alive(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// KiB as MiB, for messages.
pub fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
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

impl Response {
    /// Every value of a header, case-insensitively, in arrival order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of a header that must not be repeated, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.values(name);
        assert!(values.len() <= 1, "{name} repeated: {:?}", self.headers);
        values.first().copied()
    }

    /// The body as text, for messages and `contains`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
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

/// The head of an answer that may be cut short, and the bytes after the head as they came (a
/// chunked body still chunked): for the answers of backends that break off.
pub fn split_response(answer: &[u8]) -> (Response, &[u8]) {
    let mut rest = answer;
    let head = read_full_response(&mut rest, true).unwrap_or_else(|e| {
        panic!(
            "no whole response head ({e}) in {:?}",
            String::from_utf8_lossy(answer)
        )
    });
    (head, rest)
}

/// The status of the first (non-interim) response in `answer`, if its head is there.
pub fn status_of(answer: &[u8]) -> Option<u16> {
    read_full_response(&mut &answer[..], true)
        .ok()
        .map(|response| response.status)
}

/// Decodes a chunked body that may be cut short: the data, and whether the last chunk came.
pub fn decode_chunked(mut bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    for _ in 0..100_000 {
        let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return (data, false);
        };
        let size_line = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        bytes = &bytes[end + 2..];
        if size == 0 {
            return (data, true);
        }
        data.extend_from_slice(&bytes[..size.min(bytes.len())]);
        if bytes.len() < size + 2 {
            return (data, false);
        }
        assert_eq!(
            &bytes[size..size + 2],
            b"\r\n",
            "chunk not followed by CRLF"
        );
        bytes = &bytes[size + 2..];
    }
    panic!("more than 100,000 chunks");
}

/// `/status.json` from an admin listener (asked with its own address as `Host`, which the
/// admin listener accepts): a 200 with a JSON content type, parsed.
pub fn status_json(admin: SocketAddr) -> serde_json::Value {
    let request =
        format!("GET /status.json HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(admin, request.as_bytes(), Duration::from_secs(5));
    let response = read_full_response(&mut &answer[..], false).expect("an answer");
    assert_eq!(response.status, 200, "{}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "status.json served as {content_type:?}"
    );
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("status.json is not JSON ({e}):\n{}", response.text()))
}
