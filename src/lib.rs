//! tinylb, a small threaded HTTP/1.1 load balancer.
//!
//! # The path of one request
//!
//! 1. [`listener`]: tiny_http accepts the connection and parses the request head on its own
//!    thread per connection; the intake thread moves the request into a bounded channel, or
//!    answers 503 with `Retry-After` when the channel is full.
//! 2. [`pool`]: one of a fixed number of workers takes it and calls [`forward`].
//! 3. [`forward`]: checks the head ([`request_check`]), asks the [`balancer`] for a backend
//!    (one mutex, four algorithms), sends the request there with ureq, streaming the body
//!    ([`backend`] holds one ureq Agent per backend), and retries elsewhere if the backend
//!    could not take it.
//! 4. [`relay`]: writes the backend's answer to the client with framing tinylb controls;
//!    [`hangup`] ends a connection when the answer must be cut short.
//! 5. An upgrade (a WebSocket handshake) takes a side road: [`upgrade`] does the handshake
//!    with the backend over a plain socket, and after its `101` a [`tunnel`] copies bytes both
//!    ways on two threads of its own, so the worker is free again. [`chunked`] decodes the
//!    chunked bodies tiny_http leaves undecoded on such connections.
//!
//! Beside it:
//!
//! - the [`health`] thread sends a HEAD to every backend each `healthCheckInterval`;
//! - [`stats`] counts what each backend served; [`status`] gathers one snapshot of everything,
//!   which the [`admin`] listener shows as a page ([`status_page`]), JSON and Prometheus
//!   [`metrics`], and where backends can be drained;
//! - [`reload`] watches config.json and applies changes without a restart;
//! - [`access_log`] writes one line per request when asked to;
//! - [`strict_json`] refuses a config.json that gives a key twice;
//! - [`socket_options`] sets what std cannot: client timeouts, the backlog, the fd limit;
//! - the [`pinger`] thread connects to the listener now and then, which tiny_http needs;
//! - [`resolve`] keeps each backend's looked-up address, so requests do not each call DNS.
//!
//! # Log levels (a contract)
//!
//! - `error`: tinylb itself is in trouble (a worker panicked, the listener failed).
//! - `warn`: a backend went down, or forwarding a request failed.
//! - `info`: start, health flips back up, refused requests, reloads, shutdown; and the access
//!   log (target `tinylb::access`) when it is on.
//! - `debug`: one line per request.

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod chunked;
pub mod config;
pub mod duration;
pub mod forward;
pub mod hangup;
pub mod headers;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pinger;
pub mod pool;
pub mod relay;
pub mod reload;
pub mod request_check;
pub mod resolve;
pub mod socket_options;
pub mod stats;
pub mod status;
pub mod status_page;
pub mod strict_json;
pub mod tunnel;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;

use crate::admin::Admin;
use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::config::{Config, HealthConfig};
use crate::forward::{Forwarder, Job};
use crate::hangup::Hangups;
use crate::pool::{PoolCounters, WorkerPool};

/// What the admin listener and the reload watcher share with the request path.
pub struct Shared {
    /// The request path: balancer, switches, retry counter.
    pub forwarder: Arc<Forwarder>,
    /// Health-check settings, read by the health thread every round.
    pub health: Arc<RwLock<HealthConfig>>,
    /// The config in force (after reloads).
    pub config: RwLock<Config>,
    /// The requests' channel, for its length.
    pub queue: Receiver<Job>,
    /// How busy the workers are.
    pub pool: Arc<PoolCounters>,
    /// When tinylb started, for the uptime.
    pub started: Instant,
}

/// A running load balancer: listener, intake, workers, health thread, and optionally the admin
/// listener and the config watcher.
pub struct LoadBalancer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    intake: JoinHandle<()>,
    pool: WorkerPool,
    health: JoinHandle<()>,
    stop_health: Sender<()>,
    admin: Option<Admin>,
    watcher: Option<(JoinHandle<()>, Sender<()>)>,
    grace_period: Duration,
    shared: Arc<Shared>,
}

/// What a graceful shutdown achieved, for the last log line and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Requests that were in flight or queued when the signal came and then finished.
    pub drained: usize,
    /// Requests still running when the grace period ended (0 on a clean shutdown).
    pub abandoned: usize,
}

