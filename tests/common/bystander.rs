//! Two clients of one tinylb, told apart by their source address on loopback: the bystander
//! (127.0.0.2), an ordinary client whose every request must be answered promptly, and the bad
//! client (127.0.0.3), which does its worst. [`connect_from`] opens a connection from a given
//! address (and port, and receive buffer); [`Bystander`] asks `GET /` over and over on a thread
//! of its own and records how each request went; [`assert_all_answered`] is the verdict.

use std::io::{BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{read_response, wait_until};

/// The address the bystander's connections come from.
pub const BYSTANDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The address the bad client's connections come from.
pub const BAD_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The longest a bystander request may take.
pub const PROMPT: Duration = Duration::from_secs(3);
/// How long the bystander waits for a connection, and for each read of its answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The bystander's pause between requests.
const PAUSE: Duration = Duration::from_millis(100);
/// At most this many bystander requests...
const MAX_REQUESTS: usize = 2000;
/// ...and for at most this long.
const TIME_LIMIT: Duration = Duration::from_secs(120);
/// Fewer requests than this, and the bystander did not really watch.
const FEWEST_REQUESTS: usize = 10;

/// What to set on a socket before it connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The source port; 0 lets the kernel pick one.
    pub port: u16,
    /// `SO_REUSEADDR`, to bind a port that a connection just closed still names.
    pub reuse_address: bool,
    /// `SO_RCVBUF` in bytes, so the kernel holds little of what the server sends.
    pub receive_buffer: Option<usize>,
}

/// A TCP connection from `source` (with `options`) to `to`, which must be IPv4. The connect
/// gives up after `timeout` with `TimedOut`.
pub fn connect_from(
    source: Ipv4Addr,
    options: Options,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "IPv4 only"));
    };
    // SAFETY: socket() takes no pointers.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a new socket that nothing else owns; the stream closes it on every path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if options.reuse_address {
        set_option(fd, libc::SO_REUSEADDR, 1)?;
    }
    if let Some(bytes) = options.receive_buffer {
        set_option(fd, libc::SO_RCVBUF, bytes as libc::c_int)?;
    }
    // Linux bounds a blocking connect by the socket's send timeout.
    stream.set_write_timeout(Some(timeout))?;
    let source = sockaddr(SocketAddrV4::new(source, options.port));
    let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: bind and connect read a sockaddr_in that lives for the call, of the size given.
    check(unsafe { libc::bind(fd, (&source as *const libc::sockaddr_in).cast(), length) })?;
    let to = sockaddr(to);
    let connected =
        check(unsafe { libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), length) });
    match connected {
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("connect took longer than {timeout:?}"),
            ));
        }
        Err(error) => return Err(error),
        Ok(_) => {}
    }
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// Like [`connect_from`] from a fixed port with `SO_REUSEADDR`, trying again for up to 2 s
/// while the kernel still holds the address pair of an earlier connection (`EADDRINUSE`,
/// `EADDRNOTAVAIL`). Returns the connection and how many tries failed first.
pub fn connect_from_port(
    source: Ipv4Addr,
    port: u16,
    to: SocketAddr,
) -> std::io::Result<(TcpStream, usize)> {
    let options = Options {
        port,
        reuse_address: true,
        receive_buffer: None,
    };
    let mut failed = 0;
    let mut last = None;
    wait_until(Duration::from_secs(2), || {
        match connect_from(source, options, to, Duration::from_secs(2)) {
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                ) =>
            {
                failed += 1;
                last = Some(Err(error));
                false
            }
            other => {
                last = Some(other);
                true
            }
        }
    });
    let stream = last.expect("at least one try")?;
    Ok((stream, failed))
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn set_option(fd: RawFd, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt reads an int that lives for the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn check(result: libc::c_int) -> std::io::Result<libc::c_int> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// One `GET path` with `Connection: close` on a new connection from `source` (an ephemeral
/// port): the status, or what went wrong. Connecting and each read wait at most `timeout`.
pub fn get_from(
    source: Ipv4Addr,
    to: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    get_from_host(source, to, path, "tinylb", timeout)
}

/// Like [`get_from`] with `host` as the `Host` header (the admin listener answers only its
/// own address, `localhost` or an IP literal).
pub fn get_from_host(
    source: Ipv4Addr,
    to: SocketAddr,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let stream = connect_from(source, Options::default(), to, timeout)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("set a read timeout: {e}"))?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    (&stream)
        .write_all(head.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    read_response(&mut BufReader::new(&stream))
        .map(|(status, _)| status)
        .map_err(|e| format!("read: {}", describe(&e)))
}

/// An I/O error for a message: a read that timed out says so plainly.
pub fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "no answer before the timeout".to_string(),
        _ => error.to_string(),
    }
}

