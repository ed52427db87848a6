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
//!
//! Beside it, the [`health`] thread sends a HEAD to every backend each `healthCheckInterval`.
//!
//! # Log levels (a contract)
//!
//! - `error`: tinylb itself is in trouble (a worker panicked, the listener failed).
//! - `warn`: a backend went down, or forwarding a request failed.
//! - `info`: start, health flips back up, refused requests, shutdown.
//! - `debug`: one line per request.

pub mod backend;
pub mod balancer;
pub mod config;
pub mod duration;
pub mod forward;
pub mod hangup;
pub mod headers;
pub mod health;
pub mod listener;
pub mod pool;
pub mod relay;
pub mod request_check;
pub mod socket_options;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::config::Config;
use crate::forward::Forwarder;
use crate::hangup::Hangups;
use crate::pool::WorkerPool;

/// A running load balancer: listener, intake, workers and health thread.
pub struct LoadBalancer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    intake: JoinHandle<()>,
    pool: WorkerPool,
    health: JoinHandle<()>,
    stop_health: Sender<()>,
    grace_period: Duration,
    forwarder: Arc<Forwarder>,
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
        let backends: Arc<[Backend]> = backend::backends_for(&config).into();
        health::first_round(&backends, &config.health);

        let forwarder = Arc::new(Forwarder {
            balancer: Balancer::new(Arc::clone(&backends), config.algorithm, config.workers),
            hangups: Hangups::new(local_addr.port()),
            forwarded_server_header: config.forwarded_server_header,
        });
        let (queue, requests) = crossbeam_channel::bounded(config.queue_size);
        let spawn_error = |e: std::io::Error| format!("cannot start a thread: {e}");
        let pool = WorkerPool::start(config.workers, requests, Arc::clone(&forwarder))
            .map_err(spawn_error)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let intake = listener::spawn_intake(
            listener,
            queue,
            Arc::clone(&forwarder),
            Arc::clone(&stopping),
        )?;
        let (stop_health, health_stopped) = crossbeam_channel::bounded(1);
        let health = health::spawn(Arc::clone(&backends), config.health, health_stopped)
            .map_err(spawn_error)?;

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
            grace_period: config.shutdown_grace_period,
            forwarder,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backends, for status checks in tests and logs.
    pub fn backends(&self) -> &[Backend] {
        self.forwarder.balancer.backends()
    }

    /// Stops accepting, lets queued and in-flight requests finish for up to the grace period
    /// (or until `abort` fires), and stops the health thread.
    pub fn shutdown(self, abort: &Receiver<()>) -> ShutdownReport {
        let served_before = self.pool.served();
        let busy = self.pool.busy();
        self.stopping.store(true, Ordering::Relaxed);
        // The intake notices within a quarter second; it drops the listening socket (no new
        // connections) and the channel's sender (the workers drain the queue, then exit).
        let _ = self.intake.join();
        log::info!(
            "shutting down: no longer accepting; {busy} requests in flight, waiting up to {}",
            duration::format_duration(self.grace_period)
        );
        let abandoned = self.pool.wait(Instant::now() + self.grace_period, abort);
        let _ = self.stop_health.send(());
        let _ = self.health.join();
        let drained = self.pool.served() - served_before;
        if abandoned > 0 {
            log::warn!("grace period over: {abandoned} requests abandoned, {drained} drained");
        } else {
            log::info!("drained {drained} requests; stopped cleanly");
        }
        ShutdownReport { drained, abandoned }
    }
}
