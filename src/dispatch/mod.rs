//! Between the intake and the workers: each request arrives here, and each answer written is
//! reported here. The rules of whose turn it is are [`turns`] (pure); this applies them under
//! one mutex and carries out what they decide: a request goes into the workers' channel, or is
//! handed over to the refusals thread ([`refusals`]) to be answered 503, discarded, or (when it
//! may come from a new connection on an ended one's address and port) decided. So the intake
//! only ever moves requests; it never writes to a client, nor waits on one.

pub mod refusals;
pub mod turns;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::client::{Connections, Exchange};
use turns::{Limits, Step, Turns};

/// What the intake (or a worker) hands over to the refusals thread.
pub enum Handover {
    /// Answer 503: every worker is busy and the queue (or the client's share of it) is full.
    Refuse(Exchange),
    /// Never answer it; its connection ends.
    Discard(Exchange),
    /// It comes from the address and port of a connection tinylb ended, which is closed on
    /// both sides: decide whether it is a new connection's (see `Exchange::settle`), then
    /// dispatch or discard it.
    Decide(Exchange),
}

/// What happened to requests that were not forwarded, and to clients that were too slow, for
/// the status page and `/metrics`.
#[derive(Default)]
pub struct ClientCounts {
    /// Answered 503 because the queue, or the client's share of it, was full.
    pub refused_busy: AtomicU64,
    /// Waited for their client's turn (`clientMaxWorkers`) before a worker took them.
    pub waited_for_turn: AtomicU64,
    /// Discarded because their connection pipelined too far ahead.
    pub pipelined_too_far: AtomicU64,
    /// Discarded because tinylb had ended their connection.
    pub from_ended_connections: AtomicU64,
    /// Dropped before reaching a backend because their client had left.
    pub client_gone: AtomicU64,
    /// Request bodies ended for arriving slower than `clientBodyMinRate`.
    pub slow_bodies: AtomicU64,
    /// Answers cut off because the client read slower than `clientSendMinRate`.
    pub slow_readers: AtomicU64,
}

impl ClientCounts {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// See the module doc.
pub struct Dispatch {
    state: Mutex<State>,
    connections: Arc<Connections>,
    counts: Arc<ClientCounts>,
}

struct State {
    turns: Turns<SocketAddr, IpAddr, Exchange>,
    /// The workers' channel; `None` once the process stops serving.
    workers: Option<Sender<Exchange>>,
    /// The refusals thread's channel; `None` once the process stops serving.
    refusals: Option<Sender<Handover>>,
}

impl Dispatch {
    /// Dispatches into `workers` and `refusals` under `limits`, for the connections of
    /// `connections`.
    pub fn new(
        limits: Limits,
        workers: Sender<Exchange>,
        refusals: Sender<Handover>,
        connections: Arc<Connections>,
        counts: Arc<ClientCounts>,
    ) -> Dispatch {
        Dispatch {
            state: Mutex::new(State {
                turns: Turns::new(limits),
                workers: Some(workers),
                refusals: Some(refusals),
            }),
            connections,
            counts,
        }
    }

    /// The counters, shared with the status page.
    pub fn counts(&self) -> &Arc<ClientCounts> {
        &self.counts
    }

    /// Requests waiting for a worker: in the workers' channel, or for their client's turn.
    pub fn queued(&self) -> usize {
        let state = self.state.lock();
        state.queued() + state.turns.waiting()
    }

    /// A request the intake took: to a worker now, behind its connection's request in turn,
    /// into its client's line, or refused.
    pub fn arrive(&self, exchange: Exchange) {
        let mut leftover = Vec::new();
        {
            let mut state = self.state.lock();
            if exchange.is_from_ended_connection() {
                ClientCounts::count(&self.counts.from_ended_connections);
                state.perform(Step::Discard(exchange), &mut leftover);
            } else if exchange.is_undecided() {
                state.hand_over(Handover::Decide(exchange), &mut leftover);
            } else {
                let (key, client) = exchange.turn_key();
                let queued = state.queued();
                let waiting_before = state.turns.waiting();
                let step = state.turns.arrive(key, client, exchange, queued);
                if state.turns.waiting() > waiting_before {
                    ClientCounts::count(&self.counts.waited_for_turn);
                }
                if let Some(step) = step {
                    self.count(&step, None);
                    state.perform(step, &mut leftover);
                }
            }
        }
        run_here(leftover);
    }

