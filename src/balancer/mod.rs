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
    /// Most requests one backend may hold while another could take the request: half the
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
        // hundreds of them), counting those that could take this request (one already tried
        // for it cannot); the per-backend limit is then applied to the compact copy.
        let mut candidates = 0;
        peers.clear();
        peers.extend(backends.iter().map(|b| {
            let available = b.is_available() && !exclude.contains(&b.key);
            candidates += usize::from(available);
            Peer {
                available,
                weight: b.weight(),
                in_flight: b.in_flight(),
                tunnels: b.tunnels(),
                key: b.key,
            }
        }));
        if candidates >= 2 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::net::Ipv4Addr;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    /// Enough workers that the per-backend limit stays out of the way.
    const MANY_WORKERS: usize = 64;

    /// Healthy backends `http://127.0.0.1:1`, `:2`, ... with these weights. The one place that
    /// builds a `Backend`.
    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        let servers: Vec<String> = (1..)
            .zip(weights)
            .map(|(port, weight)| {
                format!(r#"{{"url": "http://127.0.0.1:{port}", "weight": {weight}}}"#)
            })
            .collect();
        let text = format!(
            r#"{{"port": "127.0.0.1:0", "servers": [{}]}}"#,
            servers.join(", ")
        );
        Backend::all(&Config::parse(&text).unwrap())
    }

    /// `n` requests at once (each stays in flight until all are picked), as letters for their
    /// backends' places in the list: `"abca"`, with `-` where none was available.
    fn picks(balancer: &Balancer, exclude: &[u64], n: usize) -> String {
        let backends = balancer.backends();
        let mut open = Vec::new();
        let mut letters = String::new();
        for _ in 0..n {
            let Some(request) = balancer.pick(CLIENT, exclude) else {
                letters.push('-');
                continue;
            };
            let index = backends
                .iter()
                .position(|b| Arc::ptr_eq(b, request.backend()))
                .unwrap();
            letters.push((b'a' + index as u8) as char);
            open.push(request);
        }
        letters
    }

    /// Six requests at once over weights 3, 2 and 1 go where each algorithm sends them; ip-hash
    /// keeps this client on `c`.
    #[test]
    fn each_algorithm_drives_the_picks() {
        for (algorithm, expected) in [
            (Algorithm::RoundRobin, "abcabc"),
            (Algorithm::WeightedRoundRobin, "abacba"),
            (Algorithm::LeastConnections, "abcaba"),
            (Algorithm::IpHash, "cccccc"),
        ] {
            let balancer = Balancer::new(backends(&[3, 2, 1]), algorithm, MANY_WORKERS);
            assert_eq!(balancer.algorithm(), algorithm);
            assert_eq!(picks(&balancer, &[], 6), expected, "{algorithm:?}");
        }
    }

    #[test]
    fn a_pick_counts_its_request_until_it_ends() {
        let balancer = Balancer::new(backends(&[1]), Algorithm::RoundRobin, MANY_WORKERS);
        let request = balancer.pick(CLIENT, &[]).unwrap();
        assert_eq!(request.backend().in_flight(), 1);
        drop(request);
        assert_eq!(balancer.backends()[0].in_flight(), 0);
    }

    #[test]
    fn replace_installs_the_new_list_and_a_fresh_algorithm() {
        let balancer = Balancer::new(backends(&[1, 1, 1]), Algorithm::RoundRobin, MANY_WORKERS);
        assert_eq!(picks(&balancer, &[], 3), "abc");
        balancer.replace(backends(&[1, 1]), Algorithm::RoundRobin);
        assert_eq!(balancer.backends().len(), 2);
        // Round robin starts over at the first backend.
        assert_eq!(picks(&balancer, &[], 3), "aba");
        balancer.replace(backends(&[1, 1]), Algorithm::LeastConnections);
        assert_eq!(balancer.algorithm(), Algorithm::LeastConnections);
    }

    /// Round robin over a, b and c with some of them down, draining, or already tried.
    #[test]
    fn down_draining_and_excluded_backends_are_skipped() {
        for (down, draining, excluded, expected) in [
            (&[][..], &[][..], &[][..], "abcabc"),
            (&[1], &[], &[], "acacac"),
            (&[], &[1], &[], "acacac"),
            (&[], &[], &[1], "acacac"),
            (&[0, 1], &[], &[], "cccccc"),
            (&[], &[], &[0, 1, 2], "------"),
            (&[0], &[1], &[2], "------"),
        ] {
            let balancer = Balancer::new(backends(&[1, 1, 1]), Algorithm::RoundRobin, MANY_WORKERS);
            let backends = balancer.backends();
            for &i in down {
                backends[i].mark_down("test");
            }
            for &i in draining {
                backends[i].set_draining(true);
            }
            let exclude: Vec<u64> = excluded.iter().map(|&i| backends[i].key).collect();
            assert_eq!(
                picks(&balancer, &exclude, 6),
                expected,
                "down {down:?}, draining {draining:?}, excluded {excluded:?}"
            );
        }
    }

    /// With two healthy backends, one holding half the workers (rounded up) gets no more
    /// requests; round robin would pick `a` first otherwise.
    #[test]
    fn a_backend_at_its_limit_is_skipped_while_another_is_healthy() {
        for (workers, busy, next) in [
            (4, 1, "a"),
            (4, 2, "b"),
            (4, 3, "b"),
            (3, 1, "a"),
            (3, 2, "b"),
            (1, 0, "a"),
            (1, 1, "b"),
        ] {
            let balancer = Balancer::new(backends(&[1, 1]), Algorithm::RoundRobin, workers);
            let a = &balancer.backends()[0];
            let _stuck: Vec<InFlight> = (0..busy).map(|_| a.start_request()).collect();
            assert_eq!(
                picks(&balancer, &[], 1),
                next,
                "{workers} workers, {busy} requests on a"
            );
        }
    }

    /// The limit only steers requests between backends that could take them: it never turns
    /// one away, also not the retry of a request that `b` already failed.
    #[test]
    fn the_only_available_backend_has_no_limit() {
        for b_is in ["down", "draining", "already tried"] {
            let balancer = Balancer::new(backends(&[1, 1]), Algorithm::RoundRobin, 2);
            let backends = balancer.backends();
            let b = &backends[1];
            let exclude = match b_is {
                "down" => {
                    b.mark_down("test");
                    vec![]
                }
                "draining" => {
                    b.set_draining(true);
                    vec![]
                }
                _ => vec![b.key],
            };
            let _stuck: Vec<InFlight> = (0..3).map(|_| backends[0].start_request()).collect();
            assert_eq!(picks(&balancer, &exclude, 3), "aaa", "b {b_is}");
        }
    }
}
