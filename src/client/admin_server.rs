//! The admin listener's HTTP server: a second tiny_http server, on one thread, that hands each
//! request's method and path to a router and writes what it returns. Requests are rare and
//! cheap there, so one at a time is enough, and a scrape can never take a worker.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Response, Server};

use crate::error::StartError;

/// Largest request body the admin listener reads (and ignores).
const MAX_BODY: u64 = 64 * 1024;

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

/// The running admin server.
pub struct AdminServer {
    server: Arc<Server>,
    thread: JoinHandle<()>,
    /// Where it listens (useful with port 0).
    pub addr: SocketAddr,
}

impl AdminServer {
    /// Binds `addr` and answers each request with `route(method, path)`.
    pub fn start(
        addr: SocketAddr,
        route: impl Fn(&str, &str) -> AdminReply + Send + 'static,
    ) -> Result<AdminServer, StartError> {
        let fail = |e: &dyn std::fmt::Display| StartError::Admin(addr, e.to_string());
        let socket = super::socket_options::bind_shared(addr).map_err(|e| fail(&e))?;
        let server = Server::from_listener(socket, None).map_err(|e| fail(&e))?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| StartError::Admin(addr, "not an IP address".into()))?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                while let Ok(request) = serving.recv() {
                    answer(request, &route);
                }
            })?;
        Ok(AdminServer {
            server,
            thread,
            addr: local,
        })
    }

    /// Stops answering.
    pub fn stop(self) {
        self.server.unblock();
        let _ = self.thread.join();
    }
}

fn answer(mut request: tiny_http::Request, route: &impl Fn(&str, &str) -> AdminReply) {
    // Read any body to its end first: tiny_http would otherwise parse what is left of a chunked
    // body as the next request on this connection. Admin requests need no body, so a large one
    // is refused.
    let body = std::io::copy(
        &mut request.as_reader().take(MAX_BODY + 1),
        &mut std::io::sink(),
    );
    let reply = if matches!(body, Ok(n) if n <= MAX_BODY) {
        let path = request.url().split('?').next().unwrap_or("");
        route(request.method().as_str(), path)
    } else {
        AdminReply {
            status: 413,
            content_type: "text/plain; charset=utf-8",
            body: "admin requests take no body\n".into(),
            allow: None,
        }
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
