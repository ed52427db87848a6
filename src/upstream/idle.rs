//! The idle connections in the origins' pools: counted, and bounded in all by
//! `backendKeepAliveTotal`, which ureq 3 can do neither of (its caps are per Agent, and it does
//! not expose its pool's size).
//!
//! Every pooled connection is wrapped in [`Counted`], which watches ureq probe it: ureq calls
//! `is_open` on a pooled connection when it is about to put it in the pool (its answer read)
//! and when it takes it out for a request, and nowhere else (docs/crates.md). So an open
//! connection alternates between busy and idle at each probe. Only the probe on the way out
//! reaches the socket. On the way in it must take a
//! place in the [`IdleBudget`]; when every place is taken the probe answers "closed", and ureq
//! closes the connection instead of keeping it. A connection dropped while idle (evicted by
//! ureq's per-origin cap or age, or with its Agent) gives its place back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ureq::Error;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// Idle connections over all origins, and the most there may be: one per process, shared by
/// every origin's pool.
#[derive(Debug)]
pub struct IdleBudget {
    limit: AtomicUsize,
    idle: AtomicUsize,
}

impl IdleBudget {
    /// A budget of `limit` idle connections (`backendKeepAliveTotal`).
    pub fn new(limit: usize) -> Arc<IdleBudget> {
        Arc::new(IdleBudget {
            limit: AtomicUsize::new(limit),
            idle: AtomicUsize::new(0),
        })
    }

    /// The most idle connections kept in all.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Idle connections now, over all origins.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }

