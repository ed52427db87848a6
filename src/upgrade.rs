//! The backend side of an upgrade (a WebSocket handshake): ureq has no way to hand over a
//! connection after `101 Switching Protocols`, so the handshake goes over a plain `TcpStream`
//! that tinylb opens, writes and reads itself. The backend either switches (the stream then
//! becomes one end of a [`crate::tunnel`]) or answers like any HTTP server, and that answer is
//! relayed as usual, its body framed here from the raw bytes.

use std::io::{self, BufReader, Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ureq::http::{self, HeaderMap, HeaderName, HeaderValue, header};

use crate::backend::MAX_RESPONSE_HEAD_BYTES;
use crate::chunked::ChunkedReader;

/// How long a tunnel handshake may take at each step.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeTimeouts {
    /// Opening the TCP connection (`connectTimeout`).
    pub connect: Duration,
    /// Sending the head and waiting for the answer's head (`backendTimeout`).
    pub answer: Duration,
}

/// What the backend made of the handshake.
pub enum Answer {
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

/// Why a handshake failed, sorted as the forwarder sorts ureq's errors.
#[derive(Debug)]
pub enum HandshakeError {
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

/// Sends the handshake `request` (its headers already rewritten for the backend) with
/// `Connection: Upgrade` and `Upgrade: protocols`, and reads the backend's answer.
pub fn handshake(
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

/// Reads until `buffered` holds a whole head; returns where the head ends (after its blank
/// line). Bytes after it stay in `buffered`.
fn read_head(stream: &mut impl Read, buffered: &mut Vec<u8>) -> io::Result<usize> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidData, "answer head larger than 32 KiB");
    let mut searched: usize = 0;
    loop {
        // The blank line may straddle two reads: look again at the last three bytes.
        let from = searched.saturating_sub(3);
        if let Some(at) = find_blank_line(&buffered[from..]) {
            let end = from + at + 4;
            return if end > MAX_RESPONSE_HEAD_BYTES {
                Err(too_large())
            } else {
                Ok(end)
            };
        }
        searched = buffered.len();
        if searched > MAX_RESPONSE_HEAD_BYTES {
            return Err(too_large());
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection before answering",
            ));
        }
        buffered.extend_from_slice(&chunk[..read]);
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses a response head (status line and header lines, CRLF-separated, blank line included).
/// Anything a strict parser would refuse is refused: obs-fold, a bare CR or LF, bad names.
fn parse_head(head: &[u8]) -> Result<(u16, HeaderMap), String> {
    // Without the blank line's CRLF, every line, the last one too, ends in CRLF.
    let mut rest = head.strip_suffix(b"\r\n").unwrap_or(head);
    let mut lines = Vec::new();
    while !rest.is_empty() {
        let lf = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("line not ended by CRLF")?;
        let line = rest[..lf]
            .strip_suffix(b"\r")
            .ok_or("bare LF in the head")?;
        lines.push(line);
        rest = &rest[lf + 1..];
    }
    let (status_line, header_lines) = lines.split_first().ok_or("empty head")?;
    let status = match status_line {
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            b'0' | b'1',
            b' ',
            d1,
            d2,
            d3,
            rest @ ..,
        ] if [d1, d2, d3].iter().all(|d| d.is_ascii_digit())
            && (rest.is_empty() || rest[0] == b' ') =>
        {
            u16::from(d1 - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0')
        }
        _ => return Err("not an HTTP/1.x status line".into()),
    };
    let mut headers = HeaderMap::new();
    for line in header_lines {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("header line without a colon")?;
        let name = HeaderName::from_bytes(&line[..colon])
            .map_err(|_| "bad header name (or a folded line)".to_string())?;
        let value = HeaderValue::from_bytes(trim_ows(&line[colon + 1..]))
            .map_err(|_| format!("bad value for header {name}"))?;
        headers.append(name, value);
    }
    Ok((status, headers))
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The answer's body as a reader over the connection, framed as its headers say: by
/// Content-Length, chunked, or until the backend closes.
fn framed_body(
    status: u16,
    headers: &HeaderMap,
    source: Cursor<Vec<u8>>,
    stream: TcpStream,
) -> Result<ureq::Body, String> {
    let source = source.chain(stream);
    let body = if status == 204 || status == 304 {
        DeclinedBody::Exact(ExactLength { source, left: 0 })
    } else if headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        DeclinedBody::Chunked(ChunkedReader::new(BufReader::new(source)))
    } else if let Some(value) = headers.get(header::CONTENT_LENGTH) {
        let left = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("bad Content-Length")?;
        DeclinedBody::Exact(ExactLength { source, left })
    } else {
        DeclinedBody::UntilClose(source)
    };
    Ok(ureq::Body::builder().reader(body))
}

/// The bytes already read after the head, then the rest of the connection.
type Rest = io::Chain<Cursor<Vec<u8>>, TcpStream>;

/// A declined answer's body, one type for every framing.
enum DeclinedBody {
    Exact(ExactLength<Rest>),
    Chunked(ChunkedReader<BufReader<Rest>>),
    UntilClose(Rest),
}

impl Read for DeclinedBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            DeclinedBody::Exact(body) => body.read(buf),
            DeclinedBody::Chunked(body) => body.read(buf),
            DeclinedBody::UntilClose(body) => body.read(buf),
        }
    }
}

