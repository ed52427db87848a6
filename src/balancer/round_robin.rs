//! Round robin: each request goes to the next available backend in turn. It counts over the
//! available backends only, so when one is down the others share its load evenly instead of the
//! next one in the list taking double.

use std::net::IpAddr;

use super::{Peer, Strategy};

/// Rotation state: how many picks have been made.
#[derive(Debug, Default)]
pub struct RoundRobin {
    turn: usize,
}

impl Strategy for RoundRobin {
    fn pick(&mut self, peers: &[Peer], _client: IpAddr) -> Option<usize> {
        let available = peers.iter().filter(|p| p.available).count();
        if available == 0 {
            return None;
        }
        let nth = self.turn % available;
        self.turn = self.turn.wrapping_add(1);
        peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.available)
            .nth(nth)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{peers, sequence};
    use super::*;

    #[test]
    fn rotates_strictly_and_ignores_weights() {
        let peers = peers(&[1, 5, 1]);
        assert_eq!(sequence(&mut RoundRobin::default(), &peers, 7), "abcabca");
    }

    #[test]
    fn a_down_backend_does_not_double_the_next_ones_load() {
        let mut peers = peers(&[1, 1, 1, 1]);
        peers[1].available = false;
        let picks = sequence(&mut RoundRobin::default(), &peers, 300);
        for letter in ['a', 'c', 'd'] {
            assert_eq!(picks.matches(letter).count(), 100, "{picks}");
        }
        assert!(!picks.contains('b'));
    }

    #[test]
    fn none_available_gives_none() {
        let mut peers = peers(&[1, 1]);
        peers.iter_mut().for_each(|p| p.available = false);
        assert_eq!(
            RoundRobin::default().pick(&peers, [127, 0, 0, 1].into()),
            None
        );
    }
}
