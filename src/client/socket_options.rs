//! Socket and process settings that std does not expose, set through `libc`. tiny_http accepts
//! client sockets itself and gives no access to them, but on Linux an accepted socket inherits
//! the listening socket's options: timeouts and TCP_NODELAY set here reach every client
//! connection (docs/crates.md).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Sets SO_RCVTIMEO and SO_SNDTIMEO on the listening socket, and so on every client socket
/// accepted from it: a client that goes quiet, or stops reading, is cut off after `timeout`.
/// Note that accept() itself then also times out, which the [`super::pinger`] keeps from
/// happening.
pub fn set_client_timeouts(listener: &TcpListener, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        // `as _` takes the field's own type: libc marks the time_t alias deprecated on musl.
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    set_option(listener, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &value)?;
    set_option(listener, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &value)
}

/// Where this process can connect to a socket of its own listening on `addr`: the same
/// address, or loopback when it listens on every address.
pub fn loopback_for(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Sets TCP_NODELAY on the listening socket so accepted sockets send small answers at once
/// instead of waiting for the client's delayed ACK (Nagle's algorithm).
pub fn set_nodelay(listener: &TcpListener) -> io::Result<()> {
    let on: libc::c_int = 1;
    set_option(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY, &on)
}

/// Sets the listen backlog (calling listen() again on a listening socket updates it on Linux).
pub fn set_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    // SAFETY: listen() only takes the descriptor, open for the lifetime of `listener`.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_option<T>(
    listener: &TcpListener,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the descriptor is open for the lifetime of `listener`, and `value` points to a
    // live `T` whose size we pass along, as setsockopt requires.
    let result = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft limit on open files to the hard limit: every client connection costs a file
/// descriptor, and the usual soft limit of 1024 is far below what the machine allows. Returns
/// the limit now in force.
pub fn raise_open_files_limit() -> io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(io::Error::last_os_error());
            }
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}
