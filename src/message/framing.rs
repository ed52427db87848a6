//! How a backend's answer body is framed: one decision, from the status, the request's method
//! and the answer's `Transfer-Encoding` and `Content-Length` headers, for every path that
//! relays an answer (the pooled one through ureq, and the declined upgrade, which tinylb reads
//! itself). tinylb then writes its own framing to the client from this decision, never the
//! backend's headers, so no `Connection` token a backend names can remove it.
//!
//! RFC 9112 section 6.3 gives the order; where it leaves the choice to the recipient, tinylb
//! answers as nginx does (1.23 and later):
//!
//! | the answer | RFC 9112 §6.3 | nginx | tinylb |
//! |---|---|---|---|
//! | to `HEAD`; or `1xx`, `204`, `304` | no body, whatever the headers say (rules 1, 2) | no body | no body; a valid `Content-Length` of a `HEAD` or `304` answer is passed on, a `204`'s is dropped |
//! | `Transfer-Encoding: chunked` | chunked (rule 4) | chunked | de-chunked, then re-framed |
//! | `Transfer-Encoding` with any other coding (`gzip, chunked`, `chunked, gzip`, `identity`) | a coding tinylb does not apply: the body cannot be read correctly (rule 4: the final coding must be chunked to frame it, and a coding before it would have to be passed on undone) | 502, "upstream sent unknown Transfer-Encoding" | 502, connection dropped |
//! | `Transfer-Encoding` and `Content-Length` | TE wins, but the message "ought to be handled as an error" when a proxy forwards it (rule 3) | 502 | 502, connection dropped |
//! | `Content-Length` values all equal (`5`, two `5` headers, `5, 5`) | that length (rule 5 allows one value repeated) | that length | that length, sent as one `Content-Length` |
//! | `Content-Length` values that differ, or are not a number | unrecoverable error (rule 5) | 502 | 502, connection dropped |
//! | neither | the body ends when the connection closes (rule 8) | read to close | read to close; re-chunked for HTTP/1.1 clients |

use super::http;

/// How the answer's body is framed, as read from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerBody {
    /// No body. `length` is what a `Content-Length` said the body would be (to `HEAD`, or a
    /// `304`), passed on to the client.
    None { length: Option<u64> },
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// Why an answer's framing cannot be relayed: each is a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFraming {
    /// A transfer coding other than plain `chunked`.
    UnknownTransferEncoding,
    /// Both `Transfer-Encoding` and `Content-Length`.
    LengthAndTransferEncoding,
    /// `Content-Length` values that differ or are not numbers.
    BadLength,
}

impl BadFraming {
    /// The reason, for the log line and the 502's cause.
    pub fn reason(self) -> &'static str {
        match self {
            BadFraming::UnknownTransferEncoding => "a Transfer-Encoding other than chunked",
            BadFraming::LengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            BadFraming::BadLength => "a Content-Length that is not one number",
        }
    }
}

/// Decides how the body of an answer with `status` to a request (a `HEAD` one if
/// `head_request`) is framed, from the values of its `Transfer-Encoding` and `Content-Length`
/// headers (each header's whole value, in order), each given as a way to walk them, so that
/// the request path reads the header map without collecting anything.
pub fn answer_body<'a, T, C>(
    status: u16,
    head_request: bool,
    transfer_encodings: impl Fn() -> T,
    content_lengths: impl Fn() -> C,
) -> Result<AnswerBody, BadFraming>
where
    T: Iterator<Item = &'a [u8]>,
    C: Iterator<Item = &'a [u8]>,
{
    let length = agreed_length(content_lengths());
    if head_request || status < 200 || status == 204 || status == 304 {
        let passed_on = head_request || status == 304;
        return Ok(AnswerBody::None {
            length: length.ok().flatten().filter(|_| passed_on),
        });
    }
    if transfer_encodings().next().is_some() {
        if content_lengths().next().is_some() {
            return Err(BadFraming::LengthAndTransferEncoding);
        }
        let mut codings = transfer_encodings()
            .flat_map(|value| value.split(|&b| b == b','))
            .map(trim_ows)
            .filter(|coding| !coding.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => {
                Ok(AnswerBody::Chunked)
            }
            _ => Err(BadFraming::UnknownTransferEncoding),
        };
    }
    match length? {
        Some(n) => Ok(AnswerBody::Length(n)),
        None => Ok(AnswerBody::UntilClose),
    }
}

/// [`answer_body`] for an answer head as parsed: its `Transfer-Encoding` and `Content-Length`
/// headers, every value in order.
pub fn answer_body_of(
    status: u16,
    head_request: bool,
    headers: &http::HeaderMap,
) -> Result<AnswerBody, BadFraming> {
    let values = |name: &'static http::HeaderName| {
        move || headers.get_all(name).into_iter().map(|v| v.as_bytes())
    };
    answer_body(
        status,
        head_request,
        values(&http::header::TRANSFER_ENCODING),
        values(&http::header::CONTENT_LENGTH),
    )
}

