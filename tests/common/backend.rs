//! A real HTTP/1.1 backend for tests, written against std only so that it can do what a test
//! needs: record every request it sees, serve large bodies without buffering them, and stop
//! like a killed process (every open connection closed, the port refusing) and restart on the
//! same port.
//!
//! Routes (any method):
//! - default: `200`, body lists what arrived: `backend NAME`, `method M`, `target T`, then one
//!   `header NAME: VALUE` line each, then `body N bytes`.
//! - `/status/N`: status N with a short body. `/redirect`: 302 to `/elsewhere`.
//! - `/bytes/N`: N bytes of [`pattern_byte`] with Content-Length. `/chunked/N`: the same,
//!   chunked.
//! - `/slow/MS`: answers like the default route, MS milliseconds late (also after a path
//!   prefix: `/p3/slow/MS`).
//! - `/sha256`: answers the request body's sha256 in hex and its length.
//! - `/cookies`: two `Set-Cookie` headers. `/gzip`: `Content-Encoding: gzip` with raw bytes.
//! - `/hop`: response with hop-by-hop headers (`Connection: X-Hop`, `X-Hop`, `Keep-Alive`).
//!
//! Every response carries `X-Backend: NAME`. Besides the requests, it records every request
//! body as it arrives ([`Backend::bodies`]): how many bytes, and whether the body completed, was
//! cut off by its sender, or stalled.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header lines in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// When its head had arrived.
    pub arrived: Instant,
}

impl Seen {
    /// Every value of a header, case-insensitively.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A request body as it arrived.
#[derive(Debug, Clone)]
pub struct BodySeen {
    pub target: String,
    /// Bytes read so far.
    pub bytes: u64,
    pub outcome: Outcome,
}

/// How a request body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reading,
    Complete,
    /// The sender closed or reset the connection before the body's end.
    Aborted,
    /// Nothing arrived for [`BODY_STALL`]: the sender left the connection hanging.
    Stalled,
}

/// How long a body may pause before the backend calls it stalled and hangs up.
pub const BODY_STALL: Duration = Duration::from_secs(10);

struct Shared {
    name: String,
    seen: Mutex<Vec<Seen>>,
    bodies: Mutex<Vec<BodySeen>>,
    count: AtomicUsize,
    stopping: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
    /// Connections being served now: accepted, and not yet closed by either side.
    open: AtomicUsize,
}

/// A running (or stopped) test backend.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on a free port of 127.0.0.1.
    pub fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0".parse().unwrap())
    }

    fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).expect("backend binds");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            seen: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
        });
        let acceptor = Some(spawn_acceptor(listener, Arc::clone(&shared)));
        Backend {
            addr,
            shared,
            acceptor,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Requests served (health checks, which are HEAD /, included).
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (health checks' included).
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.lock().len()
    }

    /// TCP connections open now: accepted and not yet closed by either side (the client's close
    /// is seen when the backend's next read ends).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Requests other than HEAD health checks.
    pub fn proxied_count(&self) -> usize {
        self.seen().iter().filter(|s| s.method != "HEAD").count()
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().clone()
    }

    /// Every request body so far (requests without one have none), as it arrives.
    pub fn bodies(&self) -> Vec<BodySeen> {
        self.shared.bodies.lock().clone()
    }

    /// Requests seen other than HEAD health checks.
    pub fn seen_proxied(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| !(s.method == "HEAD" && s.target == "/"))
            .collect()
    }

    /// Stops like a killed process: the port refuses and open connections are closed.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for connection in self.shared.connections.lock().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    /// Starts again on the same port, keeping the request log.
    pub fn restart(&mut self) {
        assert!(self.acceptor.is_none(), "restart of a running backend");
        let listener = TcpListener::bind(self.addr).expect("backend rebinds its port");
        self.shared.stopping.store(false, Ordering::SeqCst);
        self.acceptor = Some(spawn_acceptor(listener, Arc::clone(&self.shared)));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn spawn_acceptor(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            if let Ok(clone) = stream.try_clone() {
                shared.connections.lock().push(clone);
            }
            let shared = Arc::clone(&shared);
            shared.open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve_connection(stream, &shared));
        }
    })
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    struct Open<'a>(&'a AtomicUsize);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _open = Open(&shared.open); // counted up by the acceptor
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let Some((method, target, headers)) = read_head(&mut reader) else {
            return;
        };
        let arrived = Instant::now();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let chunked =
            header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut hasher = Sha256::new();
        let body_len = if chunked || length > 0 {
            let index = {
                let mut bodies = shared.bodies.lock();
                bodies.push(BodySeen {
                    target: target.clone(),
                    bytes: 0,
                    outcome: Outcome::Reading,
                });
                bodies.len() - 1
            };
            let mut progress = |n: usize| shared.bodies.lock()[index].bytes += n as u64;
            let _ = writer.set_read_timeout(Some(BODY_STALL));
            let read = if chunked {
                read_chunked(&mut reader, &mut hasher, &mut progress)
            } else {
                copy_exact(&mut reader, length, &mut hasher, &mut progress)
            };
            let _ = writer.set_read_timeout(None);
            shared.bodies.lock()[index].outcome = match &read {
                Ok(_) => Outcome::Complete,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    Outcome::Stalled
                }
                Err(_) => Outcome::Aborted,
            };
            read.ok()
        } else {
            Some(0)
        };
        let Some(body_len) = body_len else { return };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let seen = Seen {
            method: method.clone(),
            target: target.clone(),
            headers,
            body_len,
            arrived,
        };
        shared.seen.lock().push(seen.clone());
        shared.count.fetch_add(1, Ordering::SeqCst);
        let digest = hex(&hasher.finalize());
        if respond(&mut writer, &shared.name, &seen, &digest, close).is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Reads a request head; `None` at end of stream or on garbage.
