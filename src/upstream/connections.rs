//! One backend's connections: two ureq Agents (a pooled one, and one that always opens a new
//! connection) sharing one cached address, plus the send that streams a request through them.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ureq::SendBody;
use ureq::unversioned::transport::DefaultConnector;

use super::Response;
use super::errors::classify;
use super::request::Outgoing;
use super::resolve::{AddressCache, CachedResolver};
use crate::config::{BackendUrl, Config};
use crate::failure::Failure;
use crate::message::{MAX_HEAD_BYTES, MAX_RESPONSE_HEAD_BYTES};

/// ureq's buffer for the request it sends. ureq writes the head a line at a time, so the buffer
/// must hold the longest line: a header of up to [`MAX_HEAD_BYTES`], or X-Forwarded-Host (a copy
/// of Host), plus room for the name.
const UPSTREAM_OUTPUT_BUFFER: usize = MAX_HEAD_BYTES + 4 * 1024;
/// ureq's buffer for the response it reads: a little more than the largest head, so that ureq's
/// own size check sees a head that is too large (a smaller buffer makes it report the backend
/// as disconnected).
const UPSTREAM_INPUT_BUFFER: usize = MAX_RESPONSE_HEAD_BYTES + 4 * 1024;
/// How long an idle pooled connection is kept.
const MAX_IDLE_AGE: Duration = Duration::from_secs(15);

/// The connections to one backend. One pair of Agents per backend, not one shared: ureq's pool
/// scans every idle connection under one lock (docs/crates.md).
pub struct Connections {
    /// Holds up to `backendKeepAlive` idle connections; ureq's Agent is a cheap handle, cloned
    /// per request. Replaced when a reload changes the timeouts or `backendKeepAlive`.
    pooled: RwLock<ureq::Agent>,
    /// The same settings with no pool: for the retry after a pooled connection turned out
    /// closed, which must not take the next, possibly also closed, pooled connection.
    fresh: RwLock<ureq::Agent>,
    /// The backend's address as last looked up, shared by both Agents.
    addresses: Arc<AddressCache>,
}

impl Connections {
    /// Connections set up as `config` says.
    pub fn new(config: &Config) -> Connections {
        let addresses = AddressCache::new();
        Connections {
            pooled: RwLock::new(proxy_agent(config, config.backend_keep_alive, &addresses)),
            fresh: RwLock::new(proxy_agent(config, 0, &addresses)),
            addresses,
        }
    }

    /// Takes over a reloaded config's timeouts and pool size; idle connections are dropped.
    pub fn reconfigure(&self, config: &Config) {
        *self.pooled.write() = proxy_agent(config, config.backend_keep_alive, &self.addresses);
        *self.fresh.write() = proxy_agent(config, 0, &self.addresses);
    }

    /// Forgets the looked-up address: the name may point elsewhere now.
    pub fn forget_address(&self) {
        self.addresses.forget();
    }

    /// Sends `request` to the backend at `url`, streaming `body` when the request has one, and
    /// returns the answer's head (its body is read while relaying). `fresh` opens a new
    /// connection instead of taking a pooled one.
    pub fn send(
        &self,
        url: &BackendUrl,
        request: &Outgoing,
        body: &mut dyn Read,
        fresh: bool,
    ) -> Result<Response, Failure> {
        let agent = if fresh {
            self.fresh.read().clone()
        } else {
            self.pooled.read().clone()
        };
        let head = request.to(url)?;
        let result = if request.has_body {
            agent.run(head.map(|()| SendBody::from_reader(body)))
        } else {
            agent.run(head)
        };
        match result {
            Ok(response) if response.status() == ureq::http::StatusCode::SWITCHING_PROTOCOLS => {
                Err(Failure::Broken(
                    "backend switched protocols on a request without Upgrade".into(),
                ))
            }
            Ok(response) => Ok(Response(response)),
            Err(error) => Err(classify(&error)),
        }
    }
}

/// An Agent configured for proxying (docs/crates.md): statuses and redirects passed through,
/// no headers of its own, no environment proxy, any method, only phase timeouts (a global
/// timeout would make ureq spawn a thread per request for DNS).
fn proxy_agent(config: &Config, idle: usize, addresses: &Arc<AddressCache>) -> ureq::Agent {
    let settings = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent("")
        .accept("")
        .allow_non_standard_methods(true)
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .max_idle_age(MAX_IDLE_AGE)
        // ureq's defaults are 128 KiB each way, zero-filled when a connection opens: memory
        // every pooled connection would hold (docs/benchmarks.md).
        .input_buffer_size(UPSTREAM_INPUT_BUFFER)
        .max_response_header_size(MAX_RESPONSE_HEAD_BYTES)
        .output_buffer_size(UPSTREAM_OUTPUT_BUFFER)
        .timeout_connect(Some(config.connect_timeout))
        .timeout_send_request(Some(config.backend_timeout))
        .timeout_recv_response(Some(config.backend_timeout))
        .timeout_per_read(Some(config.backend_timeout))
        .timeout_per_write(Some(config.backend_timeout))
        .build();
    ureq::Agent::with_parts(
        settings,
        DefaultConnector::default(),
        CachedResolver(Arc::clone(addresses)),
    )
}

/// Active health checks: a HEAD to a backend's URL on a new connection each time (so a check
/// really tests connecting), bounded as a whole by one timeout. One per round of checks.
pub struct HealthCheck(ureq::Agent);

impl HealthCheck {
    /// Checks that each take at most `timeout`: connect, send and receive together.
    pub fn new(timeout: Duration) -> HealthCheck {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent("tinylb-health-check")
            .max_idle_connections(0)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        HealthCheck(agent)
    }

    /// One check: 2xx and 3xx pass; the error is why not.
    pub fn check(&self, url: &BackendUrl) -> Result<(), String> {
        match self.0.head(&url.original).call() {
            Ok(response)
                if response.status().is_success() || response.status().is_redirection() =>
            {
                Ok(())
            }
            Ok(response) => Err(format!("HEAD answered {}", response.status())),
            Err(error) => Err(super::errors::describe(&error)),
        }
    }
}
