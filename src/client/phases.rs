//! Where each client connection is between requests, as far as the whole-head deadline
//! (`clientHeaderTimeout`) and the stuck count need to know. tiny_http reads request heads on
//! threads of its own and says nothing until a head is complete, so tinylb keeps this from the
//! outside: a connection is *serving* from the moment its request is admitted until its answer
//! is written (a tunnel stays serving), and otherwise *waiting* for a head since the end of its
//! last answer, or since it was first seen.
//!
//! [`judge`] is the rule, pure; the phases themselves live in the connection table
//! (`connections.rs`), which the intake, the workers and the census share.

use std::time::{Duration, Instant};

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
}
