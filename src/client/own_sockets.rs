//! The process's own client sockets, found from outside tiny_http. tiny_http owns every client
//! socket and offers no list of them, so tinylb looks where the kernel keeps one: each open
//! descriptor in `/proc/self/fd` that is a connected TCP socket on the proxy's own port.
//! Hang-ups look for one socket by its peer; the census ([`super::census`]) looks at them all.

use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;

/// What the kernel says about one client socket (`TCP_INFO`).
#[derive(Debug, Clone, Copy)]
pub(super) struct TcpState {
    /// The TCP state number (1 established, 8 close-wait, ...).
    pub state: u8,
    /// Milliseconds since data last arrived from the client (or since the connection was made).
    pub ms_since_received: u32,
    /// Bytes received from the client (0 on kernels before 4.1, which do not count them).
    pub bytes_received: u64,
}

/// Calls `visit` with each connected TCP socket on `local_port` (borrowed: never closed here)
/// and its kernel inode, until it breaks with a value. A socket open on two descriptors (a
/// tunnel's duplicate) is visited twice, with the same inode.
#[cfg(target_os = "linux")]
pub(super) fn each_client_socket<R>(
    local_port: u16,
    mut visit: impl FnMut(&TcpStream, u64) -> ControlFlow<R>,
) -> Option<R> {
    use std::mem::ManuallyDrop;
    use std::os::fd::{FromRawFd, RawFd};

    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        let fd = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok());
        let (Some(inode), Some(fd)) = (inode, fd) else {
            continue;
        };
        // SAFETY: `fd` was an open socket of this process a moment ago. ManuallyDrop means we
        // never close it; we only ask for its addresses and, if they match, act on it. Were
        // it closed and reused meanwhile, the address checks would not match.
        let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let ours =
            socket.peer_addr().is_ok() && socket.local_addr().is_ok_and(|a| a.port() == local_port);
        if ours && let ControlFlow::Break(found) = visit(&socket, inode) {
            return Some(found);
        }
    }
    None
}

/// Runs `action` on the client socket connected to `peer` on `local_port`, if there is one.
pub(super) fn with_client_socket<R>(
    peer: SocketAddr,
    local_port: u16,
    action: impl FnOnce(&TcpStream) -> R,
) -> Option<R> {
    let mut action = Some(action);
    each_client_socket(local_port, |socket, _| {
        match (socket.peer_addr(), action.take()) {
            (Ok(addr), Some(action)) if addr == peer => ControlFlow::Break(action(socket)),
            (_, taken) => {
                action = taken;
                ControlFlow::Continue(())
            }
        }
    })
}

/// The kernel's view of one TCP socket, or `None` if it cannot be had.
#[cfg(target_os = "linux")]
pub(super) fn tcp_state(socket: &TcpStream) -> Option<TcpState> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `length` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
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

/// Elsewhere there is no `/proc/self/fd`: no client socket can be found, so hang-ups only
/// remember (the connection ends on the client's timeout) and the census counts nothing.
#[cfg(not(target_os = "linux"))]
pub(super) fn each_client_socket<R>(
    _local_port: u16,
    _visit: impl FnMut(&TcpStream, u64) -> ControlFlow<R>,
) -> Option<R> {
    None
}

#[cfg(not(target_os = "linux"))]
pub(super) fn tcp_state(_socket: &TcpStream) -> Option<TcpState> {
    None
}
