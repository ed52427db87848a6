//! Active health checks on one dedicated thread, as in the seed article: a HEAD request to each
//! backend's URL every `healthCheckInterval`. 2xx and 3xx pass. Each check has a hard timeout so
//! a hanging backend delays the round by at most that timeout, never stalls it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, after, select};
use parking_lot::RwLock;

use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::config::HealthConfig;

/// Checks every backend once and sets its state directly: the first round at start-up, so a
/// backend that is already dead gets no traffic while `fall` failures accumulate.
pub fn first_round(backends: &[std::sync::Arc<Backend>], settings: &HealthConfig) {
    let agent = check_agent(settings);
    for backend in backends {
        let (passed, reason) = check(&agent, backend);
        backend.set_initial_health(passed, &reason);
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
                        let agent = check_agent(&current);
                        for backend in balancer.backends().iter() {
                            let (passed, reason) = check(&agent, backend);
                            backend.record_check(passed, &reason, &current);
                        }
                    }
                    recv(shutdown) -> _ => return,
                }
            }
        })
}

/// One HEAD check: whether it passed, and why not.
fn check(agent: &ureq::Agent, backend: &Backend) -> (bool, String) {
    match agent.head(&backend.url.original).call() {
        Ok(response) if response.status().is_success() || response.status().is_redirection() => {
            (true, String::new())
        }
        Ok(response) => (false, format!("HEAD answered {}", response.status())),
        Err(error) => (false, crate::forward::describe_error(&error)),
    }
}

/// An Agent for checks: a fresh connection each time (so the check really tests connecting)
/// and a global timeout, which bounds connect, send and receive together.
fn check_agent(settings: &HealthConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent("tinylb-health-check")
        .max_idle_connections(0)
        .timeout_global(Some(settings.timeout))
        .build()
        .new_agent()
}
