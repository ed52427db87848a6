//! One snapshot of what tinylb is doing, gathered from the live counters, and shown three ways
//! by the admin listener: the HTML status page, `/status.json`, and Prometheus `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::config::PerClient;
use crate::dispatch::{ClientCounts, Dispatch};
use crate::generation::{Cause, Generation, Restarts};
use crate::pool::PoolCounters;
use crate::stages::{StageHistograms, StageSnapshot};
use crate::stats::StatsSnapshot;
use crate::stuck::WatchdogCounts;
use crate::tunnel::Tunnels;

/// The live counters a status is read from: a narrow handle for the admin listener.
pub struct Sources {
    /// The backends and the algorithm.
    pub balancer: Arc<Balancer>,
    /// The open tunnels.
    pub tunnels: Arc<Tunnels>,
    /// The workers and the queue.
    pub pool: Arc<PoolCounters>,
    /// Requests sent again after a failed attempt.
    pub retries: Arc<AtomicU64>,
    /// Where requests' time went.
    pub stages: Arc<StageHistograms>,
    /// Settings fixed while tinylb runs, shown as they are.
    pub listen: SocketAddr,
    /// The size of the worker pool.
    pub workers: usize,
    /// The queue's capacity.
    pub queue_capacity: usize,
    /// This process's generation in the process model.
    pub generation: Generation,
    /// Stuck connections and head timeouts, from the watchdog.
    pub watchdog: Arc<WatchdogCounts>,
    /// `maxStuckConnections`.
    pub max_stuck: usize,
    /// What happened to requests not forwarded, and to slow clients.
    pub clients: Arc<ClientCounts>,
    /// Where requests wait for a worker.
    pub dispatch: Arc<Dispatch>,
    /// The limits on one client address.
    pub per_client: PerClient,
}

/// The whole status, as `/status.json` returns it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// tinylb's version.
    pub version: &'static str,
    /// The algorithm in force.
    pub algorithm: &'static str,
    /// Seconds since this server process started.
    pub uptime_seconds: u64,
    /// The process model: generation, restarts, stuck connections.
    pub process: ProcessStatus,
    /// The proxy's listen address.
    pub listen: String,
    /// Size of the worker pool.
    pub workers: usize,
    /// Workers forwarding a request right now.
    pub busy_workers: usize,
    /// Requests waiting for a worker (in the queue, or for their client's turn).
    pub queue_depth: usize,
    /// Most requests that may wait before new ones get 503.
    pub queue_capacity: usize,
    /// Requests sent again after a failed attempt.
    pub retries: u64,
    /// Client connections ended because their request head took longer than
    /// `clientHeaderTimeout`.
    pub head_timeouts: u64,
    /// What one client may take, and what was done to clients that asked for more.
    pub clients: ClientStatus,
    /// WebSocket (and other upgrade) tunnels.
    pub tunnels: TunnelStatus,
    /// Idle keep-alive connections to the backends, and their bound.
    pub backend_connections: PoolStatus,
    /// Where requests' time went since start, stage by stage (see [`crate::stages`]).
    pub stages: Vec<StageSnapshot>,
    /// The backends, in config order.
    pub backends: Vec<BackendStatus>,
}

/// Where this server process stands in the process model (see [`crate::master`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    /// Whether a master process runs this one and can replace it.
    pub supervised: bool,
    /// 1 for the first server process, counting up with each replacement.
    pub generation: u64,
    /// Why this one was started: start, crash, recycle or upgrade.
    pub started_by: Cause,
    /// The replacements before this one, by cause.
    pub restarts: Restarts,
    /// Client connections no thread serves any more, at the last count.
    pub stuck_connections: usize,
    /// How many of them make this process ask for a successor (0: never).
    pub max_stuck_connections: usize,
}

