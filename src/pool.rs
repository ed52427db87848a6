//! The fixed pool of worker threads. Each takes requests from the bounded channel and forwards
//! them; the pool size bounds how many backend calls run at once, whatever the client load.
//! Shutdown is the Rust book's: drop the channel's sender, and each worker finishes what is
//! queued, then exits.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, select};

use crate::client::{Buffers, Exchange};
use crate::dispatch::Dispatch;
use crate::forward::Forwarder;

/// How busy the workers are, for the status page and the shutdown log.
pub struct PoolCounters {
    busy: AtomicUsize,
    served: AtomicUsize,
    /// The channel's receiving end, for its length.
    queue: Receiver<Exchange>,
}

impl PoolCounters {
    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Requests being forwarded right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Requests finished since start.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

/// The running workers.
pub struct WorkerPool {
    size: usize,
    counters: Arc<PoolCounters>,
    /// Each worker sends once when it exits, so shutdown can wait with a deadline (a
    /// `JoinHandle` cannot).
    exited: Receiver<()>,
}

impl WorkerPool {
    /// Starts `size` workers reading from `requests`; each reports every answer written to
    /// `dispatch`, which may then send the connection's (or the client's) next request.
    pub fn start(
        size: usize,
        requests: Receiver<Exchange>,
        forwarder: Arc<Forwarder>,
        dispatch: Arc<Dispatch>,
    ) -> std::io::Result<WorkerPool> {
        let counters = Arc::new(PoolCounters {
            busy: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            queue: requests.clone(),
        });
        let (exit_sender, exited) = crossbeam_channel::bounded(size);
        for n in 0..size {
            let requests = requests.clone();
            let forwarder = Arc::clone(&forwarder);
            let dispatch = Arc::clone(&dispatch);
            let counters = Arc::clone(&counters);
            let exit_sender: Sender<()> = exit_sender.clone();
            std::thread::Builder::new()
                .name(format!("worker-{n}"))
                .spawn(move || {
                    let mut buffers = Buffers::default();
                    for exchange in requests.iter() {
                        let (connection, _) = exchange.turn_key();
                        counters.busy.fetch_add(1, Ordering::Relaxed);
                        if exchange.client_gone() {
                            // It waited in the queue while its client left.
                            dispatch.drop_gone(exchange);
                        } else {
                            // A bug must cost one request, not a worker: tiny_http answers a
                            // request dropped unanswered with 500 itself.
                            let result = catch_unwind(AssertUnwindSafe(|| {
                                forwarder.handle(exchange, &mut buffers);
                            }));
                            if result.is_err() {
                                log::error!("a worker panicked while forwarding a request");
                                buffers = Buffers::default();
                            }
                        }
                        counters.busy.fetch_sub(1, Ordering::Relaxed);
                        counters.served.fetch_add(1, Ordering::Relaxed);
                        dispatch.finished(connection);
                    }
                    let _ = exit_sender.send(());
                })?;
        }
        Ok(WorkerPool {
            size,
            counters,
            exited,
        })
    }

    /// The pool's counters, shared with the status page.
    pub fn counters(&self) -> &Arc<PoolCounters> {
        &self.counters
    }

    /// Waits until every worker has exited (the channel's sender must be gone), the deadline
    /// passes, or `abort` fires. Returns how many workers were still busy when it gave up.
    pub fn wait(&self, deadline: Instant, abort: &Receiver<()>) -> usize {
        let mut exited = 0;
        while exited < self.size {
            select! {
                recv(self.exited) -> message => {
                    if message.is_err() { break; }
                    exited += 1;
                }
                recv(abort) -> _ => return self.counters.busy(),
                default(deadline.saturating_duration_since(Instant::now())) => return self.counters.busy(),
            }
        }
        0
    }
}
