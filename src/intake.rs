//! The intake thread: moves each request from the client side into the bounded channel, where
//! the workers take it. When the channel is full it answers 503 with `Retry-After` at once, so
//! an overload gets fast refusals instead of a queue that grows without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::client::{Answer, Buffers, Exchange, Incoming};
use crate::stages::{self, StageHistograms};
use crate::switches::Switches;

/// The answer when every worker is busy and the queue is full.
const BUSY: Answer = Answer {
    status: 503,
    message: "Service Unavailable: every worker is busy, try again shortly",
    retry_after: Some(1),
    close: false,
};

/// How the intake is told to stop: `stopping` starts the drain, `hurry` (a second signal) ends
/// it at once.
#[derive(Default)]
pub struct StopFlags {
    /// Stop accepting, then drain the connections already open.
    pub stopping: AtomicBool,
    /// Stop draining now.
    pub hurry: AtomicBool,
}

/// Starts the intake thread. When `stop.stopping` is set (it notices within a quarter second)
/// it stops accepting and keeps taking requests from connections already open, answering each
/// with `Connection: close`, until they are done (see [`Incoming::drained`]), `grace` is over,
/// or `stop.hurry` is set. Then it drops `queue`, which lets the workers finish and exit.
pub fn spawn(
    mut incoming: Incoming,
    queue: Sender<Exchange>,
    switches: Arc<Switches>,
    stages: Arc<StageHistograms>,
    stop: Arc<StopFlags>,
    grace: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("intake".into())
        .spawn(move || {
            let mut intake = Intake {
                queue,
                switches,
                stages,
                buffers: Buffers::default(),
                refusals: RefusalLog::default(),
            };
            while !stop.stopping.load(Ordering::Relaxed) {
                intake.take_one(&mut incoming);
            }
            incoming.stop_accepting();
            let deadline = Instant::now() + grace;
            while !incoming.drained()
                && Instant::now() < deadline
                && !stop.hurry.load(Ordering::Relaxed)
            {
                intake.take_one(&mut incoming);
            }
        })
}

/// The intake thread's state.
struct Intake {
    queue: Sender<Exchange>,
    switches: Arc<Switches>,
    stages: Arc<StageHistograms>,
    buffers: Buffers,
    refusals: RefusalLog,
}

impl Intake {
    /// Moves the next request (if one comes within a quarter second) into the queue, or
    /// refuses it when the queue is full.
    fn take_one(&mut self, incoming: &mut Incoming) {
        let Some(exchange) = incoming.next_exchange() else {
            return;
        };
        match self.queue.try_send(exchange) {
            Ok(()) => {}
            Err(TrySendError::Full(exchange)) => {
                self.refusals.count_one();
                self.refuse_busy(exchange);
            }
            // The workers are gone, which cannot happen while this thread holds the sender.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Answers 503; a request whose body was not read ends its connection.
    fn refuse_busy(&mut self, exchange: Exchange) {
        let access = self.switches.access_log().then(|| exchange.access_line());
        let mut stamps = exchange.stamps();
        let unread_body = !exchange.verdict().is_ok_and(|head| head.has_no_body());
        let answer = Answer {
            close: unread_body,
            ..BUSY
        };
        let delivered = exchange.answer(&answer, &mut self.buffers);
        stamps.done = stages::stamp();
        let durations = stamps.durations();
        self.stages.record(&durations);
        if let Some(line) = access {
            line.log(503, delivered.body_bytes, None, &durations);
        }
    }
}

/// Counts 503s for a full queue and logs them at most once a second: under overload a line per
/// refusal would cost more than the refusal itself.
#[derive(Default)]
struct RefusalLog {
    since_last_line: u64,
    last_line: Option<Instant>,
}

impl RefusalLog {
    fn count_one(&mut self) {
        self.since_last_line += 1;
        if self
            .last_line
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            log::warn!(
                "every worker is busy and the queue is full: answered {} requests with 503",
                self.since_last_line
            );
            self.since_last_line = 0;
            self.last_line = Some(Instant::now());
        }
    }
}