/// The limits on one client address (README, "One client cannot starve another") and the
/// counts of their use since start.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    /// `clientMaxWorkers`.
    pub max_workers_per_client: usize,
    /// `clientMaxTunnels`.
    pub max_tunnels_per_client: usize,
    /// `clientBodyMinRate`, bytes per second (0: off).
    pub body_min_rate: u64,
    /// `clientSendMinRate`, bytes per second (0: off).
    pub send_min_rate: u64,
    /// Requests that waited for their client's turn.
    pub waited_for_turn: u64,
    /// Requests answered 503 because the queue, or their client's share of it, was full.
    pub refused_queue_full: u64,
    /// Requests discarded: their connection pipelined more than tinylb takes ahead.
    pub pipelined_too_far: u64,
    /// Requests discarded: parsed from a connection tinylb had ended.
    pub from_ended_connections: u64,
    /// Requests dropped before reaching a backend: their client had left.
    pub client_gone: u64,
    /// Request bodies ended for arriving slower than `clientBodyMinRate`.
    pub slow_bodies: u64,
    /// Answers cut off because the client read slower than `clientSendMinRate`.
    pub slow_readers: u64,
}

impl ClientStatus {
    fn of(sources: &Sources) -> ClientStatus {
        let counts = &sources.clients;
        let read = ClientCounts::read;
        ClientStatus {
            max_workers_per_client: sources.per_client.max_workers,
            max_tunnels_per_client: sources.per_client.max_tunnels,
            body_min_rate: sources.per_client.body_min_rate,
            send_min_rate: sources.per_client.send_min_rate,
            waited_for_turn: read(&counts.waited_for_turn),
            refused_queue_full: read(&counts.refused_busy),
            pipelined_too_far: read(&counts.pipelined_too_far),
            from_ended_connections: read(&counts.from_ended_connections),
            client_gone: read(&counts.client_gone),
            slow_bodies: read(&counts.slow_bodies),
            slow_readers: read(&counts.slow_readers),
        }
    }
}

/// The tunnels' counters.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// Open now.
    pub open: usize,
    /// Most that may be open at once (`maxTunnels`).
    pub max: usize,
    /// Opened since start.
    pub opened: u64,
    /// Handshakes answered 503 because `max` were open.
    pub refused: u64,
}

/// The idle connections kept open to backends, in all and per origin: what
/// `backendKeepAlive` and `backendKeepAliveTotal` bound.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Idle now, over all origins (also those a reload just removed, until they close).
    pub idle: usize,
    /// The most that may be idle at once, over all origins: `backendKeepAliveTotal`.
    pub max_idle: usize,
    /// One row per origin, in the order the backends list them.
    pub origins: Vec<OriginStatus>,
}

/// One origin's pool, shared by its backends.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginStatus {
    /// `http://host:port`.
    pub origin: String,
    /// How many backends (path prefixes) share it.
    pub backends: usize,
    /// Idle connections now.
    pub idle: usize,
    /// The most it keeps idle: `backendKeepAlive` (within the total).
    pub max_idle: usize,
}

impl PoolStatus {
    fn of(backends: &[Arc<Backend>]) -> PoolStatus {
        let mut origins: Vec<OriginStatus> = Vec::new();
        let mut position: HashMap<&str, usize> = HashMap::new();
        for backend in backends {
            let connections = &backend.connections;
            let at = *position.entry(connections.origin()).or_insert_with(|| {
                origins.push(OriginStatus {
                    origin: connections.origin().to_string(),
                    backends: 0,
                    idle: connections.idle(),
                    max_idle: connections.max_idle(),
                });
                origins.len() - 1
            });
            origins[at].backends += 1;
        }
        let budget = backends.first().map(|b| b.connections.budget());
        PoolStatus {
            idle: budget.map_or(0, |b| b.idle()),
            max_idle: budget.map_or(0, |b| b.limit()),
            origins,
        }
    }
}

/// One backend's row.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// Position in the config, as used by `/backends/{index}/drain`.
    pub index: usize,
    /// The URL as configured.
    pub url: String,
    /// Configured weight.
    pub weight: u32,
    /// `up`, `down` or `draining`.
    pub state: &'static str,
    /// Last active health check, if any.
    pub last_check: Option<CheckStatus>,
    /// Seconds since the health state last flipped (or was set at start).
    pub since_flip_seconds: Option<f64>,
    /// Health flips since start.
    pub flips: u64,
    /// Requests being served right now.
    pub in_flight: usize,
    /// WebSocket (and other upgrade) tunnels open to it.
    pub tunnels: usize,
    /// Answers relayed since start.
    pub served: u64,
    /// Answers by status class.
    pub responses: Classes,
    /// Failed attempts by kind.
    pub errors: Errors,
    /// Median latency over the last 512 requests, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile latency over the last 512 requests, in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// The raw counters, for `/metrics`.
    #[serde(skip)]
    pub stats: StatsSnapshot,
}

