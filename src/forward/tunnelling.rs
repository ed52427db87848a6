//! The side road of an upgrade (a WebSocket handshake): reserve a place for a tunnel, do the
//! handshake with the backend the balancer picks (another one if it cannot be reached), and
//! after that backend's `101` hand the connection to a [`crate::tunnel`] on threads of its own,
//! so the worker is free again. Any other answer is relayed like every other response.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::retry::{self, Attempt, Next};
use super::{Failed, Forwarder, Outcome, client_ip};
use crate::backend::Backend;
use crate::client::{Answer, Buffers, Exchange, Head};
use crate::stats::ErrorKind;
use crate::tunnel::{Ends, NoPlace, Reservation};
use crate::upstream::{self, Handshake, Switched};

impl Forwarder {
    /// Carries out an upgrade to `protocols`; see the module doc.
    pub(super) fn tunnel(
        &self,
        exchange: Exchange,
        head: &Head,
        protocols: &str,
        buffers: &mut Buffers,
        started: Instant,
    ) -> Outcome {
        let client_ip = client_ip(&exchange);
        let place = match self.tunnels.reserve(client_ip) {
            Ok(place) => place,
            Err(no_place) => {
                let limits = self.tunnels.limits();
                let (why, message) = match no_place {
                    NoPlace::AllTaken => (
                        format!("{} tunnels are open (maxTunnels)", limits.max_open),
                        "Service Unavailable: too many open tunnels",
                    ),
                    NoPlace::ClientsShareTaken => (
                        format!("it holds {} tunnels (clientMaxTunnels)", limits.per_client),
                        "Service Unavailable: this client holds too many open tunnels",
                    ),
                };
                log::warn!("refused an upgrade to {protocols} from {client_ip}: {why}");
                return self.answer(exchange, &Answer::new(503, message, true), None, buffers);
            }
        };
        let outgoing = match self.outgoing(&exchange, head) {
            Ok(outgoing) => outgoing,
            Err(failed) => return self.answer_failure(exchange, failed, buffers),
        };
        // tiny_http ends a connection that asked for an upgrade after any other answer anyway.
        let mut failed = Failed {
            failure: None,
            backend: None,
            must_close: true,
        };
        let timeouts = self.switches.handshake_timeouts();
        let mut tried: Vec<u64> = Vec::new();
        while let Some(in_flight) = self.balancer.pick(client_ip, &tried) {
            if !tried.is_empty() {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            let backend = Arc::clone(in_flight.backend());
            let failure = match upstream::handshake(&outgoing, &backend.url, protocols, timeouts) {
                Ok(Handshake::Switched(switched)) => {
                    drop(in_flight);
                    return self.switch(exchange, place, backend, switched, started, buffers);
                }
                Ok(Handshake::Declined(response)) => {
                    return self.deliver(exchange, response, in_flight, started, buffers);
                }
                Err(failure) => failure,
            };
            self.charge_failure(&format!("upgrade to {protocols}"), &backend, &failure);
            let next = retry::next_step(&failure, Attempt::handshake());
            tried.push(backend.key);
            failed.failure = Some(failure);
            failed.backend = Some(backend);
            if next == Next::GiveUp {
                break;
            }
        }
        self.answer_failure(exchange, failed, buffers)
    }

    /// The backend switched protocols: relays its 101 to the client and starts the tunnel.
    fn switch(
        &self,
        exchange: Exchange,
        place: Reservation,
        backend: Arc<Backend>,
        switched: Switched,
        started: Instant,
        buffers: &mut Buffers,
    ) -> Outcome {
        let label = format!(
            "{} <-> {}",
            exchange
                .peer()
                .map_or_else(|| "?".into(), |a| a.to_string()),
            backend.url.original
        );
        let forwarded = self
            .switches
            .forwarded_server_header()
            .then_some(("X-Forwarded-Server", backend.url.original.as_bytes()));
        let client = match switched.protocol() {
            Some(protocol) => {
                exchange.switch_protocols(protocol, switched.end_to_end_headers().chain(forwarded))
            }
            None => Err(Box::new(exchange)),
        };
        let client = match client {
            Ok(client) => client,
            Err(exchange) => {
                log::warn!(
                    "upgrade at {} failed: the 101 names no protocol, or the client socket is gone",
                    backend.url.original
                );
                backend.stats.record_error(ErrorKind::Broken);
                let answer = Answer::new(502, "Bad Gateway", true);
                return self.answer(*exchange, &answer, Some(backend), buffers);
            }
        };
        let label = format!("{label} ({})", switched.protocol().unwrap_or_default());
        let (backend_stream, early) = switched.into_parts();
        let ends = Ends {
            client_reader: client.reader,
            client_socket: client.socket,
            backend: backend_stream,
            early,
            counted: backend.open_tunnel(),
        };
        if let Err(error) = place.start(ends, label) {
            log::error!("cannot start a tunnel's threads: {error}");
        }
        backend.stats.record_answer(101, started.elapsed());
        Outcome {
            delivered: crate::client::Delivered {
                status: 101,
                body_bytes: 0,
                cut_short: None,
            },
            backend: Some(backend),
            connected: None,
            response_head: None,
        }
    }
}
