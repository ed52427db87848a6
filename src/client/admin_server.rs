//! The admin listener's HTTP server: a second tiny_http server that hands each request to a
//! router and writes what it returns. Nothing an admin client does can hold it, or hold up
//! shutdown:
//!
//! - every admin connection inherits `IO_TIMEOUT` read and write timeouts from the listening
//!   socket (a [`Pinger`] keeps accept() alive under them, as on the proxy's port);
//! - each request is answered on a short-lived thread of its own, at most `AT_ONCE` at a
//!   time, so one slow client delays nobody else; requests are rare and cheap here, and a
//!   scrape can never take a proxy worker;
//! - a request that has not been answered `REQUEST_DEADLINE` after tinylb took it (a body
//!   trickled a byte at a time, an answer read as slowly) has its connection reset by the
//!   deadline thread, which frees its thread;
//! - bodies are read up to `MAX_BODY` and ignored (admin requests need none);
//! - [`AdminServer::stop`] waits for no client.
//!
//! Generations of one tinylb share the admin socket (the master binds it). A stopping
//! generation stops accepting on it at once ([`AdminServer::stop_accepting`], the same way
//! the proxy's [`Listener`] does), so that every admin connection reaches the generation that
//! serves.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tiny_http::{Header, Response, Server};

use super::listener::Listener;
use super::own_sockets::find_client_socket;
use super::pinger::Pinger;
use crate::error::StartError;

/// Largest request body the admin listener reads (and ignores).
const MAX_BODY: u64 = 64 * 1024;
/// How long an admin connection may send nothing, or take nothing of its answer, before it is
/// closed (by the kernel's socket timeouts; an idle keep-alive connection too).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most one admin request may take, from when tinylb takes it to its answer's last byte.
/// Every admin answer is a page of a few KiB built in memory, so honest clients need
/// milliseconds.
const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// Admin requests answered at once; a further one waits for a free thread.
const AT_ONCE: usize = 8;
/// How often the deadline thread looks.
const DEADLINE_LOOK: Duration = Duration::from_millis(100);
/// While it stops accepting: how often a connection wakes an accept() already waiting.
const STOP_WAKE: Duration = Duration::from_millis(20);
/// The longest it waits for its accept loop to end when it stops accepting.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// One admin request, as the router sees it.
pub struct AdminRequest<'a> {
    request: &'a tiny_http::Request,
}

impl AdminRequest<'_> {
    /// The method, as sent.
    pub fn method(&self) -> &str {
        self.request.method().as_str()
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        let url = self.request.url();
        url.split('?').next().unwrap_or(url)
    }

    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// What the router answers.
pub struct AdminReply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// For a 405: the methods to name in `Allow`.
    pub allow: Option<&'static str>,
}

/// The router: a function of the request, shared by the request threads.
pub type Route = Arc<dyn Fn(&AdminRequest) -> AdminReply + Send + Sync>;

/// The running admin server.
pub struct AdminServer {
    listener: Listener,
    server: Arc<Server>,
    /// The descriptor tiny_http accepts on, for [`Listener::stop_accepting`].
    server_fd: RawFd,
    /// Dropped to stop the accept and deadline threads.
    stop: Sender<()>,
    accept_thread: JoinHandle<()>,
    /// Set once tiny_http's accept loop has ended.
    accept_ended: Arc<AtomicBool>,
    deadline_thread: JoinHandle<()>,
    pinger: Option<Pinger>,
    /// Where it listens (useful with port 0).
    pub addr: SocketAddr,
}

/// Binds `addr` for the admin listener, alone: a second tinylb asking for the same address
/// fails here, rather than sharing the port and answering half of its requests. (Generations
/// of one tinylb share the socket the master bound, handed down, not a second bind.)
pub fn bind_admin_socket(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let fail = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another tinylb running with the same adminAddress?)"
        } else {
            ""
        };
        StartError::Admin(addr, format!("{e}{hint}"))
    };
    TcpListener::bind(addr).map_err(fail)
}

