//! Reading a backend's answer head from a plain socket, strictly, and framing the body that
//! follows it. Used for upgrade handshakes, which go over tinylb's own socket because ureq
//! cannot hand a connection over after a `101`.

use std::io::{self, BufReader, Cursor, Read};
use std::net::TcpStream;

use ureq::http::{HeaderMap, HeaderName, HeaderValue};

use crate::chunked::ChunkedReader;
use crate::message::MAX_RESPONSE_HEAD_BYTES;
use crate::message::framing::{AnswerBody, answer_body_of, trim_ows};

/// Reads until `buffered` holds a whole head; returns where the head ends (after its blank
/// line). Bytes after it stay in `buffered`.
pub(super) fn read_head(stream: &mut impl Read, buffered: &mut Vec<u8>) -> io::Result<usize> {
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
pub(super) fn parse_head(head: &[u8]) -> Result<(u16, HeaderMap), String> {
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

/// The answer's body as a reader over the connection, framed as its headers say (the one
/// decision of [`crate::message::framing`], as on the pooled path): by Content-Length,
/// chunked, or until the backend closes. A framing tinylb cannot relay is an error.
pub(super) fn framed_body(
    status: u16,
    headers: &HeaderMap,
    source: Cursor<Vec<u8>>,
    stream: TcpStream,
) -> Result<ureq::Body, String> {
    let framing = answer_body_of(status, false, headers)
        .map_err(|bad| format!("answer framed with {}", bad.reason()))?;
    let source = source.chain(stream);
    let body = match framing {
        AnswerBody::None { .. } => DeclinedBody::Exact(ExactLength { source, left: 0 }),
        AnswerBody::Length(left) => DeclinedBody::Exact(ExactLength { source, left }),
        AnswerBody::Chunked => DeclinedBody::Chunked(ChunkedReader::new(BufReader::new(source))),
        AnswerBody::UntilClose => DeclinedBody::UntilClose(source),
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
    use super::*;

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
