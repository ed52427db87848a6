//! How soon the master starts a new child after one died: at once after a crash that came
//! out of the blue, later and later while children keep dying young (a bad binary, a machine
//! out of memory), so a crash loop does not spin.

use std::time::Duration;

/// A child that lived this long was healthy: its crash starts a new streak.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// The wait after the second crash in a streak; it doubles with each one after.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait.
pub const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// The crash streak.
#[derive(Debug, Default)]
pub struct CrashBackoff {
    /// Children in a row that died within [`HEALTHY_AFTER`].
    young_deaths: u32,
}

impl CrashBackoff {
    /// A child died after living `lived`: how long to wait before starting the next.
    pub fn after_crash(&mut self, lived: Duration) -> Duration {
        if lived >= HEALTHY_AFTER {
            self.young_deaths = 0;
        }
        let wait = match self.young_deaths {
            0 => Duration::ZERO,
            n => FIRST_BACKOFF
                .saturating_mul(1 << (n - 1).min(16))
                .min(MAX_BACKOFF),
        };
        self.young_deaths += 1;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YOUNG: Duration = Duration::from_millis(100);

    #[test]
    fn a_crash_loop_backs_off_to_the_cap() {
        let mut backoff = CrashBackoff::default();
        let waits: Vec<u128> = (0..9)
            .map(|_| backoff.after_crash(YOUNG).as_millis())
            .collect();
        assert_eq!(waits, [0, 250, 500, 1000, 2000, 4000, 8000, 16000, 16000]);
        // Far into a streak the doubling must not overflow.
        for _ in 0..100 {
            assert_eq!(backoff.after_crash(YOUNG), MAX_BACKOFF);
        }
    }

    #[test]
    fn a_healthy_child_starts_a_new_streak() {
        let mut backoff = CrashBackoff::default();
        assert_eq!(backoff.after_crash(YOUNG), Duration::ZERO);
        assert_eq!(backoff.after_crash(YOUNG), FIRST_BACKOFF);
        assert_eq!(backoff.after_crash(HEALTHY_AFTER), Duration::ZERO);
        assert_eq!(backoff.after_crash(HEALTHY_AFTER - YOUNG), FIRST_BACKOFF);
    }
}
