//! The request path's settings that a live reload may change: read on every request without a
//! lock that workers could contend on, written only by the reload thread.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::config::Config;
use crate::pace::Pace;
use crate::stages;
use crate::upstream::HandshakeTimeouts;

/// See the module doc.
pub struct Switches {
    /// Whether to add the seed article's `X-Forwarded-Server` header.
    forwarded_server_header: AtomicBool,
    /// Whether to write an access log line per request.
    access_log: AtomicBool,
    /// Timeouts for a tunnel's handshake, which does not go through ureq.
    handshake_timeouts: RwLock<HandshakeTimeouts>,
    /// The slowest a request body may arrive and an answer may be read.
    paces: RwLock<(Pace, Pace)>,
}

impl Switches {
    /// The switches as `config` sets them.
    pub fn new(config: &Config) -> Switches {
        stages::set_enabled(config.stage_timers);
        Switches {
            forwarded_server_header: AtomicBool::new(config.forwarded_server_header),
            access_log: AtomicBool::new(config.access_log),
            handshake_timeouts: RwLock::new(handshake_timeouts(config)),
            paces: RwLock::new(paces(config)),
        }
    }

    /// Takes over a reloaded config's switches.
    pub fn apply(&self, config: &Config) {
        self.forwarded_server_header
            .store(config.forwarded_server_header, Ordering::Relaxed);
        self.access_log.store(config.access_log, Ordering::Relaxed);
        stages::set_enabled(config.stage_timers);
        *self.handshake_timeouts.write() = handshake_timeouts(config);
        *self.paces.write() = paces(config);
    }

    /// The slowest a request body may arrive (`clientBodyMinRate`).
    pub fn body_pace(&self) -> Pace {
        self.paces.read().0
    }

    /// The slowest a client may read its answer (`clientSendMinRate`).
    pub fn send_pace(&self) -> Pace {
        self.paces.read().1
    }

    /// Whether answers name their backend in `X-Forwarded-Server`.
    pub fn forwarded_server_header(&self) -> bool {
        self.forwarded_server_header.load(Ordering::Relaxed)
    }

    /// Whether each request gets an access log line.
    pub fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// How long a tunnel's handshake may take at each step.
    pub fn handshake_timeouts(&self) -> HandshakeTimeouts {
        *self.handshake_timeouts.read()
    }
}

fn handshake_timeouts(config: &Config) -> HandshakeTimeouts {
    HandshakeTimeouts {
        connect: config.connect_timeout,
        answer: config.backend_timeout,
    }
}

fn paces(config: &Config) -> (Pace, Pace) {
    let pace = |min_rate| Pace {
        grace: config.client_timeout,
        min_rate,
    };
    (
        pace(config.per_client.body_min_rate),
        pace(config.per_client.send_min_rate),
    )
}