/// Exactly `left` bytes of `source`; an earlier end is an error, so a cut body is never taken
/// for a whole one.
struct ExactLength<R> {
    source: R,
    left: u64,
}

impl<R: Read> Read for ExactLength<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.source.read(&mut buf[..want])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend body shorter than its Content-Length",
            ));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
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
        let Ok(Answer::Switched { headers, early, .. }) = handshake(&request, "websocket", QUICK)
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
        let Ok(Answer::Declined(response)) = handshake(&request, "websocket", QUICK) else {
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
        let refused = handshake(&request_to(free), "websocket", QUICK);
        assert!(
            matches!(refused, Err(HandshakeError::Connect(ref r)) if r == "connection refused"),
            "{:?}",
            refused.err()
        );
        // Silent: a timeout after `answer`.
        let (request, _backend) = backend_answering(b"");
        let started = Instant::now();
        let silent = handshake(&request, "websocket", QUICK);
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
        let huge = handshake(&request, "websocket", QUICK);
        assert!(
            matches!(huge, Err(HandshakeError::Broken(_))),
            "{:?}",
            huge.err()
        );
        // Garbage: broken.
        let (request, _backend) = backend_answering(b"SSH-2.0-OpenSSH\r\n\r\n");
        let garbage = handshake(&request, "websocket", QUICK);
        assert!(
            matches!(garbage, Err(HandshakeError::Broken(_))),
            "{:?}",
            garbage.err()
        );
    }

    #[test]
    fn a_head_is_found_across_reads_and_what_follows_it_stays() {
        let mut source: &[u8] = b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody";
        let mut buffered = Vec::new();
        let end = read_head(&mut source, &mut buffered).unwrap();
        assert_eq!(&buffered[..end], b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n");
        assert_eq!(&buffered[end..], b"body");
        // The blank line split over two reads.
        let mut first: &[u8] = b"HTTP/1.1 200 OK\r\n\r";
        let mut buffered = Vec::new();
        assert_eq!(
            read_head(&mut first, &mut buffered).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut second: &[u8] = b"\nrest";
        assert_eq!(read_head(&mut second, &mut buffered).unwrap(), 19);
        // The limit is exact, whatever the size of the reads.
        let head_of = |len: usize| {
            let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
            head.resize(len - 4, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            head
        };
        let read_in_pieces = |bytes: &[u8]| {
            let mut pieces = Pieces(bytes, 1000);
            read_head(&mut pieces, &mut Vec::new())
        };
        let at_limit = head_of(MAX_RESPONSE_HEAD_BYTES);
        assert_eq!(read_in_pieces(&at_limit).unwrap(), MAX_RESPONSE_HEAD_BYTES);
        let over = head_of(MAX_RESPONSE_HEAD_BYTES + 1);
        assert_eq!(
            read_in_pieces(&over).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A head that never ends is refused once past the limit, not read to the end.
        let endless = vec![b'a'; MAX_RESPONSE_HEAD_BYTES * 3];
        assert_eq!(
            read_in_pieces(&endless).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// A reader that hands out at most `.1` bytes per read.
    struct Pieces<'a>(&'a [u8], usize);

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    use super::*;

    #[test]
    fn parses_a_switch_with_its_headers() {
        let (status, headers) = parse_head(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status, 101);
        assert_eq!(
            headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(headers["upgrade"], "websocket");
    }

    #[test]
    fn accepts_a_status_line_without_reason() {
        assert_eq!(parse_head(b"HTTP/1.1 404\r\n\r\n").unwrap().0, 404);
    }

    #[test]
    fn refuses_heads_a_strict_parser_refuses() {
        for head in [
            &b"HTTP/2 101\r\n\r\n"[..],
            b"HTTP/1.1 1O1 x\r\n\r\n",
            b"HTTP/1.1 101 x\r\nX-A: 1\rInjected: yes\r\n\r\n",
            b"HTTP/1.1 101 x\r\nX-A: 1\nInjected: yes\r\n\r\n",
            b"HTTP/1.1 101 x\r\nX-A: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 101 x\r\nBad Name: 1\r\n\r\n",
            b"HTTP/1.1 101 x\r\nno colon\r\n\r\n",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn an_exact_length_body_cut_short_is_an_error() {
        let mut whole = ExactLength {
            source: &b"hello"[..],
            left: 5,
        };
        let mut out = Vec::new();
        whole.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello");
        let mut cut = ExactLength {
            source: &b"hel"[..],
            left: 5,
        };
        assert_eq!(
            cut.read_to_end(&mut Vec::new()).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
