//! tinylb's own short answers (a refusal, a 503, a 502 for a failed backend), written through
//! tiny_http's raw writer like every answer (see `relay.rs`).

use std::io::{self, Write};

use super::relay::{Buffers, ClientSide, push_status_line};

/// One of tinylb's own short plain-text answers: a refusal, a 503, a 502 for a failed backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The one line of body, also the log's reason.
    pub message: &'static str,
    /// Seconds for a `Retry-After` header, for a 503 that will pass.
    pub retry_after: Option<u32>,
    /// End the connection after the answer: the request's body was not read, so the next
    /// request's start is unknown.
    pub close: bool,
}

impl Answer {
    /// An answer without `Retry-After`.
    pub const fn new(status: u16, message: &'static str, close: bool) -> Answer {
        Answer {
            status,
            message,
            retry_after: None,
            close,
        }
    }

    /// The body's length: the message and a newline.
    pub fn body_len(&self) -> usize {
        self.message.len() + 1
    }
}

/// Writes tinylb's own answer.
pub fn write_answer(
    writer: &mut dyn Write,
    client: &ClientSide,
    answer: &Answer,
    buffers: &mut Buffers,
) -> io::Result<()> {
    let out = &mut buffers.head;
    out.clear();
    push_status_line(out, answer.status);
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    out.extend_from_slice(format!("Content-Length: {}\r\n", answer.body_len()).as_bytes());
    if let Some(seconds) = answer.retry_after {
        out.extend_from_slice(format!("Retry-After: {seconds}\r\n").as_bytes());
    }
    client.push_connection_header(out, answer.close);
    out.extend_from_slice(b"\r\n");
    if !client.head_request {
        out.extend_from_slice(answer.message.as_bytes());
        out.push(b'\n');
    }
    writer.write_all(out)?;
    writer.flush()
}
