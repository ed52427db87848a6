//! When a request's backend connection was ready, for the `connect` and `response` stages
//! (see [`crate::stages`]). ureq does the whole exchange in one blocking call: it takes a
//! pooled connection or opens one, writes the request, and reads the response head. The one
//! moment between "connection ready" and "request on its way" that tinylb can see is ureq's
//! first write on the connection, so every connection is wrapped in [`Marked`], which stamps
//! that write.
//!
//! The call runs on the worker's own thread (ureq spawns none without a global timeout), so
//! the stamp is kept in a thread-local: [`watch`] before the call, [`first_write`] after it.
//! The same link also notes whether the call opened a connection, for the retry rule: only a
//! reused connection earns a second try on the same backend.

use std::cell::Cell;
use std::time::Instant;

use ureq::Error;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

use crate::stages;

/// Where this thread's current call stands.
#[derive(Clone, Copy)]
enum Watch {
    /// Not timed (the timers are off, or no call is being watched).
    Off,
    /// Watched, nothing written yet.
    Waiting,
    /// The first write came at this moment.
    At(Instant),
}

thread_local! {
    static WATCH: Cell<Watch> = const { Cell::new(Watch::Off) };
    /// Whether the current call opened a connection (rather than taking a pooled one).
    static OPENED: Cell<bool> = const { Cell::new(false) };
}

/// Starts watching for the next call's first write on this thread, if the timers are on.
pub(super) fn watch() {
    let watch = if stages::enabled() {
        Watch::Waiting
    } else {
        Watch::Off
    };
    WATCH.with(|w| w.set(watch));
    OPENED.with(|o| o.set(false));
}

/// Whether the watched call opened a new connection. ureq asks the connector chain only when
/// no pooled connection is left, so a call that did not ran on a reused one.
pub(super) fn opened_a_connection() -> bool {
    OPENED.with(Cell::get)
}

/// When the watched call first wrote to its connection, if it did; stops watching.
pub(super) fn first_write() -> Option<Instant> {
    match WATCH.with(|w| w.replace(Watch::Off)) {
        Watch::At(at) => Some(at),
        Watch::Off | Watch::Waiting => None,
    }
}

/// The last link of an Agent's connector chain: wraps each new connection in [`Marked`].
/// ureq pools the wrapped connection, so a reused one is marked too.
#[derive(Debug)]
pub(super) struct MarkFirstWrite;

impl<In: Transport> Connector<In> for MarkFirstWrite {
    type Out = Marked<In>;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Marked<In>>, Error> {
        if chained.is_some() {
            OPENED.with(|o| o.set(true));
        }
        Ok(chained.map(Marked))
    }
}

/// A backend connection whose writes stamp the watched call's first write.
#[derive(Debug)]
pub(super) struct Marked<T>(T);

impl<T: Transport> Transport for Marked<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        WATCH.with(|w| {
            if let Watch::Waiting = w.get() {
                w.set(Watch::At(Instant::now()));
            }
        });
        self.0.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.0.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.0.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}
