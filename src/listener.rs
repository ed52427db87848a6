//! The front door: a tiny_http server on a listening socket tinylb binds itself, and the intake
//! thread that moves each parsed request into the bounded channel. When the channel is full the
//! intake answers 503 with `Retry-After` at once, so an overload gets fast refusals instead of a
//! queue that grows without bound.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::forward::{Forwarder, Job};
use crate::relay::Buffers;

/// Binds the proxy's address; the error names it, since "address in use" alone does not say
/// which one.
pub fn bind(addr: SocketAddr) -> Result<(tiny_http::Server, SocketAddr), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok((server, local))
}

/// Starts the intake thread. It stops when `stopping` is set and `server.unblock()` wakes it;
/// it then drops `queue`, which lets the workers drain and exit.
pub fn spawn_intake(
    server: Arc<tiny_http::Server>,
    queue: Sender<Job>,
    forwarder: Arc<Forwarder>,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("intake".into())
        .spawn(move || {
            let mut buffers = Buffers::default();
            let mut refusals = RefusalLog::default();
            loop {
                let request = match server.recv() {
                    Ok(request) => request,
                    Err(_) if stopping.load(Ordering::Relaxed) => return,
                    Err(error) => {
                        log::error!("the listener reported an error: {error}");
                        continue;
                    }
                };
                let Some(job) = forwarder.admit(request) else {
                    continue;
                };
                match queue.try_send(job) {
                    Ok(()) => {}
                    Err(TrySendError::Full(job)) => {
                        refusals.count_one();
                        forwarder.refuse_busy(job, &mut buffers);
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        })
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
