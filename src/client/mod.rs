//! The client side of the proxy: everything that knows tiny_http. The rest of tinylb sees one
//! [`Exchange`] per request (read the checked head, get the body, answer with tinylb's own
//! status, relay a backend's response, switch protocols for a tunnel) and [`Incoming`], where
//! exchanges come from. If tiny_http is ever fixed or replaced, this folder changes.
//!
//! # What tiny_http 0.12 leaves to tinylb, and what each workaround costs
//!
//! | tiny_http leaves out | tinylb's workaround | cost |
//! |---|---|---|
//! | client timeouts | SO_RCVTIMEO/SO_SNDTIMEO on the listening socket, inherited by every accepted socket (`socket_options.rs`) | none per request |
//! | an accept() that survives those timeouts | a [`Pinger`] thread connects to the listener more often than the timeout (`pinger.rs`) | one thread; a few loopback connections a second while busy |
//! | an accept loop that outlives its first error or panic | [`Incoming`] starts a new server on the same socket, with back-off, and a panic hook counts accept-thread panics (`incoming.rs`) | a poll every quarter second |
//! | a way to end a connection | remember the address and drop whatever tiny_http parses from it next, half-close the socket found among the process's descriptors (`hangup.rs`) | a `/proc/self/fd` scan, only when a connection must end early |
//! | strict framing (it reads any Transfer-Encoding as chunked, ignores a bad Content-Length) | refuse ambiguous heads before anything is forwarded (`request_check.rs`) | a pass over the headers |
//! | raw bodies on `Connection: upgrade` | decode chunked bodies there with tinylb's decoder (`body.rs`) | none elsewhere |
//! | answers tinylb frames itself (it re-chunks, buffers bodies for HTTP/1.0, writes a final chunk after a broken body) | write status line, headers and framing through the raw writer (`relay.rs`) | none; one fixed buffer per worker |
//! | the client socket after a `101` as two halves | read tiny_http's upgraded stream, write through a duplicate of the socket ([`Exchange::switch_protocols`]) | one descriptor per tunnel |
//!
//! The ordering rules these workarounds need (when a connection may go back to tiny_http) are
//! private to [`Exchange`].

pub mod admin_server;
mod body;
mod census;
mod exchange;
mod hangup;
mod incoming;
mod listener;
mod own_sockets;
pub mod phases;
pub mod pinger;
mod relay;
mod request_check;
pub mod socket_options;

pub use body::ClientBody;
pub use census::{Census, ClientSockets};
pub use exchange::{Delivered, Exchange, Switched};
pub use incoming::Incoming;
pub use listener::{Listener, bind_socket};
pub use pinger::Pinger;
pub use relay::{Answer, Buffers};
pub use request_check::{Head, Rejection};