/// The last health check's result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// Seconds since the check.
    pub ago_seconds: f64,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Answers by status class.
#[derive(Debug, Serialize)]
pub struct Classes {
    /// Informational answers (a 101 that opened a tunnel).
    #[serde(rename = "1xx")]
    pub c1: u64,
    /// Successes.
    #[serde(rename = "2xx")]
    pub c2: u64,
    /// Redirects and 304s.
    #[serde(rename = "3xx")]
    pub c3: u64,
    /// The client's errors, as the backend judged them.
    #[serde(rename = "4xx")]
    pub c4: u64,
    /// The backend's own errors.
    #[serde(rename = "5xx")]
    pub c5: u64,
}

/// Failed attempts by kind; `5xx` counts answers with a 5xx status from the backend.
#[derive(Debug, Serialize)]
pub struct Errors {
    /// Could not connect.
    pub connect: u64,
    /// No answer within `backendTimeout`.
    pub timeout: u64,
    /// Closed, reset, or not HTTP.
    pub broken: u64,
    /// Answers with a 5xx status.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl Status {
    /// Reads every counter once.
    pub fn collect(sources: &Sources) -> Status {
        let now = SystemTime::now();
        let ago = |at: SystemTime| {
            now.duration_since(at)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64()
        };
        let all = sources.balancer.backends();
        let backends = all
            .iter()
            .enumerate()
            .map(|(index, backend)| {
                let stats = backend.stats.snapshot();
                let health = backend.health_record();
                let state = if !backend.is_healthy() {
                    "down"
                } else if backend.is_draining() {
                    "draining"
                } else {
                    "up"
                };
                let [c1, c2, c3, c4, c5] = stats.by_class;
                BackendStatus {
                    index,
                    url: backend.url.original.clone(),
                    weight: backend.weight(),
                    state,
                    last_check: health.last_check.map(|(at, failure)| CheckStatus {
                        ago_seconds: ago(at),
                        passed: failure.is_none(),
                        reason: failure,
                    }),
                    since_flip_seconds: health.last_flip.map(ago),
                    flips: backend.flips(),
                    in_flight: backend.in_flight(),
                    tunnels: backend.tunnels(),
                    served: stats.served(),
                    responses: Classes { c1, c2, c3, c4, c5 },
                    errors: Errors {
                        connect: stats.connect_errors,
                        timeout: stats.timeout_errors,
                        broken: stats.broken_errors,
                        server_error: c5,
                    },
                    latency_p50_ms: stats.p50_seconds.map(|s| s * 1000.0),
                    latency_p99_ms: stats.p99_seconds.map(|s| s * 1000.0),
                    stats,
                }
            })
            .collect();
        let tunnels = &sources.tunnels;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            algorithm: sources.balancer.algorithm().name(),
            uptime_seconds: sources.generation.started.elapsed().as_secs(),
            process: ProcessStatus {
                supervised: sources.generation.supervised,
                generation: sources.generation.number,
                started_by: sources.generation.cause,
                restarts: sources.generation.restarts,
                stuck_connections: sources.watchdog.stuck(),
                max_stuck_connections: sources.max_stuck,
            },
            listen: sources.listen.to_string(),
            workers: sources.workers,
            busy_workers: sources.pool.busy(),
            queue_depth: sources.dispatch.queued(),
            queue_capacity: sources.queue_capacity,
            retries: sources.retries.load(Ordering::Relaxed),
            head_timeouts: sources.watchdog.head_timeouts(),
            clients: ClientStatus::of(sources),
            tunnels: TunnelStatus {
                open: tunnels.open(),
                max: tunnels.limits().max_open,
                opened: tunnels.opened_total(),
                refused: tunnels.refused_total(),
            },
            backend_connections: PoolStatus::of(&all),
            stages: sources.stages.snapshot(),
            backends,
        }
    }
}
