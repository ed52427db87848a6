//! IP hash by rendezvous (highest random weight) hashing: every backend gets a score from a hash
//! of the client IP and the backend's URL, and the highest score wins. A client keeps its backend
//! for as long as that backend is available, and removing a backend moves only its own clients.
//! Weights scale the scores (`weight / -ln(u)`), so a weight-2 backend gets twice the clients.

use std::net::IpAddr;

use super::{Peer, Strategy};

/// Stateless: the choice depends only on the client and the available peers.
#[derive(Debug, Default)]
pub struct IpHash;

impl Strategy for IpHash {
    fn pick(&mut self, peers: &[Peer], client: IpAddr) -> Option<usize> {
        let client_key = match client {
            IpAddr::V4(ip) => u64::from(ip.to_bits()),
            IpAddr::V6(ip) => {
                let bits = ip.to_bits();
                (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
            }
        };
        let mut best: Option<(usize, f64)> = None;
        for (i, peer) in peers.iter().enumerate().filter(|(_, p)| p.available) {
            let score = rendezvous_score(client_key, peer.key, peer.weight);
            if best.is_none_or(|(_, best_score)| score > best_score) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Weighted rendezvous score: `weight / -ln(u)` with `u` uniform in (0, 1) from the hash.
fn rendezvous_score(client_key: u64, peer_key: u64, weight: u32) -> f64 {
    let hash = mix(client_key ^ mix(peer_key));
    // 53 random bits, shifted away from 0 so ln(u) is finite.
    let uniform = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -uniform.ln()
}

/// MurmurHash3's 64-bit finalizer: cheap, and every input bit affects every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::peers;
    use super::*;
    use std::net::Ipv4Addr;

    fn client(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n))
    }

    #[test]
    fn a_client_keeps_its_backend() {
        let peers = peers(&[1, 1, 1, 1]);
        for n in 0..100 {
            let first = IpHash.pick(&peers, client(n));
            for _ in 0..5 {
                assert_eq!(IpHash.pick(&peers, client(n)), first);
            }
        }
    }

    #[test]
    fn clients_spread_over_backends() {
        let peers = peers(&[1, 1, 1, 1]);
        let mut counts = [0; 4];
        for n in 0..4000 {
            counts[IpHash.pick(&peers, client(n)).unwrap()] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients() {
        let all = peers(&[1, 1, 1, 1, 1]);
        let mut without_c = all.clone();
        without_c[2].available = false;
        let mut moved = 0;
        for n in 0..2000 {
            let before = IpHash.pick(&all, client(n)).unwrap();
            let after = IpHash.pick(&without_c, client(n)).unwrap();
            if before != 2 {
                assert_eq!(
                    before, after,
                    "client {n} moved although its backend stayed"
                );
            } else {
                moved += 1;
            }
        }
        assert!(moved > 300, "backend c had only {moved} clients");
    }

    #[test]
    fn weights_scale_the_share() {
        let peers = peers(&[1, 3]);
        let heavy = (0..4000)
            .filter(|&n| IpHash.pick(&peers, client(n)) == Some(1))
            .count();
        assert!((2800..3200).contains(&heavy), "{heavy}");
    }
}
