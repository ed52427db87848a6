//! What an operator does through tinylb's admin listener: requests written by hand (any
//! `Host`, any headers), state changes carrying the header that proves they were meant
//! ([`PROOF`]), and reading each backend's state off `/status.json`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::{Response, raw_exchange, read_full_response, status_json, wait_until};

/// The header a state-changing admin request must carry: a browser cannot send it cross-site
/// without a CORS preflight, and curl sends it with one `-H`.
pub const PROOF: &str = "X-Tinylb-Admin: 1";

/// Sends `request` (head and body, whole) to the admin listener on a connection of its own and
/// reads the answer; fails the test if there is none within 5 s.
pub fn admin_exchange(admin: SocketAddr, request: &str) -> Response {
    let raw = raw_exchange(admin, request.as_bytes(), Duration::from_secs(5));
    read_full_response(&mut &raw[..], false).unwrap_or_else(|e| {
        panic!(
            "no answer to {request:?} from the admin listener ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// `method path` with the admin listener's own address as `Host`, the header lines `headers`
/// (each without its CRLF), no body, and `Connection: close`.
pub fn admin_request(admin: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    admin_exchange(admin, &request)
}

/// `POST /backends/{index}/drain` (or `/undrain`) with [`PROOF`], as an operator does it;
/// it must be answered 200.
pub fn set_draining(admin: SocketAddr, index: usize, draining: bool) {
    let action = if draining { "drain" } else { "undrain" };
    let path = format!("/backends/{index}/{action}");
    let answer = admin_request(admin, "POST", &path, &[PROOF]);
    assert_eq!(answer.status, 200, "POST {path}: {}", answer.text());
}

/// Each backend's `state` in a `/status.json`: `up`, `down` or `draining`.
pub fn backend_states(status: &Value) -> Vec<String> {
    status["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends list in {status}"))
        .iter()
        .map(|backend| {
            backend["state"]
                .as_str()
                .unwrap_or_else(|| panic!("no state in {backend}"))
                .to_string()
        })
        .collect()
}

/// Each backend's state once no backend shows as down (the backends are live, so `down` only
/// means a health check was slow, and it hides `draining`), polling for up to 5 s; the last
/// states seen otherwise.
pub fn settled_states(admin: SocketAddr) -> Vec<String> {
    let mut states = Vec::new();
    wait_until(Duration::from_secs(5), || {
        states = backend_states(&status_json(admin));
        states.iter().all(|state| state != "down")
    });
    states
}
