//! Active health checks on one dedicated thread: a HEAD request to each backend's URL every
//! `healthCheckInterval`. 2xx and 3xx pass. Each check has a hard timeout, so a hanging backend
//! delays the round by at most that timeout and never stalls it. Each round also lets every
//! origin drop idle connections too old to be used.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, after, select};
use parking_lot::RwLock;

use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::config::HealthConfig;
use crate::upstream::HealthCheck;

/// Checks every backend once and sets its state directly: the first round at start-up, so a
/// backend that is already dead gets no traffic while `fall` failures accumulate.
pub fn first_round(backends: &[Arc<Backend>], settings: &HealthConfig) {
    let checks = HealthCheck::new(settings.timeout);
    for backend in backends {
        backend.set_initial_health(checks.check(&backend.url));
    }
}

/// Starts the health thread; it stops when `shutdown` is closed or receives a message. It reads
/// the backend list and the settings afresh every round, so a live reload reaches it.
pub fn spawn(
    balancer: Arc<Balancer>,
    settings: Arc<RwLock<HealthConfig>>,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            // Rounds start every interval, however long a round took (fixed rate, like a
            // ticker), so a slow round does not push the next one back.
            let mut next_round = Instant::now() + settings.read().interval;
            loop {
                let wait = next_round.saturating_duration_since(Instant::now());
                select! {
                    recv(after(wait)) -> _ => {
                        let current = *settings.read();
                        next_round = (next_round + current.interval).max(Instant::now());
                        let checks = HealthCheck::new(current.timeout);
                        for backend in balancer.backends().iter() {
                            backend.record_check(checks.check(&backend.url), &current);
                            // The round visits every origin: a chance to close what its pool
                            // keeps in vain.
                            backend.connections.drop_stale();
                        }
                    }
                    recv(shutdown) -> _ => return,
                }
            }
        })
}
