//! Socket and process settings that std does not expose, set through `libc`. tiny_http accepts
//! client sockets itself and gives no access to them, but on Linux an accepted socket inherits
//! the listening socket's options: timeouts and TCP_NODELAY set here reach every client
//! connection (docs/crates.md).

use std::io;
use std::net::TcpListener;
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

/// Binds and listens on `addr` with SO_REUSEPORT, so that while one generation of the server
/// hands over to the next (see `tinylb::master`), both can hold the admin address: the new one
/// binds it before the old one has let go. Only processes of the same user can share it.
pub fn bind_shared(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a new socket descriptor, owned by the TcpListener built from it below (which
    // closes it on every error path through its Drop).
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = unsafe { TcpListener::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    set_option(&socket, libc::SOL_SOCKET, libc::SO_REUSEADDR, &on)?;
    set_option(&socket, libc::SOL_SOCKET, libc::SO_REUSEPORT, &on)?;
    let (storage, length) = socket_address(addr);
    // SAFETY: `storage` holds a valid sockaddr of `length` bytes.
    let bound = unsafe {
        libc::bind(
            fd,
            (&storage as *const libc::sockaddr_storage).cast(),
            length,
        )
    };
    if bound < 0 || unsafe { libc::listen(fd, 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// `addr` as the C sockaddr that bind() takes.
fn socket_address(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match addr {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}
