//! Where a request's time goes, stage by stage, in the spirit of HAProxy's `Tq/Tw/Tc/Tr/Ta`
//! timers. Each thread that handles a request stamps the moment it passed a point
//! ([`Stamps`]); the stages are the gaps between consecutive stamps, so they add up to the
//! total. They go into the access log line and into one Prometheus histogram per stage
//! ([`StageHistograms`]).
//!
//! A stamp is one read of the monotonic clock (the vDSO, no system call), and recording a
//! request is a dozen relaxed atomic adds. `stageTimers: false` turns both off, so
//! `make bench` can show what measuring costs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether requests are timed: `stageTimers`, process-wide like the log level.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the timers on or off (config `stageTimers`, applied again on reload).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the timers are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The clock read for a stamp, or `None` while the timers are off.
pub fn stamp() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// The stages of one request, in the order it passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From the end of the previous answer on the same connection until the intake took this
    /// request: the client's turn-around, the head on the wire, and tiny_http's hand-over.
    /// Unknown for a connection's first request.
    Client,
    /// Waiting in the channel for a free worker.
    Queue,
    /// From a worker taking the request until a backend connection was ready (pooled or new):
    /// the balancer's pick, building the request, connecting, and any failed attempts.
    Connect,
    /// Sending the request (with its body) and waiting for the backend's response head.
    Response,
    /// Relaying the response body to the client, to its last byte.
    Relay,
    /// From the intake taking the request to its last byte: `Queue` to `Relay` together.
    Total,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::Client,
        Stage::Queue,
        Stage::Connect,
        Stage::Response,
        Stage::Relay,
        Stage::Total,
    ];

    /// The stage's name in the access log and in the metrics' `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Client => "client",
            Stage::Queue => "queue",
            Stage::Connect => "connect",
            Stage::Response => "response",
            Stage::Relay => "relay",
            Stage::Total => "total",
        }
    }
}

/// The moments one request passed, each stamped by the thread that saw it; `None` where the
/// request did not pass that point (tinylb answered it itself) or the timers were off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamps {
    /// The end of the previous answer on the same connection.
    pub previous_answer: Option<Instant>,
    /// The intake took the request from tiny_http.
    pub taken: Option<Instant>,
    /// A worker took it from the channel.
    pub picked_up: Option<Instant>,
    /// The backend connection that answered was ready: the first byte of the request written.
    pub connected: Option<Instant>,
    /// The backend's response head was read.
    pub response_head: Option<Instant>,
    /// The answer's last byte was written to the client.
    pub done: Option<Instant>,
}

impl Stamps {
    /// Each stage's length, in [`Stage::ALL`]'s order. A stage is known when both its ends are.
    pub fn durations(&self) -> Durations {
        let between =
            |from: Option<Instant>, to: Option<Instant>| Some(to?.saturating_duration_since(from?));
        Durations([
            between(self.previous_answer, self.taken),
            between(self.taken, self.picked_up),
            between(self.picked_up, self.connected),
            between(self.connected, self.response_head),
            between(self.response_head, self.done),
            between(self.taken, self.done),
        ])
    }
}

/// One request's stage lengths, in [`Stage::ALL`]'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durations(pub [Option<Duration>; 6]);

impl Durations {
    /// The length of `stage`, if known.
    pub fn of(&self, stage: Stage) -> Option<Duration> {
        self.0[stage as usize]
    }
}

/// Upper bounds of the stage histograms' buckets, in seconds: from 10 µs, since a stage of a
/// fast request is a few microseconds, to `backendTimeout`'s range.
pub const STAGE_BUCKETS: [f64; 18] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One Prometheus histogram per stage, for every request tinylb answered.
#[derive(Default)]
pub struct StageHistograms([Histogram; 6]);

/// Bucket counts (not cumulative; the last is +Inf) and the sum in nanoseconds.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; STAGE_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A copy of one stage's histogram, for `/metrics` and the status page.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSnapshot {
    /// The stage's name.
    pub stage: &'static str,
    /// Requests whose stage was measured.
    pub count: u64,
    /// Their stage lengths together, in seconds.
    pub sum_seconds: f64,
    /// Cumulative counts per bound of [`STAGE_BUCKETS`], then +Inf (= `count`).
    #[serde(skip)]
    pub cumulative_buckets: Vec<u64>,
}

impl StageHistograms {
    /// Counts one request's known stages; nothing while the timers are off.
    pub fn record(&self, durations: &Durations) {
        for (histogram, duration) in self.0.iter().zip(durations.0) {
            if let Some(duration) = duration {
                histogram.record(duration);
            }
        }
    }

