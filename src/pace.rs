//! The slowest a client may send its request body or read its answer: Apache's
//! `mod_reqtimeout` rule (`body=20,MinRate=500` by default), applied to both directions. A
//! transfer may take a grace period, plus one second for every `min_rate` bytes it has moved;
//! past that it is too slow and its connection ends. A blocked read or write is bounded on its
//! own by the socket's timeout (`clientTimeout`); this rule bounds the client that keeps
//! moving, a byte at a time, and so would hold a worker for as long as it liked.
//!
//! Pure: the caller brings the clock.

use std::time::Duration;

/// The rule for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Time every transfer may take whatever its rate (`clientTimeout`).
    pub grace: Duration,
    /// Bytes per second owed after the grace; 0 turns the rule off.
    pub min_rate: u64,
}

impl Pace {
    /// A rule that never finds a transfer too slow.
    pub const OFF: Pace = Pace {
        grace: Duration::ZERO,
        min_rate: 0,
    };

    /// How long a transfer that has moved `bytes` may have taken so far, or `None` when the
    /// rule is off.
    pub fn allowed(&self, bytes: u64) -> Option<Duration> {
        if self.min_rate == 0 {
            return None;
        }
        let earned = Duration::from_secs(bytes / self.min_rate)
            + Duration::from_nanos((bytes % self.min_rate) * 1_000_000_000 / self.min_rate);
        Some(self.grace.saturating_add(earned))
    }

    /// Whether a transfer that has moved `bytes` in `elapsed` is too slow.
    pub fn too_slow(&self, bytes: u64, elapsed: Duration) -> bool {
        self.allowed(bytes).is_some_and(|allowed| elapsed > allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APACHE: Pace = Pace {
        grace: Duration::from_secs(20),
        min_rate: 500,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_rate_earns_time_beyond_the_grace() {
        let cases = [
            // (bytes moved, time taken, too slow)
            (0, ms(20_000), false),
            (0, ms(20_001), true),
            (499, ms(20_998), false),
            (499, ms(20_999), true),
            (500, ms(21_000), false),
            (500, ms(21_001), true),
            (1_000_000, ms(2_019_000), false),
            (1_000_000, ms(2_021_000), true),
            // A byte every five seconds earns 2 ms each: cut soon after the grace.
            (5, ms(25_000), true),
        ];
        for (bytes, elapsed, too_slow) in cases {
            assert_eq!(
                APACHE.too_slow(bytes, elapsed),
                too_slow,
                "{bytes} bytes in {elapsed:?}"
            );
        }
    }

    #[test]
    fn a_rate_of_zero_turns_the_rule_off() {
        assert_eq!(Pace::OFF.allowed(0), None);
        let off = Pace {
            grace: Duration::from_secs(1),
            min_rate: 0,
        };
        assert!(!off.too_slow(0, Duration::from_secs(1_000_000)));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert!(!APACHE.too_slow(u64::MAX, Duration::from_secs(1 << 40)));
        let fast = Pace {
            grace: Duration::MAX,
            min_rate: 1,
        };
        assert_eq!(fast.allowed(u64::MAX), Some(Duration::MAX));
    }
}
