//! The listening socket, bound by tinylb itself rather than by tiny_http, so that the client
//! timeouts and the backlog can be set on it (accepted sockets inherit them) and a new tiny_http
//! server can be started on it when the old one's accept loop dies ([`super::incoming`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

use super::socket_options;
use crate::error::StartError;

/// Connections the kernel may hold before tiny_http accepts them; std's default of 128 drops
/// connection attempts in a burst, and the clients only retry a second later.
const LISTEN_BACKLOG: i32 = 1024;
/// The bound listening socket, kept so that a new tiny_http server can be started on it.
pub struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
    pub(super) client_timeout: Duration,
}

impl Listener {
    /// Binds the proxy's address and sets the socket options every client connection inherits.
    /// The error names the address, since "address in use" alone does not say which one.
    pub fn bind(addr: SocketAddr, client_timeout: Duration) -> Result<Listener, StartError> {
        let fail = |e: std::io::Error| StartError::Listen(addr, e);
        let socket = TcpListener::bind(addr).map_err(fail)?;
        let local_addr = socket.local_addr().map_err(fail)?;
        socket_options::set_client_timeouts(&socket, client_timeout).map_err(fail)?;
        socket_options::set_nodelay(&socket).map_err(fail)?;
        socket_options::set_backlog(&socket, LISTEN_BACKLOG).map_err(fail)?;
        Ok(Listener {
            socket,
            local_addr,
            client_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(super) fn new_server(&self) -> std::io::Result<tiny_http::Server> {
        let socket = self.socket.try_clone()?;
        tiny_http::Server::from_listener(socket, None)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Where the pinger connects to keep accept() from timing out.
    pub(super) fn ping_addr(&self) -> SocketAddr {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.local_addr.port())
    }
}