impl AdminServer {
    /// Answers each request on `socket` with `route`.
    pub fn start(socket: TcpListener, route: Route) -> Result<AdminServer, StartError> {
        let unnamed = |e: &dyn std::fmt::Display| StartError::Admin(unspecified(), e.to_string());
        let listener = Listener::adopt(socket, IO_TIMEOUT).map_err(|e| unnamed(&e))?;
        let local = listener.local_addr();
        let (server, server_fd) = listener
            .new_server()
            .map_err(|e| StartError::Admin(local, e.to_string()))?;
        let server = Arc::new(server);
        let pinger = Pinger::start(listener.ping_addr(), IO_TIMEOUT)?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let deadlines = Arc::new(Deadlines::default());
        let deadline_thread = {
            let (deadlines, stopped) = (Arc::clone(&deadlines), stopped.clone());
            std::thread::Builder::new()
                .name("admin-deadline".into())
                .spawn(move || deadlines.enforce(local.port(), &stopped))?
        };
        let serving = Arc::clone(&server);
        let accept_ended = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&accept_ended);
        let accept_thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || take_requests(&serving, &route, &deadlines, &ended, &stopped))?;
        Ok(AdminServer {
            listener,
            server,
            server_fd,
            stop,
            accept_thread,
            accept_ended,
            deadline_thread,
            pinger: Some(pinger),
            addr: local,
        })
    }

    /// Takes no more connections, leaving the shared socket to the generation that serves:
    /// tiny_http's accept loop is ended (see `Listener::stop_accepting`), and an accept()
    /// already waiting is woken by connections until the loop is over, for at most
    /// `STOP_WAIT`. Requests already taken are still answered.
    pub fn stop_accepting(&mut self) {
        if self.pinger.take().is_none() {
            return;
        }
        if let Err(error) = self.listener.stop_accepting(self.server_fd) {
            log::warn!("admin: cannot stop accepting: {error}");
            return;
        }
        let until = Instant::now() + STOP_WAIT;
        while !self.accept_ended.load(Ordering::Relaxed) && Instant::now() < until {
            let _ = TcpStream::connect_timeout(&self.listener.ping_addr(), STOP_WAKE);
            std::thread::sleep(STOP_WAKE);
        }
    }

    /// Stops answering. Requests being answered finish on their own threads, within
    /// `IO_TIMEOUT` of their client's last byte.
    pub fn stop(mut self) {
        self.stop_accepting();
        drop(self.stop);
        self.server.unblock();
        let _ = self.accept_thread.join();
        let _ = self.deadline_thread.join();
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// The accept side: takes each request from tiny_http and starts its thread once one of the
/// [`AT_ONCE`] places is free. Connections already open are still served after tiny_http's
/// accept loop has ended (`accept_ended`), until `stopped`.
fn take_requests(
    server: &Server,
    route: &Route,
    deadlines: &Arc<Deadlines>,
    accept_ended: &AtomicBool,
    stopped: &Receiver<()>,
) {
    let (free, places) = crossbeam_channel::bounded::<()>(AT_ONCE);
    for _ in 0..AT_ONCE {
        let _ = free.send(());
    }
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            // The accept loop ended (it stopped accepting), or `stop` unblocked this call.
            Err(_) => {
                accept_ended.store(true, Ordering::Relaxed);
                match stopped.recv_timeout(STOP_WAKE) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            }
        };
        crossbeam_channel::select! {
            recv(places) -> _ => {},
            recv(stopped) -> _ => return,
        }
        let (route, deadlines, freed) = (Arc::clone(route), Arc::clone(deadlines), free.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-request".into())
            .spawn(move || {
                let watch = deadlines.watch(request.remote_addr().copied());
                answer(request, &*route);
                deadlines.unwatch(watch);
                let _ = freed.send(());
            });
        if let Err(error) = spawned {
            // The request went with the closure; tiny_http answers it 500 as it is dropped.
            log::warn!("admin: cannot start a thread for a request: {error}");
            let _ = free.send(());
        }
    }
}

/// The requests being answered (at most `AT_ONCE`), with when each must be done.
#[derive(Default)]
struct Deadlines {
    next: AtomicU64,
    watched: Mutex<Vec<(u64, SocketAddr, Instant)>>,
}

impl Deadlines {
    /// Starts the clock for the request from `peer`; the number is for [`Deadlines::unwatch`].
    fn watch(&self, peer: Option<SocketAddr>) -> Option<u64> {
        let peer = peer?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.watched
            .lock()
            .push((id, peer, Instant::now() + REQUEST_DEADLINE));
        Some(id)
    }

    fn unwatch(&self, id: Option<u64>) {
        if let Some(id) = id {
            self.watched.lock().retain(|(watched, _, _)| *watched != id);
        }
    }

    /// Resets the connection of every request past its deadline, until `stopped`.
    fn enforce(&self, port: u16, stopped: &Receiver<()>) {
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(DEADLINE_LOOK) {
            let now = Instant::now();
            let mut overdue = Vec::new();
            self.watched.lock().retain(|(_, peer, until)| {
                let late = *until <= now;
                if late {
                    overdue.push(*peer);
                }
                !late
            });
            for peer in overdue {
                log::warn!(
                    "admin: the request from {peer} took over {}s; connection reset",
                    REQUEST_DEADLINE.as_secs()
                );
                if let Some(socket) = find_client_socket(peer, port) {
                    socket.reset();
                }
            }
        }
    }
}

fn answer(mut request: tiny_http::Request, route: &dyn Fn(&AdminRequest) -> AdminReply) {
    // Read any body to its end first: tiny_http would otherwise parse what is left of a chunked
    // body as the next request on this connection. Admin requests need no body, so a large one
    // is refused.
    let body = std::io::copy(
        &mut request.as_reader().take(MAX_BODY + 1),
        &mut std::io::sink(),
    );
    let refuse = |status, body: &str| AdminReply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
        allow: None,
    };
    let reply = match body {
        Ok(n) if n <= MAX_BODY => route(&AdminRequest { request: &request }),
        Ok(_) => refuse(413, "admin requests take no body\n"),
        Err(_) => refuse(408, "the request body did not arrive in time\n"),
    };
    let mut response = Response::from_data(reply.body.into_bytes())
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.content_type))
        .with_header(header("Cache-Control", "no-store"));
    if let Some(allow) = reply.allow {
        response.add_header(header("Allow", allow));
    }
    if let Err(error) = request.respond(response) {
        log::debug!("admin answer not delivered: {error}");
    }
}

fn header(name: &str, value: &str) -> Header {
    // Both are fixed ASCII strings of tinylb's, which Header accepts.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}