    /// Every stage's histogram now, in [`Stage::ALL`]'s order.
    pub fn snapshot(&self) -> Vec<StageSnapshot> {
        Stage::ALL
            .iter()
            .zip(&self.0)
            .map(|(stage, histogram)| histogram.snapshot(stage.name()))
            .collect()
    }
}

impl Histogram {
    fn record(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = STAGE_BUCKETS.partition_point(|&bound| bound < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self, stage: &'static str) -> StageSnapshot {
        let mut running = 0;
        let cumulative_buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        StageSnapshot {
            stage,
            count: running,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            cumulative_buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six points or lengths in microseconds, in the order of [`Stamps`] or [`Stage::ALL`].
    type Micros = [Option<u64>; 6];

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A request stamped at these microseconds after `base` (`None`: not passed).
    fn stamped(base: Instant, at: Micros) -> Stamps {
        let at = at.map(|us| us.map(|us| base + micros(us)));
        Stamps {
            previous_answer: at[0],
            taken: at[1],
            picked_up: at[2],
            connected: at[3],
            response_head: at[4],
            done: at[5],
        }
    }

    #[test]
    fn stages_are_the_gaps_between_stamps() {
        let base = Instant::now();
        // (stamps in µs, expected client, queue, connect, response, relay, total in µs)
        let cases: [(Micros, Micros); 5] = [
            // Relayed on a kept-alive connection: every stage known, the total their sum.
            (
                [
                    Some(0),
                    Some(100),
                    Some(103),
                    Some(110),
                    Some(190),
                    Some(200),
                ],
                [Some(100), Some(3), Some(7), Some(80), Some(10), Some(100)],
            ),
            // A connection's first request: no client stage.
            (
                [None, Some(0), Some(5), Some(6), Some(50), Some(51)],
                [None, Some(5), Some(1), Some(44), Some(1), Some(51)],
            ),
            // tinylb answered itself (no backend): queue and total only.
            (
                [Some(0), Some(10), Some(12), None, None, Some(20)],
                [Some(10), Some(2), None, None, None, Some(10)],
            ),
            // Refused at the intake (queue full): never reached a worker.
            (
                [None, Some(0), None, None, None, Some(4)],
                [None, None, None, None, None, Some(4)],
            ),
            // Timers off: nothing stamped, nothing known.
            ([None; 6], [None; 6]),
        ];
        for (at, expected) in cases {
            let durations = stamped(base, at).durations();
            assert_eq!(durations.0, expected.map(|us| us.map(micros)), "{at:?}");
        }
    }

    #[test]
    fn a_clock_read_out_of_order_counts_zero() {
        let base = Instant::now();
        let stamps = stamped(base, [None, Some(10), Some(5), None, None, Some(20)]);
        assert_eq!(stamps.durations().of(Stage::Queue), Some(Duration::ZERO));
    }

    #[test]
    fn histograms_count_each_known_stage_in_its_bucket() {
        let histograms = StageHistograms::default();
        let base = Instant::now();
        // 10 µs sits on the first bound (le is inclusive); 30 µs is in the third bucket.
        histograms
            .record(&stamped(base, [None, Some(0), Some(10), None, None, Some(30)]).durations());
        histograms
            .record(&stamped(base, [None, Some(0), Some(11), None, None, Some(20)]).durations());
        let snapshot = histograms.snapshot();
        let names: Vec<_> = snapshot.iter().map(|s| s.stage).collect();
        assert_eq!(
            names,
            ["client", "queue", "connect", "response", "relay", "total"]
        );
        let queue = &snapshot[Stage::Queue as usize];
        assert_eq!(queue.count, 2);
        assert_eq!(&queue.cumulative_buckets[..3], &[1, 2, 2]);
        assert!((queue.sum_seconds - 21e-6).abs() < 1e-12);
        let total = &snapshot[Stage::Total as usize];
        assert_eq!(&total.cumulative_buckets[..3], &[0, 1, 2]);
        assert_eq!(*total.cumulative_buckets.last().unwrap(), 2);
        assert_eq!(snapshot[Stage::Client as usize].count, 0);
        assert_eq!(
            snapshot[Stage::Connect as usize].cumulative_buckets.last(),
            Some(&0)
        );
    }

    #[test]
    fn a_stage_past_every_bound_lands_in_inf() {
        let histograms = StageHistograms::default();
        let base = Instant::now();
        let long = 11_000_000; // 11 s
        histograms.record(
            &stamped(base, [None, Some(0), Some(long), None, None, Some(long)]).durations(),
        );
        let queue = &histograms.snapshot()[Stage::Queue as usize];
        assert_eq!(queue.cumulative_buckets[STAGE_BUCKETS.len() - 1], 0);
        assert_eq!(queue.cumulative_buckets[STAGE_BUCKETS.len()], 1);
    }
}
