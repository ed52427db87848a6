//! The process's own client sockets, found from outside tiny_http. tiny_http owns every client
//! socket and offers no list of them, so tinylb looks where the kernel keeps one: each open
//! descriptor in `/proc/self/fd` that is a TCP socket on the proxy's own port.
//!
//! A descriptor number is not a socket: tiny_http may close it at any moment, and the next
//! `accept()` may give the same number to another client. So each one is first duplicated
//! (`F_DUPFD_CLOEXEC`), and everything after that (reading its addresses, writing a `408`,
//! shutting it down) happens on tinylb's own copy, which refers to the socket that was checked
//! for as long as the copy is open.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use super::identity;

/// tinylb's own duplicate of one client socket, with the kernel's name for the socket (its
/// inode), which tells a connection apart from a later one with the same addresses.
#[derive(Debug)]
pub struct OwnSocket {
    /// The duplicate, closed when this is dropped (the socket stays open while tiny_http
    /// holds it too).
    pub stream: TcpStream,
    /// The socket's inode: the same for every descriptor of one socket.
    pub inode: u64,
}

/// What the kernel says about one TCP socket (`TCP_INFO`).
#[derive(Debug, Clone, Copy)]
pub struct TcpState {
    /// The TCP state number (1 established, 8 close-wait, ...).
    pub state: u8,
    /// Milliseconds since data last arrived from the client (or since the connection was made).
    pub ms_since_received: u32,
    /// Bytes received from the client (0 on kernels before 4.1, which do not count them).
    pub bytes_received: u64,
}

impl TcpState {
    /// The client has left: its FIN or reset arrived, so nothing more will come from it.
    pub fn client_left(&self) -> bool {
        identity::client_left(self.state)
    }
}

impl OwnSocket {
    /// The kernel's view of this socket, or `None` if it cannot be had.
    pub fn tcp_state(&self) -> Option<TcpState> {
        tcp_state(self.stream.as_raw_fd())
    }

    /// Shuts one or both directions down; a socket already closed is no error worth telling.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.stream.shutdown(how);
    }

    /// Aborts the connection at once: the client gets a reset, and whatever still waits in
    /// the send queue is dropped (a `FIN` would come only after all of it). `connect` with
    /// `AF_UNSPEC` disconnects a TCP socket without closing any descriptor, so it works while
    /// tiny_http still holds the socket; nginx's `reset_timedout_connection` does the same at
    /// close.
    pub fn reset(&self) {
        // SAFETY: a zeroed sockaddr with family AF_UNSPEC, of the size given.
        let mut unspecified: libc::sockaddr = unsafe { std::mem::zeroed() };
        unspecified.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        let length = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
        unsafe { libc::connect(self.stream.as_raw_fd(), &unspecified, length) };
    }

    /// Bytes written to this socket that the client has not acknowledged yet (`SIOCOUTQ`).
    pub fn unsent(&self) -> u64 {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; the descriptor is our own.
        let result = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if result == 0 {
            u64::try_from(queued).unwrap_or(0)
        } else {
            0
        }
    }

    /// Writes `bytes` only if the kernel takes them at once: a client that is not reading must
    /// not hold the thread that writes (the watchdog's `408`). Returns whether all went out.
    pub fn write_now(&self, bytes: &[u8]) -> bool {
        // SAFETY: `bytes` is a valid buffer of its length; the descriptor is our own.
        let sent = unsafe {
            libc::send(
                self.stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(sent).is_ok_and(|n| n == bytes.len())
    }
}

/// Calls `visit` with a duplicate of each TCP socket bound to `local_port` (connected or not:
/// a socket the client reset has no peer address any more) and the descriptor number it was
/// found under, until `visit` breaks with a value. A socket open on two descriptors (tiny_http
/// holds two per connection) is visited once per descriptor, with the same inode.
#[cfg(target_os = "linux")]
pub fn each_client_socket<R>(
    local_port: u16,
    mut visit: impl FnMut(OwnSocket, RawFd) -> ControlFlow<R>,
) -> Option<R> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Some(socket) = duplicate_socket(fd) else {
            continue;
        };
        if socket
            .stream
            .local_addr()
            .is_ok_and(|a| a.port() == local_port)
            && let ControlFlow::Break(found) = visit(socket, fd)
        {
            return Some(found);
        }
    }
    None
}

