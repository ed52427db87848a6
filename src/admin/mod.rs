//! The admin listener, off unless `adminAddress` is set: the status page at `/`,
//! `/status.json`, `/metrics` for Prometheus, and `POST /backends/{index}/drain` and
//! `/undrain`. It never proxies. It has no authentication, so bind it to localhost only;
//! [`guard`] keeps web pages in the operator's browser out.

pub mod guard;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use self::guard::{INTENT_HEADER, Refusal};
use crate::client::admin_server::{AdminReply, AdminRequest, AdminServer};
use crate::error::StartError;
use crate::master::handoff::ChildEnd;
use crate::status::{Sources, Status};
use crate::{metrics, status_page};

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// The running admin listener.
pub struct Admin {
    server: AdminServer,
}

impl Admin {
    /// Starts answering from `sources` on `socket` (bound by [`bind_admin_socket`], or handed
    /// down by the master). Drains and undrains are told to `master`, which hands them to
    /// the next generation.
    ///
    /// [`bind_admin_socket`]: crate::client::admin_server::bind_admin_socket
    pub fn start(
        socket: TcpListener,
        sources: Arc<Sources>,
        master: Option<Arc<ChildEnd>>,
    ) -> Result<Admin, StartError> {
        let server = AdminServer::start(
            socket,
            Arc::new(move |request: &AdminRequest| guarded(&sources, master.as_deref(), request)),
        )?;
        let local = server.addr;
        if !local.ip().is_loopback() {
            log::warn!(
                "the admin listener on {local} is reachable beyond this machine; it has no authentication"
            );
        }
        log::info!("admin listener on http://{local}/ (status page, /status.json, /metrics)");
        Ok(Admin { server })
    }

    /// Where it listens (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Leaves new admin connections to the next generation (see
    /// [`AdminServer::stop_accepting`]).
    pub fn stop_accepting(&mut self) {
        self.server.stop_accepting();
    }

    /// Stops answering.
    pub fn stop(self) {
        self.server.stop();
    }
}

/// Refuses what [`guard`] refuses, and routes the rest.
fn guarded(sources: &Sources, master: Option<&ChildEnd>, request: &AdminRequest) -> AdminReply {
    let method = request.method();
    let verdict = guard::judge(
        method,
        request.header("Host"),
        request.header(INTENT_HEADER).is_some(),
    );
    match verdict {
        Ok(()) => route(sources, master, method, request.path()),
        Err(Refusal::ForeignHost) => reply(
            421,
            TEXT,
            "this admin listener answers only to Host localhost or an IP address\n".into(),
        ),
        Err(Refusal::NoIntent) => reply(
            403,
            TEXT,
            format!(
                "{method} changes state: send the header {INTENT_HEADER}: 1 (a web page cannot), e.g. curl -X POST -H '{INTENT_HEADER}: 1' URL\n"
            ),
        ),
    }
}

/// Which page a request asks for.
fn route(sources: &Sources, master: Option<&ChildEnd>, method: &str, path: &str) -> AdminReply {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = matches!(method, "GET" | "HEAD");
    match (method, segments.as_slice()) {
        (_, [""]) if read => reply(
            200,
            "text/html; charset=utf-8",
            status_page::render(&Status::collect(sources)),
        ),
        (_, ["status.json"]) if read => {
            let body = serde_json::to_string_pretty(&Status::collect(sources))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            reply(200, JSON, body)
        }
        (_, ["metrics"]) if read => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&Status::collect(sources)),
        ),
        ("POST", ["backends", index, action @ ("drain" | "undrain")]) => {
            drain(sources, master, index, *action == "drain")
        }
        (_, ["backends", _, "drain" | "undrain"]) => AdminReply {
            allow: Some("POST"),
            ..reply(405, TEXT, "use POST\n".into())
        },
        (_, [""] | ["status.json"] | ["metrics"]) => AdminReply {
            allow: Some("GET, HEAD"),
            ..reply(405, TEXT, "use GET\n".into())
        },
        _ => reply(
            404,
            TEXT,
            "not found: try /, /status.json or /metrics\n".into(),
        ),
    }
}

/// `POST /backends/{index}/drain`: no new requests go there; those in flight finish. The master
/// learns every backend now draining, for the next generation.
fn drain(sources: &Sources, master: Option<&ChildEnd>, index: &str, draining: bool) -> AdminReply {
    let backends = sources.balancer.backends();
    let Some((index, backend)) = index
        .parse::<usize>()
        .ok()
        .and_then(|i| Some((i, backends.get(i)?)))
    else {
        let message = format!("no backend {index}; there are {}\n", backends.len());
        return reply(404, TEXT, message);
    };
    backend.set_draining(draining);
    if let Some(master) = master {
        master.draining(|| {
            backends
                .iter()
                .filter(|b| b.is_draining())
                .map(|b| b.url.original.clone())
                .collect()
        });
    }
    let body = serde_json::json!({
        "index": index,
        "url": backend.url.original,
        "draining": draining,
        "inFlight": backend.in_flight(),
    });
    reply(200, JSON, body.to_string())
}

fn reply(status: u16, content_type: &'static str, body: String) -> AdminReply {
    AdminReply {
        status,
        content_type,
        body,
        allow: None,
    }
}
