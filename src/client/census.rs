//! A count of the client connections this process holds, by how long each has been silent,
//! read from the kernel (`TCP_INFO`'s time since data last arrived) rather than from tiny_http,
//! which keeps no list.
//!
//! Two questions are answered from it:
//!
//! - **Is anything stuck?** tiny_http reads every client with the socket's receive timeout
//!   (`clientTimeout`), so a connection it still reads cannot stay silent much longer than that.
//!   One silent for longer is held by a thread that no longer reads it: tiny_http 0.12 parks a
//!   thread for good on a request line whose version is above 1.1 (an HTTP/2 preface). Requests
//!   in flight and open tunnels are silent too while they wait, so the caller subtracts them.
//! - **Is a draining process done?** Once it stops accepting, it is done when no client has sent
//!   anything for a moment: every connection that had a request has had its answer.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

use super::own_sockets::{each_client_socket, tcp_state};

/// TCP states of a connection the client has not finished with: established, and close-wait
/// (the client sent its FIN, and the socket waits for tinylb, or a stuck thread, to close it).
const OPEN_STATES: [u8; 2] = [1, 8];

/// The client connections at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Connections open.
    pub open: usize,
    /// Of those, silent for longer than the `silent` limit given.
    pub silent: usize,
    /// Of those, with data from the client within the `active` limit given.
    pub active: usize,
}

/// The client sockets of the listener on one port; cheap to copy to another thread.
#[derive(Debug, Clone, Copy)]
pub struct ClientSockets {
    pub(super) local_port: u16,
}

impl ClientSockets {
    /// Counts the open client connections: all of them, those silent for longer than `silent`,
    /// and those that sent data within `active`. A walk over the process's descriptors with one
    /// `getsockopt` per socket: some microseconds per connection.
    pub fn census(&self, silent: Duration, active: Duration) -> Census {
        let mut seen = HashSet::new();
        let mut census = Census::default();
        each_client_socket::<()>(self.local_port, |socket, inode| {
            let Some(info) = tcp_state(socket) else {
                return ControlFlow::Continue(());
            };
            if OPEN_STATES.contains(&info.state) && seen.insert(inode) {
                let quiet_for = Duration::from_millis(info.ms_since_received.into());
                census.open += 1;
                census.silent += usize::from(quiet_for > silent);
                census.active += usize::from(quiet_for < active);
            }
            ControlFlow::Continue(())
        });
        census
    }
}
