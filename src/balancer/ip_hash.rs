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
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn client(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n))
    }

    fn ipv6(network: u64, interface: u64) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from_bits(
            u128::from(network) << 64 | u128::from(interface),
        ))
    }

    /// Equal but for the last bits of floating-point rounding, which `ln` may do differently
    /// from one platform to another.
    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= expected.abs() * 1e-12,
            "{actual} is not {expected}"
        );
    }

    /// Where a client lands must not change from one version to the next: an upgrade would
    /// move clients (and the sessions they keep on their backend) elsewhere. The letters were
    /// computed with the hash as it is; both halves of an IPv6 address count.
    #[test]
    fn clients_land_where_they_always_have() {
        let peers = peers(&[1, 1, 1, 1]);
        for (address, backend) in [
            ("10.0.0.1", 'c'),
            ("10.0.0.2", 'c'),
            ("127.0.0.1", 'a'),
            ("192.168.1.20", 'd'),
            ("203.0.113.7", 'b'),
            ("::1", 'a'),
            ("2001:db8::1", 'b'),
            ("2001:db8::2", 'd'),
            ("2001:db8:1::1", 'c'),
            ("2001:db8:2::1", 'a'),
            ("2001:db8:3::1", 'd'),
            ("2001:db8:85a3::8a2e:370:7334", 'd'),
            ("2a00:1450:4007:80e::200e", 'a'),
            ("fe80::1ff:fe23:4567:890a", 'b'),
            ("fd12:3456:789a:1::42", 'd'),
        ] {
            let picked = IpHash.pick(&peers, address.parse().unwrap()).unwrap();
            assert_eq!((b'a' + picked as u8) as char, backend, "{address}");
        }
    }

    /// MurmurHash3's fmix64 as it is now: a changed shift or operator would move clients.
    #[test]
    fn mix_gives_known_answers() {
        for (input, output) in [
            (0, 0),
            (1, 0xb456_bcfc_34c2_cb2c),
            (2, 0x3abf_2a20_6506_83e7),
            (0xdead_beef, 0xd24b_d59f_862a_1dac),
            (1 << 63, 0x8f78_0810_af31_a493),
            (u64::MAX, 0x64b5_720b_4b82_5f21),
        ] {
            assert_eq!(mix(input), output, "mix({input:#x})");
        }
    }

    /// Flipping any one input bit flips each output bit about half the time, so clients whose
    /// addresses differ in a single bit are as far apart as any two.
    #[test]
    fn mix_spreads_every_input_bit_over_every_output_bit() {
        let inputs: Vec<u64> = (1..=500u64)
            .map(|n| n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for flipped in 0..64 {
            let changes: Vec<u64> = inputs
                .iter()
                .map(|&x| mix(x) ^ mix(x ^ (1 << flipped)))
                .collect();
            for output in 0..64 {
                let flips = changes.iter().filter(|&c| c >> output & 1 == 1).count();
                assert!(
                    (200..300).contains(&flips),
                    "input bit {flipped} flips output bit {output} {flips} times in 500"
                );
            }
        }
    }

    const PEER_KEY: u64 = 0x1234_5678_9abc_def0;

    /// `weight / -ln(u)` as it is now, for a few clients and weights.
    #[test]
    fn scores_match_known_answers() {
        for (client_key, weight, score) in [
            (1, 1, 1.466_880_568_789_384_2),
            (1, 3, 4.400_641_706_368_153),
            (0x0a00_0001, 1, 2.476_943_705_366_221_3),
            (u64::MAX, 2, 2.601_767_488_337_511_5),
        ] {
            assert_close(rendezvous_score(client_key, PEER_KEY, weight), score);
        }
    }

    /// A hash of 0 gives `u = 2^-54`, not 0, so a finite score: the lowest, 1 / (54 ln 2).
    #[test]
    fn the_lowest_hash_scores_finite_and_positive() {
        // mix(0) is 0, so this client key hashes to 0 with this peer.
        let score = rendezvous_score(mix(PEER_KEY), PEER_KEY, 1);
        assert_close(score, 1.0 / (54.0 * std::f64::consts::LN_2));
    }

    /// Two peers with the same URL (listed twice) score the same for every client.
    #[test]
    fn a_tie_goes_to_the_first_peer() {
        let mut peers = peers(&[1, 1]);
        peers[1].key = peers[0].key;
        for n in 0..20 {
            assert_eq!(IpHash.pick(&peers, client(n)), Some(0));
        }
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

    /// IPv4 clients, and IPv6 clients that differ only in their interface ID or only in their
    /// network prefix (a /64 each), spread evenly.
    #[test]
    fn clients_spread_over_backends() {
        const NETWORK: u64 = 0x2001_0db8_0000_0000;
        let clients = [
            ("IPv4", client as fn(u32) -> IpAddr),
            ("IPv6 interface IDs", |n| ipv6(NETWORK, n.into())),
            ("IPv6 networks", |n| ipv6(NETWORK + u64::from(n), 1)),
        ];
        let peers = peers(&[1, 1, 1, 1]);
        for (kind, client) in clients {
            let mut counts = [0; 4];
            for n in 0..4000 {
                counts[IpHash.pick(&peers, client(n)).unwrap()] += 1;
            }
            for count in counts {
                assert!((800..1200).contains(&count), "{kind}: {counts:?}");
            }
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