    /// A reload's new limit; connections over a lower one are dropped by the pools' rebuild.
    pub(super) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Takes a place for a connection going into a pool, if one is free.
    fn take(&self) -> bool {
        self.idle
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |idle| {
                (idle < self.limit()).then_some(idle + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.idle.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One origin's idle connections: how many, and when one last went in.
#[derive(Debug)]
pub(super) struct OriginIdle {
    count: AtomicUsize,
    since: Instant,
    /// Milliseconds from `since` to the last time a connection went into the pool.
    last_in: AtomicU64,
}

impl OriginIdle {
    pub(super) fn new() -> Arc<OriginIdle> {
        Arc::new(OriginIdle {
            count: AtomicUsize::new(0),
            since: Instant::now(),
            last_in: AtomicU64::new(0),
        })
    }

    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether there are idle connections and every one has waited at least `age`.
    pub(super) fn all_older_than(&self, age: Duration) -> bool {
        let last_in = Duration::from_millis(self.last_in.load(Ordering::Relaxed));
        self.count() > 0 && self.since.elapsed().saturating_sub(last_in) >= age
    }

    fn went_in(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = self.since.elapsed().as_millis() as u64;
        self.last_in.store(now, Ordering::Relaxed);
    }

    fn came_out(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last link of a pooled Agent's connector chain: wraps each new connection so that it
/// needs a place in the budget to wait in the pool, and is counted while it does.
#[derive(Debug)]
pub(super) struct CountIdle {
    pub(super) origin: Arc<OriginIdle>,
    pub(super) budget: Arc<IdleBudget>,
}

impl Connector<Box<dyn Transport>> for CountIdle {
    type Out = Counted;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Counted>, Error> {
        let (origin, budget) = (Arc::clone(&self.origin), Arc::clone(&self.budget));
        Ok(chained.map(|inner| Counted::new(inner, origin, budget)))
    }
}

/// One pooled connection, counted while it waits in the pool.
#[derive(Debug)]
pub(super) struct Counted {
    inner: Box<dyn Transport>,
    idle: bool,
    origin: Arc<OriginIdle>,
    budget: Arc<IdleBudget>,
}

impl Counted {
    fn new(inner: Box<dyn Transport>, origin: Arc<OriginIdle>, budget: Arc<IdleBudget>) -> Self {
        Counted {
            inner,
            idle: false,
            origin,
            budget,
        }
    }

    fn leave_pool(&mut self) {
        self.idle = false;
        self.origin.came_out();
        self.budget.give_back();
    }
}

impl Transport for Counted {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.inner.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        if self.idle {
            // Taken out for a request: the probe drops a connection the backend closed, or one
            // it sent bytes on that nobody asked for.
            self.leave_pool();
            return self.inner.is_open();
        }
        // On its way into the pool: only with a place in the budget. ureq would probe here too,
        // but the probe on taking it out tests the same, so one probe (three system calls) is
        // saved on every request.
        if !self.budget.take() {
            return false;
        }
        self.idle = true;
        self.origin.went_in();
        true
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.idle {
            self.leave_pool();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use ureq::unversioned::transport::LazyBuffers;

    use super::*;

    /// A connection whose probe answers what the test says.
    #[derive(Debug)]
    struct Probe {
        open: Arc<AtomicBool>,
        buffers: LazyBuffers,
    }

    impl Transport for Probe {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, _: usize, _: NextTimeout) -> Result<(), Error> {
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, Error> {
            Ok(false)
        }
        fn is_open(&mut self) -> bool {
            self.open.load(Ordering::Relaxed)
        }
    }

    struct Pools {
        budget: Arc<IdleBudget>,
        a: Arc<OriginIdle>,
        b: Arc<OriginIdle>,
        open: Arc<AtomicBool>,
    }

    impl Pools {
        fn new(limit: usize) -> Pools {
            Pools {
                budget: IdleBudget::new(limit),
                a: OriginIdle::new(),
                b: OriginIdle::new(),
                open: Arc::new(AtomicBool::new(true)),
            }
        }

        fn connection(&self, origin: &Arc<OriginIdle>) -> Counted {
            let probe = Probe {
                open: Arc::clone(&self.open),
                buffers: LazyBuffers::new(16, 16),
            };
            Counted::new(
                Box::new(probe),
                Arc::clone(origin),
                Arc::clone(&self.budget),
            )
        }

        /// Idle in all, on a, on b.
        fn idle(&self) -> (usize, usize, usize) {
            (self.budget.idle(), self.a.count(), self.b.count())
        }
    }

    #[test]
    fn a_connection_counts_only_while_it_waits_in_the_pool() {
        let pools = Pools::new(10);
        let mut a1 = pools.connection(&pools.a);
        assert!(a1.is_open()); // answer read: into the pool
        assert_eq!(pools.idle(), (1, 1, 0));
        assert!(a1.is_open()); // taken out for a request
        assert_eq!(pools.idle(), (0, 0, 0));
        assert!(a1.is_open()); // back in
        let mut b1 = pools.connection(&pools.b);
        assert!(b1.is_open());
        assert_eq!(pools.idle(), (2, 1, 1));
        drop(a1); // evicted while idle
        assert_eq!(pools.idle(), (1, 0, 1));

        // The backend closed b1 while it waited: the probe on taking it out fails, and ureq
        // drops it.
        pools.open.store(false, Ordering::Relaxed);
        assert!(!b1.is_open());
        drop(b1);
        assert_eq!(pools.idle(), (0, 0, 0));

        // A connection closed as its answer ends is not probed on its way in: the probe on
        // taking it out drops it.
        let mut a2 = pools.connection(&pools.a);
        assert!(a2.is_open());
        assert_eq!(pools.idle(), (1, 1, 0));
        assert!(!a2.is_open());
        drop(a2);
        assert_eq!(pools.idle(), (0, 0, 0));
    }

    #[test]
    fn no_connection_enters_a_pool_while_the_budget_is_spent() {
        let pools = Pools::new(2);
        let mut a1 = pools.connection(&pools.a);
        let mut b1 = pools.connection(&pools.b);
        let mut a2 = pools.connection(&pools.a);
        assert!(a1.is_open() && b1.is_open());
        assert!(!a2.is_open(), "a third idle connection, budget 2");
        drop(a2); // ureq closes it
        assert_eq!(pools.idle(), (2, 1, 1));

        // Taking one out frees its place for any origin.
        assert!(a1.is_open());
        let mut b2 = pools.connection(&pools.b);
        assert!(b2.is_open());
        assert_eq!(pools.idle(), (2, 0, 2));
        assert!(
            !a1.is_open(),
            "back from its request, but the budget is spent"
        );

        pools.budget.set_limit(0);
        drop(b1);
        assert!(b2.is_open()); // taken out
        assert!(!b2.is_open(), "budget 0 keeps nothing");
        assert_eq!(pools.idle(), (0, 0, 0));
    }

    #[test]
    fn an_origin_is_stale_once_its_last_idle_connection_is_old() {
        let pools = Pools::new(10);
        assert!(
            !pools.a.all_older_than(Duration::ZERO),
            "no idle connection"
        );
        let mut a1 = pools.connection(&pools.a);
        assert!(a1.is_open());
        assert!(pools.a.all_older_than(Duration::ZERO));
        assert!(!pools.a.all_older_than(Duration::from_secs(60)));
    }
}
