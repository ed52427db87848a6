//! config.json: the seed article's three keys (`port`, `healthCheckInterval`, `servers`) plus
//! optional tuning keys, turned into a checked [`Config`] or a [`ConfigError`] that names the key
//! and the value, so a typo stops tinylb at start instead of surprising it later.

mod defaults;
mod keys;
mod servers;

pub use defaults::*;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::duration::format_duration;
use keys::Keys;
use servers::{parse_address, parse_listen, parse_servers};

/// A checked configuration: every value here has passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens (`":8080"` means every IPv4 interface, as in Go).
    pub listen: SocketAddr,
    /// The backends, in the order the file lists them.
    pub servers: Vec<ServerConfig>,
    /// How a backend is chosen for each request.
    pub algorithm: Algorithm,
    /// Active health checking: when, how long to wait, and how many results flip a backend.
    pub health: HealthConfig,
    /// Limit for opening a TCP connection to a backend; past it the backend counts as down.
    pub connect_timeout: Duration,
    /// Limit for a backend's response head and for each gap between reads of its body (504).
    pub backend_timeout: Duration,
    /// Fixed number of threads that forward requests.
    pub workers: usize,
    /// Requests that may wait for a free worker before new ones get a fast 503.
    pub queue_size: usize,
    /// Idle connections kept open to each backend origin (`http://host:port`, shared by the
    /// backends that differ only by path) for the next request (nginx's upstream
    /// `keepalive`); 0 opens a new connection per request. Defaults to `workers`: no more can
    /// be in use at once, and fewer were slower in the benchmark sweep (docs/benchmarks.md).
    pub backend_keep_alive: usize,
    /// Idle backend connections kept in all origins together, first come first served (see
    /// [`crate::upstream::IdleBudget`]), so that memory does not grow with the number of
    /// backends; 0 opens a new connection per request. Defaults to
    /// [`DEFAULT_KEEP_ALIVE_TOTAL_PER_WORKER`] × `workers`.
    pub backend_keep_alive_total: usize,
    /// Adds the seed article's `X-Forwarded-Server` header; off by default because it tells
    /// clients about the inside network.
    pub forwarded_server_header: bool,
    /// How long a SIGINT/SIGTERM waits for requests in flight before exiting anyway.
    pub shutdown_grace_period: Duration,
    /// How long the master waits for a new server process to serve before it kills it (and,
    /// during a swap, keeps the old one).
    pub ready_timeout: Duration,
    /// A client connection that sends nothing (or reads nothing) for this long is closed: an
    /// idle keep-alive connection, a stalled request head or body, a client not reading.
    pub client_timeout: Duration,
    /// The most a whole request head may take, counted from the connection's start or the end
    /// of its previous answer; past it the connection is closed (`408` if part of a head came).
    pub client_header_timeout: Duration,
    /// Where the admin listener (status page, metrics, drain) listens; off when `None`.
    pub admin_address: Option<SocketAddr>,
    /// One log line per request in combined log format.
    pub access_log: bool,
    /// Whether each request's stages are timed, for the access log and the metrics.
    pub stage_timers: bool,
    /// Most WebSocket (and other upgrade) tunnels open at once; beyond it the handshake gets
    /// 503. 0 means upgrades are never carried out: the offer is dropped and the request served
    /// as plain HTTP/1.1.
    pub max_tunnels: usize,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Stuck client connections (see [`crate::stuck`]) past which the server process asks the
    /// master for a successor; 0 never asks.
    pub max_stuck_connections: usize,
    /// What one client address may take, so that it cannot starve the others.
    pub per_client: PerClient,
    /// Values accepted but changed, one line each, for the log and `--check`: the config
    /// works, but not quite as written.
    pub warnings: Vec<String>,
}

/// The limits on one client address and on slow clients (README, "One client cannot starve
/// another").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerClient {
    /// `clientMaxWorkers`: workers one client address may hold at once (queued for one
    /// included); its further requests wait for its turn. Half the workers by default.
    pub max_workers: usize,
    /// `clientMaxTunnels`: tunnels one client address may hold open. Half of `maxTunnels` by
    /// default.
    pub max_tunnels: usize,
    /// `clientBodyMinRate`: bytes per second a request body must average after
    /// `clientTimeout`; 0 turns the check off.
    pub body_min_rate: u64,
    /// `clientSendMinRate`: bytes per second a client must read its answer at after
    /// `clientTimeout`; 0 turns the check off.
    pub send_min_rate: u64,
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where requests go.
    pub url: BackendUrl,
    /// Share of traffic for the weighted algorithms; at least 1.
    pub weight: u32,
}

/// A backend base URL split once at start, so the hot path only concatenates strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// The URL as written in config.json, for logs and the `X-Forwarded-Server` header.
    pub original: String,
    /// `http://host:port`, the part ureq connects to.
    pub origin: String,
    /// Path prefix without a trailing slash (`""` or `"/api"`), put before every request path.
    pub prefix: String,
}

/// Active health-check settings, with HAProxy's rise/fall defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between the start of two check rounds.
    pub interval: Duration,
    /// Limit for one HEAD check, so a hanging backend cannot stall the round.
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down backend back.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend out.
    pub fall: u32,
}

/// The algorithm named by the config key `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Strict rotation over the available backends; weights are ignored.
    RoundRobin,
    /// nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// Fewest requests in flight relative to weight.
    LeastConnections,
    /// A client IP keeps its backend (rendezvous hashing).
    IpHash,
}

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::IpHash,
    ];

    /// The name used in config.json.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::IpHash => "ip-hash",
        }
    }

    /// The algorithm with this config name, if any.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A config that cannot be used, with a message that names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(
    /// The whole message, key first, ready for the log or `--check`.
    pub String,
);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The one shape of every message about a value: `key: what is wrong`.
fn error(key: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {message}"))
}

