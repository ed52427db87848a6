//! The side road of an upgrade (a WebSocket handshake): reserve a place for a tunnel, do the
//! handshake with the backend the balancer picks (another one if it cannot be reached), and
//! after that backend's `101` hand the connection to a [`crate::tunnel`] on threads of its own,
//! so the worker is free again. Any other answer is relayed like every other response.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tiny_http::Request;
use ureq::http;

use super::{Exchange, Failed, Failure, Forwarder, Outcome, build_upstream_request};
use crate::backend::Backend;
use crate::headers::ConnectionTokens;
use crate::relay::{Buffers, ClientSide};
use crate::request_check::BodyFraming;
use crate::stats::ErrorKind;
use crate::tunnel::{Ends, Reservation};
use crate::upgrade::{self, Answer, HandshakeError};

/// A backend's `101 Switching Protocols`, with the connection it arrived on.
struct Switch {
    headers: http::HeaderMap,
    backend: std::net::TcpStream,
    early: Vec<u8>,
}

impl Forwarder {
    /// Carries out an upgrade (a WebSocket handshake). The handshake goes to the backend the
    /// balancer picks (another one if it cannot be reached); if that backend switches protocols
    /// the connection becomes a tunnel on threads of its own and this worker is free again. Any
    /// other answer is relayed as usual.
    pub(super) fn tunnel(
        &self,
        request: Request,
        client: &ClientSide,
        client_ip: IpAddr,
        protocols: &str,
        buffers: &mut Buffers,
        started: Instant,
    ) -> Outcome {
        let client_addr = request.remote_addr().copied();
        let method = request.method().to_string();
        let exchange = Exchange {
            client,
            method: &method,
            started,
        };
        let Some(place) = self.tunnels.reserve() else {
            log::warn!(
                "refused an upgrade to {protocols} from {client_ip}: {} tunnels are open (maxTunnels)",
                self.tunnels.limits().max_open
            );
            let message = "Service Unavailable: too many open tunnels";
            let body_bytes = self.answer(request, client, 503, message, None, true, buffers);
            return Outcome {
                status: 503,
                body_bytes,
                backend: None,
            };
        };
        let timeouts = *self.handshake_timeouts.read();
        let mut tried: Vec<u64> = Vec::new();
        let mut last_failure: Option<Failure> = None;
        let mut last_backend: Option<Arc<Backend>> = None;
        while let Some(in_flight) = self.balancer.pick(client_ip, &tried) {
            let backend = Arc::clone(in_flight.backend());
            let upstream =
                match build_upstream_request(&request, &backend, client_addr, BodyFraming::Empty) {
                    Ok(upstream) => upstream,
                    Err(failure) => {
                        last_failure = Some(failure);
                        break;
                    }
                };
            let failure = match upgrade::handshake(&upstream, protocols, timeouts) {
                Ok(Answer::Switched {
                    headers,
                    stream,
                    early,
                }) => {
                    drop(in_flight);
                    let switch = Switch {
                        headers,
                        backend: stream,
                        early,
                    };
                    return self.switch(request, &exchange, place, backend, switch, buffers);
                }
                Ok(Answer::Declined(response)) => {
                    return self.deliver(request, response, in_flight, &exchange, buffers);
                }
                Err(HandshakeError::Connect(reason)) => Failure::Connect(reason),
                Err(HandshakeError::Timeout(reason)) => Failure::Timeout(reason),
                Err(HandshakeError::Closed(reason)) => Failure::Closed(reason),
                Err(HandshakeError::Broken(reason)) => Failure::Broken(reason),
            };
            self.charge_failure(&format!("upgrade to {protocols}"), &backend, &failure);
            let unreachable = matches!(failure, Failure::Connect(_));
            last_failure = Some(failure);
            last_backend = Some(backend);
            if !unreachable {
                break;
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tried.extend(last_backend.as_ref().map(|b| b.key));
        }
        let failed = Failed {
            failure: last_failure,
            backend: last_backend,
            // tiny_http ends a connection that asked for an upgrade after this answer anyway.
            must_close: true,
        };
        self.answer_failure(request, client, failed, buffers)
    }

    /// The backend switched protocols: relays its 101 to the client and starts the tunnel.
    fn switch(
        &self,
        request: Request,
        exchange: &Exchange,
        place: Reservation,
        backend: Arc<Backend>,
        switch: Switch,
        buffers: &mut Buffers,
    ) -> Outcome {
        let client = exchange.client;
        let client_addr = request.remote_addr().copied();
        let protocol = switch
            .headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let client_socket = self.hangups.client_socket(client_addr.as_ref());
        let (Some(protocol), Some(client_socket)) = (protocol, client_socket) else {
            log::warn!(
                "upgrade at {} failed: the 101 names no protocol, or the client socket is gone",
                backend.url.original
            );
            backend.stats.record_error(ErrorKind::Broken);
            let body_bytes = self.answer(request, client, 502, "Bad Gateway", None, true, buffers);
            return Outcome {
                status: 502,
                body_bytes,
                backend: Some(backend),
            };
        };
        let mut answer = tiny_http::Response::empty(101);
        let tokens = ConnectionTokens::from_headers(
            switch
                .headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| ("connection", v.as_bytes())),
        );
        // tiny_http writes `Connection: upgrade` and `Upgrade` itself.
        for (name, value) in &switch.headers {
            if tokens.is_hop_by_hop(name.as_str()) {
                continue;
            }
            match tiny_http::Header::from_bytes(name.as_str().as_bytes(), value.as_bytes()) {
                Ok(header) => answer.add_header(header),
                Err(()) => log::debug!("dropped a non-ASCII {name} header from a 101"),
            }
        }
        if self.forwarded_server_header.load(Ordering::Relaxed)
            && let Ok(header) = tiny_http::Header::from_bytes(
                &b"X-Forwarded-Server"[..],
                backend.url.original.as_bytes(),
            )
        {
            answer.add_header(header);
        }
        let label = format!(
            "{} <-> {} ({protocol})",
            client_addr.map_or_else(|| "?".into(), |a| a.to_string()),
            backend.url.original
        );
        let client_reader = request.upgrade(&protocol, answer);
        let ends = Ends {
            client_reader,
            client_socket,
            backend: switch.backend,
            early: switch.early,
            counted: backend.open_tunnel(),
        };
        if let Err(error) = place.start(ends, label) {
            log::error!("cannot start a tunnel's threads: {error}");
        }
        backend.stats.record_answer(101, exchange.started.elapsed());
        Outcome {
            status: 101,
            body_bytes: 0,
            backend: Some(backend),
        }
    }
}