/// How one bystander request went.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was sent, after the bystander started.
    pub at: Duration,
    /// The status, or what went wrong.
    pub outcome: Result<u16, String>,
    /// How long it took, connecting included.
    pub took: Duration,
}

impl Record {
    /// Answered 200 within [`PROMPT`].
    pub fn prompt(&self) -> bool {
        self.outcome == Ok(200) && self.took <= PROMPT
    }
}

/// An ordinary client on a thread of its own: from [`BYSTANDER`], `GET /` on a new connection
/// (`Connection: close`) every tenth of a second, one after another, until it is finished, or
/// for at most 2,000 requests or 2 minutes.
pub struct Bystander {
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Record>>>,
}

impl Bystander {
    /// Starts asking tinylb at `lb`.
    pub fn start(lb: SocketAddr) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut records = Vec::new();
                while !stop.load(Ordering::SeqCst)
                    && records.len() < MAX_REQUESTS
                    && started.elapsed() < TIME_LIMIT
                {
                    let at = started.elapsed();
                    let outcome = get_from(BYSTANDER, lb, "/", READ_TIMEOUT);
                    records.push(Record {
                        at,
                        outcome,
                        took: started.elapsed() - at,
                    });
                    // The scenario: an ordinary client, about ten requests a second.
                    std::thread::sleep(PAUSE);
                }
                records
            })
        };
        Bystander {
            started,
            stop,
            thread: Some(thread),
        }
    }

    /// Time since the bystander started, to put events on its records' clock.
    pub fn clock(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops asking (after the request under way) and returns every record.
    pub fn finish(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the bystander thread")
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        // A test that failed before `finish`: the thread ends after its request under way.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One line about the bystander's requests, for the test's output.
pub fn summary(records: &[Record]) -> String {
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
    let failed = records.iter().filter(|r| !r.prompt()).count();
    format!(
        "{} bystander requests over {:.1?}, {failed} not answered 200 within {PROMPT:?}, slowest \
         {slowest:.2?}",
        records.len(),
        records.last().map(|r| r.at + r.took).unwrap_or_default()
    )
}

/// Every bystander request was answered 200 within [`PROMPT`], and there were enough of them
/// to have watched; `what` says what the bad client did.
pub fn assert_all_answered(records: &[Record], what: &str) {
    let failures: Vec<String> = records
        .iter()
        .filter(|r| !r.prompt())
        .map(|r| {
            let outcome = match &r.outcome {
                Ok(status) => format!("status {status}"),
                Err(error) => error.clone(),
            };
            format!("at {:.1?}: {outcome} after {:.2?}", r.at, r.took)
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} bystander requests were not answered 200 within {PROMPT:?}: {}",
        failures.len(),
        records.len(),
        listing(&failures)
    );
    assert!(
        records.len() >= FEWEST_REQUESTS,
        "{what}: the bystander made only {} requests",
        records.len()
    );
}

/// The first 20 items, and how many more.
fn listing(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > 20 {
        text.push_str(&format!("; and {} more", items.len() - 20));
    }
    text
}
