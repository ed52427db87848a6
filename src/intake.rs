//! The intake thread: moves each request from the client side to the [`Dispatch`], which puts
//! it in the bounded channel where the workers take it, holds it for its turn, or has it
//! answered 503 at once by the refusals thread. The intake itself never writes to a client nor
//! waits on one, so no client can stop other clients' requests from reaching the workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::Incoming;
use crate::dispatch::Dispatch;

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
/// or `stop.hurry` is set. Then it closes the dispatch, which lets the workers finish and exit.
pub fn spawn(
    mut incoming: Incoming,
    dispatch: Arc<Dispatch>,
    stop: Arc<StopFlags>,
    grace: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("intake".into())
        .spawn(move || {
            while !stop.stopping.load(Ordering::Relaxed) {
                take_one(&mut incoming, &dispatch);
            }
            incoming.stop_accepting();
            let deadline = Instant::now() + grace;
            while !incoming.drained()
                && Instant::now() < deadline
                && !stop.hurry.load(Ordering::Relaxed)
            {
                take_one(&mut incoming, &dispatch);
            }
            dispatch.close();
        })
}

/// Moves the next request (if one comes within a quarter second) to the dispatch.
fn take_one(incoming: &mut Incoming, dispatch: &Dispatch) {
    if let Some(exchange) = incoming.next_exchange() {
        dispatch.arrive(exchange);
    }
}
