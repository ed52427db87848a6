//! Choosing a backend: the four algorithms of the seed article, each a small pure [`Strategy`]
//! that sees a snapshot of the backends ([`Peer`]s) and returns an index. [`Balancer`] owns the
//! one piece of shared state, behind a single `parking_lot` mutex, and counts the request as in
//! flight inside the same lock so that concurrent picks see each other.

mod ip_hash;
mod least_connections;
mod round_robin;
mod weighted_round_robin;

use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{Backend, InFlight};
pub use crate::config::Algorithm;

pub use ip_hash::IpHash;
pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

/// Fresh state for an algorithm.
fn strategy_for(algorithm: Algorithm) -> Box<dyn Strategy> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::default()),
        Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::default()),
        Algorithm::LeastConnections => Box::new(LeastConnections::default()),
        Algorithm::IpHash => Box::new(IpHash),
    }
}

/// What an algorithm may know about one backend at the moment of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Healthy and not already tried for this request.
    pub available: bool,
    /// Configured weight, at least 1.
    pub weight: u32,
    /// Requests this backend is serving right now.
    pub in_flight: usize,
    /// WebSocket (and other upgrade) tunnels open to it: long-lived connections that
    /// least-connections counts as load, as nginx's `least_conn` does.
    pub tunnels: usize,
    /// A stable hash of the backend's URL, so ip-hash keeps clients on the same backend even
    /// when the list changes order or length.
    pub key: u64,
}

/// One load-balancing algorithm: pure, so it is unit-tested without sockets.
pub trait Strategy: Send {
    /// Index of the chosen peer among the available ones, or `None` if none is available.
    fn pick(&mut self, peers: &[Peer], client: IpAddr) -> Option<usize>;
}

/// The backends plus the algorithm's state, shared by every worker.
pub struct Balancer {
    /// Most requests one backend may hold while another healthy backend exists: half the
    /// workers (rounded up), so a backend that hangs cannot take every worker from the others.
    /// Two healthy backends' limits always add up to at least the worker count, so the limit
    /// never turns a request away; it only steers it to the backend that is not stuck.
    per_backend_limit: usize,
    state: Mutex<PickState>,
}

struct PickState {
    backends: Arc<[Arc<Backend>]>,
    algorithm: Algorithm,
    strategy: Box<dyn Strategy>,
    /// Reused for every pick so the hot path does not allocate.
    peers: Vec<Peer>,
}

impl Balancer {
    /// A balancer over these backends with the given algorithm, for `workers` workers.
    pub fn new(backends: Vec<Arc<Backend>>, algorithm: Algorithm, workers: usize) -> Balancer {
        Balancer {
            per_backend_limit: workers.div_ceil(2).max(1),
            state: Mutex::new(PickState {
                peers: Vec::with_capacity(backends.len()),
                backends: backends.into(),
                algorithm,
                strategy: strategy_for(algorithm),
            }),
        }
    }

    /// The backends now, in config order (a reload may replace the list later).
    pub fn backends(&self) -> Arc<[Arc<Backend>]> {
        Arc::clone(&self.state.lock().backends)
    }

    /// The algorithm now.
    pub fn algorithm(&self) -> Algorithm {
        self.state.lock().algorithm
    }

    /// Installs a new list and algorithm (a live reload); requests in flight keep their
    /// backends. The algorithm starts afresh, since its state refers to the old list.
    pub fn replace(&self, backends: Vec<Arc<Backend>>, algorithm: Algorithm) {
        let mut state = self.state.lock();
        state.backends = backends.into();
        state.algorithm = algorithm;
        state.strategy = strategy_for(algorithm);
    }

    /// Chooses an available backend whose key is not in `exclude` (those already failed this
    /// request) and counts the request as in flight on it.
    pub fn pick(&self, client: IpAddr, exclude: &[u64]) -> Option<InFlight> {
        let mut state = self.state.lock();
        let PickState {
            backends,
            strategy,
            peers,
            ..
        } = &mut *state;
        // One pass over the backends (each a separate allocation, so each a cache miss with
        // hundreds of them); the per-backend limit is then applied to the compact copy.
        let mut healthy = 0;
        peers.clear();
        peers.extend(backends.iter().map(|b| {
            let available = b.is_available();
            healthy += usize::from(available);
            Peer {
                available: available && !exclude.contains(&b.key),
                weight: b.weight(),
                in_flight: b.in_flight(),
                tunnels: b.tunnels(),
                key: b.key,
            }
        }));
        if healthy >= 2 {
            for peer in peers.iter_mut() {
                peer.available &= peer.in_flight < self.per_backend_limit;
            }
        }
        let index = strategy.pick(peers, client)?;
        debug_assert!(
            peers[index].available,
            "a strategy picked an unavailable peer"
        );
        Some(backends[index].start_request())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::net::Ipv4Addr;

    /// Available peers with these weights and no load.
    pub fn peers(weights: &[u32]) -> Vec<Peer> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Peer {
                available: true,
                weight,
                in_flight: 0,
                tunnels: 0,
                key: crate::backend::url_key(&format!("http://10.0.0.{i}:80")),
            })
            .collect()
    }

    /// The first `n` picks as letters: `"aabac"`.
    pub fn sequence(strategy: &mut dyn Strategy, peers: &[Peer], n: usize) -> String {
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        (0..n)
            .map(|_| (b'a' + strategy.pick(peers, client).unwrap() as u8) as char)
            .collect()
    }
}
