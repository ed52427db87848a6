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
//! | a way to end a connection | shut the read side of the socket found among the process's descriptors (acting on a duplicate, `own_sockets.rs`), record the ending with the socket's identity and discard whatever tiny_http still parses from it, then shut the write side after the answer (`connections.rs`) | a `/proc/self/fd` walk, only when a connection must end early |
//! | a way to tell connections apart | the connection table keys each connection by address and port, and the watchdog's look learns each one's socket inode: an entry outlives neither its socket nor its ending (`connections.rs`, `census.rs`) | a hash lookup per request |
//! | strict framing (it reads any Transfer-Encoding as chunked, ignores a bad Content-Length) | refuse ambiguous heads before anything is forwarded (`request_check.rs`) | a pass over the headers |
//! | raw bodies on `Connection: upgrade` | decode chunked bodies there with tinylb's decoder (`body.rs`) | none elsewhere |
//! | answers tinylb frames itself (it re-chunks, buffers bodies for HTTP/1.0, writes a final chunk after a broken body) | write status line, headers and framing through the raw writer (`relay.rs`) | none; one fixed buffer per worker |
//! | the client socket after a `101` as two halves | read tiny_http's upgraded stream, write through a duplicate of the socket ([`Exchange::switch_protocols`]) | one descriptor per tunnel |
//!
//! The ordering rules these workarounds need (when a connection may go back to tiny_http) are
//! private to [`Exchange`].

pub mod admin_server;
mod answer;
mod body;
mod census;
mod connections;
mod exchange;
mod identity;
mod incoming;
mod listener;
mod own_sockets;
pub mod phases;
pub mod pinger;
mod relay;
mod request_check;
mod send_pace;
pub mod socket_options;

pub use answer::Answer;
pub use body::{BodyFailure, ClientBody};
pub use census::{Census, ClientSockets};
pub use connections::Connections;
pub use exchange::{Delivered, Exchange, Switched};
pub use incoming::Incoming;
pub use listener::{Listener, bind_socket};
pub use pinger::Pinger;
pub use relay::{Buffers, CutShort};
pub use request_check::{Head, Rejection};
pub use send_pace::SendPace;
