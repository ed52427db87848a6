//! Which generation of the server this process is, and why it was started: what the status
//! page shows about the process model. The master process hands it to each child in one
//! environment variable; a process run without the master is generation 1 of its own.

use std::time::Instant;

use serde::Serialize;

/// The environment variable that carries a child's [`Generation`].
pub const GENERATION_VAR: &str = "TINYLB_GENERATION";

/// Why a generation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// The first one.
    Start,
    /// The one before died.
    Crash,
    /// The one before held too many stuck connections and asked to be replaced.
    Recycle,
    /// Someone sent SIGHUP: a fresh exec of the binary on disk, with the config file re-read.
    Upgrade,
}

impl Cause {
    /// The word used in logs, the environment and the status page.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Crash => "crash",
            Cause::Recycle => "recycle",
            Cause::Upgrade => "upgrade",
        }
    }

    fn from_name(name: &str) -> Option<Cause> {
        [Cause::Start, Cause::Crash, Cause::Recycle, Cause::Upgrade]
            .into_iter()
            .find(|cause| cause.name() == name)
    }
}

/// Restarts since the master started, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Restarts {
    /// After a child died.
    pub crash: u64,
    /// After a child asked to be replaced.
    pub recycle: u64,
    /// After SIGHUP.
    pub upgrade: u64,
    /// Successors (after SIGHUP or a recycle) that exited, or were killed for not becoming
    /// ready in time, before they served: the generation before them kept serving. They use
    /// up no generation number and count as no upgrade or recycle.
    pub failed: u64,
}

impl Restarts {
    /// Counts one restart for `cause` (the first start is none).
    pub fn count(&mut self, cause: Cause) {
        match cause {
            Cause::Start => {}
            Cause::Crash => self.crash += 1,
            Cause::Recycle => self.recycle += 1,
            Cause::Upgrade => self.upgrade += 1,
        }
    }

    /// Takes back a [`Restarts::count`], for a child that never served.
    pub fn uncount(&mut self, cause: Cause) {
        let count = match cause {
            Cause::Start => return,
            Cause::Crash => &mut self.crash,
            Cause::Recycle => &mut self.recycle,
            Cause::Upgrade => &mut self.upgrade,
        };
        *count = count.saturating_sub(1);
    }
}

/// This process's place in the process model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Whether a master process runs this one (and can replace it).
    pub supervised: bool,
    /// 1 for the first server process, counting up with each replacement.
    pub number: u64,
    /// Why this one was started.
    pub cause: Cause,
    /// The restarts before this one.
    pub restarts: Restarts,
    /// When this process started serving.
    pub started: Instant,
}

impl Generation {
    /// A process run without the master.
    pub fn alone() -> Generation {
        Generation {
            supervised: false,
            number: 1,
            cause: Cause::Start,
            restarts: Restarts::default(),
            started: Instant::now(),
        }
    }

    /// The value of [`GENERATION_VAR`] for a child: `number cause crash recycle upgrade failed`.
    pub fn to_env(&self) -> String {
        let r = &self.restarts;
        format!(
            "{} {} {} {} {} {}",
            self.number,
            self.cause.name(),
            r.crash,
            r.recycle,
            r.upgrade,
            r.failed
        )
    }

    /// Reads what [`Generation::to_env`] wrote; `None` if it is not that. Without the last
    /// count (`failed`), as a master from before it was counted writes it: an upgrade runs the
    /// new binary under the old master.
    pub fn from_env(value: &str) -> Option<Generation> {
        let mut words = value.split(' ');
        let number = words.next()?.parse().ok()?;
        let cause = Cause::from_name(words.next()?)?;
        let mut count = || words.next()?.parse::<u64>().ok();
        let mut restarts = Restarts {
            crash: count()?,
            recycle: count()?,
            upgrade: count()?,
            failed: 0,
        };
        if let Some(failed) = words.next() {
            restarts.failed = failed.parse().ok()?;
        }
        if words.next().is_some() {
            return None;
        }
        Some(Generation {
            supervised: true,
            number,
            cause,
            restarts,
            started: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_round_trips() {
        let mut restarts = Restarts::default();
        for cause in [Cause::Crash, Cause::Upgrade, Cause::Upgrade, Cause::Start] {
            restarts.count(cause);
        }
        assert_eq!(
            restarts,
            Restarts {
                crash: 1,
                recycle: 0,
                upgrade: 2,
                failed: 0
            }
        );
        restarts.count(Cause::Recycle);
        restarts.count(Cause::Crash);
        restarts.uncount(Cause::Crash);
        restarts.uncount(Cause::Start);
        restarts.failed = 3;
        let generation = Generation {
            supervised: true,
            number: 5,
            cause: Cause::Recycle,
            restarts,
            started: Instant::now(),
        };
        assert_eq!(generation.to_env(), "5 recycle 1 1 2 3");
        let back = Generation::from_env(&generation.to_env()).unwrap();
        assert_eq!(
            (back.number, back.cause, back.restarts),
            (5, Cause::Recycle, restarts)
        );
        assert!(back.supervised);
        let from_older_master = Generation::from_env("5 upgrade 1 1 2").unwrap();
        assert_eq!(
            from_older_master.restarts,
            Restarts {
                crash: 1,
                recycle: 1,
                upgrade: 2,
                failed: 0
            }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "5",
            "5 reboot 0 0 0",
            "5 crash 0 0",
            "5 crash 0 0 0 x",
            "5 crash 0 0 0 0 0",
            "x start 0 0 0",
        ] {
            assert_eq!(Generation::from_env(bad), None, "{bad:?}");
        }
    }
}