    /// The request in turn on connection `key` has its answer written (or refused, or was
    /// discarded): the connection's next request, and one of its client's that waited, may go.
    pub fn finished(&self, key: SocketAddr) {
        let mut leftover = Vec::new();
        {
            let mut state = self.state.lock();
            // Read under the state lock: a new connection on the same address and port is
            // let into the turns (`arrive`) only once its entry is no longer the ended one's,
            // so what is read here is true of every request waiting behind this one.
            let why = if self.connections.is_gone(Some(&key)) {
                Some(&self.counts.client_gone)
            } else if self.connections.is_ending(Some(&key)) {
                Some(&self.counts.from_ended_connections)
            } else {
                None
            };
            let queued = state.queued();
            for step in state.turns.finished(key, why.is_some(), queued) {
                self.count(&step, why);
                state.perform(step, &mut leftover);
            }
        }
        run_here(leftover);
    }

    /// Discards a request found to come from a connection tinylb ended.
    pub fn discard_from_ended(&self, exchange: Exchange) {
        ClientCounts::count(&self.counts.from_ended_connections);
        exchange.discard();
    }

    /// Drops a request whose client has left before it reaches a backend.
    pub fn drop_gone(&self, exchange: Exchange) {
        ClientCounts::count(&self.counts.client_gone);
        exchange.discard();
    }

    /// The process stops serving: nothing more goes to the workers, whose channel then closes
    /// once they have emptied it (the Rust book's shutdown). The requests still held behind
    /// others, or waiting for their client's turn, are discarded.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.workers = None;
        let held = state.turns.take_all();
        let mut leftover = Vec::new();
        for exchange in held {
            state.perform(Step::Discard(exchange), &mut leftover);
        }
        state.refusals = None;
        drop(state);
        run_here(leftover);
    }

    /// Counts a step; `ended_because` is the counter for requests discarded because their
    /// connection is over (`None`: it is not, so a discard means it pipelined too far).
    fn count(&self, step: &Step<Exchange>, ended_because: Option<&AtomicU64>) {
        match (step, ended_because) {
            (Step::Refuse(_), _) => ClientCounts::count(&self.counts.refused_busy),
            (Step::Discard(_), Some(counter)) => ClientCounts::count(counter),
            (Step::Discard(_), None) => ClientCounts::count(&self.counts.pipelined_too_far),
            (Step::Send(_), _) => {}
        }
    }
}

impl State {
    /// Requests in the workers' channel now.
    fn queued(&self) -> usize {
        self.workers.as_ref().map_or(0, Sender::len)
    }

    /// Carries out one step; what cannot be handed to the refusals thread (it has stopped)
    /// goes into `leftover`, for the caller to carry out once the lock is released.
    fn perform(&mut self, step: Step<Exchange>, leftover: &mut Vec<Handover>) {
        let handover = match step {
            Step::Send(exchange) => match self.workers.as_ref() {
                Some(workers) => match workers.try_send(exchange) {
                    Ok(()) => return,
                    // More were sent than the count allowed for (a race with a worker): the
                    // answer is the same as for a full queue.
                    Err(TrySendError::Full(exchange) | TrySendError::Disconnected(exchange)) => {
                        Handover::Refuse(exchange)
                    }
                },
                None => Handover::Discard(exchange),
            },
            Step::Refuse(exchange) => Handover::Refuse(exchange),
            Step::Discard(exchange) => Handover::Discard(exchange),
        };
        self.hand_over(handover, leftover);
    }

    /// Hands over to the refusals thread, or to `leftover` if it has stopped.
    fn hand_over(&mut self, handover: Handover, leftover: &mut Vec<Handover>) {
        match self.refusals.as_ref() {
            Some(refusals) => {
                if let Err(unsent) = refusals.send(handover) {
                    leftover.push(unsent.into_inner());
                }
            }
            None => leftover.push(handover),
        }
    }
}

/// What the refusals thread can no longer take, carried out on this thread: only discards,
/// once the process stops serving (nothing is written).
fn run_here(leftover: Vec<Handover>) {
    for handover in leftover {
        match handover {
            Handover::Refuse(exchange)
            | Handover::Discard(exchange)
            | Handover::Decide(exchange) => exchange.discard(),
        }
    }
}
