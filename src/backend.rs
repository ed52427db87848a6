//! One backend server: where it is, its weight, whether it is healthy or draining, how many
//! requests it is serving, what happened to those it served, and the ureq Agent (with its own
//! keep-alive pool) that talks to it. Health changes are events: they are logged once, when the
//! state flips, never on every probe.
//!
//! Backends are shared as `Arc<Backend>`: a live reload replaces the list, but a request in
//! flight keeps its backend alive until it is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use ureq::unversioned::transport::DefaultConnector;

use crate::config::{BackendUrl, Config, HealthConfig, ServerConfig};
use crate::request_check::MAX_HEAD_BYTES;
use crate::resolve::{AddressCache, CachedResolver};
use crate::stats::BackendStats;

/// A backend and everything the request path needs to know about it.
pub struct Backend {
    /// Where requests go.
    pub url: BackendUrl,
    /// Hash of the URL for ip-hash: stable across restarts, reloads and list reorderings.
    pub key: u64,
    /// Share of traffic for the weighted algorithms; a reload may change it.
    weight: AtomicU32,
    /// Read on every pick without a lock; written only by the health logic below.
    healthy: AtomicBool,
    /// Set from the admin listener: no new requests, the ones in flight finish.
    draining: AtomicBool,
    /// Requests in flight; counted by an [`InFlight`] guard so a panicking worker cannot leak one.
    in_flight: AtomicUsize,
    /// Tunnels open to this backend; counted by an [`OpenTunnel`] guard that the tunnel holds.
    tunnels: AtomicUsize,
    /// Health details for the status page.
    health: Mutex<HealthRecord>,
    /// Times the health state flipped, for metrics.
    flips: AtomicU64,
    /// Answers, errors and latency.
    pub stats: BackendStats,
    /// One Agent per backend: ureq's pool scans every idle connection under one lock, so a
    /// shared Agent was 25-35% slower (docs/crates.md). Replaced when a reload changes the
    /// timeouts or `backendKeepAlive`; ureq's Agent is a cheap handle, cloned per request.
    agent: RwLock<ureq::Agent>,
    /// The same settings with no keep-alive pool: for a retry after a pooled connection turned
    /// out closed, which must not take the next (possibly also closed) pooled connection.
    fresh_agent: RwLock<ureq::Agent>,
    /// The backend's address as last looked up, shared by both Agents (see [`crate::resolve`]).
    addresses: Arc<AddressCache>,
}

/// Consecutive check results and what the status page shows about health.
#[derive(Debug, Default, Clone)]
pub struct HealthRecord {
    passed: u32,
    failed: u32,
    /// The last active check: when, and `None` if it passed or the reason it failed.
    pub last_check: Option<(SystemTime, Option<String>)>,
    /// When the state last flipped (or was first set at start-up).
    pub last_flip: Option<SystemTime>,
}

impl Backend {
    /// A backend that starts healthy; the first health-check round corrects that at start-up.
    pub fn new(server: &ServerConfig, config: &Config) -> Backend {
        let addresses = AddressCache::new();
        let (agent, fresh_agent) = proxy_agents(config, &addresses);
        Backend {
            key: url_key(&server.url.original),
            url: server.url.clone(),
            weight: AtomicU32::new(server.weight),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            health: Mutex::new(HealthRecord::default()),
            flips: AtomicU64::new(0),
            stats: BackendStats::default(),
            agent: RwLock::new(agent),
            fresh_agent: RwLock::new(fresh_agent),
            addresses,
        }
    }

    /// Whether the last health verdict is "up".
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the balancer may send new requests here.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// Whether an operator asked to stop new traffic here.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or stops draining; returns whether anything changed.
    pub fn set_draining(&self, draining: bool) -> bool {
        let changed = self.draining.swap(draining, Ordering::Relaxed) != draining;
        if changed {
            let what = if draining {
                "draining"
            } else {
                "no longer draining"
            };
            log::info!("backend {} is {what}", self.url.original);
        }
        changed
    }

    /// Share of traffic for the weighted algorithms.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// WebSocket (and other upgrade) tunnels open to this backend right now.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts a tunnel as open to this backend until the returned guard is dropped.
    pub fn open_tunnel(self: &Arc<Self>) -> OpenTunnel {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel {
            backend: Arc::clone(self),
        }
    }

    /// Times the health state flipped since start.
    pub fn flips(&self) -> u64 {
        self.flips.load(Ordering::Relaxed)
    }

    /// Health details for the status page.
    pub fn health_record(&self) -> HealthRecord {
        self.health.lock().clone()
    }

    /// The Agent whose pool holds this backend's keep-alive connections.
    pub fn agent(&self) -> ureq::Agent {
        self.agent.read().clone()
    }

