//! Why tinylb could not start: each a one-line message that names what failed, so that the
//! command can print it and exit 1.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// What went wrong at start-up.
#[derive(Debug)]
pub enum StartError {
    /// The address could not be bound or set up (in use, no permission).
    Listen(SocketAddr, io::Error),
    /// The admin address could not be bound.
    Admin(SocketAddr, String),
    /// The system would not start another thread.
    Thread(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen(addr, error) => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Admin(addr, error) => {
                write!(f, "adminAddress: cannot listen on {addr}: {error}")
            }
            StartError::Thread(error) => write!(f, "cannot start a thread: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    /// Spawning a thread is the one start-up step whose error carries no address.
    fn from(error: io::Error) -> StartError {
        StartError::Thread(error)
    }
}
