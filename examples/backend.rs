//! A demo backend for trying out tinylb by hand (`make run`, the README).
//!
//! It is not part of the load balancer: it only gives tinylb something to
//! balance across. Every port given on the command line gets a tiny HTTP
//! server that says which address answered, so you can watch requests being
//! spread over the backends:
//!
//! ```text
//! cargo run --release --example backend -- 5001 5002 5003 5004 5005
//! ```
//!
//! Routes (every response carries an `X-Backend` header naming the address
//! that served it):
//!
//! - `HEAD <any path>`: 200 with no body (what health checks send).
//! - `/slow?ms=N`: waits N milliseconds (at most 60000), then answers like `/`.
//! - `/status/NNN`: answers with status NNN (100..=599, otherwise 400).
//! - `/bytes/N`: N bytes (at most 1 GiB) of a repeating pattern.
//! - anything else: 200 with a short text naming the backend, the method and
//!   the path; requests with a body also get `received N bytes`.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, info, warn};
use simple_logger::SimpleLogger;
use tiny_http::{Header, Method, Request, Response, ResponseBox, Server, StatusCode};

/// Threads taking requests off each listener. More than one, so that a
/// `/slow` or a large `/bytes` request does not hold up everything else.
const WORKERS_PER_LISTENER: usize = 8;

/// Upper bound for `/slow?ms=N`, so a typo cannot park a worker for hours.
const MAX_SLOW_MS: u64 = 60_000;

/// Upper bound for `/bytes/N` (1 GiB): large enough for throughput tests,
/// small enough that a typo does not stream forever.
const MAX_BYTES: usize = 1 << 30;

/// What `/bytes/N` repeats. Varied bytes rather than zeros make truncated or
/// reordered bodies easy to spot.
const PATTERN: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";

fn main() -> ExitCode {
    // Only fails if a logger is already installed, which cannot happen here.
    let _ = SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .env()
        .init();

    let Some(ports) = parse_ports(std::env::args().skip(1)) else {
        eprintln!("usage: backend PORT [PORT...]   (ports 1-65535)");
        return ExitCode::from(2);
    };

    if let Err(err) = ctrlc::set_handler(|| {
        info!("backend: shutting down");
        std::process::exit(0);
    }) {
        eprintln!("backend: cannot install the Ctrl-C handler: {err}");
        return ExitCode::FAILURE;
    }

    // Bind everything before serving anything, so a busy port stops the
    // program before it half-starts.
    let mut listeners = Vec::new();
    for &port in &ports {
        let ipv4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match Server::http(ipv4) {
            Ok(server) => listeners.push((ipv4, server)),
            Err(err) => {
                eprintln!("backend: cannot listen on {ipv4}: {err}");
                return ExitCode::FAILURE;
            }
        }
        // `localhost` in config.json may resolve to ::1 first; answer there
        // too when we can. Hosts without IPv6 simply do without.
        let ipv6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        match Server::http(ipv6) {
            Ok(server) => listeners.push((ipv6, server)),
            Err(err) => debug!("backend: not listening on {ipv6}: {err}"),
        }
    }

    let workers: Vec<JoinHandle<()>> = listeners
        .into_iter()
        .flat_map(|(addr, server)| serve(addr, server))
        .collect();
    // Workers never return; the process ends from the Ctrl-C handler.
    for worker in workers {
        let _ = worker.join();
    }
    ExitCode::SUCCESS
}

/// Parses the command-line ports; `None` if there are none or one is not a
/// port number. Port 0 is refused because the IPv4 and IPv6 listeners would
/// then end up on different random ports.
fn parse_ports(args: impl Iterator<Item = String>) -> Option<Vec<u16>> {
    let ports: Vec<u16> = args
        .map(|arg| arg.parse().ok().filter(|&port| port != 0))
        .collect::<Option<_>>()?;
    (!ports.is_empty()).then_some(ports)
}

/// Starts the worker threads for one listener and returns their handles.
fn serve(addr: SocketAddr, server: Server) -> Vec<JoinHandle<()>> {
    info!("backend listening on http://{addr}");
    let server = Arc::new(server);
    (0..WORKERS_PER_LISTENER)
        .map(|_| {
            let server = Arc::clone(&server);
            thread::spawn(move || {
                loop {
                    match server.recv() {
                        Ok(request) => handle(request, addr),
                        Err(err) => warn!("backend :{} accept failed: {err}", addr.port()),
                    }
                }
            })
        })
        .collect()
}

