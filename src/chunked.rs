//! A strict decoder for the chunked transfer coding (RFC 9112 section 7.1), for the two byte
//! streams tinylb must frame itself: a client body that tiny_http hands over undecoded (it does
//! so for any request whose `Connection` header mentions `upgrade`), and a backend's answer to a
//! WebSocket handshake that it refused. Unlike tiny_http's decoder, a stream that ends before the
//! final `0` chunk is an error here, never a clean end: a cut body must not pass for a whole one.

use std::io::{self, BufRead, Read};

/// Longest chunk-size line (size, extensions, CRLF) or trailer line accepted; nginx and HAProxy
/// refuse far shorter ones, and an unbounded line would be unbounded memory.
const MAX_LINE: usize = 4096;
/// Most trailer fields skipped after the last chunk, as with request header fields.
const MAX_TRAILERS: usize = 100;

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After the final chunk and its trailers: the body is complete.
    Done,
}

/// Decodes a chunked body from `source`, giving the data bytes; `Ok(0)` only after the final
/// chunk. A premature end is `UnexpectedEof`, bad framing `InvalidData`.
pub struct ChunkedReader<R> {
    source: R,
    state: State,
}

impl<R: BufRead> ChunkedReader<R> {
    /// A decoder at the start of a chunked body.
    pub fn new(source: R) -> ChunkedReader<R> {
        ChunkedReader {
            source,
            state: State::Size,
        }
    }

    /// Whether the final chunk was read: the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Gives back the source, positioned after whatever was decoded.
    pub fn into_inner(self) -> R {
        self.source
    }

    fn read_size_line(&mut self) -> io::Result<u64> {
        let line = read_line(&mut self.source)?;
        // Extensions (`;name=value`) are allowed and ignored.
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = trim(size);
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(invalid("bad chunk size"));
        }
        let text = std::str::from_utf8(size).map_err(|_| invalid("bad chunk size"))?;
        u64::from_str_radix(text, 16).map_err(|_| invalid("bad chunk size"))
    }

    fn skip_trailers(&mut self) -> io::Result<()> {
        for _ in 0..=MAX_TRAILERS {
            if read_line(&mut self.source)?.is_empty() {
                return Ok(());
            }
        }
        Err(invalid("too many trailer fields"))
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Size => {
                    let size = self.read_size_line()?;
                    if size == 0 {
                        self.skip_trailers()?;
                        self.state = State::Done;
                    } else {
                        self.state = State::Data(size);
                    }
                }
                State::Data(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let read = self.source.read(&mut buf[..want])?;
                    if read == 0 {
                        return Err(cut_short());
                    }
                    let left = left - read as u64;
                    if left == 0 {
                        if !read_line(&mut self.source)?.is_empty() {
                            return Err(invalid("chunk longer than its size"));
                        }
                        self.state = State::Size;
                    } else {
                        self.state = State::Data(left);
                    }
                    return Ok(read);
                }
            }
        }
    }
}

/// Reads one CRLF-terminated line (without the CRLF). A bare LF or CR inside is refused, as are
/// lines longer than [`MAX_LINE`].
fn read_line(source: &mut dyn BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let read = Read::take(source, MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if read == 0 || line.last() != Some(&b'\n') {
        return Err(if read < MAX_LINE {
            cut_short()
        } else {
            invalid("chunk line too long")
        });
    }
    line.pop();
    if line.pop() != Some(b'\r') || line.contains(&b'\r') {
        return Err(invalid("chunk line not ended by CRLF"));
    }
    Ok(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the chunked body ended before its final chunk",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ChunkedReader::new(input).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        assert_eq!(
            decode(b"3\r\nhel\r\nB;ext=1\r\nlo world!!!\r\n0\r\n\r\n").unwrap(),
            b"hello world!!!"
        );
        assert_eq!(
            decode(b"1\r\nx\r\n0\r\nTrailer-A: 1\r\n\r\n").unwrap(),
            b"x"
        );
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
    }

    #[test]
    fn stops_at_the_final_chunk_and_leaves_what_follows() {
        let mut reader = ChunkedReader::new(&b"2\r\nab\r\n0\r\n\r\nGET / HTTP/1.1"[..]);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert!(reader.is_done());
        assert_eq!(out, b"ab");
        assert_eq!(reader.into_inner(), b"GET / HTTP/1.1");
    }

    #[test]
    fn a_body_cut_anywhere_is_an_error_not_an_end() {
        let whole = b"5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..whole.len() {
            let error = decode(&whole[..cut]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[test]
    fn a_size_line_is_one_to_sixteen_hex_digits() {
        assert_eq!(decode(b"0000000000000001\r\nx\r\n0\r\n\r\n").unwrap(), b"x");
        for size in [&b"00000000000000001"[..], b"+1", b"", b" "] {
            let mut input = size.to_vec();
            input.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            let error = decode(&input).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{size:?}");
        }
    }

    #[test]
    fn is_done_only_after_the_final_chunk() {
        let mut reader = ChunkedReader::new(&b"2\r\nab\r\n0\r\n\r\n"[..]);
        let mut buf = [0u8; 1];
        reader.read_exact(&mut buf).unwrap();
        assert!(!reader.is_done());
        reader.read_to_end(&mut Vec::new()).unwrap();
        assert!(reader.is_done());
    }

    #[test]
    fn bad_framing_is_invalid_data() {
        for input in [
            &b"x\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabc\r\n0\r\nA: 1\rB: 2\r\n\r\n",
        ] {
            let error = decode(input).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{input:?}");
        }
    }

    #[test]
    fn endless_lines_and_trailers_are_refused() {
        let long_line = vec![b'1'; MAX_LINE + 10];
        assert_eq!(
            decode(&long_line).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut many = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILERS {
            many.extend_from_slice(b"A: 1\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            decode(&many).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
