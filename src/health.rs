//! Is a backend fit for traffic? The state machine of one backend, HAProxy's rise and fall: a backend that is up goes
//! down after `fall` failed checks in a row, one that is down comes back after `rise` passed
//! checks in a row, and a request that could not even connect takes it down at once (a passive
//! check). Pure, so every case is a unit test: the backend keeps the state, logs the flips and
//! counts them; the [`crate::health_checks`] thread produces the check results.

/// Where one backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// Checks passed in a row (0 after a failure).
    passed: u32,
    /// Checks failed in a row (0 after a pass).
    failed: u32,
}

/// What one observation did to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// The state stayed as it was.
    None,
    /// The backend came back after this many passed checks.
    Up { passed: u32 },
    /// The backend went down after this many failed checks (1 for a failed connect).
    Down { failed: u32 },
}

impl HealthState {
    /// A state set directly, as the first check round at start-up does: waiting for `fall`
    /// failures there would send traffic to a backend already known to be dead.
    pub fn starting(up: bool) -> HealthState {
        HealthState {
            up,
            passed: 0,
            failed: 0,
        }
    }

    /// Whether the backend may get traffic.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Takes one active check's result into account.
    pub fn check(&mut self, passed: bool, rise: u32, fall: u32) -> Flip {
        if passed {
            self.passed = self.passed.saturating_add(1);
            self.failed = 0;
            if !self.up && self.passed >= rise {
                self.up = true;
                return Flip::Up {
                    passed: self.passed,
                };
            }
        } else {
            self.failed = self.failed.saturating_add(1);
            self.passed = 0;
            if self.up && self.failed >= fall {
                self.up = false;
                return Flip::Down {
                    failed: self.failed,
                };
            }
        }
        Flip::None
    }

    /// A request could not connect: down now; the active checks bring it back after `rise`
    /// passes.
    pub fn connect_failed(&mut self) -> Flip {
        self.passed = 0;
        if self.up {
            self.up = false;
            return Flip::Down { failed: 1 };
        }
        Flip::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs checks given as `+` (pass) and `-` (fail) and writes each result: `.` for no flip,
    /// `U` for up, `D` for down.
    fn run(state: &mut HealthState, checks: &str, rise: u32, fall: u32) -> String {
        checks
            .chars()
            .map(|c| match state.check(c == '+', rise, fall) {
                Flip::None => '.',
                Flip::Up { .. } => 'U',
                Flip::Down { .. } => 'D',
            })
            .collect()
    }

    #[test]
    fn rise_and_fall_count_results_in_a_row() {
        #[rustfmt::skip]
        let cases = [
            // starts up, checks, rise, fall, flips
            (true, "--+--", 2, 3, "....."),
            (true, "---", 2, 3, "..D"),
            (true, "-", 2, 1, "D"),
            (false, "+-++", 2, 3, "...U"),
            (false, "+", 1, 3, "U"),
            (false, "++++", 2, 3, ".U.."),
            (true, "---+--+++", 2, 3, "..D....U."),
        ];
        for (up, checks, rise, fall, expected) in cases {
            let mut state = HealthState::starting(up);
            assert_eq!(
                run(&mut state, checks, rise, fall),
                expected,
                "starting {up}, checks {checks}, rise {rise}, fall {fall}"
            );
        }
    }

    #[test]
    fn a_flip_says_how_many_results_it_took() {
        let mut state = HealthState::starting(true);
        state.check(false, 2, 3);
        state.check(false, 2, 3);
        assert_eq!(state.check(false, 2, 3), Flip::Down { failed: 3 });
        assert!(!state.is_up());
        state.check(true, 2, 3);
        assert_eq!(state.check(true, 2, 3), Flip::Up { passed: 2 });
        assert!(state.is_up());
    }

    #[test]
    fn a_failed_connect_takes_it_down_at_once_and_resets_the_passes() {
        let mut state = HealthState::starting(true);
        assert_eq!(state.connect_failed(), Flip::Down { failed: 1 });
        assert!(!state.is_up());
        assert_eq!(state.connect_failed(), Flip::None);
        // One pass before the failed connect does not count toward rise.
        let mut state = HealthState::starting(false);
        state.check(true, 2, 3);
        state.connect_failed();
        assert_eq!(state.check(true, 2, 3), Flip::None);
        assert_eq!(state.check(true, 2, 3), Flip::Up { passed: 2 });
    }

    #[test]
    fn counters_do_not_overflow() {
        let mut state = HealthState {
            up: true,
            passed: u32::MAX,
            failed: 0,
        };
        assert_eq!(state.check(true, 2, 3), Flip::None);
        assert_eq!(state.passed, u32::MAX);
        let mut state = HealthState {
            up: false,
            passed: 0,
            failed: u32::MAX,
        };
        assert_eq!(state.check(false, 2, 3), Flip::None);
        assert_eq!(state.failed, u32::MAX);
    }
}
