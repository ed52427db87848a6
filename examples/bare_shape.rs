//! The design card's shape with nothing of tinylb in it: a yardstick for `make bench`.
//!
//! tinylb's speed is bounded by its shape (a tiny_http listener, a crossbeam channel, a fixed
//! pool of workers, a blocking ureq call), not only by its own code. This program is that
//! shape and nothing more, so that the bench can measure, in the same run as tinylb and nginx,
//! how fast the shape itself can go:
//!
//! ```text
//! bare_shape front PORT                 tiny_http -> intake -> channel -> 8 workers -> fixed answer
//! bare_shape direct PORT                tiny_http -> 8 workers calling recv() -> fixed answer
//! bare_shape proxy PORT BACKEND_PORT... the front, plus a plain ureq GET to the next backend
//! ```
//!
//! Like tinylb, it runs tinylb's [`Pinger`]: without it, connections from wrk's opening burst
//! wait in tiny_http's thread pool and the numbers measure that, not the shape.
//!
//! `front` is the ceiling of anything built on tiny_http with the card's hand-off: no backend
//! at all. `direct` skips the intake thread and the channel, to show what that hand-off costs.
//! `proxy` adds the blocking ureq call to 127.0.0.1 backends, round robin, with none of
//! tinylb's checks, headers, retries or statistics. It is not a load balancer: no health
//! checks, no error handling beyond a 502, and only `GET`s of small bodies.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tiny_http::{Request, Server};
use tinylb::client::Pinger;
use tinylb::client::socket_options;

/// As tinylb's default.
const WORKERS: usize = 8;
/// As tinylb's default `queueSize`.
const QUEUE: usize = 512;
/// The answer of `front` and `direct`: the same 19 bytes the bench's backends send.
const FIXED_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\nContent-Type: text/plain\r\n\r\nhello from backend\n";

/// One way of answering a request, shared by every worker.
trait Answer: Send + Sync + 'static {
    fn answer(&self, request: Request, buffer: &mut Vec<u8>);
}

/// `front` and `direct`: the same bytes every time, written through `into_writer()` as tinylb
/// writes its answers.
struct Fixed;

impl Answer for Fixed {
    fn answer(&self, request: Request, _buffer: &mut Vec<u8>) {
        let mut writer = request.into_writer();
        let _ = writer.write_all(FIXED_ANSWER).and_then(|()| writer.flush());
    }
}

/// `proxy`: one ureq Agent per backend (as tinylb), the next backend in turn, the answer's
/// body read whole and sent with its length.
struct Proxy {
    backends: Vec<(String, ureq::Agent)>,
    next: AtomicUsize,
}

impl Answer for Proxy {
    fn answer(&self, request: Request, buffer: &mut Vec<u8>) {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        let (base, agent) = &self.backends[turn];
        let url = format!("{base}{}", request.url());
        buffer.clear();
        let status = match agent.get(&url).call() {
            Ok(response) => {
                let status = response.status().as_u16();
                let mut body = response.into_body();
                match body.as_reader().read_to_end(buffer) {
                    Ok(_) => status,
                    Err(_) => 502,
                }
            }
            Err(_) => 502,
        };
        if status == 502 {
            buffer.clear();
        }
        let head = format!(
            "HTTP/1.1 {status} OK\r\nContent-Length: {}\r\n\r\n",
            buffer.len()
        );
        let mut writer = request.into_writer();
        let _ = writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(buffer))
            .and_then(|()| writer.flush());
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bare_shape front|direct PORT | bare_shape proxy PORT BACKEND_PORT...";
    let (Some(mode), Some(port)) = (args.first(), args.get(1).and_then(|p| p.parse().ok())) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server = match listen(address) {
        Ok(server) => Arc::new(server),
        Err(error) => {
            eprintln!("bare_shape: cannot listen on {address}: {error}");
            return ExitCode::from(1);
        }
    };
    // No client timeouts here, so the idle pings only matter for the burst rescue.
    let pinger = match Pinger::start(address, Duration::from_secs(3600)) {
        Ok(pinger) => Arc::new(pinger),
        Err(error) => {
            eprintln!("bare_shape: cannot start a thread: {error}");
            return ExitCode::from(1);
        }
    };
    match mode.as_str() {
        "front" => through_channel(&server, &pinger, Arc::new(Fixed)),
        "direct" => straight_from_recv(&server, &pinger, Arc::new(Fixed)),
        "proxy" if args.len() > 2 => {
            let backends = args[2..]
                .iter()
                .map(|port| {
                    let agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .max_idle_connections_per_host(WORKERS)
                        .build()
                        .new_agent();
                    (format!("http://127.0.0.1:{port}"), agent)
                })
                .collect();
            let proxy = Proxy {
                backends,
                next: AtomicUsize::new(0),
            };
            through_channel(&server, &pinger, Arc::new(proxy));
        }
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// A tiny_http server on a socket with tinylb's options (TCP_NODELAY and the backlog, which
/// accepted sockets inherit), so that the comparison is fair; no client timeouts.
fn listen(address: SocketAddr) -> Result<Server, Box<dyn std::error::Error + Send + Sync>> {
    let socket = TcpListener::bind(address)?;
    socket_options::set_nodelay(&socket)?;
    socket_options::set_backlog(&socket, 1024)?;
    Server::from_listener(socket, None)
}

/// The card's hand-off: one intake thread moves each request into a bounded channel that a
/// fixed pool of workers drains. Runs until the process is killed.
fn through_channel(server: &Server, pinger: &Pinger, answer: Arc<dyn Answer>) {
    let (sender, receiver) = crossbeam_channel::bounded::<Request>(QUEUE);
    for _ in 0..WORKERS {
        let receiver = receiver.clone();
        let answer = Arc::clone(&answer);
        thread::spawn(move || {
            let mut buffer = Vec::with_capacity(16 * 1024);
            for request in receiver {
                answer.answer(request, &mut buffer);
            }
        });
    }
    let mut peers = HashSet::new();
    while let Ok(request) = server.recv() {
        // As in tinylb, the first request from an address and port is a new connection. The
        // set is emptied now and then rather than kept in step with closed connections.
        if peers.len() > 65_536 {
            peers.clear();
        }
        let new_connection = request
            .remote_addr()
            .is_some_and(|peer| peers.insert(*peer));
        pinger.saw_request(new_connection);
        if sender.send(request).is_err() {
            return;
        }
    }
}

/// Without the hand-off: every worker takes requests from tiny_http itself.
fn straight_from_recv(server: &Arc<Server>, pinger: &Arc<Pinger>, answer: Arc<dyn Answer>) {
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(server);
            let pinger = Arc::clone(pinger);
            let answer = Arc::clone(&answer);
            thread::spawn(move || {
                let mut buffer = Vec::new();
                while let Ok(request) = server.recv() {
                    // No shared table of peers here: every request may be a new connection,
                    // so the pinger keeps its busiest rate under load.
                    pinger.saw_request(true);
                    answer.answer(request, &mut buffer);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
