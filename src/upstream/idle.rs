//! Counting the idle connections in an origin's pool, which ureq 3 does not expose.
//!
//! Every pooled connection is wrapped in [`Counted`], which watches ureq probe it: ureq calls
//! `is_open` on a connection exactly twice in its life in the pool, when it is about to go in
//! (after its answer was read) and when it is taken out for a request (docs/crates.md). So an
//! open connection alternates: the first probe that finds it open makes it idle, the next one
//! busy again. A connection dropped while idle (evicted by ureq's caps or age, or with its
//! Agent) stops counting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ureq::Error;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// The last link of a pooled Agent's connector chain: wraps each new connection so that it
/// counts itself in `idle` while it waits in the pool.
#[derive(Debug)]
pub(super) struct CountIdle(pub(super) Arc<AtomicUsize>);

impl Connector<Box<dyn Transport>> for CountIdle {
    type Out = Counted;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Counted>, Error> {
        Ok(chained.map(|inner| Counted::new(inner, Arc::clone(&self.0))))
    }
}

/// One connection, counted in `count` while it sits idle in the pool.
#[derive(Debug)]
pub(super) struct Counted {
    inner: Box<dyn Transport>,
    idle: bool,
    count: Arc<AtomicUsize>,
}

impl Counted {
    fn new(inner: Box<dyn Transport>, count: Arc<AtomicUsize>) -> Counted {
        Counted {
            inner,
            idle: false,
            count,
        }
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
        let open = self.inner.is_open();
        if open {
            self.idle = !self.idle;
            if self.idle {
                self.count.fetch_add(1, Ordering::Relaxed);
            } else {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        open
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.idle {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use ureq::unversioned::transport::LazyBuffers;

    use super::*;

    /// A connection whose probe answers what the test says.
    #[derive(Debug)]
    struct Probe {
        open: Arc<std::sync::atomic::AtomicBool>,
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

    #[test]
    fn a_connection_counts_only_while_it_waits_in_the_pool() {
        let count = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connection = || {
            let probe = Probe {
                open: Arc::clone(&open),
                buffers: LazyBuffers::new(16, 16),
            };
            Counted::new(Box::new(probe), Arc::clone(&count))
        };
        let idle = || count.load(Ordering::Relaxed);

        let mut a = connection();
        assert!(a.is_open()); // answer read: into the pool
        assert_eq!(idle(), 1);
        assert!(a.is_open()); // taken out for a request
        assert_eq!(idle(), 0);
        assert!(a.is_open()); // back in
        let mut b = connection();
        assert!(b.is_open());
        assert_eq!(idle(), 2);
        drop(a); // evicted while idle
        assert_eq!(idle(), 1);

        // The backend closed b while it waited: the probe on taking it out fails, and ureq
        // drops it.
        open.store(false, Ordering::Relaxed);
        assert!(!b.is_open());
        drop(b);
        assert_eq!(idle(), 0);

        // A connection that is closed when its answer ends never enters the pool.
        let mut c = connection();
        assert!(!c.is_open());
        drop(c);
        assert_eq!(idle(), 0);
    }
}