/// Answers one request. Failures here only ever concern one client (it went
/// away, sent a broken body...), so they are logged and otherwise ignored.
fn handle(mut request: Request, addr: SocketAddr) {
    let method = request.method().clone();
    let url = request.url().to_owned();
    info!("backend :{} {method} {url}", addr.port());

    let mut response = if method == Method::Head {
        Response::empty(200).boxed()
    } else {
        match drain_body(&mut request) {
            Ok(received) => {
                let received = has_body(&request).then_some(received);
                route(&method, &url, received, addr)
            }
            Err(err) => {
                debug!("backend :{} reading the body failed: {err}", addr.port());
                return;
            }
        }
    };
    response.add_header(header("X-Backend", &addr.to_string()));

    if let Err(err) = request.respond(response) {
        debug!("backend :{} responding failed: {err}", addr.port());
    }
}

/// Whether the client sent a body (even an empty one), as opposed to a
/// bodyless GET; only then does the answer mention how much arrived.
fn has_body(request: &Request) -> bool {
    request.body_length().is_some()
        || request
            .headers()
            .iter()
            .any(|header| header.field.equiv("Transfer-Encoding"))
}

/// Reads and discards the request body, returning its size. `io::copy` goes
/// through a small fixed buffer, so uploads of any size cost no memory.
fn drain_body(request: &mut Request) -> io::Result<u64> {
    io::copy(request.as_reader(), &mut io::sink())
}

/// Picks the answer for a (non-HEAD) request whose body has been read;
/// `received` is its size, `None` if the request had no body.
fn route(method: &Method, url: &str, received: Option<u64>, addr: SocketAddr) -> ResponseBox {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if path == "/slow" {
        let Some(ms) = query_param(query, "ms").and_then(|ms| ms.parse::<u64>().ok()) else {
            return bad_request("expected /slow?ms=N");
        };
        thread::sleep(Duration::from_millis(ms.min(MAX_SLOW_MS)));
    } else if let Some(code) = path.strip_prefix("/status/") {
        return status(code, addr);
    } else if let Some(count) = path.strip_prefix("/bytes/") {
        return bytes(count);
    }
    hello(method, url, received, addr)
}

/// The default answer: who served the request and what it was.
fn hello(method: &Method, url: &str, received: Option<u64>, addr: SocketAddr) -> ResponseBox {
    let mut body = format!("hello from backend {addr}\nmethod {method} path {url}\n");
    if let Some(received) = received {
        body.push_str(&format!("received {received} bytes\n"));
    }
    text(200, body)
}

/// `/status/NNN`. 1xx, 204 and 304 must not have a body, so they get an
/// empty one. 1xx codes are sent as-is, which most clients take for an
/// interim response and keep waiting: handy for seeing how the load balancer
/// copes, nothing more.
fn status(code: &str, addr: SocketAddr) -> ResponseBox {
    match code.parse::<u16>() {
        Ok(code @ (100..=199 | 204 | 304)) => Response::empty(code).boxed(),
        Ok(code @ 200..=599) => text(code, format!("status {code} from backend {addr}\n")),
        _ => bad_request(&format!("invalid status code {code:?}, expected 100..=599")),
    }
}

/// `/bytes/N`: streams N bytes with a Content-Length (never chunked), so it
/// exercises the load balancer's streaming without using memory here.
fn bytes(count: &str) -> ResponseBox {
    let Ok(count) = count.parse::<usize>() else {
        return bad_request("expected /bytes/N");
    };
    let count = count.min(MAX_BYTES);
    let content_type = header("Content-Type", "application/octet-stream");
    Response::new(
        StatusCode(200),
        vec![content_type],
        PatternReader::new(count),
        Some(count),
        None,
    )
    .with_chunked_threshold(usize::MAX)
    .boxed()
}

/// Finds `name=value` in a query string (no percent-decoding: the demo's
/// parameters are plain numbers).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn bad_request(message: &str) -> ResponseBox {
    text(400, format!("bad request: {message}\n"))
}

fn text(code: u16, body: String) -> ResponseBox {
    Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .boxed()
}

/// Builds a header from values known to be valid ASCII.
fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("header names and values are ASCII")
}

/// Produces `remaining` bytes of [`PATTERN`], repeated, without allocating.
struct PatternReader {
    /// Where in `PATTERN` the next byte comes from.
    offset: usize,
    remaining: usize,
}

impl PatternReader {
    fn new(len: usize) -> Self {
        PatternReader {
            offset: 0,
            remaining: len,
        }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(self.remaining);
        let mut filled = 0;
        while filled < len {
            let chunk = (PATTERN.len() - self.offset).min(len - filled);
            buf[filled..filled + chunk].copy_from_slice(&PATTERN[self.offset..self.offset + chunk]);
            filled += chunk;
            self.offset = (self.offset + chunk) % PATTERN.len();
        }
        self.remaining -= len;
        Ok(len)
    }
}
