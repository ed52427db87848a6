//! The connections to one backend origin (`http://host:port`): two ureq Agents (a pooled one,
//! and one that always opens a new connection) sharing one cached address, plus the send that
//! streams a request through them. Backends that differ only by path prefix share one
//! [`Connections`] (see [`super::origins`]).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ureq::SendBody;
use ureq::unversioned::transport::{Connector, DefaultConnector};

use super::Response;
use super::errors::classify;
use super::first_write::{self, MarkFirstWrite};
use super::idle::{CountIdle, IdleBudget, OriginIdle};
use super::interim::DropContinueWithFields;
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

/// What an origin's Agents are built from: when a reload changes any of it, the Agents are
/// built again and the idle connections dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSettings {
    /// `connectTimeout`.
    pub connect_timeout: Duration,
    /// `backendTimeout`.
    pub backend_timeout: Duration,
    /// `backendKeepAlive`: the most idle connections this origin keeps.
    pub max_idle: usize,
    /// `backendKeepAliveTotal`: not an Agent's setting, but a lower one must drop the idle
    /// connections over it, and a rebuild does.
    pub max_idle_total: usize,
}

impl AgentSettings {
    /// The settings `config` gives every origin.
    pub fn of(config: &Config) -> AgentSettings {
        AgentSettings {
            connect_timeout: config.connect_timeout,
            backend_timeout: config.backend_timeout,
            max_idle: config.backend_keep_alive,
            max_idle_total: config.backend_keep_alive_total,
        }
    }
}

/// The two Agents and what they were built from, replaced together.
struct Agents {
    /// Holds up to `settings.max_idle` idle connections, each with a place in the budget;
    /// ureq's Agent is a cheap handle, cloned per request.
    pooled: ureq::Agent,
    /// The same settings with no pool: for the retry after a pooled connection turned out
    /// closed, which must not take the next, possibly also closed, pooled connection.
    fresh: ureq::Agent,
    settings: AgentSettings,
}

/// The connections to one origin. One pair of Agents per origin, not one shared by all:
/// ureq's pool scans every idle connection under one lock (docs/crates.md).
pub struct Connections {
    /// `http://host:port`, as the backends' URLs write it.
    origin: String,
    /// Replaced when a reload changes what they are built from.
    agents: RwLock<Agents>,
    /// The origin's address as last looked up, shared by both Agents.
    addresses: Arc<AddressCache>,
    /// Connections idle in the pooled Agent's pool now (counted by [`super::idle`]); kept
    /// across rebuilt Agents, whose dropped connections count themselves out.
    idle: Arc<OriginIdle>,
    /// The places for idle connections, shared by every origin.
    budget: Arc<IdleBudget>,
}

impl Connections {
    /// Connections to `origin` (`http://host:port`) built from `settings`, whose idle ones
    /// take their places in `budget`.
    pub fn new(origin: &str, settings: AgentSettings, budget: Arc<IdleBudget>) -> Connections {
        let (addresses, idle) = (AddressCache::new(), OriginIdle::new());
        Connections {
            origin: origin.to_string(),
            agents: RwLock::new(Agents::build(settings, &addresses, &idle, &budget)),
            addresses,
            idle,
            budget,
        }
    }

    /// The origin these connections go to.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Takes over a reloaded config's settings; when they differ from those in force, the
    /// Agents are built again and idle connections dropped. Returns whether that happened.
    pub fn reconfigure(&self, settings: AgentSettings) -> bool {
        if self.agents.read().settings == settings {
            return false;
        }
        self.rebuild(settings);
        true
    }

    /// Drops the idle connections once all of them have waited `MAX_IDLE_AGE` (15 s): ureq would
    /// hand none of them out any more, but evicts them only on this origin's next request. An
    /// origin that gets no more requests (down, drained, unpopular) would keep them, and their
    /// memory and places in the budget, for ever. Called after each round of health checks.
    pub fn drop_stale(&self) {
        if self.idle.all_older_than(MAX_IDLE_AGE) {
            let settings = self.agents.read().settings;
            self.rebuild(settings);
        }
    }

