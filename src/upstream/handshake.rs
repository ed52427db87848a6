//! The backend side of an upgrade (a WebSocket handshake): ureq has no way to hand over a
//! connection after `101 Switching Protocols`, so the handshake goes over a plain `TcpStream`
//! that tinylb opens, writes and reads itself. The backend either switches (the stream then
//! becomes one end of a [`crate::tunnel`]) or answers like any HTTP server, and that answer is
//! relayed as usual, its body framed here from the raw bytes.

use std::io::{self, Cursor, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ureq::http::{self, HeaderMap};

use super::Response;
use super::request::Outgoing;
use super::response_head::{framed_body, parse_head, read_head};
use crate::config::BackendUrl;
use crate::failure::Failure;
use crate::message::ConnectionTokens;

/// How long a tunnel handshake may take at each step.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeTimeouts {
    /// Opening the TCP connection (`connectTimeout`).
    pub connect: Duration,
    /// Sending the head and waiting for the answer's head (`backendTimeout`).
    pub answer: Duration,
}

/// What the backend made of the handshake.
pub enum Handshake {
    /// `101 Switching Protocols`: from here on the connection carries the new protocol.
    Switched(Switched),
    /// Any other final answer, to relay as a normal response; its body reads from the
    /// connection, which is closed afterwards.
    Declined(Response),
}

/// A backend's `101`, with the connection it arrived on.
pub struct Switched {
    headers: HeaderMap,
    stream: TcpStream,
    early: Vec<u8>,
}

impl Switched {
    /// The protocol the backend switched to, from its `Upgrade` header.
    pub fn protocol(&self) -> Option<&str> {
        self.headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
    }

    /// The 101's end-to-end headers (hop-by-hop ones left out), for the client's 101.
    pub fn end_to_end_headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let tokens = ConnectionTokens::from_headers(
            self.headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| ("connection", v.as_bytes())),
        );
        self.headers
            .iter()
            .filter(move |(name, _)| !tokens.is_hop_by_hop(name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }

    /// The connection to the backend, and the bytes of the new protocol that arrived right
    /// behind the 101's head (owed to the client first).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.early)
    }
}

/// Sends the handshake for `request` to the backend at `url`, with `Connection: Upgrade` and
/// `Upgrade: protocols`, and reads the backend's answer.
pub fn handshake(
    request: &Outgoing,
    url: &BackendUrl,
    protocols: &str,
    timeouts: HandshakeTimeouts,
) -> Result<Handshake, Failure> {
    let answer = exchange_heads(&request.to(url)?, protocols, timeouts).map_err(|e| match e {
        HandshakeError::Connect(reason) => Failure::Connect(reason),
        HandshakeError::Timeout(reason) => Failure::Timeout(reason),
        HandshakeError::Closed(reason) => Failure::Closed(reason),
        HandshakeError::Broken(reason) => Failure::Broken(reason),
    })?;
    Ok(match answer {
        Answer::Switched {
            headers,
            stream,
            early,
        } => Handshake::Switched(Switched {
            headers,
            stream,
            early,
        }),
        Answer::Declined(response) => {
            Handshake::Declined(Response::checked(response, request.is_head(), None)?)
        }
    })
}

/// The answer as read from the socket.
enum Answer {
    /// `101 Switching Protocols`: from here on the connection carries the new protocol.
    Switched {
        /// The 101's headers, as the backend sent them.
        headers: HeaderMap,
        /// The connection to the backend.
        stream: TcpStream,
        /// Bytes of the new protocol that arrived right behind the 101's head.
        early: Vec<u8>,
    },
    /// Any other final answer, to relay as a normal response; its body reads from the
    /// connection, which is closed afterwards.
    Declined(http::Response<ureq::Body>),
}

/// Why a handshake failed, sorted as ureq's errors are.
#[derive(Debug)]
enum HandshakeError {
    /// Nothing was sent: the name did not resolve or the connection was refused or timed out.
    Connect(String),
    /// The backend did not answer within `backendTimeout`.
    Timeout(String),
    /// The connection closed before a whole answer head arrived.
    Closed(String),
    /// The answer is not HTTP, or too large.
    Broken(String),
}

/// Most interim (1xx other than 101) answers skipped before the final one.
const MAX_INTERIM_ANSWERS: usize = 8;

