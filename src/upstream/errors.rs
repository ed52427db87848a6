//! Sorting ureq's errors into the [`Failure`] kinds the retry decision and the client's answer
//! need, and a short human reason for each log line.

use std::io;

use ureq::Timeout;

use crate::failure::Failure;

/// Sorts a ureq error: could not connect, too slow, closed, or not HTTP.
pub fn classify(error: &ureq::Error) -> Failure {
    let text = describe(error);
    match error {
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound => Failure::Connect(text),
        ureq::Error::Io(e) if is_connect_error(e.kind()) => Failure::Connect(text),
        ureq::Error::Timeout(_) => Failure::Timeout(text),
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => Failure::Timeout(text),
        ureq::Error::Io(e) if is_closed_error(e.kind()) => Failure::Closed(text),
        _ => Failure::Broken(text),
    }
}

fn is_connect_error(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

fn is_closed_error(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A short, human reason for a ureq error ("connection refused").
pub fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused".into()
        }
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::Protocol(e) => format!("not a valid HTTP response ({e})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_sort_into_the_kinds_the_retry_needs() {
        let io_error = |kind| ureq::Error::Io(io::Error::new(kind, "x"));
        let cases = [
            (ureq::Error::ConnectionFailed, "connect"),
            (ureq::Error::HostNotFound, "connect"),
            (ureq::Error::Timeout(Timeout::Connect), "connect"),
            (ureq::Error::Timeout(Timeout::Resolve), "connect"),
            (io_error(io::ErrorKind::ConnectionRefused), "connect"),
            (io_error(io::ErrorKind::HostUnreachable), "connect"),
            (io_error(io::ErrorKind::NetworkUnreachable), "connect"),
            (io_error(io::ErrorKind::AddrNotAvailable), "connect"),
            (ureq::Error::Timeout(Timeout::RecvResponse), "timeout"),
            (io_error(io::ErrorKind::TimedOut), "timeout"),
            (io_error(io::ErrorKind::UnexpectedEof), "closed"),
            (io_error(io::ErrorKind::ConnectionReset), "closed"),
            (io_error(io::ErrorKind::ConnectionAborted), "closed"),
            (io_error(io::ErrorKind::BrokenPipe), "closed"),
            (io_error(io::ErrorKind::InvalidData), "broken"),
            (ureq::Error::BadUri("x".into()), "broken"),
        ];
        for (error, expected) in cases {
            let kind = match classify(&error) {
                Failure::Connect(_) => "connect",
                Failure::Timeout(_) => "timeout",
                Failure::Closed(_) => "closed",
                Failure::Broken(_) => "broken",
                other => panic!("{other:?}"),
            };
            assert_eq!(kind, expected, "{error:?}");
        }
    }

    #[test]
    fn reasons_are_short() {
        let io_error = |kind, text| ureq::Error::Io(io::Error::new(kind, text));
        let refused = io_error(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        assert_eq!(describe(&refused), "connection refused");
        let reset = io_error(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(describe(&reset), "reset by peer");
        assert!(describe(&ureq::Error::Timeout(Timeout::Connect)).starts_with("timed out"));
    }
}