    /// New Agents: the old ones' pool, and its idle connections, go with their last clone.
    fn rebuild(&self, settings: AgentSettings) {
        *self.agents.write() = Agents::build(settings, &self.addresses, &self.idle, &self.budget);
    }

    /// Connections idle in the pool now, waiting for the next request.
    pub fn idle(&self) -> usize {
        self.idle.count()
    }

    /// The most idle connections this origin keeps (`backendKeepAlive`, within the total).
    pub fn max_idle(&self) -> usize {
        let settings = self.agents.read().settings;
        settings.max_idle.min(settings.max_idle_total)
    }

    /// The places for idle connections that every origin shares.
    pub fn budget(&self) -> &IdleBudget {
        &self.budget
    }

    /// The budget itself, for the origins a reload adds.
    pub(super) fn budget_handle(&self) -> Arc<IdleBudget> {
        Arc::clone(&self.budget)
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
    ) -> Result<Response, SendFailed> {
        let agent = {
            let agents = self.agents.read();
            if fresh {
                agents.fresh.clone()
            } else {
                agents.pooled.clone()
            }
        };
        let head = request.to(url).map_err(|failure| SendFailed {
            failure,
            on_reused_connection: false,
        })?;
        first_write::watch();
        let result = if request.has_body {
            agent.run(head.map(|()| SendBody::from_reader(body)))
        } else {
            agent.run(head)
        };
        let connected = first_write::first_write();
        let on_reused_connection = !first_write::opened_a_connection();
        let failed = |failure| SendFailed {
            failure,
            on_reused_connection,
        };
        match result {
            Ok(response) if response.status() == ureq::http::StatusCode::SWITCHING_PROTOCOLS => {
                Err(failed(Failure::Broken(
                    "backend switched protocols on a request without Upgrade".into(),
                )))
            }
            Ok(response) => {
                Response::checked(response, request.is_head(), connected).map_err(failed)
            }
            Err(error) => Err(failed(classify(&error))),
        }
    }
}

/// A failed [`Connections::send`]: why, and whether it ran on a pooled connection that was
/// reused (which the backend may have closed just then: the one case worth a second try on
/// the same backend).
#[derive(Debug)]
pub struct SendFailed {
    /// Why it failed.
    pub failure: Failure,
    /// It ran on a pooled connection, not one opened for it.
    pub on_reused_connection: bool,
}

impl Agents {
    fn build(
        settings: AgentSettings,
        addresses: &Arc<AddressCache>,
        idle: &Arc<OriginIdle>,
        budget: &Arc<IdleBudget>,
    ) -> Agents {
        let counted = CountIdle {
            origin: Arc::clone(idle),
            budget: Arc::clone(budget),
        };
        let resolver = || CachedResolver(Arc::clone(addresses));
        Agents {
            pooled: ureq::Agent::with_parts(
                proxy_config(&settings, settings.max_idle.min(settings.max_idle_total)),
                DefaultConnector::default()
                    .chain(counted)
                    .chain(MarkFirstWrite)
                    .chain(DropContinueWithFields),
                resolver(),
            ),
            fresh: ureq::Agent::with_parts(
                proxy_config(&settings, 0),
                DefaultConnector::default()
                    .chain(MarkFirstWrite)
                    .chain(DropContinueWithFields),
                resolver(),
            ),
            settings,
        }
    }
}

/// An Agent's settings for proxying (docs/crates.md): statuses and redirects passed through,
/// no headers of its own, no environment proxy, any method, only phase timeouts (a global
/// timeout would make ureq spawn a thread per request for DNS).
fn proxy_config(settings: &AgentSettings, idle: usize) -> ureq::config::Config {
    ureq::Agent::config_builder()
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
        .timeout_connect(Some(settings.connect_timeout))
        .timeout_send_request(Some(settings.backend_timeout))
        .timeout_recv_response(Some(settings.backend_timeout))
        .timeout_per_read(Some(settings.backend_timeout))
        .timeout_per_write(Some(settings.backend_timeout))
        .build()
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