impl Config {
    /// Reads and checks a config file; the error says which file when it cannot be read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_source(path).map(|(config, _)| config)
    }

    /// Like [`Config::load`], also returning the text that was parsed: the reload watcher
    /// starts from exactly these bytes, so an edit made while tinylb starts is not missed.
    pub fn load_with_source(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let config =
            Config::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Ok((config, text))
    }

    /// Parses the text of a config.json; the single place where config values are checked.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let root: Value = crate::strict_json::parse(text).map_err(|e| {
            // serde_json ends its message with the position; say it once, up front.
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            ConfigError(format!(
                "invalid JSON at line {}, column {}: {message}",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(object) = root else {
            return Err(ConfigError(
                "the top level must be a JSON object like {\"port\": \":8080\", \"servers\": [...]}"
                    .into(),
            ));
        };
        let keys = Keys::new(&object)?;
        let interval = keys.duration("healthCheckInterval", "2s")?;
        if interval.is_zero() {
            return Err(error("healthCheckInterval", "must be more than 0"));
        }
        let check_timeout = keys.duration("healthCheckTimeout", "1s")?;
        if check_timeout.is_zero() {
            return Err(error("healthCheckTimeout", "must be more than 0"));
        }
        let mut warnings = Vec::new();
        // The default (1 s) is cut to a shorter interval silently; a value written out is not.
        if check_timeout > interval && keys.0.contains_key("healthCheckTimeout") {
            warnings.push(format!(
                "healthCheckTimeout: {} is longer than healthCheckInterval {}; checks wait at most {}",
                format_duration(check_timeout),
                format_duration(interval),
                format_duration(interval)
            ));
        }
        let workers = keys.count("workers", DEFAULT_WORKERS as u64, 1..=1024)?;
        let max_tunnels = keys.count("maxTunnels", DEFAULT_MAX_TUNNELS, 0..=100_000)?;
        let config = Config {
            listen: parse_listen(keys.required("port")?)?,
            servers: parse_servers(keys.required("servers")?)?,
            algorithm: keys.algorithm()?,
            health: HealthConfig {
                interval,
                timeout: check_timeout.min(interval),
                rise: keys.count("healthCheckRise", 2, 1..=100)? as u32,
                fall: keys.count("healthCheckFall", 3, 1..=100)? as u32,
            },
            connect_timeout: keys.positive_duration("connectTimeout", "2s")?,
            backend_timeout: keys.positive_duration("backendTimeout", "30s")?,
            workers: workers as usize,
            queue_size: keys.count("queueSize", DEFAULT_QUEUE_SIZE as u64, 1..=1_000_000)? as usize,
            backend_keep_alive: keys.count("backendKeepAlive", workers, 0..=1024)? as usize,
            backend_keep_alive_total: keys.count(
                "backendKeepAliveTotal",
                DEFAULT_KEEP_ALIVE_TOTAL_PER_WORKER as u64 * workers,
                0..=100_000,
            )? as usize,
            forwarded_server_header: keys.boolean("forwardedServerHeader", false)?,
            shutdown_grace_period: keys.duration("shutdownGracePeriod", "10s")?,
            ready_timeout: keys.positive_duration("readyTimeout", DEFAULT_READY_TIMEOUT)?,
            client_timeout: keys.positive_duration("clientTimeout", DEFAULT_CLIENT_TIMEOUT)?,
            client_header_timeout: keys
                .positive_duration("clientHeaderTimeout", DEFAULT_CLIENT_HEADER_TIMEOUT)?,
            admin_address: match keys.0.get("adminAddress") {
                None | Some(Value::Null) => None,
                Some(value) => Some(parse_address("adminAddress", value)?),
            },
            access_log: keys.boolean("accessLog", false)?,
            stage_timers: keys.boolean("stageTimers", true)?,
            max_tunnels: max_tunnels as usize,
            tunnel_idle_timeout: keys
                .positive_duration("tunnelIdleTimeout", DEFAULT_TUNNEL_IDLE_TIMEOUT)?,
            max_stuck_connections: keys.count(
                "maxStuckConnections",
                DEFAULT_MAX_STUCK_CONNECTIONS,
                0..=1_000_000,
            )? as usize,
            per_client: PerClient {
                max_workers: keys.count("clientMaxWorkers", (workers / 2).max(1), 1..=workers)?
                    as usize,
                max_tunnels: keys.count(
                    "clientMaxTunnels",
                    max_tunnels.div_ceil(2),
                    0..=max_tunnels,
                )? as usize,
                body_min_rate: keys.count(
                    "clientBodyMinRate",
                    DEFAULT_CLIENT_MIN_RATE,
                    0..=1 << 40,
                )?,
                send_min_rate: keys.count(
                    "clientSendMinRate",
                    DEFAULT_CLIENT_MIN_RATE,
                    0..=1 << 40,
                )?,
            },
            warnings,
        };
        Ok(config)
    }

    /// One line for `--check` and the start-up log.
    pub fn summary(&self) -> String {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|s| match s.weight {
                1 => s.url.original.clone(),
                w => format!("{} (weight {w})", s.url.original),
            })
            .collect();
        format!(
            "listen {}, algorithm {}, {} servers [{}], {} workers, queue {}, health check every {}",
            self.listen,
            self.algorithm.name(),
            self.servers.len(),
            servers.join(", "),
            self.workers,
            self.queue_size,
            format_duration(self.health.interval)
        )
    }
}

#[cfg(test)]
mod tests;
