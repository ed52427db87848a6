//! Least connections: the available backend with the fewest connections in use relative to its
//! weight (a backend of weight 2 may carry twice the load): requests in flight plus open
//! tunnels, since a WebSocket is a connection the backend serves for as long as it lasts. Ties are broken by a rotating start,
//! so an idle cluster is still served in turn rather than always by the first backend.

use std::net::IpAddr;

use super::{Peer, Strategy};

/// Where the next tie-breaking scan starts.
#[derive(Debug, Default)]
pub struct LeastConnections {
    start: usize,
}

impl Strategy for LeastConnections {
    fn pick(&mut self, peers: &[Peer], _client: IpAddr) -> Option<usize> {
        if peers.is_empty() {
            return None;
        }
        let start = self.start % peers.len();
        self.start = start + 1;
        let mut best: Option<usize> = None;
        for i in (start..peers.len()).chain(0..start) {
            let peer = &peers[i];
            if !peer.available {
                continue;
            }
            // load / weight < best's load / best's weight, without division.
            let less_loaded =
                |b: &Peer| load(peer) * u128::from(b.weight) < load(b) * u128::from(peer.weight);
            if best.is_none_or(|b| less_loaded(&peers[b])) {
                best = Some(i);
            }
        }
        best
    }
}

fn load(peer: &Peer) -> u128 {
    peer.in_flight as u128 + peer.tunnels as u128
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{peers, sequence};
    use super::*;

    #[test]
    fn picks_the_least_loaded() {
        let mut peers = peers(&[1, 1, 1]);
        peers[0].in_flight = 4;
        peers[1].in_flight = 1;
        peers[2].in_flight = 2;
        assert_eq!(sequence(&mut LeastConnections::default(), &peers, 3), "bbb");
    }

    #[test]
    fn load_is_relative_to_weight() {
        let mut peers = peers(&[1, 3]);
        peers[0].in_flight = 1;
        peers[1].in_flight = 2; // 2/3 < 1/1
        assert_eq!(sequence(&mut LeastConnections::default(), &peers, 2), "bb");
    }

    #[test]
    fn open_tunnels_count_as_load() {
        let mut peers = peers(&[1, 1]);
        peers[0].tunnels = 3;
        peers[1].in_flight = 2;
        assert_eq!(sequence(&mut LeastConnections::default(), &peers, 2), "bb");
        peers[1].tunnels = 2; // 4 against 3
        assert_eq!(sequence(&mut LeastConnections::default(), &peers, 2), "aa");
    }

    #[test]
    fn ties_rotate() {
        let peers = peers(&[1, 1, 1]);
        assert_eq!(
            sequence(&mut LeastConnections::default(), &peers, 6),
            "abcabc"
        );
    }

    #[test]
    fn skips_unavailable() {
        let mut peers = peers(&[1, 1]);
        peers[0].available = false;
        peers[1].in_flight = 9;
        assert_eq!(sequence(&mut LeastConnections::default(), &peers, 2), "bb");
    }
}