/// Writes the handshake head and reads heads until the final answer.
fn exchange_heads(
    request: &http::Request<()>,
    protocols: &str,
    timeouts: HandshakeTimeouts,
) -> Result<Answer, HandshakeError> {
    let mut stream = connect(request.uri(), timeouts.connect)?;
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            HandshakeError::Timeout(format!("timed out ({e})"))
        }
        _ => HandshakeError::Closed(e.to_string()),
    };
    stream
        .set_read_timeout(Some(timeouts.answer))
        .and_then(|()| stream.set_write_timeout(Some(timeouts.answer)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(io_error)?;
    stream
        .write_all(&handshake_head(request, protocols))
        .map_err(io_error)?;

    let mut buffered = Vec::new();
    for _ in 0..=MAX_INTERIM_ANSWERS {
        let head_end = read_head(&mut stream, &mut buffered).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => HandshakeError::Broken(e.to_string()),
            _ => io_error(e),
        })?;
        let (status, headers) =
            parse_head(&buffered[..head_end]).map_err(HandshakeError::Broken)?;
        let rest = buffered.split_off(head_end);
        if status == 101 {
            return Ok(Answer::Switched {
                headers,
                stream,
                early: rest,
            });
        }
        if (100..200).contains(&status) {
            buffered = rest;
            continue;
        }
        let body = framed_body(status, &headers, Cursor::new(rest), stream)
            .map_err(HandshakeError::Broken)?;
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(status)
            .map_err(|_| HandshakeError::Broken(format!("status {status}")))?;
        *response.headers_mut() = headers;
        return Ok(Answer::Declined(response));
    }
    Err(HandshakeError::Broken("too many interim answers".into()))
}

/// Opens the connection to the backend named by the URI's authority.
fn connect(uri: &http::Uri, timeout: Duration) -> Result<TcpStream, HandshakeError> {
    let authority = uri
        .authority()
        .ok_or_else(|| HandshakeError::Connect("no backend address".into()))?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| HandshakeError::Connect(format!("cannot look up {host}: {e}")))?
        .collect();
    let mut last_error = format!("{host} has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                last_error = "connection refused".into();
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(HandshakeError::Connect(last_error))
}

/// The request head as written to the backend: origin-form target, the rewritten headers, and
/// the upgrade offer itself (which header rewriting removed as hop-by-hop).
fn handshake_head(request: &http::Request<()>, protocols: &str) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("{} {target} HTTP/1.1\r\n", request.method()).into_bytes();
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: ");
    head.extend_from_slice(protocols.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::super::response_head::read_head;
    use super::*;
    use crate::message::MAX_RESPONSE_HEAD_BYTES;
    use std::time::Instant;

    /// A backend on 127.0.0.1 that reads one request head and answers `answer`, then holds
    /// the connection for a second, longer than the test's answer timeout.
    fn backend_answering(
        answer: &'static [u8],
    ) -> (http::Request<()>, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let at = read_head(&mut stream, &mut head).unwrap();
            head.truncate(at);
            stream.write_all(answer).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            head
        });
        (request_to(addr), thread)
    }

    fn request_to(addr: SocketAddr) -> http::Request<()> {
        http::Request::builder()
            .uri(format!("http://{addr}/chat?x=1"))
            .header("host", "example.com")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    const QUICK: HandshakeTimeouts = HandshakeTimeouts {
        connect: Duration::from_secs(2),
        answer: Duration::from_millis(300),
    };

    #[test]
    fn a_switch_keeps_the_bytes_behind_the_101() {
        let (request, backend) = backend_answering(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
        );
        let Ok(Answer::Switched { headers, early, .. }) =
            exchange_heads(&request, "websocket", QUICK)
        else {
            panic!("expected a switch");
        };
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(early, b"\x81\x02hi");
        let sent = backend.join().unwrap();
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            "GET /chat?x=1 HTTP/1.1\r\nhost: example.com\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn interim_answers_are_skipped_and_a_refusal_keeps_its_body() {
        let (request, _backend) = backend_answering(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope",
        );
        let Ok(Answer::Declined(response)) = exchange_heads(&request, "websocket", QUICK) else {
            panic!("expected the 426");
        };
        assert_eq!(response.status(), 426);
        let mut body = String::new();
        response
            .into_body()
            .into_reader()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "nope");
    }

    #[test]
    fn failures_are_sorted_like_the_forwarders() {
        // Nothing listens: a connect failure, safe to try elsewhere.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = exchange_heads(&request_to(free), "websocket", QUICK);
        assert!(
            matches!(refused, Err(HandshakeError::Connect(ref r)) if r == "connection refused"),
            "{:?}",
            refused.err()
        );
        // Silent: a timeout after `answer`.
        let (request, _backend) = backend_answering(b"");
        let started = Instant::now();
        let silent = exchange_heads(&request, "websocket", QUICK);
        assert!(
            matches!(silent, Err(HandshakeError::Timeout(_))),
            "{:?}",
            silent.err()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // A head past 32 KiB: broken, not a closed connection.
        static HUGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut head = b"HTTP/1.1 101 Switching Protocols\r\nX-Big: ".to_vec();
            head.resize(MAX_RESPONSE_HEAD_BYTES + 8192, b'a');
            head
        });
        let (request, _backend) = backend_answering(&HUGE);
        let huge = exchange_heads(&request, "websocket", QUICK);
        assert!(
            matches!(huge, Err(HandshakeError::Broken(_))),
            "{:?}",
            huge.err()
        );
        // Garbage: broken.
        let (request, _backend) = backend_answering(b"SSH-2.0-OpenSSH\r\n\r\n");
        let garbage = exchange_heads(&request, "websocket", QUICK);
        assert!(
            matches!(garbage, Err(HandshakeError::Broken(_))),
            "{:?}",
            garbage.err()
        );
    }
}
