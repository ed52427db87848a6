//! Why one attempt to forward a request failed, and the one mapping from each kind of failure
//! to what the client gets (502, 504 or 400) and what the backend is charged with.

use std::fmt;

use crate::stats::ErrorKind;

/// Why an attempt to forward failed, as far as the client's answer and a retry are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect: nothing was sent, so any request may go to another backend.
    Connect(String),
    /// The backend did not answer within `backendTimeout`.
    Timeout(String),
    /// The connection closed or was reset before an answer came.
    Closed(String),
    /// The backend answered something that is not HTTP.
    Broken(String),
    /// The client's request cannot be expressed upstream (bad header value or target).
    BadRequest(&'static str),
    /// The client's own body failed (it disconnected or sent less than it announced).
    ClientBody(String),
    /// The client sent its body slower than `clientBodyMinRate`, or paused longer than
    /// `clientTimeout`.
    ClientTooSlow(String),
}

impl Failure {
    /// How the failure is counted against the backend, if it is the backend's.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            Failure::Connect(_) => Some(ErrorKind::Connect),
            Failure::Timeout(_) => Some(ErrorKind::Timeout),
            Failure::Closed(_) | Failure::Broken(_) => Some(ErrorKind::Broken),
            Failure::BadRequest(_) | Failure::ClientBody(_) | Failure::ClientTooSlow(_) => None,
        }
    }

    /// The status the client gets: 502 for a refused or broken backend, 504 for a slow one,
    /// 400 for a request that cannot be forwarded, 408 for a body that came too slowly.
    pub fn status(&self) -> u16 {
        match self {
            Failure::Connect(_) | Failure::Closed(_) | Failure::Broken(_) => 502,
            Failure::Timeout(_) => 504,
            Failure::BadRequest(_) | Failure::ClientBody(_) => 400,
            Failure::ClientTooSlow(_) => 408,
        }
    }

    /// Whether the client's own side failed: its connection must end, since its body is not
    /// read to the end.
    pub fn is_the_clients(&self) -> bool {
        matches!(self, Failure::ClientBody(_) | Failure::ClientTooSlow(_))
    }

    /// The one line the client gets with the status.
    pub fn message(&self) -> &'static str {
        match self {
            Failure::Connect(_) | Failure::Closed(_) | Failure::Broken(_) => "Bad Gateway",
            Failure::Timeout(_) => "Gateway Timeout",
            Failure::BadRequest(reason) => reason,
            Failure::ClientBody(_) => "Bad Request: the request body ended early",
            Failure::ClientTooSlow(_) => "Request Timeout: the request body arrived too slowly",
        }
    }
}

/// The detail for the log line ("connection refused").
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(text)
            | Failure::Closed(text)
            | Failure::Timeout(text)
            | Failure::Broken(text)
            | Failure::ClientBody(text)
            | Failure::ClientTooSlow(text) => f.write_str(text),
            Failure::BadRequest(reason) => f.write_str(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_one_status_message_and_charge() {
        let cases: [(Failure, u16, &str, Option<ErrorKind>); 7] = [
            (
                Failure::Connect("x".into()),
                502,
                "Bad Gateway",
                Some(ErrorKind::Connect),
            ),
            (
                Failure::Timeout("x".into()),
                504,
                "Gateway Timeout",
                Some(ErrorKind::Timeout),
            ),
            (
                Failure::Closed("x".into()),
                502,
                "Bad Gateway",
                Some(ErrorKind::Broken),
            ),
            (
                Failure::Broken("x".into()),
                502,
                "Bad Gateway",
                Some(ErrorKind::Broken),
            ),
            (
                Failure::BadRequest("Bad Request: why"),
                400,
                "Bad Request: why",
                None,
            ),
            (
                Failure::ClientBody("x".into()),
                400,
                "Bad Request: the request body ended early",
                None,
            ),
            (
                Failure::ClientTooSlow("x".into()),
                408,
                "Request Timeout: the request body arrived too slowly",
                None,
            ),
        ];
        for (failure, status, message, charge) in cases {
            assert_eq!(failure.status(), status, "{failure:?}");
            assert_eq!(failure.message(), message, "{failure:?}");
            assert_eq!(failure.error_kind(), charge, "{failure:?}");
        }
    }

    #[test]
    fn only_the_clients_own_failures_end_its_connection() {
        assert!(Failure::ClientBody("x".into()).is_the_clients());
        assert!(Failure::ClientTooSlow("x".into()).is_the_clients());
        assert!(!Failure::Closed("x".into()).is_the_clients());
        assert!(!Failure::BadRequest("x").is_the_clients());
    }

    #[test]
    fn the_log_detail_is_the_reason() {
        assert_eq!(Failure::Closed("reset".into()).to_string(), "reset");
        assert_eq!(Failure::BadRequest("bad target").to_string(), "bad target");
        assert_eq!(Failure::ClientTooSlow("slow".into()).to_string(), "slow");
    }
}
