//! tinylb, a small threaded HTTP/1.1 load balancer, and a teaching example of how a classic
//! threaded server is built: a listener, a bounded channel, a fixed pool of workers, blocking
//! I/O. `docs/tour.md` walks one request through the code; this is the map.
//!
//! # The path of one request
//!
//! 1. [`client`]: tiny_http accepts the connection and parses the head on a thread per
//!    connection; [`client::Incoming`] checks it and hands it over as a [`client::Exchange`].
//!    Everything tiny_http leaves undone is made up for in that folder.
//! 2. [`intake`]: one thread moves each exchange into the bounded channel, or answers 503 with
//!    `Retry-After` when it is full.
//! 3. [`pool`]: one of a fixed number of workers takes it and calls [`forward`].
//! 4. [`forward`]: the story of the request. It asks the [`balancer`] for a backend (one mutex,
//!    four algorithms), sends the request there through [`upstream`] (everything ureq), relays
//!    the answer back through the exchange, and on a failure lets [`forward::retry`] decide
//!    whether another backend gets it. [`failure`] says what each failure means for the client.
//! 5. An upgrade (a WebSocket handshake) takes a side road: after the backend's `101`, a
//!    [`tunnel`] copies bytes both ways on two threads of its own.
//!
//! Beside it:
//!
//! - the [`health_checks`] thread checks every backend each `healthCheckInterval`, [`health`]
//!   turns the results into up and down; [`backend`] keeps
//!   each one's state and counters, [`stats`] what it served;
//! - [`stages`] times each request's stages (client, queue, connect, response, relay), stamped
//!   by the threads above as the request passes, for the access log and the metrics;
//! - [`status`] gathers one snapshot of everything, which the [`admin`] listener shows as a page
//!   ([`status_page`]), JSON and Prometheus [`metrics`], and where backends can be drained;
//! - [`reload`] watches config.json and applies changes live, through [`switches`] and the
//!   balancer;
//! - [`config`] reads config.json ([`strict_json`] refuses a key given twice, [`duration`] reads
//!   `"5s"`); [`access_log`] writes one line per request when asked to; [`message`] holds the
//!   HTTP/1.1 rules both sides share, [`chunked`] the strict chunked decoder.
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
pub mod client;
pub mod config;
pub mod dispatch;
pub mod duration;
pub mod error;
pub mod failure;
pub mod forward;
pub mod generation;
pub mod health;
pub mod health_checks;
pub mod intake;
pub mod master;
pub mod message;
pub mod metrics;
pub mod pace;
pub mod pool;
pub mod reload;
pub mod stages;
pub mod stats;
pub mod status;
pub mod status_page;
pub mod strict_json;
pub mod stuck;
pub mod switches;
pub mod systemd;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;

use crate::admin::Admin;
use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::client::admin_server::bind_admin_socket;
use crate::client::{Incoming, Listener};
use crate::config::Config;
use crate::dispatch::turns::Limits;
use crate::dispatch::{ClientCounts, Dispatch};
use crate::error::StartError;
use crate::forward::Forwarder;
use crate::intake::StopFlags;
pub use crate::master::handoff::Inherited;
use crate::pool::WorkerPool;
use crate::reload::Reloadable;
use crate::stages::StageHistograms;
use crate::status::Sources;
use crate::stuck::{WatchdogCounts, Watched};
use crate::switches::Switches;
use crate::tunnel::{TunnelLimits, Tunnels};

/// Requests one connection may pipeline ahead of the one being answered; a client that sends
/// more is cut off (see [`dispatch::turns`]). Browsers and HTTP libraries pipeline a handful,
/// if at all.
pub const MAX_PIPELINED: usize = 64;

/// A running load balancer: listener, intake, workers, health thread, and optionally the admin
/// listener and the config watcher.
pub struct LoadBalancer {
    local_addr: SocketAddr,
    stop: Arc<StopFlags>,
    intake: JoinHandle<()>,
    pool: WorkerPool,
    health: JoinHandle<()>,
    stop_health: Sender<()>,
    watchdog: (JoinHandle<()>, Sender<()>),
    admin: Option<Admin>,
    watcher: Option<(JoinHandle<()>, Sender<()>)>,
    grace_period: Duration,
    balancer: Arc<Balancer>,
    tunnels: Arc<Tunnels>,
    /// What the config watcher will change, until it starts.
    reloadable: Option<Reloadable>,
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
    /// Binds the listen address, runs the first health-check round, and starts every thread:
    /// a server process on its own. The error is one line that names what failed (for example
    /// the address in use).
    pub fn start(config: Config) -> Result<LoadBalancer, StartError> {
        let listener = Listener::bind(config.listen, config.client_timeout)?;
        LoadBalancer::start_on(config, listener, Inherited::alone())
    }

