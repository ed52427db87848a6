//! One backend server: where it is, its weight, whether it is healthy or draining, how many
//! requests and tunnels it holds, what happened to those it served, and its connections. Health
//! changes are events: they are logged once, when the state flips, never on every probe.
//!
//! Backends are shared as `Arc<Backend>`: a live reload replaces the list, but a request in
//! flight keeps its backend alive until it is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::config::{BackendUrl, Config, HealthConfig, ServerConfig};
use crate::health::{Flip, HealthState};
use crate::stats::BackendStats;
use crate::upstream::{self, Connections};

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
    /// The connections that carry requests there, shared with the backends on the same origin.
    pub connections: Arc<Connections>,
}

/// Consecutive check results and what the status page shows about health.
#[derive(Debug, Clone)]
pub struct HealthRecord {
    state: HealthState,
    /// The last active check: when, and `None` if it passed or the reason it failed.
    pub last_check: Option<(SystemTime, Option<String>)>,
    /// When the state last flipped (or was first set at start-up).
    pub last_flip: Option<SystemTime>,
}

impl Backend {
    /// A backend that starts healthy; the first health-check round corrects that at start-up.
    /// `connections` go to its origin ([`crate::upstream::share_connections`]).
    pub fn new(server: &ServerConfig, connections: Arc<Connections>) -> Backend {
        Backend {
            key: url_key(&server.url.original),
            url: server.url.clone(),
            weight: AtomicU32::new(server.weight),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            health: Mutex::new(HealthRecord {
                state: HealthState::starting(true),
                last_check: None,
                last_flip: None,
            }),
            flips: AtomicU64::new(0),
            stats: BackendStats::default(),
            connections,
        }
    }

    /// Every backend `config` lists, in order, those on one origin sharing its connections.
    pub fn all(config: &Config) -> Vec<Arc<Backend>> {
        config
            .servers
            .iter()
            .zip(upstream::share_connections(config, &[]))
            .map(|(server, connections)| Arc::new(Backend::new(server, connections)))
            .collect()
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

    /// Takes over what a reload may change without losing the state (health, counters, pool);
    /// its connections follow the reload through [`crate::upstream::share_connections`].
    pub fn reconfigure(&self, server: &ServerConfig) {
        self.weight.store(server.weight, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }

    /// Sets the state from the first check round at start-up, without thresholds.
    pub fn set_initial_health(&self, check: Result<(), String>) {
        match &check {
            Ok(()) => log::info!("backend {} is up", self.url.original),
            Err(reason) => log::warn!("backend {} is down ({reason})", self.url.original),
        }
        let now = SystemTime::now();
        let mut record = self.health.lock();
        record.state = HealthState::starting(check.is_ok());
        self.healthy.store(check.is_ok(), Ordering::Relaxed);
        record.last_check = Some((now, check.err()));
        record.last_flip = Some(now);
    }

    /// Records one active check; logs only a flip, with the reason.
    pub fn record_check(&self, check: Result<(), String>, thresholds: &HealthConfig) {
        let now = SystemTime::now();
        let mut record = self.health.lock();
        let flip = record
            .state
            .check(check.is_ok(), thresholds.rise, thresholds.fall);
        match (flip, &check) {
            (Flip::Up { passed }, _) => {
                log::info!(
                    "backend {} is up ({passed} passed checks)",
                    self.url.original
                );
            }
            (Flip::Down { failed }, Err(reason)) => log::warn!(
                "backend {} is down ({failed} failed checks: {reason})",
                self.url.original
            ),
            _ => {}
        }
        record.last_check = Some((now, check.err()));
        self.apply(&mut record, flip, now);
    }

    /// Passive check: a request could not even connect, so stop sending traffic here now and
    /// let the active checks bring the backend back after `rise` passes.
    pub fn mark_down(&self, reason: &str) {
        // The name may point elsewhere now; the next request (to any backend on this origin)
        // looks it up again.
        self.connections.forget_address();
        let mut record = self.health.lock();
        let flip = record.state.connect_failed();
        if flip != Flip::None {
            log::warn!(
                "backend {} is down (a request failed to connect: {reason})",
                self.url.original
            );
        }
        self.apply(&mut record, flip, SystemTime::now());
    }

    /// Publishes a flip to the lock-free flag the balancer reads.
    fn apply(&self, record: &mut HealthRecord, flip: Flip, at: SystemTime) {
        if let Flip::Up { .. } | Flip::Down { .. } = flip {
            self.healthy
                .store(matches!(flip, Flip::Up { .. }), Ordering::Relaxed);
            self.flips.fetch_add(1, Ordering::Relaxed);
            record.last_flip = Some(at);
        }
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

/// FNV-1a of the URL: a stable identity for ip-hash that does not depend on list position.
pub fn url_key(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
