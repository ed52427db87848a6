//! One request, start to finish, on a worker thread: refuse it if its head failed the check,
//! ask the balancer for a backend, send the request there with its body streamed, relay the
//! answer, and go to another backend when the retry rules allow it. An upgrade (a WebSocket
//! handshake) takes the side road in `tunnelling.rs`.
//!
//! This file tells the story only. The client's side of each step is in [`crate::client`], the
//! backend's in [`crate::upstream`], the retry rules in [`retry`], and what each failure means
//! for the client in [`crate::failure`].

pub mod retry;
mod tunnelling;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::backend::{Backend, InFlight};
use crate::balancer::Balancer;
use crate::client::{Answer, BodyFailure, Buffers, CutShort, Delivered, Exchange, Head};
use crate::dispatch::ClientCounts;
use crate::failure::Failure;
use crate::message::BodyFraming;
use crate::stages::{self, StageHistograms};
use crate::switches::Switches;
use crate::tunnel::Tunnels;
use crate::upstream::{ClientHead, Outgoing, Response};
use retry::{Attempt, Next};

/// Everything a worker needs to forward requests, shared by all workers.
pub struct Forwarder {
    balancer: Arc<Balancer>,
    switches: Arc<Switches>,
    tunnels: Arc<Tunnels>,
    /// Requests sent again after a failed attempt (to the same backend or another), for the
    /// status page and metrics.
    retries: Arc<AtomicU64>,
    /// Where requests' time went, for the metrics.
    stages: Arc<StageHistograms>,
    /// Slow bodies and slow readers, for the status page and metrics.
    counts: Arc<ClientCounts>,
}

/// What the client finally got, and from which backend: for the access log. When a backend
/// answered, also when its connection was ready and when its response head came, for the
/// stage timers.
struct Outcome {
    delivered: Delivered,
    backend: Option<Arc<Backend>>,
    connected: Option<Instant>,
    response_head: Option<Instant>,
}

/// How an exchange ended when no backend answered it.
struct Failed {
    /// The last attempt's failure; `None` when no backend was available at all.
    failure: Option<Failure>,
    /// The backend of the last attempt, for the access log.
    backend: Option<Arc<Backend>>,
    /// Whether the client connection must end after the answer.
    must_close: bool,
}

impl Forwarder {
    /// A forwarder over these backends, settings and tunnels.
    pub fn new(
        balancer: Arc<Balancer>,
        switches: Arc<Switches>,
        tunnels: Arc<Tunnels>,
        retries: Arc<AtomicU64>,
        stages: Arc<StageHistograms>,
        counts: Arc<ClientCounts>,
    ) -> Forwarder {
        Forwarder {
            balancer,
            switches,
            tunnels,
            retries,
            stages,
            counts,
        }
    }

    /// Answers one client request; never panics on bad input, always answers or hangs up.
    pub fn handle(&self, exchange: Exchange, buffers: &mut Buffers) {
        let started = Instant::now();
        let mut stamps = exchange.stamps();
        stamps.picked_up = stages::enabled().then_some(started);
        let access = self.switches.access_log().then(|| exchange.access_line());
        let request_line = log::log_enabled!(log::Level::Debug)
            .then(|| format!("{} {}", exchange.method(), exchange.target()));
        let outcome = self.forward(exchange, buffers, started);
        stamps.connected = outcome.connected;
        stamps.response_head = outcome.response_head;
        stamps.done = stages::stamp();
        let durations = stamps.durations();
        self.stages.record(&durations);
        let backend = outcome.backend.as_ref().map(|b| b.url.original.as_str());
        let Delivered {
            status, body_bytes, ..
        } = outcome.delivered;
        if let Some(request_line) = request_line {
            log::debug!(
                "{request_line} -> {status}, {body_bytes} bytes from {} in {:?}",
                backend.unwrap_or("tinylb"),
                started.elapsed()
            );
        }
        if let Some(line) = access {
            line.log(status, body_bytes, backend, &durations);
        }
    }