/// A duplicate of descriptor `fd` if it is a socket, with its inode.
#[cfg(target_os = "linux")]
fn duplicate_socket(fd: RawFd) -> Option<OwnSocket> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, or fails; the TcpStream owns the new one
    // and closes it when dropped. fstat writes into a zeroed plain-data struct.
    unsafe {
        let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0);
        if copy < 0 {
            return None;
        }
        let stream = TcpStream::from_raw_fd(copy);
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(copy, &mut stat) != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return None;
        }
        Some(OwnSocket {
            stream,
            inode: stat.st_ino as u64,
        })
    }
}

/// A duplicate of the client socket connected to `peer` on `local_port`, if there is one.
pub fn find_client_socket(peer: SocketAddr, local_port: u16) -> Option<OwnSocket> {
    each_client_socket(local_port, |socket, _| {
        if socket.stream.peer_addr().is_ok_and(|addr| addr == peer) {
            ControlFlow::Break(socket)
        } else {
            ControlFlow::Continue(())
        }
    })
}

/// Whether the client connected from `peer` has closed its side of the connection (its FIN
/// has arrived). tiny_http's chunked decoder reports end-of-file inside a chunk as a clean end
/// of the body, so a body that ends must be checked this way before it is passed on as
/// complete.
///
/// It asks the kernel for the TCP state rather than peeking for end-of-file: once a
/// `Connection: close` request's body is read, tiny_http shuts down the read side of the
/// socket itself, and a peek would then see an end-of-file the client never sent.
pub fn client_closed(peer: Option<&SocketAddr>, local_port: u16) -> bool {
    peer.and_then(|peer| find_client_socket(*peer, local_port))
        .and_then(|socket| socket.tcp_state())
        .is_some_and(|state| state.client_left())
}

/// Whether any descriptor of this process other than `ours` refers to the same socket:
/// whether tiny_http still holds it.
pub fn held_elsewhere(ours: &OwnSocket, local_port: u16) -> bool {
    let own_fd = ours.stream.as_raw_fd();
    each_client_socket(local_port, |socket, fd| {
        if fd != own_fd && socket.inode == ours.inode {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_some()
}

/// The kernel's view of the TCP socket `fd`, or `None` if it cannot be had.
#[cfg(target_os = "linux")]
fn tcp_state(fd: RawFd) -> Option<TcpState> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `length` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    (result == 0).then_some(TcpState {
        state: info.tcpi_state,
        ms_since_received: info.tcpi_last_data_recv,
        bytes_received: info.tcpi_bytes_received,
    })
}

/// Elsewhere there is no `/proc/self/fd`: no client socket can be found, so an ended
/// connection only stops being served (it closes on the client's timeout) and the census
/// counts nothing.
#[cfg(not(target_os = "linux"))]
pub fn each_client_socket<R>(
    _local_port: u16,
    _visit: impl FnMut(OwnSocket, RawFd) -> ControlFlow<R>,
) -> Option<R> {
    None
}

#[cfg(not(target_os = "linux"))]
fn tcp_state(_fd: RawFd) -> Option<TcpState> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// tiny_http may close a descriptor after it was found and `accept()` may reuse the number
    /// at once; what tinylb then does must reach the socket it checked, never the new one.
    #[test]
    fn acting_on_a_found_socket_never_reaches_a_later_one_under_the_same_number() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut first_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (served, first_peer) = listener.accept().unwrap();
        let number = served.as_raw_fd();
        let found = find_client_socket(first_peer, port).expect("the served socket is found");
        // The owner closes it, and the next accept gets the same number: dup2 does both at once,
        // so no other thread of the test process can take the number in between.
        let mut second_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (reused, _) = listener.accept().unwrap();
        // SAFETY: both descriptors are open and ours; `number` now names the new connection.
        assert_eq!(unsafe { libc::dup2(reused.as_raw_fd(), number) }, number);
        std::mem::forget(served);
        assert!(found.write_now(b"408"), "written on the checked socket");
        found.shutdown(Shutdown::Both);
        second_client
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 8];
        assert!(
            second_client.read(&mut buf).is_err(),
            "the new connection got nothing and stays open"
        );
        let mut got = Vec::new();
        first_client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"408");
        drop(reused);
        // SAFETY: `number` is the duplicate dup2 made; nothing else owns it.
        unsafe { libc::close(number) };
    }
}
