//! Weighted round robin, nginx's smooth variant: every pick adds each backend's weight to its
//! running score, takes the highest, and subtracts the total from the winner. Weights 5,1,1 give
//! `a a b a c a a`: heavy backends are spread out instead of served in bursts.

use std::net::IpAddr;

use super::{Peer, Strategy};

/// The running score of each backend, by index.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    current: Vec<i64>,
}

impl Strategy for WeightedRoundRobin {
    fn pick(&mut self, peers: &[Peer], _client: IpAddr) -> Option<usize> {
        self.current.resize(peers.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, peer) in peers.iter().enumerate().filter(|(_, p)| p.available) {
            let weight = i64::from(peer.weight);
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{peers, sequence};
    use super::*;

    #[test]
    fn weights_5_1_1_give_nginxs_smooth_sequence() {
        let peers = peers(&[5, 1, 1]);
        assert_eq!(
            sequence(&mut WeightedRoundRobin::default(), &peers, 14),
            "aabacaaaabacaa"
        );
    }

    #[test]
    fn shares_follow_the_weights_when_one_is_down() {
        let mut peers = peers(&[3, 2, 1]);
        peers[2].available = false;
        let picks = sequence(&mut WeightedRoundRobin::default(), &peers, 500);
        assert_eq!(picks.matches('a').count(), 300);
        assert_eq!(picks.matches('b').count(), 200);
    }

    #[test]
    fn equal_weights_rotate() {
        let peers = peers(&[1, 1, 1]);
        assert_eq!(
            sequence(&mut WeightedRoundRobin::default(), &peers, 6),
            "abcabc"
        );
    }
}