impl LoadBalancer {
    /// Binds the listen address, runs the first health-check round, and starts every thread.
    /// The error is one line that names what failed (for example the address in use).
    pub fn start(config: Config) -> Result<LoadBalancer, String> {
        let listener = listener::Listener::bind(config.listen, config.client_timeout)?;
        let local_addr = listener.local_addr();
        let backends: Vec<Arc<Backend>> = config
            .servers
            .iter()
            .map(|server| Arc::new(Backend::new(server, &config)))
            .collect();
        health::first_round(&backends, &config.health);

        let balancer = Arc::new(Balancer::new(backends, config.algorithm, config.workers));
        let forwarder = Arc::new(Forwarder::new(
            Arc::clone(&balancer),
            Hangups::new(local_addr.port()),
            &config,
        ));
        let (queue, requests) = crossbeam_channel::bounded(config.queue_size);
        let spawn_error = |e: std::io::Error| format!("cannot start a thread: {e}");
        let pool = WorkerPool::start(config.workers, requests.clone(), Arc::clone(&forwarder))
            .map_err(spawn_error)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let intake = listener::spawn_intake(
            listener,
            queue,
            Arc::clone(&forwarder),
            Arc::clone(&stopping),
        )?;
        let health_settings = Arc::new(RwLock::new(config.health));
        let (stop_health, health_stopped) = crossbeam_channel::bounded(1);
        let health = health::spawn(balancer, Arc::clone(&health_settings), health_stopped)
            .map_err(spawn_error)?;
        let shared = Arc::new(Shared {
            forwarder,
            health: health_settings,
            config: RwLock::new(config.clone()),
            queue: requests,
            pool: Arc::clone(pool.counters()),
            started: Instant::now(),
        });
        let admin = match config.admin_address {
            Some(addr) => Some(Admin::start(addr, Arc::clone(&shared))?),
            None => None,
        };

        log::info!(
            "tinylb {} listening on {local_addr}: {}",
            env!("CARGO_PKG_VERSION"),
            config.summary()
        );
        Ok(LoadBalancer {
            local_addr,
            stopping,
            intake,
            pool,
            health,
            stop_health,
            admin,
            watcher: None,
            grace_period: config.shutdown_grace_period,
            shared,
        })
    }

    /// Re-reads `path` whenever it changes and applies it live (see [`reload`]). `loaded` is
    /// the text the running config was parsed from: any other content is a change.
    pub fn watch_config(&mut self, path: PathBuf, loaded: String) -> Result<(), String> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = reload::spawn(path, loaded.into_bytes(), Arc::clone(&self.shared), stopped)
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        self.watcher = Some((thread, stop));
        Ok(())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The backends now, in config order.
    pub fn backends(&self) -> Arc<[Arc<Backend>]> {
        self.shared.forwarder.balancer.backends()
    }

    /// Stops accepting, lets queued and in-flight requests finish for up to the grace period
    /// (or until `abort` fires), and stops the other threads.
    pub fn shutdown(self, abort: &Receiver<()>) -> ShutdownReport {
        let counters = Arc::clone(self.pool.counters());
        let served_before = counters.served();
        let busy = counters.busy();
        self.stopping.store(true, Ordering::Relaxed);
        // The intake notices within a quarter second; it drops the listening socket (no new
        // connections) and the channel's sender (the workers drain the queue, then exit).
        let _ = self.intake.join();
        log::info!(
            "shutting down: no longer accepting; {busy} requests in flight, waiting up to {}",
            duration::format_duration(self.grace_period)
        );
        let deadline = Instant::now() + self.grace_period;
        let abandoned = self.pool.wait(deadline, abort);
        let tunnels = &self.shared.forwarder.tunnels;
        if tunnels.open() > 0 {
            log::info!("waiting for {} open tunnels", tunnels.open());
            let cut = tunnels.close_all(if abandoned > 0 {
                Instant::now()
            } else {
                deadline
            });
            if cut > 0 {
                log::warn!("grace period over: closed {cut} tunnels");
            }
        }
        let _ = self.stop_health.send(());
        let _ = self.health.join();
        if let Some((thread, stop)) = self.watcher {
            let _ = stop.send(());
            let _ = thread.join();
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        let drained = counters.served() - served_before;
        if abandoned > 0 {
            log::warn!("grace period over: {abandoned} requests abandoned, {drained} drained");
        } else {
            log::info!("drained {drained} requests; stopped cleanly");
        }
        ShutdownReport { drained, abandoned }
    }
}
