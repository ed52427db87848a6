//! The refusals thread: answers 503 when every worker is busy and the queue (or the client's
//! share of it) is full, discards requests that will not be served, and decides whether a
//! request from the address and port of a connection tinylb ended is a new connection's. All
//! of it used to happen on the intake, where one client that did not read its answers, or
//! trickled a body that had to be discarded, stopped every other client's requests from
//! reaching a worker. Here such a client holds this thread for at most `clientTimeout`, and no
//! request waits behind it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{Dispatch, Handover};
use crate::client::{Answer, Buffers, Exchange};
use crate::stages::{self, StageHistograms};
use crate::switches::Switches;

/// The answer when every worker is busy and the queue is full.
const BUSY: Answer = Answer {
    status: 503,
    message: "Service Unavailable: every worker is busy, try again shortly",
    retry_after: Some(1),
    close: false,
};

/// Starts the thread; it ends once every sender of `refusals` is gone and the channel is empty.
pub fn spawn(
    dispatch: Arc<Dispatch>,
    refusals: Receiver<Handover>,
    switches: Arc<Switches>,
    stages: Arc<StageHistograms>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("refusals".into())
        .spawn(move || {
            let mut buffers = Buffers::default();
            let mut log = RefusalLog::default();
            for handover in refusals.iter() {
                match handover {
                    Handover::Refuse(exchange) => {
                        let (key, _) = exchange.turn_key();
                        log.count_one();
                        refuse_busy(exchange, &switches, &stages, &mut buffers);
                        dispatch.finished(key);
                    }
                    Handover::Discard(exchange) => exchange.discard(),
                    Handover::Decide(mut exchange) => {
                        exchange.settle();
                        if exchange.is_from_ended_connection() || exchange.is_undecided() {
                            dispatch.discard_from_ended(exchange);
                        } else {
                            dispatch.arrive(exchange);
                        }
                    }
                }
            }
        })
}

/// Answers 503; a request whose body was not read ends its connection.
fn refuse_busy(
    exchange: Exchange,
    switches: &Switches,
    stage_histograms: &StageHistograms,
    buffers: &mut Buffers,
) {
    let access = switches.access_log().then(|| exchange.access_line());
    let mut stamps = exchange.stamps();
    let delivered = exchange.answer(&BUSY, buffers);
    stamps.done = stages::stamp();
    let durations = stamps.durations();
    stage_histograms.record(&durations);
    if let Some(line) = access {
        line.log(503, delivered.body_bytes, None, &durations);
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
