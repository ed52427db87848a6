//! The retry decision: after a failed attempt, try the same backend again, try another one, or
//! give up and answer. Pure, so every case is a unit test. The rules are nginx's
//! `proxy_next_upstream` defaults, made safe for bodies tinylb streams instead of buffering:
//!
//! - a request whose body has started to flow cannot be replayed (the bytes are gone);
//! - a backend that could not be reached got nothing, so any request may go elsewhere;
//! - a connection that closed or answered garbage may have run the request, so only methods
//!   that are safe to repeat (RFC 9110 section 9.2.2) go elsewhere;
//! - a pooled keep-alive connection can be closed by the backend just as a request is sent on
//!   it, so a repeatable request that failed on a reused connection first gets one more try on
//!   the same backend, on a fresh connection. A request that failed on a connection opened for
//!   it goes to the next backend: each backend is tried once, as in nginx.

use crate::failure::Failure;

/// Where a failed request goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Once more to the same backend, on a new connection.
    SameBackend,
    /// To a backend not tried yet.
    OtherBackend,
    /// Answer the client with this failure.
    GiveUp,
}

/// What the decision needs to know about the attempt that failed.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The method is safe to repeat (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
    pub idempotent: bool,
    /// Some of the client's body was already sent upstream.
    pub body_started: bool,
    /// This was already the one extra try on the same backend.
    pub retried_here: bool,
    /// It ran on a pooled connection that was reused, not one opened for it.
    pub reused_connection: bool,
}

impl Attempt {
    /// The first attempt on a backend for a request with this method.
    pub fn first(method: &str) -> Attempt {
        Attempt {
            idempotent: is_idempotent(method),
            body_started: false,
            retried_here: false,
            reused_connection: false,
        }
    }

    /// An upgrade handshake: it may have switched the backend's connection already, so only a
    /// backend that could not be reached is left for another.
    pub fn handshake() -> Attempt {
        Attempt {
            idempotent: false,
            body_started: false,
            retried_here: true,
            reused_connection: false,
        }
    }

    /// Whether the next try on this backend must open a new connection: the retry after a
    /// pooled connection turned out closed must not take the next, possibly closed, one.
    pub fn needs_fresh_connection(&self) -> bool {
        self.retried_here
    }
}

/// The decision after `failure`.
pub fn next_step(failure: &Failure, attempt: Attempt) -> Next {
    if attempt.body_started {
        return Next::GiveUp;
    }
    match failure {
        Failure::Connect(_) => Next::OtherBackend,
        Failure::Closed(_)
            if attempt.idempotent && attempt.reused_connection && !attempt.retried_here =>
        {
            Next::SameBackend
        }
        Failure::Closed(_) | Failure::Broken(_) if attempt.idempotent => Next::OtherBackend,
        _ => Next::GiveUp,
    }
}

/// Methods RFC 9110 section 9.2.2 calls idempotent.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(idempotent: bool, body_started: bool, retried_here: bool) -> Attempt {
        Attempt {
            idempotent,
            body_started,
            retried_here,
            reused_connection: true,
        }
    }

    #[test]
    fn each_failure_leads_where_the_rules_say() {
        let connect = Failure::Connect("refused".into());
        let closed = Failure::Closed("reset".into());
        let broken = Failure::Broken("not HTTP".into());
        let timeout = Failure::Timeout("slow".into());
        let bad = Failure::BadRequest("bad");
        let client = Failure::ClientBody("short".into());
        #[rustfmt::skip]
        let cases = [
            // failure, idempotent, body started, retried here -> next
            (&connect, false, false, false, Next::OtherBackend),
            (&connect, true, false, true, Next::OtherBackend),
            (&connect, true, true, false, Next::GiveUp),
            (&closed, true, false, false, Next::SameBackend),
            (&closed, true, false, true, Next::OtherBackend),
            (&closed, false, false, false, Next::GiveUp),
            (&closed, true, true, false, Next::GiveUp),
            (&broken, true, false, false, Next::OtherBackend),
            (&broken, true, false, true, Next::OtherBackend),
            (&broken, false, false, false, Next::GiveUp),
            (&broken, true, true, false, Next::GiveUp),
            (&timeout, true, false, false, Next::GiveUp),
            (&bad, true, false, false, Next::GiveUp),
            (&client, true, false, false, Next::GiveUp),
        ];
        for (failure, idempotent, body_started, retried_here, expected) in cases {
            let attempt = attempt(idempotent, body_started, retried_here);
            assert_eq!(
                next_step(failure, attempt),
                expected,
                "{failure:?} after {attempt:?}"
            );
        }
    }

    #[test]
    fn a_connection_opened_for_the_request_earns_no_second_try_on_its_backend() {
        let closed = Failure::Closed("reset".into());
        let fresh = |idempotent| Attempt {
            reused_connection: false,
            ..attempt(idempotent, false, false)
        };
        assert_eq!(next_step(&closed, fresh(true)), Next::OtherBackend);
        assert_eq!(next_step(&closed, fresh(false)), Next::GiveUp);
        assert_eq!(
            next_step(&closed, attempt(true, false, false)),
            Next::SameBackend
        );
        assert!(!Attempt::first("GET").reused_connection);
    }

    #[test]
    fn a_handshake_goes_elsewhere_only_when_unreachable() {
        let handshake = Attempt::handshake();
        assert_eq!(
            next_step(&Failure::Connect("x".into()), handshake),
            Next::OtherBackend
        );
        assert_eq!(
            next_step(&Failure::Closed("x".into()), handshake),
            Next::GiveUp
        );
        assert_eq!(
            next_step(&Failure::Broken("x".into()), handshake),
            Next::GiveUp
        );
    }

    #[test]
    fn only_idempotent_methods_are_repeated() {
        for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(is_idempotent(method), "{method}");
            assert!(Attempt::first(method).idempotent, "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "get", "PROPFIND"] {
            assert!(!is_idempotent(method), "{method}");
        }
        let first = Attempt::first("GET");
        assert!(!first.body_started && !first.retried_here);
        assert!(!first.needs_fresh_connection());
        assert!(Attempt::handshake().needs_fresh_connection());
    }
}
