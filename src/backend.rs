//! One backend server: where it is, its weight, whether it is healthy, how many requests it is
//! serving, and the ureq Agent (with its own keep-alive pool) that talks to it. Health changes
//! are events: they are logged once, when the state flips, never on every probe.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::{BackendUrl, Config, HealthConfig, ServerConfig};

/// A backend and everything the request path needs to know about it.
pub struct Backend {
    /// Where requests go.
    pub url: BackendUrl,
    /// Share of traffic for the weighted algorithms.
    pub weight: u32,
    /// Hash of the URL for ip-hash: stable across restarts and list reorderings.
    pub key: u64,
    /// Read on every pick without a lock; written only by the health logic below.
    healthy: AtomicBool,
    /// Requests in flight; counted by an [`InFlight`] guard so a panicking worker cannot leak one.
    in_flight: AtomicUsize,
    /// Consecutive check results, for the rise/fall thresholds.
    streak: Mutex<Streak>,
    /// One Agent per backend: ureq's pool scans every idle connection under one lock, so a
    /// shared Agent was 25-35% slower (shared/crates.md).
    agent: ureq::Agent,
}

#[derive(Debug, Default)]
struct Streak {
    passed: u32,
    failed: u32,
}

impl Backend {
    /// A backend that starts healthy; the first health-check round corrects that at start-up.
    pub fn new(server: &ServerConfig, config: &Config) -> Backend {
        Backend {
            key: url_key(&server.url.original),
            url: server.url.clone(),
            weight: server.weight,
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            streak: Mutex::new(Streak::default()),
            agent: proxy_agent(config),
        }
    }

    /// Whether the balancer may send requests here.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The Agent whose pool holds this backend's keep-alive connections.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { backend: self }
    }

    /// Sets the state without thresholds: used for the first round at start-up, where waiting
    /// for `fall` failures would send traffic to a backend we already know is dead.
    pub fn set_initial_health(&self, healthy: bool, reason: &str) {
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
        let mut streak = self.streak.lock();
        if passed {
            streak.passed += 1;
            streak.failed = 0;
            if !self.is_healthy() && streak.passed >= thresholds.rise {
                self.healthy.store(true, Ordering::Relaxed);
                log::info!(
                    "backend {} is up ({} passed checks)",
                    self.url.original,
                    streak.passed
                );
            }
        } else {
            streak.failed += 1;
            streak.passed = 0;
            if self.is_healthy() && streak.failed >= thresholds.fall {
                self.healthy.store(false, Ordering::Relaxed);
                log::warn!(
                    "backend {} is down ({} failed checks: {reason})",
                    self.url.original,
                    streak.failed
                );
            }
        }
    }

    /// Passive check: a request could not even connect, so stop sending traffic here now and
    /// let the active checks bring the backend back after `rise` passes.
    pub fn mark_down(&self, reason: &str) {
        let mut streak = self.streak.lock();
        streak.passed = 0;
        if self.healthy.swap(false, Ordering::Relaxed) {
            log::warn!(
                "backend {} is down (a request failed to connect: {reason})",
                self.url.original
            );
        }
    }
}

/// Keeps a request counted as in flight on its backend until dropped.
pub struct InFlight<'a> {
    backend: &'a Backend,
}

impl InFlight<'_> {
    /// The backend this request is counted on.
    pub fn backend(&self) -> &Backend {
        self.backend
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds every backend of a config, in config order.
pub fn backends_for(config: &Config) -> Vec<Backend> {
    config
        .servers
        .iter()
        .map(|server| Backend::new(server, config))
        .collect()
}

/// An Agent configured for proxying (shared/crates.md): statuses and redirects passed through,
/// no headers of its own, no environment proxy, any method, only phase timeouts (a global
/// timeout would make ureq spawn a thread per request for DNS).
fn proxy_agent(config: &Config) -> ureq::Agent {
    let idle = config.workers;
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent("")
        .accept("")
        .allow_non_standard_methods(true)
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .max_idle_age(Duration::from_secs(15))
        .timeout_connect(Some(config.connect_timeout))
        .timeout_send_request(Some(config.backend_timeout))
        .timeout_recv_response(Some(config.backend_timeout))
        .timeout_per_read(Some(config.backend_timeout))
        .timeout_per_write(Some(config.backend_timeout))
        .build()
        .new_agent()
}

/// FNV-1a of the URL: a stable identity for ip-hash that does not depend on list position.
pub fn url_key(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
