//! The listening socket, bound by tinylb itself rather than by tiny_http, so that the client
//! timeouts and the backlog can be set on it (accepted sockets inherit them), a new tiny_http
//! server can be started on it when the old one's accept loop dies ([`super::incoming`]), and
//! it can come from elsewhere: the master process or systemd, shared across generations.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::socket_options;
use crate::error::StartError;

/// Connections the kernel may hold before tiny_http accepts them; std's default of 128 drops
/// connection attempts in a burst, and the clients only retry a second later.
const LISTEN_BACKLOG: i32 = 1024;
/// Binds `addr` for clients: the socket a master process keeps and its children share.
pub fn bind_socket(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let fail = |e: std::io::Error| StartError::Listen(addr, e);
    let socket = TcpListener::bind(addr).map_err(fail)?;
    socket_options::set_backlog(&socket, LISTEN_BACKLOG).map_err(fail)?;
    Ok(socket)
}

/// Whether two descriptors are the same open socket (same device and inode).
fn same_socket(a: RawFd, b: RawFd) -> std::io::Result<bool> {
    let identity = |fd: RawFd| {
        // SAFETY: fstat writes into a zeroed plain-data struct.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        match unsafe { libc::fstat(fd, &mut stat) } {
            0 => Ok((stat.st_dev, stat.st_ino)),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    match identity(a) {
        Ok(id) => Ok(id == identity(b)?),
        // Already closed: nothing to stop.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The bound listening socket, kept so that a new tiny_http server can be started on it.
pub struct Listener {
    /// `None` once this process has stopped accepting.
    socket: Option<TcpListener>,
    local_addr: SocketAddr,
    pub(super) client_timeout: Duration,
}

impl Listener {
    /// Binds the proxy's address and sets the socket options every client connection inherits.
    /// The error names the address, since "address in use" alone does not say which one.
    pub fn bind(addr: SocketAddr, client_timeout: Duration) -> Result<Listener, StartError> {
        Listener::adopt(bind_socket(addr)?, client_timeout)
    }

    /// Serves on a socket bound elsewhere (by the master process, or by systemd) and sets the
    /// client timeouts on it. The socket may be shared with another tinylb process.
    pub fn adopt(socket: TcpListener, client_timeout: Duration) -> Result<Listener, StartError> {
        let addr = socket
            .local_addr()
            .map_err(|e| StartError::Listen(SocketAddr::from(([0, 0, 0, 0], 0)), e))?;
        let fail = |e: std::io::Error| StartError::Listen(addr, e);
        socket_options::set_client_timeouts(&socket, client_timeout).map_err(fail)?;
        socket_options::set_nodelay(&socket).map_err(fail)?;
        Ok(Listener {
            socket: Some(socket),
            local_addr: addr,
            client_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A new tiny_http server on a duplicate of the socket, and that duplicate's descriptor,
    /// which [`Listener::stop_accepting`] needs.
    pub(super) fn new_server(&self) -> std::io::Result<(tiny_http::Server, RawFd)> {
        let socket = self.socket()?.try_clone()?;
        let fd = socket.as_raw_fd();
        let server = tiny_http::Server::from_listener(socket, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok((server, fd))
    }

    fn socket(&self) -> std::io::Result<&TcpListener> {
        self.socket
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no longer accepting"))
    }

    /// Ends the accept loop of the server started on `server_fd`, and closes this process's
    /// own descriptor of the socket, without shutting the socket down: another process may be
    /// accepting on it (a new generation during a swap). When no other process holds it, the
    /// socket closes once the accept thread has let go of it, and connections are refused.
    ///
    /// tiny_http's accept thread can only be stopped by an accept() error, and shutting the
    /// socket down would stop every process sharing it. So the duplicate that thread accepts
    /// on is replaced, under the same descriptor number, by a socket that is not listening: its
    /// next accept() fails and the thread ends. A call already waiting in accept() still takes
    /// one connection (which this process then serves); the caller wakes it with
    /// [`Listener::ping_addr`] connections.
    pub(super) fn stop_accepting(&mut self, server_fd: RawFd) -> std::io::Result<()> {
        let Some(socket) = self.socket.take() else {
            return Ok(());
        };
        // The descriptor must still be a duplicate of our socket: if tiny_http's thread had
        // already ended and closed it, the number could now be some other file.
        let same = same_socket(server_fd, socket.as_raw_fd())?;
        if !same {
            return Ok(());
        }
        // SAFETY: plain system calls on descriptors; `unbound` is closed right after dup2 made
        // `server_fd` refer to the same unbound socket.
        unsafe {
            let unbound = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if unbound < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let result = libc::dup3(unbound, server_fd, libc::O_CLOEXEC);
            libc::close(unbound);
            if result < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Where the pinger connects to keep accept() from timing out.
    pub(super) fn ping_addr(&self) -> SocketAddr {
        socket_options::loopback_for(self.local_addr)
    }
}