    fn forward(&self, mut exchange: Exchange, buffers: &mut Buffers, started: Instant) -> Outcome {
        let head = match exchange.verdict() {
            Ok(head) => head.clone(),
            Err(rejection) => {
                log::info!(
                    "refused {} {} from {:?}: {}",
                    exchange.method(),
                    exchange.target(),
                    exchange.client_ip(),
                    rejection.reason
                );
                let answer = rejection.answer();
                return self.answer(exchange, &answer, None, buffers);
            }
        };
        if let Some(protocols) = &head.upgrade
            && self.tunnels.limits().max_open > 0
        {
            return self.tunnel(exchange, &head, protocols, buffers, started);
        }
        let outgoing = match self.outgoing(&exchange, &head) {
            Ok(outgoing) => outgoing,
            Err(failed) => return self.answer_failure(exchange, failed, buffers),
        };
        let client_ip = client_ip(&exchange);
        let mut tried: Vec<u64> = Vec::new();
        let mut failed = Failed {
            failure: None,
            backend: None,
            must_close: head.framing != BodyFraming::Empty,
        };
        while let Some(in_flight) = self.balancer.pick(client_ip, &tried) {
            if !tried.is_empty() {
                // Sent again, to another backend.
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            let backend = Arc::clone(in_flight.backend());
            match self.send_to(&mut exchange, &backend, &outgoing) {
                Ok(response) => {
                    return self.deliver(exchange, response, in_flight, started, buffers);
                }
                Err((failure, next)) => {
                    failed.must_close |= failure.is_the_clients();
                    failed.failure = Some(failure);
                    tried.push(backend.key);
                    failed.backend = Some(backend);
                    if next == Next::GiveUp {
                        break;
                    }
                }
            }
        }
        self.answer_failure(exchange, failed, buffers)
    }

    /// The request as every backend will get it; a head that cannot be expressed upstream is
    /// the client's 400.
    fn outgoing(&self, exchange: &Exchange, head: &Head) -> Result<Outgoing, Failed> {
        Outgoing::new(ClientHead {
            method: exchange.method(),
            target: exchange.target(),
            headers: exchange.headers(),
            client_ip: exchange.client_ip(),
            framing: head.framing,
        })
        .map_err(|failure| Failed {
            failure: Some(failure),
            backend: None,
            must_close: head.framing != BodyFraming::Empty,
        })
    }

    /// Sends the request to one backend, with the one extra try there that a closed pooled
    /// connection earns. On failure, says where the request may go next.
    fn send_to(
        &self,
        exchange: &mut Exchange,
        backend: &Backend,
        outgoing: &Outgoing,
    ) -> Result<Response, (Failure, Next)> {
        let mut attempt = Attempt::first(exchange.method());
        loop {
            let mut body = exchange.body(self.switches.body_pace());
            let result = backend.connections.send(
                &backend.url,
                outgoing,
                &mut body,
                attempt.needs_fresh_connection(),
            );
            attempt.body_started = body.started();
            // When the client's own body failed, ureq's error only echoes it.
            let failure = match (result, body.take_failure()) {
                (Ok(response), _) => return Ok(response),
                (Err(_), Some(BodyFailure::Ended(reason))) => Failure::ClientBody(reason),
                (Err(_), Some(BodyFailure::TooSlow(reason))) => {
                    ClientCounts::count(&self.counts.slow_bodies);
                    Failure::ClientTooSlow(reason)
                }
                (Err(failed), None) => {
                    attempt.reused_connection = failed.on_reused_connection;
                    failed.failure
                }
            };
            self.charge_failure(exchange.method(), backend, &failure);
            let next = retry::next_step(&failure, attempt);
            if next != Next::SameBackend {
                return Err((failure, next));
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            attempt.retried_here = true;
        }
    }

    /// Logs a failed attempt and charges it to its backend: counted by kind, and a backend that
    /// could not even be reached is marked down at once.
    fn charge_failure(&self, what: &str, backend: &Backend, failure: &Failure) {
        log::warn!("{what} to {} failed: {failure}", backend.url.original);
        if let Some(kind) = failure.error_kind() {
            backend.stats.record_error(kind);
        }
        if let Failure::Connect(reason) = failure {
            backend.mark_down(reason);
        }
    }

    /// Relays a backend's answer to the client and records it against the backend.
    fn deliver(
        &self,
        exchange: Exchange,
        response: Response,
        in_flight: InFlight,
        started: Instant,
        buffers: &mut Buffers,
    ) -> Outcome {
        let response_head = stages::stamp();
        let connected = response.connected_at();
        let backend = Arc::clone(in_flight.backend());
        let forwarded = self
            .switches
            .forwarded_server_header()
            .then_some(backend.url.original.as_str());
        let delivered = exchange.relay(response, forwarded, self.switches.send_pace(), buffers);
        if delivered.cut_short == Some(CutShort::TooSlow) {
            ClientCounts::count(&self.counts.slow_readers);
        }
        drop(in_flight);
        backend
            .stats
            .record_answer(delivered.status, started.elapsed());
        Outcome {
            delivered,
            backend: Some(backend),
            connected,
            response_head,
        }
    }

    /// Answers with the status of the last failed attempt, or 503 when no backend was left to
    /// try.
    fn answer_failure(&self, exchange: Exchange, failed: Failed, buffers: &mut Buffers) -> Outcome {
        let answer = match &failed.failure {
            Some(failure) => Answer::new(failure.status(), failure.message(), failed.must_close),
            None => Answer::new(503, "No healthy server available", failed.must_close),
        };
        self.answer(exchange, &answer, failed.backend, buffers)
    }

    /// Writes one of tinylb's own answers.
    fn answer(
        &self,
        exchange: Exchange,
        answer: &Answer,
        backend: Option<Arc<Backend>>,
        buffers: &mut Buffers,
    ) -> Outcome {
        Outcome {
            delivered: exchange.answer(answer, buffers),
            backend,
            connected: None,
            response_head: None,
        }
    }
}

/// The address the balancer hashes for ip-hash (unknown clients all hash alike).
fn client_ip(exchange: &Exchange) -> IpAddr {
    exchange
        .client_ip()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}
