//! A raw backend whose answer to each request is decided by the test: bytes that may be
//! garbage or cut short, a close without an answer, or silence with the connection held open.
//! It records every request it read (with its headers), how many connections it accepted, and
//! how many requests it holds at once.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::raw::RawServer;

/// One request as the scripted backend read it (head, then a Content-Length body).
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Which connection it came on (0, 1, 2, ... in accept order).
    pub connection: usize,
    /// Its position on that connection (0 for the first request).
    pub index: usize,
    pub method: String,
    pub target: String,
    /// Header lines in arrival order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When its head and body had been read.
    pub at: Instant,
}

impl RawRequest {
    /// Every value of a header, case-insensitively, in arrival order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the scripted backend does with one request.
pub enum Act {
    /// Write these bytes, then read the next request on the same connection.
    Answer(Vec<u8>),
    /// Write these bytes (maybe none), then close the connection.
    Close(Vec<u8>),
    /// Write these bytes (maybe none), then hold the connection open, sending nothing more,
    /// until tinylb closes it.
    Hold(Vec<u8>),
}

type Behaviour = dyn Fn(&RawRequest) -> Act + Send + Sync;

/// The longest a scripted backend holds a connection open (every loop is bounded).
const HOLD_AT_MOST: Duration = Duration::from_secs(15);

/// A complete keep-alive answer with this body.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to a health check: 200, no body, keep-alive.
pub fn head_ok() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
}

pub struct ScriptedBackend {
    server: RawServer,
    log: Arc<Mutex<Vec<RawRequest>>>,
    /// Requests being held (read, not answered, connection still open) right now.
    held: Arc<AtomicUsize>,
    /// The most requests ever held at once.
    max_held: Arc<AtomicUsize>,
    /// When each held request's connection was closed by tinylb.
    hold_ends: Arc<Mutex<Vec<Instant>>>,
    /// Connections accepted, whether or not a request came on them.
    accepted: Arc<AtomicUsize>,
}

impl ScriptedBackend {
    pub fn start(behaviour: impl Fn(&RawRequest) -> Act + Send + Sync + 'static) -> Self {
        let behaviour: Arc<Behaviour> = Arc::new(behaviour);
        let log = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(AtomicUsize::new(0));
        let max_held = Arc::new(AtomicUsize::new(0));
        let hold_ends = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = {
            let log = log.clone();
            let (held, max_held, hold_ends) = (held.clone(), max_held.clone(), hold_ends.clone());
            let accepted = accepted.clone();
            RawServer::start(move |stream, id, stopping| {
                accepted.fetch_add(1, Ordering::SeqCst);
                let connection = Connection {
                    id,
                    behaviour: behaviour.clone(),
                    stopping: stopping.clone(),
                    log: log.clone(),
                    held: held.clone(),
                    max_held: max_held.clone(),
                    hold_ends: hold_ends.clone(),
                };
                connection.serve(stream);
            })
        };
        ScriptedBackend {
            server,
            log,
            held,
            max_held,
            hold_ends,
            accepted,
        }
    }

    /// Passes the health checks (HEAD gets a 200, keep-alive) and treats every other request
    /// as `behaviour` says.
    pub fn healthy_but(behaviour: impl Fn(&RawRequest) -> Act + Send + Sync + 'static) -> Self {
        ScriptedBackend::start(move |request| match request.method.as_str() {
            "HEAD" => Act::Answer(head_ok()),
            _ => behaviour(request),
        })
    }

    /// Passes the health checks and never answers anything else: for `backendTimeout`.
    pub fn hanging() -> Self {
        ScriptedBackend::healthy_but(|_| Act::Hold(Vec::new()))
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().clone()
    }

    /// Requests other than HEAD (the health checks).
    pub fn proxied(&self) -> Vec<RawRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "HEAD")
            .collect()
    }

    /// Arrival times of the health checks.
    pub fn checks(&self) -> Vec<Instant> {
        self.requests()
            .iter()
            .filter(|r| r.method == "HEAD")
            .map(|r| r.at)
            .collect()
    }

    /// Connections accepted so far, health checks' included.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted so far other than the ones that carried a health check (each
    /// check comes on a connection of its own).
    pub fn accepted_for_proxying(&self) -> usize {
        let mut checks: Vec<usize> = self
            .requests()
            .iter()
            .filter(|r| r.method == "HEAD")
            .map(|r| r.connection)
            .collect();
        checks.sort_unstable();
        checks.dedup();
        self.accepted().saturating_sub(checks.len())
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    pub fn max_held(&self) -> usize {
        self.max_held.load(Ordering::SeqCst)
    }

    pub fn hold_ends(&self) -> Vec<Instant> {
        self.hold_ends.lock().clone()
    }
}

/// One accepted connection of a scripted backend.
struct Connection {
    id: usize,
    behaviour: Arc<Behaviour>,
    stopping: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<RawRequest>>>,
    held: Arc<AtomicUsize>,
    max_held: Arc<AtomicUsize>,
    hold_ends: Arc<Mutex<Vec<Instant>>>,
}

impl Connection {
    fn serve(self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        for index in 0..10_000 {
            let Some(request) = read_request(&mut reader, self.id, index) else {
                return;
            };
            self.log.lock().push(request.clone());
            match (self.behaviour)(&request) {
                Act::Answer(bytes) => {
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                }
                Act::Close(bytes) => {
                    let _ = stream.write_all(&bytes);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                Act::Hold(bytes) => return self.hold(stream, &bytes),
            }
        }
    }

    /// Writes `bytes`, then keeps the connection open until the peer closes it.
    fn hold(&self, mut stream: TcpStream, bytes: &[u8]) {
        let now_held = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_held.fetch_max(now_held, Ordering::SeqCst);
        let _ = stream.write_all(bytes);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
        let deadline = Instant::now() + HOLD_AT_MOST;
        let mut scratch = [0u8; 4096];
        // Each read waits up to 50 ms for the peer's close: a bounded poll of it.
        while Instant::now() < deadline && !self.stopping.load(Ordering::SeqCst) {
            match stream.read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        self.hold_ends.lock().push(Instant::now());
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads one request (head, then a Content-Length body); `None` at end of stream.
fn read_request(reader: &mut impl BufRead, connection: usize, index: usize) -> Option<RawRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0usize;
    let mut headers = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).ok()?;
            return Some(RawRequest {
                connection,
                index,
                method,
                target,
                headers,
                body,
                at: Instant::now(),
            });
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }
    None
}
