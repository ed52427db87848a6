//! Live reload: a thread reads config.json every half second and, when its bytes change
//! (edited in place, or replaced by a rename as editors and config tools do), applies the new
//! config without dropping a request in flight or a client connection. A config that does not
//! validate is refused with one log line naming the key, and the old one stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::RwLock;

use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::config::{Config, HealthConfig};
use crate::switches::Switches;
use crate::tunnel::{TunnelLimits, Tunnels};
use crate::upstream;

/// What a reload changes: a narrow handle on the parts of the running tinylb that can change
/// while it runs.
pub struct Reloadable {
    /// The config in force: the one tinylb started with, updated by each reload.
    pub running: Config,
    /// The backends and the algorithm.
    pub balancer: Arc<Balancer>,
    /// The request path's switches.
    pub switches: Arc<Switches>,
    /// The tunnels' limits.
    pub tunnels: Arc<Tunnels>,
    /// The health checks' settings.
    pub health: Arc<RwLock<HealthConfig>>,
}

/// How often the file is read. Reading a small file twice a second costs nothing measurable,
/// and comparing bytes (not mtime) catches every kind of edit.
const POLL: Duration = Duration::from_millis(500);

/// Starts the watcher thread, which treats any content other than `loaded` (the bytes the
/// running config came from) as a change; it stops when `stop` fires or is dropped.
pub fn spawn(
    path: PathBuf,
    loaded: Vec<u8>,
    mut target: Reloadable,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let mut last_seen = Some(loaded);
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(POLL) {
                let Ok(bytes) = std::fs::read(&path) else {
                    continue; // mid-rename, or removed: keep the running config
                };
                if last_seen.as_ref() == Some(&bytes) {
                    continue;
                }
                last_seen = Some(bytes.clone());
                match std::str::from_utf8(&bytes)
                    .map_err(|_| "the file is not UTF-8".to_string())
                    .and_then(|text| Config::parse(text).map_err(|e| e.to_string()))
                {
                    Ok(config) => apply(&mut target, config),
                    Err(error) => log::error!(
                        "config reload refused, keeping the running config: {}: {error}",
                        path.display()
                    ),
                }
            }
        })
}

/// Applies a new, valid config: backends added, removed or re-weighted, algorithm, timeouts,
/// health checks and switches. Keeps each surviving backend's state (health, counters, pool).
pub fn apply(target: &mut Reloadable, new: Config) {
    for warning in &new.warnings {
        log::warn!("config reload: {warning}");
    }
    let current = &target.running;
    if current.listen != new.listen {
        log::warn!(
            "config reload: port cannot change while tinylb runs; restart tinylb to listen elsewhere (the rest is applied)"
        );
    }
    let fixed: Vec<&str> = [
        ("workers", current.workers != new.workers),
        ("queueSize", current.queue_size != new.queue_size),
        // Its default follows `workers`: named only when it changed on its own.
        (
            "clientMaxWorkers",
            current.per_client.max_workers != new.per_client.max_workers
                && current.workers == new.workers,
        ),
        (
            "clientTimeout",
            current.client_timeout != new.client_timeout,
        ),
        ("adminAddress", current.admin_address != new.admin_address),
        (
            "shutdownGracePeriod",
            current.shutdown_grace_period != new.shutdown_grace_period,
        ),
        (
            "maxStuckConnections",
            current.max_stuck_connections != new.max_stuck_connections,
        ),
        (
            "clientHeaderTimeout",
            current.client_header_timeout != new.client_header_timeout,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    if !fixed.is_empty() {
        log::warn!(
            "config reload: {} cannot change while tinylb runs; send SIGHUP to start a server process with the new values (the rest is applied)",
            fixed.join(", ")
        );
    }
    // Settings that every backend's Agent is built from follow the new file; the fixed ones
    // stay as they run.
    let mut effective = new.clone();
    effective.listen = current.listen;
    effective.workers = current.workers;
    effective.queue_size = current.queue_size;
    effective.per_client.max_workers = current.per_client.max_workers;
    effective.client_timeout = current.client_timeout;
    effective.admin_address = current.admin_address;
    effective.max_stuck_connections = current.max_stuck_connections;
    effective.client_header_timeout = current.client_header_timeout;
    effective.shutdown_grace_period = current.shutdown_grace_period;

    let old = target.balancer.backends();
    // Each origin kept keeps its connections, and the idle budget its count; a new Agent (and
    // so a new keep-alive pool) only when what it is built from changed: the timeouts,
    // `backendKeepAlive` or `backendKeepAliveTotal`.
    let running: Vec<_> = old.iter().map(|b| Arc::clone(&b.connections)).collect();
    let pools = upstream::share_connections(&effective, &running);
    let mut added = Vec::new();
    let backends: Vec<Arc<Backend>> = effective
        .servers
        .iter()
        .zip(pools)
        .map(
            |(server, connections)| match old.iter().find(|b| b.url == server.url) {
                Some(existing) => {
                    existing.reconfigure(server);
                    Arc::clone(existing)
                }
                None => {
                    let backend = Arc::new(Backend::new(server, connections));
                    added.push(Arc::clone(&backend));
                    backend
                }
            },
        )
        .collect();
    // New backends get a check before their first request, as at start-up.
    crate::health_checks::first_round(&added, &effective.health);
    let removed = old
        .iter()
        .filter(|b| !backends.iter().any(|n| Arc::ptr_eq(n, b)))
        .count();
    target.balancer.replace(backends, effective.algorithm);
    *target.health.write() = effective.health;
    target.switches.apply(&effective);
    target.tunnels.set_limits(TunnelLimits::of(&effective));
    log::info!(
        "config reloaded: {} added, {removed} removed; {}",
        added.len(),
        effective.summary()
    );
    target.running = effective;
}
