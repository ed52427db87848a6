//! Shared test fixtures: real backends on 127.0.0.1 (a small hand-written HTTP/1.1 server whose
//! `stop()` really closes every connection, like a killed process), a load balancer started
//! in-process on port 0, HTTP clients, and `wait_until` so no test relies on a bare sleep.

#![allow(dead_code)]

pub mod backend;
pub mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend::{Backend, Seen, pattern_sha256};
use crossbeam_channel::Receiver;
use tinylb::LoadBalancer;
use tinylb::config::Config;

/// A load balancer running in this test process; shut down gracefully when dropped.
pub struct TestLb {
    lb: Option<LoadBalancer>,
    pub addr: SocketAddr,
}

impl TestLb {
    /// Base URL for clients: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The running balancer, to look at backend health.
    pub fn lb(&self) -> &LoadBalancer {
        self.lb.as_ref().expect("running")
    }

    /// Graceful shutdown now, returning its report.
    pub fn shutdown(mut self) -> tinylb::ShutdownReport {
        let (_keep, abort): (_, Receiver<()>) = crossbeam_channel::bounded(1);
        self.lb.take().expect("running").shutdown(&abort)
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        if let Some(lb) = self.lb.take() {
            let (abort_now, abort) = crossbeam_channel::bounded(1);
            let _ = abort_now.send(());
            lb.shutdown(&abort);
        }
    }
}

/// Starts tinylb on 127.0.0.1:0 in front of `backends`. `extra` is more JSON keys, for example
/// `r#""algorithm": "ip-hash", "healthCheckInterval": "100ms""#` (or "" for none).
pub fn start_lb(backends: &[&Backend], extra: &str) -> TestLb {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    start_lb_with_servers(&servers.join(", "), extra)
}

/// Like [`start_lb`] with the `servers` JSON list written by the caller (for weights).
pub fn start_lb_with_servers(servers_json: &str, extra: &str) -> TestLb {
    let separator = if extra.trim().is_empty() { "" } else { "," };
    let text = format!(
        r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "100ms", "healthCheckTimeout": "500ms",
            "servers": [{servers_json}]{separator} {extra}}}"#
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("bad test config {text}: {e}"));
    let lb = LoadBalancer::start(config).expect("tinylb starts");
    let addr = lb.local_addr();
    TestLb { lb: Some(lb), addr }
}

/// A ureq client that passes every status through, like a browser would show it.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// GET `url` and return (status, body as text, X-Backend header).
pub fn get(agent: &ureq::Agent, url: &str) -> (u16, String, Option<String>) {
    let mut response = agent.get(url).call().expect("request completes");
    let backend = response
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, body, backend)
}

/// Sends raw bytes on a new connection and returns everything the server sends until it
/// closes the connection or `timeout` passes with nothing more arriving.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; says which.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Whether tinylb currently considers backend `index` healthy.
pub fn is_healthy(lb: &TestLb, index: usize) -> bool {
    lb.lb().backends()[index].is_healthy()
}
