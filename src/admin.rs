//! The admin listener, off unless `adminAddress` is set: the status page at `/`,
//! `/status.json`, `/metrics` for Prometheus, and `POST /backends/{index}/drain` and
//! `/undrain`. It never proxies. It has no authentication, so bind it to localhost only.
//!
//! One thread answers admin requests one at a time: they are rare and cheap, and this way a
//! scrape can never take a worker from the proxy.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use crate::Shared;
use crate::status::Status;
use crate::{metrics, status_page};

/// Largest request body the admin listener reads (and ignores).
const MAX_BODY: u64 = 64 * 1024;

/// The running admin listener.
pub struct Admin {
    server: Arc<Server>,
    thread: JoinHandle<()>,
    /// Where it listens (useful with port 0).
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` and starts answering.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> Result<Admin, String> {
        let server = Server::http(addr)
            .map_err(|e| format!("adminAddress: cannot listen on {addr}: {e}"))?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("adminAddress: {addr} is not an IP address"))?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                while let Ok(request) = serving.recv() {
                    answer(request, &shared);
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        if !local.ip().is_loopback() {
            log::warn!(
                "the admin listener on {local} is reachable beyond this machine; it has no authentication"
            );
        }
        log::info!("admin listener on http://{local}/ (status page, /status.json, /metrics)");
        Ok(Admin {
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

fn answer(mut request: Request, shared: &Shared) {
    // Read any body to its end first: tiny_http would otherwise parse what is left of a chunked
    // body as the next request on this connection. Admin requests need no body, so a large one
    // is refused.
    let mut sink = std::io::sink();
    let body = std::io::copy(&mut request.as_reader().take(MAX_BODY + 1), &mut sink);
    if !matches!(body, Ok(n) if n <= MAX_BODY) {
        let _ = request.respond(plain(413, "admin requests take no body\n"));
        return;
    }
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let response = match (request.method(), segments.as_slice()) {
        (Method::Get | Method::Head, [""]) => with_type(
            status_page::render(&Status::collect(shared)),
            "text/html; charset=utf-8",
        ),
        (Method::Get | Method::Head, ["status.json"]) => {
            let body = serde_json::to_string_pretty(&Status::collect(shared))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            with_type(body, "application/json")
        }
        (Method::Get | Method::Head, ["metrics"]) => with_type(
            metrics::render(&Status::collect(shared)),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Method::Post, ["backends", index, action @ ("drain" | "undrain")]) => {
            drain(shared, index, *action == "drain")
        }
        (_, ["backends", _, "drain" | "undrain"]) => {
            plain(405, "use POST\n").with_header(header("Allow", "POST"))
        }
        (_, [""] | ["status.json"] | ["metrics"]) => {
            plain(405, "use GET\n").with_header(header("Allow", "GET, HEAD"))
        }
        _ => plain(404, "not found: try /, /status.json or /metrics\n"),
    };
    if let Err(error) = request.respond(response) {
        log::debug!("admin answer not delivered: {error}");
    }
}

/// `POST /backends/{index}/drain`: no new requests go there; those in flight finish.
fn drain(shared: &Shared, index: &str, draining: bool) -> Response<std::io::Cursor<Vec<u8>>> {
    let backends = shared.forwarder.balancer.backends();
    let Some(backend) = index.parse::<usize>().ok().and_then(|i| backends.get(i)) else {
        return plain(
            404,
            &format!("no backend {index}; there are {}\n", backends.len()),
        );
    };
    backend.set_draining(draining);
    let body = serde_json::json!({
        "index": index.parse::<usize>().unwrap_or_default(),
        "url": backend.url.original,
        "draining": draining,
        "inFlight": backend.in_flight(),
    });
    with_type(body.to_string(), "application/json")
}

fn with_type(body: String, content_type: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.into_bytes())
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

fn plain(status: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    with_type(body.to_string(), "text/plain; charset=utf-8").with_status_code(status)
}

fn header(name: &str, value: &str) -> Header {
    // Both are fixed ASCII strings from this file, which Header accepts.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}
