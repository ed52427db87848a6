//! `100 Continue` answers with header fields, taken out before ureq sees them. RFC 9110
//! section 15.2 lets every interim answer carry header fields; ureq-proto 0.7 consumes other
//! `1xx` answers and a bare `100`, but refuses a `100` with a header (`HeadersWith100`), which
//! would turn a good answer into a 502. So each complete one is dropped from the input while a
//! response head is awaited. A request tinylb sent with `Expect: 100-continue` then waits for
//! ureq's `await_100` timeout (1 s) before its body goes, as if the backend had not answered
//! the expectation; every other request loses nothing. The same wrapper works around ureq's
//! wait after an early final answer to `Expect: 100-continue` (below).

use ureq::Error;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// A link of an Agent's connector chain that wraps each new connection in [`ContinueFiltered`].
#[derive(Debug)]
pub(super) struct DropContinueWithFields;

impl<In: Transport> Connector<In> for DropContinueWithFields {
    type Out = ContinueFiltered<In>;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<ContinueFiltered<In>>, Error> {
        Ok(chained.map(|inner| ContinueFiltered {
            inner,
            awaiting_head: false,
            final_head_unread: false,
        }))
    }
}

/// A backend connection whose input loses its `100` answers with header fields.
#[derive(Debug)]
pub(super) struct ContinueFiltered<T> {
    inner: T,
    /// A request went out and its answer's head has not begun yet.
    awaiting_head: bool,
    /// A whole final head arrived and ureq may not have read it yet (see
    /// [`Transport::maybe_await_input`] below).
    final_head_unread: bool,
}

impl<T: Transport> ContinueFiltered<T> {
    /// Drops the complete `100` heads with fields at the start of the input; returns whether the rest
    /// may still be one (it is incomplete), so that more input is needed to tell.
    fn drop_interim(&mut self) -> bool {
        while self.awaiting_head {
            let buffers = self.inner.buffers();
            match interim_head(buffers.input()) {
                Head::Interim(length) => buffers.input_consume(length),
                Head::Unknown => return true,
                Head::Final => {
                    self.awaiting_head = false;
                    self.final_head_unread = holds_whole_head(buffers.input());
                }
            }
        }
        false
    }
}

impl<T: Transport> Transport for ContinueFiltered<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.awaiting_head = true;
        self.final_head_unread = false;
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        // ureq 3.5 reads a final answer to `Expect: 100-continue` without consuming it, then
        // asks for input again; on a connection where nothing was consumed yet it would wait
        // for bytes that never come (the backend has answered and waits). A whole head still
        // unread is input enough, once: ureq reads it, or asks again and waits as usual.
        // (ureq asks through `Box<dyn Transport>`, whose `maybe_await_input` is the trait's
        // default and calls this.)
        if std::mem::take(&mut self.final_head_unread)
            && holds_whole_head(self.inner.buffers().input())
        {
            return Ok(true);
        }
        loop {
            let progress = self.inner.await_input(timeout)?;
            let unsure = self.drop_interim();
            // Nothing left but part of what may be an interim head: wait for the rest here,
            // so that ureq never parses it.
            if !(progress && unsure && self.inner.buffers().input().is_empty()) {
                return Ok(progress);
            }
        }
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// What the input starts with.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete `100` head with header fields, of this many bytes (status line to blank
    /// line).
    Interim(usize),
    /// Too little to tell, or a `100` head not yet complete.
    Unknown,
    /// Anything else, for ureq: a bare `100`, another `1xx`, a final answer's head.
    Final,
}

/// Whether `input` starts with a whole answer head.
fn holds_whole_head(input: &[u8]) -> bool {
    input.starts_with(b"HTTP/1.") && input.windows(4).any(|w| w == b"\r\n\r\n")
}

fn interim_head(input: &[u8]) -> Head {
    const START: &[u8] = b"HTTP/1.";
    // "HTTP/1.1 1xx" is 12 bytes.
    if input.len() < 12 {
        let known = input.len().min(START.len());
        return if input[..known] == START[..known] {
            Head::Unknown
        } else {
            Head::Final
        };
    }
    let continue_head = input.starts_with(START)
        && input[7].is_ascii_digit()
        && input[8] == b' '
        && &input[9..12] == b"100";
    if !continue_head {
        return Head::Final;
    }
    let line_end = input.windows(2).position(|w| w == b"\r\n");
    match (line_end, input.windows(4).position(|w| w == b"\r\n\r\n")) {
        // The status line's CRLF is the blank line's first half: no header fields.
        (Some(line), Some(blank)) if line == blank => Head::Final,
        (_, Some(blank)) => Head::Interim(blank + 4),
        (_, None) => Head::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_continue_heads_with_fields_are_dropped() {
        #[rustfmt::skip]
        let cases: [(&[u8], Head); 15] = [
            (b"HTTP/1.1 100 Continue\r\nX-Note: hi\r\n\r\nHTTP/1.1 200", Head::Interim(37)),
            (b"HTTP/1.0 100 Continue\r\nA: 1\r\nB: 2\r\n\r\n", Head::Interim(37)),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", Head::Final),
            (b"HTTP/1.0 103 Early Hints\r\nLink: </a>\r\n\r\n", Head::Final),
            (b"HTTP/1.1 100 Continue\r\nX-Note", Head::Unknown),
            (b"HTTP/1.1 100 Continue\r\n", Head::Unknown),
            (b"HTTP/1.1 1", Head::Unknown),
            (b"HTTP/", Head::Unknown),
            (b"", Head::Unknown),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Head::Final),
            (b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n", Head::Final),
            (b"HTTP/1.1 404 Not Found\r\n\r\n", Head::Final),
            (b"HTTP/2 100\r\nA: 1\r\n\r\n", Head::Final),
            (b"hello", Head::Final),
            (b"HTTP/1.1 1x0 Odd\r\nA: 1\r\n\r\n", Head::Final),
        ];
        for (input, expected) in cases {
            assert_eq!(
                interim_head(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
