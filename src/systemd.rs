//! The two systemd conventions tinylb follows, each a few lines of protocol, no library:
//!
//! - **Socket activation**: systemd binds the socket (from a `.socket` unit) and starts tinylb
//!   with it as descriptor 3, `LISTEN_FDS=1` and `LISTEN_PID` set to tinylb's process id.
//!   Connections that arrive while tinylb starts wait in that socket's queue.
//! - **Readiness**: with `Type=notify`, systemd waits for `READY=1` on the datagram socket named
//!   by `NOTIFY_SOCKET`; `RELOADING=1` and `STOPPING=1` say what tinylb is doing meanwhile.

use std::net::TcpListener;
use std::os::fd::FromRawFd;

/// The first descriptor systemd passes.
const FIRST_FD: i32 = 3;

/// The listening socket systemd passed, if it passed one to this process. The variables are
/// removed, so that nothing this process starts mistakes them for its own. The error says why
/// a socket that was passed cannot be used.
pub fn listen_socket() -> Result<Option<TcpListener>, String> {
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    // SAFETY: run at start-up, before any other thread reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let (Some(fds), Some(pid)) = (fds, pid) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match fds.parse::<i32>() {
        Ok(1) => {}
        Ok(n) => return Err(format!("LISTEN_FDS={n}: tinylb takes exactly one socket")),
        Err(_) => return Err(format!("LISTEN_FDS={fds:?} is not a number")),
    }
    if !is_listening_tcp(FIRST_FD) {
        return Err(format!(
            "descriptor {FIRST_FD} from systemd is not a listening TCP socket"
        ));
    }
    // SAFETY: systemd passed descriptor 3 to this process, and nothing else here owns it.
    let socket = unsafe { TcpListener::from_raw_fd(FIRST_FD) };
    // SAFETY: marks a descriptor this process owns close-on-exec.
    unsafe { libc::fcntl(FIRST_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Some(socket))
}

/// Whether `fd` is a TCP socket in the listening state.
fn is_listening_tcp(fd: i32) -> bool {
    let option = |level, name| {
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one int into `value`.
        let result = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut length,
            )
        };
        (result == 0).then_some(value)
    };
    option(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        && option(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && matches!(
            option(libc::SOL_SOCKET, libc::SO_DOMAIN),
            Some(libc::AF_INET | libc::AF_INET6)
        )
}

/// Tells systemd `state` (for example `READY=1`) if it asked to be told; otherwise nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send(&path, state) {
        log::warn!("cannot tell systemd {state:?}: {error}");
    }
}

/// `RELOADING=1` with the timestamp that `Type=notify-reload` requires.
pub fn notify_reloading() {
    // SAFETY: clock_gettime writes a plain-data timespec.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    // A leading '@' names an abstract socket.
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}
