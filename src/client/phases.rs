//! Where each client connection is between requests, as far as the whole-head deadline
//! (`clientHeaderTimeout`) and the stuck count need to know. tiny_http reads request heads on
//! threads of its own and says nothing until a head is complete, so tinylb keeps this from the
//! outside: a connection is *serving* from the moment its request is admitted until its answer
//! is written (a tunnel stays serving), and otherwise *waiting* for a head since the end of its
//! last answer, or since it was first seen.
//!
//! [`judge`] is the rule, pure; [`Phases`] is the table the intake, the workers and the census
//! share (two short lock holds per request).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One connection's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A request was admitted and is not answered yet, or the connection is a tunnel.
    Serving,
    /// Waiting for its first request head; first seen at this moment.
    New(Instant),
    /// Waiting for its next request head since its last answer ended, at this moment.
    Waiting(Instant),
    /// tinylb ended it at this moment (the head deadline passed).
    Ended(Instant),
}

/// What to do with one connection, by [`judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: it is being served, or within its deadlines.
    Fine,
    /// Its head deadline passed: end it, with `408` when part of a head has arrived (a
    /// connection that sent nothing since its last answer is closed silently, as an idle
    /// keep-alive connection is by nginx and HAProxy).
    Overdue { answer_408: bool },
    /// No thread serves it any more: silent beyond `clientTimeout` while not serving, or ended
    /// by tinylb and still open well after.
    Stuck,
}

/// How long after tinylb ended a connection tiny_http must have closed it; a connection still
/// open then is held by a thread that no longer reads it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The limits [`judge`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `clientHeaderTimeout`: the most a whole request head may take.
    pub head: Duration,
    /// Silence (nothing received) beyond which a connection not being served is stuck:
    /// `clientTimeout` and a little slack, since tiny_http would have closed it by then.
    pub silence: Duration,
}

/// What the kernel says the client has sent.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    /// Time since data last arrived (or since the connection was made).
    pub since_received: Duration,
    /// Whether any byte ever arrived.
    pub anything: bool,
}

/// The rule for one connection: its `phase`, what the client has sent, and `now`.
pub fn judge(phase: Phase, heard: Heard, now: Instant, limits: Limits) -> Verdict {
    let (since, head_begun) = match phase {
        Phase::Serving => return Verdict::Fine,
        Phase::Ended(at) if now.saturating_duration_since(at) > CLOSE_GRACE => {
            return Verdict::Stuck;
        }
        Phase::Ended(_) => return Verdict::Fine,
        _ if heard.since_received > limits.silence => return Verdict::Stuck,
        // Any byte on a new connection is part of its first head; after an answer, only
        // bytes that came after it.
        Phase::New(since) => (since, heard.anything),
        Phase::Waiting(since) => (
            since,
            heard.since_received < now.saturating_duration_since(since),
        ),
    };
    if now.saturating_duration_since(since) > limits.head {
        Verdict::Overdue {
            answer_408: head_begun,
        }
    } else {
        Verdict::Fine
    }
}

/// The phase of every client connection tinylb has seen, by the client's address.
#[derive(Default)]
pub struct Phases(Mutex<HashMap<SocketAddr, Phase>>);

impl Phases {
    /// A request from `peer` was admitted. Returns the phase its connection was in: `None` or
    /// `New` for a connection's first request, `Waiting` since the previous answer.
    pub fn serving(&self, peer: Option<&SocketAddr>) -> Option<Phase> {
        self.0.lock().insert(*peer?, Phase::Serving)
    }

    /// The answer to `peer` is written and the connection stays open: its next head is due
    /// within the deadline. A connection that ends after its answer because the client asked
    /// is forgotten instead (`keep_alive` false), so that a new connection from the same
    /// address and port is not taken for it.
    pub fn answered(&self, peer: Option<&SocketAddr>, keep_alive: bool) {
        if let Some(peer) = peer {
            let mut table = self.0.lock();
            if keep_alive {
                table.insert(*peer, Phase::Waiting(Instant::now()));
            } else {
                table.remove(peer);
            }
        }
    }

    /// A copy of the table, for a census that must not hold the lock while it looks at sockets.
    pub(super) fn snapshot(&self) -> HashMap<SocketAddr, Phase> {
        self.0.lock().clone()
    }

