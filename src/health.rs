//! Active health checks on one dedicated thread, as in the seed article: a HEAD request to each
//! backend's URL every `healthCheckInterval`. 2xx and 3xx pass. Each check has a hard timeout so
//! a hanging backend delays the round by at most that timeout, never stalls it.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, select, tick};

use crate::backend::Backend;
use crate::config::HealthConfig;

/// Checks every backend once and sets its state directly: the first round at start-up, so a
/// backend that is already dead gets no traffic while `fall` failures accumulate.
pub fn first_round(backends: &[Backend], settings: &HealthConfig) {
    let agent = check_agent(settings);
    for backend in backends {
        let (passed, reason) = check(&agent, backend);
        backend.set_initial_health(passed, &reason);
    }
}

/// Starts the health thread; it stops when `shutdown` is closed or receives a message.
pub fn spawn(
    backends: Arc<[Backend]>,
    settings: HealthConfig,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let agent = check_agent(&settings);
            let ticker = tick(settings.interval);
            loop {
                select! {
                    recv(ticker) -> _ => {
                        for backend in backends.iter() {
                            let (passed, reason) = check(&agent, backend);
                            backend.record_check(passed, &reason, &settings);
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
