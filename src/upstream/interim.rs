//! Interim (`1xx`) answers, taken out before ureq sees them. RFC 9110 section 15.2 lets them
//! carry header fields, and a proxy that did not ask for them passes none on; ureq-proto 0.7
//! consumes a bare `100 Continue` but refuses one with a header (`HeadersWith100`), which would
//! turn a good answer into a 502. tinylb never sends `Expect: 100-continue` upstream, so no
//! interim answer is anything ureq needs: each complete one is dropped from the input while a
//! response head is awaited. `101` is not interim here (ureq marks the connection switched,
//! and tinylb answers it 502 on a plain request).

use ureq::Error;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// A link of an Agent's connector chain that wraps each new connection in [`WithoutInterim`].
#[derive(Debug)]
pub(super) struct DropInterimAnswers;

impl<In: Transport> Connector<In> for DropInterimAnswers {
    type Out = WithoutInterim<In>;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<WithoutInterim<In>>, Error> {
        Ok(chained.map(|inner| WithoutInterim {
            inner,
            awaiting_head: false,
        }))
    }
}

/// A backend connection whose input loses its interim answers.
#[derive(Debug)]
pub(super) struct WithoutInterim<T> {
    inner: T,
    /// A request went out and its answer's head has not begun yet.
    awaiting_head: bool,
}

impl<T: Transport> WithoutInterim<T> {
    /// Drops the complete interim heads at the start of the input; returns whether the rest
    /// may still be one (it is incomplete), so that more input is needed to tell.
    fn drop_interim(&mut self) -> bool {
        while self.awaiting_head {
            let buffers = self.inner.buffers();
            match interim_head(buffers.input()) {
                Head::Interim(length) => buffers.input_consume(length),
                Head::Unknown => return true,
                Head::Final => self.awaiting_head = false,
            }
        }
        false
    }
}

impl<T: Transport> Transport for WithoutInterim<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.awaiting_head = true;
        self.inner.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        if self.inner.buffers().can_use_input() && !self.drop_interim() {
            return Ok(true);
        }
        self.await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
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
    /// A complete interim head of this many bytes (status line to blank line).
    Interim(usize),
    /// Too little to tell, or an interim head not yet complete.
    Unknown,
    /// Anything else: a final answer's head (or something ureq will refuse).
    Final,
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
    let interim = input.starts_with(START)
        && input[7].is_ascii_digit()
        && input[8] == b' '
        && input[9] == b'1'
        && input[10].is_ascii_digit()
        && input[11].is_ascii_digit()
        && &input[9..12] != b"101";
    if !interim {
        return Head::Final;
    }
    match input.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => Head::Interim(at + 4),
        None => Head::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_interim_heads_are_found_and_everything_else_is_left() {
        for (input, expected) in [
            (
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"[..],
                Head::Interim(25),
            ),
            (
                b"HTTP/1.1 100 Continue\r\nX-Note: hi\r\n\r\n",
                Head::Interim(37),
            ),
            (
                b"HTTP/1.0 103 Early Hints\r\nLink: </a>\r\n\r\n",
                Head::Interim(40),
            ),
            (b"HTTP/1.1 100 Continue\r\nX-Note", Head::Unknown),
            (b"HTTP/1.1 1", Head::Unknown),
            (b"HTTP/", Head::Unknown),
            (b"", Head::Unknown),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Head::Final),
            (b"HTTP/1.1 200 OK\r\n\r\n", Head::Final),
            (b"HTTP/1.1 404 Not Found\r\n\r\n", Head::Final),
            (b"HTTP/2 100\r\n\r\n", Head::Final),
            (b"hello", Head::Final),
            (b"HTTP/1.1 1x0 Odd\r\n\r\n", Head::Final),
        ] {
            assert_eq!(
                interim_head(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