    /// Starts on a listening socket bound elsewhere (by the master, or systemd), with what
    /// the process that started this one handed down.
    pub fn start_on(
        config: Config,
        listener: Listener,
        inherited: Inherited,
    ) -> Result<LoadBalancer, StartError> {
        let Inherited {
            generation,
            master,
            admin_socket,
            draining,
        } = inherited;
        // Bound before anything starts, so that an address in use fails the start cleanly.
        let admin_socket = match (admin_socket, config.admin_address) {
            (Some(socket), _) => Some(socket),
            (None, Some(address)) => Some(bind_admin_socket(address)?),
            (None, None) => None,
        };
        let local_addr = listener.local_addr();
        let backends = Backend::all(&config);
        for backend in backends
            .iter()
            .filter(|b| draining.contains(&b.url.original))
        {
            backend.set_draining(true);
        }
        health_checks::first_round(&backends, &config.health);

        let balancer = Arc::new(Balancer::new(backends, config.algorithm, config.workers));
        let switches = Arc::new(Switches::new(&config));
        let tunnels = Tunnels::new(TunnelLimits::of(&config));
        let retries = Arc::new(AtomicU64::new(0));
        let stages = Arc::new(StageHistograms::default());
        let client_counts = Arc::new(ClientCounts::default());
        let forwarder = Arc::new(Forwarder::new(
            Arc::clone(&balancer),
            Arc::clone(&switches),
            Arc::clone(&tunnels),
            Arc::clone(&retries),
            Arc::clone(&stages),
            Arc::clone(&client_counts),
        ));
        let incoming = Incoming::start(listener)?;
        let (queue, requests) = crossbeam_channel::bounded(config.queue_size);
        let (refuse, refusals) = crossbeam_channel::unbounded();
        let limits = Limits {
            per_client: config.per_client.max_workers,
            queue: config.queue_size,
            pipeline: MAX_PIPELINED,
        };
        let dispatch = Arc::new(Dispatch::new(
            limits,
            queue,
            refuse,
            incoming.connections(),
            Arc::clone(&client_counts),
        ));
        let pool = WorkerPool::start(config.workers, requests, forwarder, Arc::clone(&dispatch))?;
        dispatch::refusals::spawn(
            Arc::clone(&dispatch),
            refusals,
            Arc::clone(&switches),
            Arc::clone(&stages),
        )?;
        let stop = Arc::new(StopFlags::default());
        let watchdog_counts = Arc::new(WatchdogCounts::default());
        let (stop_watchdog, watchdog_stopped) = crossbeam_channel::bounded(1);
        let watched = Watched {
            sockets: incoming.sockets(),
            client_timeout: config.client_timeout,
            header_timeout: config.client_header_timeout,
            max_stuck: config.max_stuck_connections,
            master: master.clone(),
        };
        let watchdog = stuck::spawn(watched, Arc::clone(&watchdog_counts), watchdog_stopped)?;
        let intake = intake::spawn(
            incoming,
            Arc::clone(&dispatch),
            Arc::clone(&stop),
            config.shutdown_grace_period,
        )?;
        let health_settings = Arc::new(RwLock::new(config.health));
        let (stop_health, health_stopped) = crossbeam_channel::bounded(1);
        let health = health_checks::spawn(
            Arc::clone(&balancer),
            Arc::clone(&health_settings),
            health_stopped,
        )?;
        let admin = match admin_socket {
            Some(socket) => {
                let sources = Arc::new(Sources {
                    balancer: Arc::clone(&balancer),
                    tunnels: Arc::clone(&tunnels),
                    pool: Arc::clone(pool.counters()),
                    retries,
                    stages,
                    listen: config.listen,
                    workers: config.workers,
                    queue_capacity: config.queue_size,
                    generation,
                    watchdog: watchdog_counts,
                    max_stuck: config.max_stuck_connections,
                    clients: client_counts,
                    per_client: config.per_client,
                    dispatch,
                });
                Some(Admin::start(socket, sources, master)?)
            }
            None => None,
        };

        log::info!(
            "tinylb {} listening on {local_addr}: {}",
            env!("CARGO_PKG_VERSION"),
            config.summary()
        );
        Ok(LoadBalancer {
            local_addr,
            stop,
            intake,
            pool,
            health,
            stop_health,
            watchdog: (watchdog, stop_watchdog),
            admin,
            watcher: None,
            grace_period: config.shutdown_grace_period,
            balancer: Arc::clone(&balancer),
            tunnels: Arc::clone(&tunnels),
            reloadable: Some(Reloadable {
                running: config,
                balancer,
                switches,
                tunnels,
                health: health_settings,
            }),
        })
    }

    /// Re-reads `path` whenever it changes and applies it live (see [`reload`]). `loaded` is
    /// the text the running config was parsed from: any other content is a change.
    /// Only the first call starts a watcher.
    pub fn watch_config(&mut self, path: PathBuf, loaded: String) -> Result<(), StartError> {
        let Some(target) = self.reloadable.take() else {
            return Ok(());
        };
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = reload::spawn(path, loaded.into_bytes(), target, stopped)?;
        self.watcher = Some((thread, stop));
        Ok(())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::addr)
    }

    /// The backends now, in config order.
    pub fn backends(&self) -> Arc<[Arc<Backend>]> {
        self.balancer.backends()
    }

    /// Stops accepting, lets queued and in-flight requests finish for up to the grace period
    /// (or until `abort` fires), and stops the other threads.
    pub fn shutdown(mut self, abort: &Receiver<()>) -> ShutdownReport {
        let counters = Arc::clone(self.pool.counters());
        let served_before = counters.served();
        let busy = counters.busy();
        self.stop.stopping.store(true, Ordering::Relaxed);
        if let Some(admin) = self.admin.as_mut() {
            admin.stop_accepting();
        }
        log::info!(
            "shutting down: no longer accepting; {busy} requests in flight, waiting up to {}",
            duration::format_duration(self.grace_period)
        );
        let mut deadline = Instant::now() + self.grace_period;
        // The intake notices within a quarter second. It stops accepting, takes the requests
        // still arriving on open connections (answering each with `Connection: close`), then
        // drops the channel's sender: the workers finish the queue, then exit. A second signal
        // cuts all of it short.
        while !self.intake.is_finished() {
            match abort.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => {
                    self.stop.hurry.store(true, Ordering::Relaxed);
                    deadline = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let _ = self.intake.join();
        let abandoned = self.pool.wait(deadline, abort);
        let tunnels = &self.tunnels;
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
        let _ = self.watchdog.1.send(());
        let _ = self.watchdog.0.join();
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