    /// Marks `peer` ended if it is still in the phase the census judged; false if it moved on
    /// meanwhile (its request was admitted), and then it must be left alone.
    pub(super) fn end_if_still(&self, peer: SocketAddr, judged: Phase) -> bool {
        let mut table = self.0.lock();
        match table.get(&peer) {
            Some(phase) if *phase == judged => {
                table.insert(peer, Phase::Ended(Instant::now()));
                true
            }
            _ => false,
        }
    }

    /// After a census: forgets connections that are gone, and starts the clock for new ones.
    pub(super) fn update(&self, open: &[SocketAddr], first_seen: &[SocketAddr], at: Instant) {
        let mut table = self.0.lock();
        let open: std::collections::HashSet<&SocketAddr> = open.iter().collect();
        table.retain(|peer, _| open.contains(peer));
        for peer in first_seen {
            table.entry(*peer).or_insert(Phase::New(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head: Duration::from_secs(10),
        silence: Duration::from_secs(21),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_verdicts() {
        let now = Instant::now() + secs(100);
        let waiting = |waited: u64| Phase::Waiting(now - secs(waited));
        let new = |seen: u64| Phase::New(now - secs(seen));
        let ended = |ago: u64| Phase::Ended(now - secs(ago));
        let cases = [
            // (phase, seconds since the client sent anything, any byte ever, verdict)
            (Phase::Serving, 60, true, Verdict::Fine),
            (waiting(5), 5, true, Verdict::Fine),
            (waiting(10), 10, true, Verdict::Fine),
            // Nothing since the answer (an idle keep-alive connection): closed silently.
            (
                waiting(11),
                12,
                true,
                Verdict::Overdue { answer_408: false },
            ),
            (
                waiting(11),
                11,
                true,
                Verdict::Overdue { answer_408: false },
            ),
            // A byte 1 s ago, after the answer 11 s ago: a head begun, so 408.
            (waiting(11), 1, true, Verdict::Overdue { answer_408: true }),
            // A new connection: any byte at all is a head begun, even before it was seen.
            (new(9), 12, true, Verdict::Fine),
            (new(11), 12, true, Verdict::Overdue { answer_408: true }),
            (new(11), 12, false, Verdict::Overdue { answer_408: false }),
            (waiting(30), 22, true, Verdict::Stuck),
            // Exactly the silence limit is not yet stuck, exactly the grace not yet either.
            (
                waiting(15),
                21,
                true,
                Verdict::Overdue { answer_408: false },
            ),
            (ended(2), 30, true, Verdict::Fine),
            (new(30), 22, false, Verdict::Stuck),
            (ended(1), 30, true, Verdict::Fine),
            (ended(3), 0, true, Verdict::Stuck),
        ];
        for (phase, since_received, anything, verdict) in cases {
            let heard = Heard {
                since_received: secs(since_received),
                anything,
            };
            assert_eq!(
                judge(phase, heard, now, LIMITS),
                verdict,
                "{phase:?}, {heard:?}"
            );
        }
    }

    #[test]
    fn the_table_follows_requests_and_forgets_closed_connections() {
        let phases = Phases::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:1001".parse().unwrap(),
        );
        let at = Instant::now();
        phases.update(&[a, b], &[a, b], at);
        assert_eq!(phases.snapshot()[&a], Phase::New(at));
        assert_eq!(phases.serving(Some(&a)), Some(Phase::New(at)));
        // Judged waiting, but admitted meanwhile: left alone.
        assert!(!phases.end_if_still(a, Phase::New(at)));
        assert!(phases.end_if_still(b, Phase::New(at)));
        assert!(matches!(phases.snapshot()[&b], Phase::Ended(_)));
        phases.answered(Some(&a), true);
        assert!(matches!(phases.snapshot()[&a], Phase::Waiting(t) if t >= at));
        // A census that no longer sees b forgets it; a second first sighting keeps the clock.
        phases.update(&[a], &[a], Instant::now() + secs(5));
        let table = phases.snapshot();
        assert!(!table.contains_key(&b));
        assert!(matches!(table[&a], Phase::Waiting(t) if t < Instant::now() + secs(1)));
        // The next request sees when the previous answer ended; a client that asked to close
        // is forgotten with its answer, so its address and port start afresh.
        assert!(matches!(phases.serving(Some(&a)), Some(Phase::Waiting(_))));
        phases.answered(Some(&a), false);
        assert_eq!(phases.serving(Some(&a)), None);
    }
}