    /// An Agent that always opens a new connection to this backend.
    pub fn fresh_agent(&self) -> ureq::Agent {
        self.fresh_agent.read().clone()
    }

    /// Takes over what a reload may change without losing the state (health, counters, pool).
    pub fn reconfigure(&self, server: &ServerConfig, config: &Config, agent_changed: bool) {
        self.weight.store(server.weight, Ordering::Relaxed);
        if agent_changed {
            let (agent, fresh_agent) = proxy_agents(config, &self.addresses);
            *self.agent.write() = agent;
            *self.fresh_agent.write() = fresh_agent;
        }
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }

    /// Sets the state without thresholds: used for the first round at start-up, where waiting
    /// for `fall` failures would send traffic to a backend we already know is dead.
    pub fn set_initial_health(&self, healthy: bool, reason: &str) {
        let now = SystemTime::now();
        let mut record = self.health.lock();
        record.last_check = Some((now, (!healthy).then(|| reason.to_string())));
        record.last_flip = Some(now);
        self.healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            log::info!("backend {} is up", self.url.original);
        } else {
            log::warn!("backend {} is down ({reason})", self.url.original);
        }
    }

    /// Records one active check; flips the state after `rise` passes or `fall` failures in a
    /// row and logs only the flip, with the reason.
    pub fn record_check(&self, passed: bool, reason: &str, thresholds: &HealthConfig) {
        let now = SystemTime::now();
        let mut record = self.health.lock();
        record.last_check = Some((now, (!passed).then(|| reason.to_string())));
        if passed {
            record.passed += 1;
            record.failed = 0;
            if !self.is_healthy() && record.passed >= thresholds.rise {
                self.flip(&mut record, true, now);
                log::info!(
                    "backend {} is up ({} passed checks)",
                    self.url.original,
                    record.passed
                );
            }
        } else {
            record.failed += 1;
            record.passed = 0;
            if self.is_healthy() && record.failed >= thresholds.fall {
                self.flip(&mut record, false, now);
                log::warn!(
                    "backend {} is down ({} failed checks: {reason})",
                    self.url.original,
                    record.failed
                );
            }
        }
    }

    /// Passive check: a request could not even connect, so stop sending traffic here now and
    /// let the active checks bring the backend back after `rise` passes.
    pub fn mark_down(&self, reason: &str) {
        // The name may point elsewhere now; the next request looks it up again.
        self.addresses.forget();
        let mut record = self.health.lock();
        record.passed = 0;
        if self.is_healthy() {
            self.flip(&mut record, false, SystemTime::now());
            log::warn!(
                "backend {} is down (a request failed to connect: {reason})",
                self.url.original
            );
        }
    }

    fn flip(&self, record: &mut HealthRecord, healthy: bool, at: SystemTime) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.flips.fetch_add(1, Ordering::Relaxed);
        record.last_flip = Some(at);
    }
}

/// Keeps a request counted as in flight on its backend until dropped.
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    /// The backend this request is counted on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps a tunnel counted on its backend until dropped.
pub struct OpenTunnel {
    backend: Arc<Backend>,
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.backend.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Largest response head tinylb accepts from a backend; a larger one is a broken answer (502),
/// as in nginx (4 or 8 KiB by default) and HAProxy (about 15 KiB).
pub const MAX_RESPONSE_HEAD_BYTES: usize = 32 * 1024;
/// ureq's buffer for the request it sends. ureq writes the head a line at a time, so the buffer
/// must hold the longest line: a header of up to [`MAX_HEAD_BYTES`], or X-Forwarded-Host (a copy
/// of Host), plus room for the name.
const UPSTREAM_OUTPUT_BUFFER: usize = MAX_HEAD_BYTES + 4 * 1024;
/// ureq's buffer for the response it reads: a little more than the largest head, so that ureq's
/// own size check sees a head that is too large (a smaller buffer makes it report the backend
/// as disconnected).
const UPSTREAM_INPUT_BUFFER: usize = MAX_RESPONSE_HEAD_BYTES + 4 * 1024;

/// The pooled Agent (`backendKeepAlive` idle connections) and the pool-less one, sharing the
/// backend's looked-up address.
fn proxy_agents(config: &Config, addresses: &Arc<AddressCache>) -> (ureq::Agent, ureq::Agent) {
    (
        proxy_agent(config, config.backend_keep_alive, addresses),
        proxy_agent(config, 0, addresses),
    )
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
        .max_idle_age(Duration::from_secs(15))
        // ureq's defaults are 128 KiB each way, zero-filled when a connection opens: 256 KiB
        // of memory per pooled connection, 136-146 MiB of RSS with 500 backends.
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

/// FNV-1a of the URL: a stable identity for ip-hash that does not depend on list position.
pub fn url_key(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
