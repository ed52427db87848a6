//! Raw TCP on both sides of tinylb: a client that sends bytes and reads until the connection
//! closes, one that sends a request in pieces, a keep-alive connection, one plain GET, a counter
//! of status lines, and a bare accept loop for hand-written backends.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Response, read_full_response, read_response, wait_until};

/// What [`send_until_close`] and [`read_until_close`] make of an I/O error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// tinylb may close first: a failed write is ignored (the clock starts before it), and a
    /// read error (a reset after the answer, tinylb closed with unread input) is a close.
    CountAsClose,
    /// The request must be sent in full (the clock starts after it) and the connection must end
    /// with a clean close: any write or read error panics.
    Panic,
}

/// Sends `request` on a new connection and reads until tinylb closes it or `limit` passes.
/// Returns what arrived and how long the close took (`None`: still open at the limit).
pub fn send_until_close(
    addr: SocketAddr,
    request: &[u8],
    limit: Duration,
    on_error: OnError,
) -> (Vec<u8>, Option<Duration>) {
    let mut stream = TcpStream::connect(addr).expect("connect to tinylb");
    let started = match on_error {
        OnError::CountAsClose => {
            let started = Instant::now();
            let _ = stream.write_all(request);
            started
        }
        OnError::Panic => {
            stream.write_all(request).expect("send request");
            Instant::now()
        }
    };
    read_until_close(&mut stream, started, limit, on_error)
}

/// Reads from `stream` until it closes or `limit` after `started` passes. Returns what arrived
/// and, if it closed, how long after `started` it did.
pub fn read_until_close(
    stream: &mut TcpStream,
    started: Instant,
    limit: Duration,
    on_error: OnError,
) -> (Vec<u8>, Option<Duration>) {
    let deadline = started + limit;
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (answer, None);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (answer, Some(started.elapsed())),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => match on_error {
                OnError::CountAsClose => return (answer, Some(started.elapsed())),
                OnError::Panic => {
                    panic!("reading from tinylb failed instead of a clean close: {e}")
                }
            },
        }
    }
}

/// A keep-alive client connection to tinylb: a writer for requests and a buffered reader for
/// answers, reading with a 5 s timeout so a missing answer fails the test instead of hanging.
pub fn keep_alive_connection(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    let writer = stream.try_clone().expect("clone the client socket");
    (writer, BufReader::new(stream))
}

/// How many responses a byte stream contains: lines that start like `HTTP/1.1 400 `.
pub fn count_status_lines(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    text.split('\n')
        .filter(|line| {
            let code = line.strip_prefix("HTTP/1.1 ").unwrap_or("");
            code.len() >= 4
                && code.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && code.as_bytes()[3] == b' '
        })
        .count()
}

/// One GET on a fresh connection: the status, or None when no answer came within `timeout`.
pub fn fresh_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut writer = stream.try_clone().ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: tinylb\r\nConnection: close\r\n\r\n");
    writer.write_all(head.as_bytes()).ok()?;
    read_response(&mut BufReader::new(stream))
        .ok()
        .map(|(status, _)| status)
}

/// A bare backend listener on 127.0.0.1:0: accepts in a thread and runs `handler` on its own
/// thread for every connection, with the connection's index (in accept order) and a flag that
/// is set once the server is stopping. Dropping it stops accepting and joins the accept loop.
pub struct RawServer {
    pub addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawServer {
    pub fn start(
        handler: impl Fn(TcpStream, usize, &Arc<AtomicBool>) + Send + Sync + 'static,
    ) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("raw backend binds");
        let addr = listener.local_addr().expect("bound");
        let stopping = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let acceptor = {
            let stopping = Arc::clone(&stopping);
            std::thread::spawn(move || {
                for (index, stream) in listener.incoming().enumerate() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, stopping) = (Arc::clone(&handler), Arc::clone(&stopping));
                    std::thread::spawn(move || handler(stream, index, &stopping));
                }
            })
        };
        RawServer {
            addr,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    /// Base URL: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Sends `pieces` on a new connection, each as its own write (a client streaming its request),
/// and reads one response (bodiless after a HEAD). Connect, reads and writes time out.
pub fn exchange_in_pieces(
    addr: SocketAddr,
    pieces: &[impl AsRef<[u8]>],
    pause: Duration,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 && !pause.is_zero() {
            // The scenario: a pause between writes, so each piece arrives on its own.
            std::thread::sleep(pause);
        }
        stream.write_all(piece.as_ref())?;
    }
    let head_request = pieces
        .first()
        .is_some_and(|head| head.as_ref().starts_with(b"HEAD "));
    read_full_response(&mut BufReader::new(stream), head_request)
}

/// `pieces` as the chunks of a chunked body, one chunk each, and the last chunk.
pub fn chunked_pieces(pieces: &[impl AsRef<[u8]>]) -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = pieces
        .iter()
        .map(|data| {
            let data = data.as_ref();
            let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
            chunk.extend_from_slice(data);
            chunk.extend_from_slice(b"\r\n");
            chunk
        })
        .collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    chunks
}

/// The request head, peeked (once it has all arrived) so that tungstenite can read it again.
pub fn peek_head(stream: &TcpStream) -> Option<String> {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut head = None;
    wait_until(Duration::from_secs(1), || match stream.peek(&mut buffer) {
        Ok(0) | Err(_) => true,
        Ok(n) => {
            head = buffer[..n]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|end| String::from_utf8_lossy(&buffer[..end + 4]).into_owned());
            head.is_some()
        }
    });
    head
}
