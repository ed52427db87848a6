//! What happened to the requests each backend served: counts by status class, errors by kind,
//! and latency, both as a Prometheus histogram and as a recent window for p50/p99 on the status
//! page. Counters are atomics, so recording a request costs a few uncontended instructions;
//! only the latency window takes a (per-backend, short) lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds of the latency histogram buckets, in seconds (Prometheus' defaults).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latencies kept for the percentiles: the last this many requests.
const WINDOW: usize = 512;

/// Why a forward failed, as counted and shown per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect,
    /// No answer within `backendTimeout`.
    Timeout,
    /// Closed, reset or answered something that is not HTTP.
    Broken,
}

/// Counters for one backend.
#[derive(Default)]
pub struct BackendStats {
    /// Answers relayed, by status class: index 0 is 1xx, ..., 4 is 5xx.
    by_class: [AtomicU64; 5],
    connect_errors: AtomicU64,
    timeout_errors: AtomicU64,
    broken_errors: AtomicU64,
    /// Histogram bucket counts (not cumulative), one more than the bounds for +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    micros: Vec<u32>,
    next: usize,
}

/// A copy of the counters at one moment, for the status page, JSON and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Answers by status class, 1xx to 5xx.
    pub by_class: [u64; 5],
    /// Failures to connect.
    pub connect_errors: u64,
    /// Backend timeouts (504).
    pub timeout_errors: u64,
    /// Broken connections and garbage answers (502).
    pub broken_errors: u64,
    /// Cumulative histogram counts per bucket bound, then +Inf (= the count).
    pub cumulative_buckets: Vec<u64>,
    /// Sum of all recorded latencies, in seconds.
    pub latency_sum_seconds: f64,
    /// Median latency over the recent window, in seconds.
    pub p50_seconds: Option<f64>,
    /// 99th percentile latency over the recent window, in seconds.
    pub p99_seconds: Option<f64>,
}

impl StatsSnapshot {
    /// Every answer relayed.
    pub fn served(&self) -> u64 {
        self.by_class.iter().sum()
    }
}

impl BackendStats {
    /// Records an answer relayed to the client: its status and the time since the request
    /// reached a worker.
    pub fn record_answer(&self, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
        let mut recent = self.recent.lock();
        let sample = u32::try_from(micros).unwrap_or(u32::MAX);
        if recent.micros.len() < WINDOW {
            recent.micros.push(sample);
        } else {
            let slot = recent.next;
            recent.micros[slot] = sample;
        }
        recent.next = (recent.next + 1) % WINDOW;
    }

    /// Records a failed attempt.
    pub fn record_error(&self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Connect => &self.connect_errors,
            ErrorKind::Timeout => &self.timeout_errors,
            ErrorKind::Broken => &self.broken_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let by_class = std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed));
        let mut running = 0;
        let cumulative_buckets = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        let mut window = self.recent.lock().micros.clone();
        window.sort_unstable();
        let percentile = |p: f64| -> Option<f64> {
            let last = window.len().checked_sub(1)?;
            let index = ((last as f64) * p).round() as usize;
            Some(f64::from(window[index]) / 1e6)
        };
        StatsSnapshot {
            by_class,
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            timeout_errors: self.timeout_errors.load(Ordering::Relaxed),
            broken_errors: self.broken_errors.load(Ordering::Relaxed),
            cumulative_buckets,
            latency_sum_seconds: self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            p50_seconds: percentile(0.50),
            p99_seconds: percentile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_buckets_and_percentiles() {
        let stats = BackendStats::default();
        for ms in 1..=100 {
            stats.record_answer(200, Duration::from_millis(ms));
        }
        stats.record_answer(503, Duration::from_millis(3));
        stats.record_error(ErrorKind::Connect);
        let snap = stats.snapshot();
        assert_eq!(snap.by_class, [0, 100, 0, 0, 1]);
        assert_eq!(snap.served(), 101);
        assert_eq!(snap.connect_errors, 1);
        assert_eq!(*snap.cumulative_buckets.last().unwrap(), 101);
        assert_eq!(snap.cumulative_buckets[0], 6); // 1..=5 ms and the 3 ms 503
        assert_eq!(snap.p50_seconds, Some(0.05));
        assert_eq!(snap.p99_seconds, Some(0.099));
    }

    #[test]
    fn the_window_keeps_only_recent_requests() {
        let stats = BackendStats::default();
        for _ in 0..WINDOW {
            stats.record_answer(200, Duration::from_secs(9));
        }
        for _ in 0..WINDOW {
            stats.record_answer(200, Duration::from_millis(1));
        }
        assert_eq!(stats.snapshot().p99_seconds, Some(0.001));
    }
}