/// The one length all `Content-Length` values agree on (`None` without any).
fn agreed_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, BadFraming> {
    let mut agreed = None;
    for item in values.flat_map(|value| value.split(|&b| b == b',')) {
        let item = trim_ows(item);
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(BadFraming::BadLength);
        }
        let n: u64 = std::str::from_utf8(item)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BadFraming::BadLength)?;
        if agreed.is_some_and(|a| a != n) {
            return Err(BadFraming::BadLength);
        }
        agreed = Some(n);
    }
    Ok(agreed)
}

/// Strips the optional whitespace (spaces and tabs) around a header value or list item
/// (RFC 9110 section 5.6.3).
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
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

#[cfg(test)]
mod tests {
    use super::AnswerBody::{Chunked, Length, None as NoBody, UntilClose};
    use super::BadFraming::*;
    use super::*;

    /// status, HEAD, Transfer-Encoding values, Content-Length values, decision.
    type Row = (
        u16,
        bool,
        &'static [&'static str],
        &'static [&'static str],
        Result<AnswerBody, BadFraming>,
    );

    /// One row per line of the table in the module's doc.
    #[test]
    fn each_combination_is_framed_as_the_table_says() {
        #[rustfmt::skip]
        let cases: &[Row] = &[
            // status, HEAD, Transfer-Encoding values, Content-Length values -> decision
            (200, true, &[], &["5"], Ok(NoBody { length: Some(5) })),
            (200, true, &["chunked"], &[], Ok(NoBody { length: None })),
            (304, false, &[], &["5"], Ok(NoBody { length: Some(5) })),
            (204, false, &[], &["5"], Ok(NoBody { length: None })),
            (101, false, &[], &["5"], Ok(NoBody { length: None })),
            (103, false, &[], &[], Ok(NoBody { length: None })),
            (304, false, &[], &["5", "7"], Ok(NoBody { length: None })),
            (200, false, &["chunked"], &[], Ok(Chunked)),
            (200, false, &["Chunked "], &[], Ok(Chunked)),
            (200, false, &["gzip, chunked"], &[], Err(UnknownTransferEncoding)),
            (200, false, &["chunked, gzip"], &[], Err(UnknownTransferEncoding)),
            (200, false, &["gzip", "chunked"], &[], Err(UnknownTransferEncoding)),
            (200, false, &["chunked", "chunked"], &[], Err(UnknownTransferEncoding)),
            (200, false, &["identity"], &[], Err(UnknownTransferEncoding)),
            (200, false, &[""], &[], Err(UnknownTransferEncoding)),
            (200, false, &["chunked"], &["5"], Err(LengthAndTransferEncoding)),
            (200, false, &[], &["5"], Ok(Length(5))),
            (200, false, &[], &["5", "5"], Ok(Length(5))),
            (200, false, &[], &["5, 5"], Ok(Length(5))),
            (200, false, &[], &[" 0 "], Ok(Length(0))),
            (200, false, &[], &["5", "7"], Err(BadLength)),
            (200, false, &[], &["5, 7"], Err(BadLength)),
            (200, false, &[], &["-1"], Err(BadLength)),
            (200, false, &[], &["+5"], Err(BadLength)),
            (200, false, &[], &["5x"], Err(BadLength)),
            (200, false, &[], &[""], Err(BadLength)),
            (200, false, &[], &["5,"], Err(BadLength)),
            (200, false, &[], &["99999999999999999999"], Err(BadLength)),
            (200, false, &[], &["18446744073709551615"], Ok(Length(u64::MAX))),
            (200, false, &[], &[], Ok(UntilClose)),
            (404, false, &[], &[], Ok(UntilClose)),
        ];
        for (status, head, te, cl, expected) in cases {
            let te: Vec<&[u8]> = te.iter().map(|v| v.as_bytes()).collect();
            let cl: Vec<&[u8]> = cl.iter().map(|v| v.as_bytes()).collect();
            assert_eq!(
                answer_body(*status, *head, || te.iter().copied(), || cl.iter().copied()),
                *expected,
                "{status}, HEAD {head}, TE {te:?}, CL {cl:?}"
            );
        }
    }

    #[test]
    fn every_refusal_says_why() {
        for bad in [
            UnknownTransferEncoding,
            LengthAndTransferEncoding,
            BadLength,
        ] {
            assert!(!bad.reason().is_empty());
        }
        assert_ne!(UnknownTransferEncoding.reason(), BadLength.reason());
        assert_ne!(LengthAndTransferEncoding.reason(), BadLength.reason());
    }
}