/// Method, target and header lines of one request head.
type Head = (String, String, Vec<(String, String)>);

fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Some((method, target, headers));
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

fn unexpected_eof() -> std::io::Error {
    std::io::Error::new(ErrorKind::UnexpectedEof, "closed inside the body")
}

fn copy_exact(
    reader: &mut impl Read,
    mut remaining: u64,
    hasher: &mut Sha256,
    progress: &mut impl FnMut(usize),
) -> std::io::Result<u64> {
    let total = remaining;
    let mut buf = vec![0u8; 65536];
    while remaining > 0 {
        let want = buf.len().min(remaining as usize);
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(unexpected_eof());
        }
        hasher.update(&buf[..n]);
        progress(n);
        remaining -= n as u64;
    }
    Ok(total)
}

fn read_chunked(
    reader: &mut impl BufRead,
    hasher: &mut Sha256,
    progress: &mut impl FnMut(usize),
) -> std::io::Result<u64> {
    let mut total = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(unexpected_eof());
        }
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "chunk size"))?;
        if size == 0 {
            let mut end = String::new();
            reader.read_line(&mut end)?; // no trailers in these tests
            return Ok(total);
        }
        total += copy_exact(reader, size, hasher, progress)?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// The byte at `offset` of every generated body: deterministic, so the test can hash the
/// expected stream without storing it.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 7) as u8
}

/// Bytes (a digest) as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of `len` pattern bytes, as hex.
pub fn pattern_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 65536];
    let mut offset = 0;
    while offset < len {
        let n = buf.len().min((len - offset) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(offset + i as u64);
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hex(&hasher.finalize())
}

fn respond(
    out: &mut TcpStream,
    name: &str,
    seen: &Seen,
    digest: &str,
    close: bool,
) -> std::io::Result<()> {
    let path = seen.target.split('?').next().unwrap_or("");
    let number = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
    };
    let mut status = 200;
    let mut extra = String::new();
    let mut body: Vec<u8>;
    if let Some(code) = number("/status/") {
        status = code as u16;
        body = format!("status {code} from {name}\n").into_bytes();
    } else if path == "/redirect" {
        status = 302;
        extra.push_str("Location: /elsewhere\r\n");
        body = b"moved\n".to_vec();
    } else if let Some(len) = number("/bytes/") {
        return send_pattern(out, name, seen, len, false, close);
    } else if let Some(len) = number("/chunked/") {
        return send_pattern(out, name, seen, len, true, close);
    } else if path == "/sha256" {
        body = format!("{digest} {}\n", seen.body_len).into_bytes();
    } else if path == "/cookies" {
        extra.push_str("Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\n");
        body = b"two cookies\n".to_vec();
    } else if path == "/gzip" {
        extra.push_str("Content-Encoding: gzip\r\n");
        body = vec![0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef];
    } else if path == "/hop" {
        extra.push_str(
            "Connection: X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\n",
        );
        body = b"hop\n".to_vec();
    } else {
        let slow = path.find("/slow/").map(|at| &path[at..]);
        if let Some(ms) = slow.and_then(|p| p["/slow/".len()..].parse().ok()) {
            // The scenario: a backend that answers late.
            std::thread::sleep(Duration::from_millis(ms));
        }
        body = describe(name, seen).into_bytes();
    }
    if seen.method == "HEAD" || status == 204 || status == 304 || status < 200 {
        if seen.method != "HEAD" {
            body.clear();
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\nX-Backend: {name}\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        );
        out.write_all(head.as_bytes())?;
        return out.flush();
    }
    let connection = if close { "Connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} X\r\nX-Backend: {name}\r\n{extra}{connection}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

fn describe(name: &str, seen: &Seen) -> String {
    let mut text = format!(
        "backend {name}\nmethod {}\ntarget {}\n",
        seen.method, seen.target
    );
    for (n, v) in &seen.headers {
        text.push_str(&format!("header {n}: {v}\n"));
    }
    text.push_str(&format!("body {} bytes\n", seen.body_len));
    text
}

fn send_pattern(
    out: &mut TcpStream,
    name: &str,
    seen: &Seen,
    len: u64,
    chunked: bool,
    close: bool,
) -> std::io::Result<()> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {len}\r\n")
    };
    out.write_all(
        format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\n{connection}{framing}\r\n").as_bytes(),
    )?;
    if seen.method == "HEAD" {
        return out.flush();
    }
    let mut buf = vec![0u8; 65536];
    let mut offset = 0;
    while offset < len {
        let n = buf.len().min((len - offset) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(offset + i as u64);
        }
        if chunked {
            out.write_all(format!("{n:x}\r\n").as_bytes())?;
            out.write_all(&buf[..n])?;
            out.write_all(b"\r\n")?;
        } else {
            out.write_all(&buf[..n])?;
        }
        offset += n as u64;
    }
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()
}
