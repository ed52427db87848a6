//! Bodies and connections through the proxy: 100 MB downloads and uploads arrive byte for byte
//! (fixed and chunked framing) without being buffered, keep-alive carries many requests on one
//! client socket and `backendKeepAlive` decides whether backend sockets are reused, HTTP/1.0
//! clients get a close-delimited body, and `Expect: 100-continue` works.

mod common;
use common::raw::keep_alive_connection;
use common::*;

use std::io::{self, BufRead, Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ureq::SendBody;

const MB: u64 = 1024 * 1024;
const BIG: u64 = 100 * MB;

/// A ureq client for the large transfers, whose time in debug builds exceeds `client()`'s.
fn big_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// `pattern_sha256(BIG)`, computed once for all the tests here (seconds in a debug build).
fn big_sha256() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| pattern_sha256(BIG))
}

/// Generates `len` bytes of the backend's pattern on the fly, so uploads hold nothing.
struct PatternReader {
    offset: u64,
    len: u64,
}

impl PatternReader {
    fn new(len: u64) -> PatternReader {
        PatternReader { offset: 0, len }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.len - self.offset).unwrap_or(usize::MAX);
        let n = buf.len().min(left);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = backend::pattern_byte(self.offset + i as u64);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Hashes everything `reader` gives, through one 64 KiB buffer; calls `each_mb` about once per
/// megabyte read. Returns (sha256 hex, length).
fn hash_stream(reader: &mut dyn Read, mut each_mb: impl FnMut()) -> (String, u64) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut next_mark = MB;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("body broke off after {total} bytes: {e}"),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        if total >= next_mark {
            each_mb();
            next_mark += MB;
        }
    }
    (hex(&hasher.finalize()), total)
}

/// This process's resident memory in KiB (the proxy and the backend run in-process).
fn rss_kib() -> u64 {
    proc_status(std::process::id(), "VmRSS")
}

#[test]
fn download_of_100_mb_arrives_intact_with_its_length() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let mut response = big_client()
        .get(&format!("{}/bytes/{BIG}", lb.url()))
        .call()
        .expect("download");
    assert_eq!(response.status().as_u16(), 200);
    let length = response.headers().get("content-length").cloned();
    assert_eq!(
        length.as_ref().map(|v| v.to_str().unwrap()),
        Some(&*BIG.to_string())
    );
    assert!(response.headers().get("transfer-encoding").is_none());
    let (digest, len) = hash_stream(&mut response.body_mut().as_reader(), || {});
    assert_eq!(len, BIG);
    assert_eq!(digest, big_sha256());
}

#[test]
fn chunked_download_of_100_mb_stays_chunked_and_intact() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let mut response = big_client()
        .get(&format!("{}/chunked/{BIG}", lb.url()))
        .call()
        .expect("download");
    assert_eq!(response.status().as_u16(), 200);
    let encoding = response.headers().get("transfer-encoding").cloned();
    assert_eq!(
        encoding.as_ref().map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    assert!(response.headers().get("content-length").is_none());
    let (digest, len) = hash_stream(&mut response.body_mut().as_reader(), || {});
    assert_eq!(len, BIG);
    assert_eq!(digest, big_sha256());
}

#[test]
fn upload_of_100_mb_reaches_the_backend_intact() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let mut body = PatternReader::new(BIG);
    let mut response = big_client()
        .post(&format!("{}/sha256", lb.url()))
        .header("content-length", BIG.to_string())
        .send(SendBody::from_reader(&mut body))
        .expect("upload");
    assert_eq!(response.status().as_u16(), 200);
    let answer = response.body_mut().read_to_string().expect("answer");
    assert_eq!(answer, format!("{} {BIG}\n", big_sha256()));
    let seen = a.seen_proxied();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_values("content-length"), [BIG.to_string()]);
}

#[test]
fn chunked_upload_reaches_the_backend_intact() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let total = 10 * MB + 12_345;
    let (mut stream, mut reader) = keep_alive_connection(lb.addr);
    stream
        .write_all(b"POST /sha256 HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // Chunks of uneven sizes, so chunk and buffer boundaries never line up.
    let sizes = [1usize, 7919, 65_536, 100_003, 3];
    let mut pattern = PatternReader::new(total);
    let mut buf = vec![0u8; 100_003];
    let mut sent = 0u64;
    let mut i = 0;
    while sent < total {
        let want = sizes[i % sizes.len()].min((total - sent) as usize);
        pattern.read_exact(&mut buf[..want]).unwrap();
        stream
            .write_all(format!("{want:x}\r\n").as_bytes())
            .unwrap();
        stream.write_all(&buf[..want]).unwrap();
        stream.write_all(b"\r\n").unwrap();
        sent += want as u64;
        i += 1;
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let response = read_full_response(&mut reader, false).expect("an answer");
    assert_eq!(response.status, 200);
    let body = response.text();
    assert_eq!(body, format!("{} {total}\n", pattern_sha256(total)));
    let seen = a.seen_proxied();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, total);
}

#[test]
fn http10_client_gets_a_close_delimited_body_instead_of_chunks() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut stream, mut reader) = keep_alive_connection(lb.addr);
    stream
        .write_all(b"GET /chunked/5000 HTTP/1.0\r\n\r\n")
        .unwrap();
    // Neither Content-Length nor chunked: the body ends only at end of file, and a timeout
    // here means the connection stayed open.
    let response =
        read_full_response(&mut reader, false).expect("the body ends with the connection");
    assert_eq!(response.status, 200);
    assert_eq!(response.framing, Framing::Close, "{:?}", response.headers);
    let expected: Vec<u8> = (0..5000).map(backend::pattern_byte).collect();
    assert_eq!(response.body.len(), 5000);
    assert!(response.body == expected, "body differs from the pattern");
}

#[test]
fn expect_100_continue_upload_gets_continue_then_200() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let total = MB;
    let (mut stream, mut reader) = keep_alive_connection(lb.addr);
    stream
        .write_all(
            format!(
                "POST /sha256 HTTP/1.1\r\nHost: lb\r\nContent-Length: {total}\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    // Nothing of the body is sent until the proxy says 100 Continue.
    let mut line = String::new();
    reader.read_line(&mut line).expect("100 Continue arrives");
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    let mut rest = String::new();
    while rest != "\r\n" {
        rest.clear();
        assert!(reader.read_line(&mut rest).expect("interim head") > 0);
    }
    io::copy(&mut PatternReader::new(total), &mut stream).unwrap();
    let response = read_full_response(&mut reader, false).expect("an answer");
    assert_eq!(response.status, 200);
    let body = response.text();
    assert_eq!(body, format!("{} {total}\n", pattern_sha256(total)));
    let seen = a.seen_proxied();
    assert_eq!(seen.len(), 1);
    // Passed on, so that the backend can answer early (tests/backend_framing.rs); the client's
    // 100 came once the backend took the body.
    assert_eq!(
        seen[0].header_values("expect"),
        ["100-continue"],
        "{:?}",
        seen[0]
    );
}

#[test]
fn downloading_100_mb_does_not_buffer_it() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let agent = big_client();
    // Warm up every path once (threads, pools, buffers) before the baseline.
    let (status, _, _) = get(&agent, &format!("{}/bytes/{}", lb.url(), MB));
    assert_eq!(status, 200);
    let mut response = agent
        .get(&format!("{}/bytes/{BIG}", lb.url()))
        .call()
        .expect("download");
    assert_eq!(response.status().as_u16(), 200);
    let baseline = rss_kib();
    let mut peak = baseline;
    let started = Instant::now();
    let (digest, len) = hash_stream(&mut response.body_mut().as_reader(), || {
        peak = peak.max(rss_kib());
    });
    assert_eq!(len, BIG);
    assert_eq!(digest, big_sha256());
    let grown_mib = (peak - baseline) / 1024;
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB while 100 MiB streamed through ({baseline} KiB at start, \
         {peak} KiB peak, {:?})",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Keep-alive, on the client's side and on the backend's.
// ---------------------------------------------------------------------------------------------

#[test]
fn hundred_requests_share_one_keep_alive_connection() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for i in 0..100 {
        write!(writer, "GET /k/{i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reply = read_full_response(&mut reader, false)
            .unwrap_or_else(|e| panic!("request {i}: no answer on the connection: {e}"));
        assert_eq!(reply.status, 200, "request {i}");
        assert!(
            matches!(reply.framing, Framing::Length(_)),
            "request {i}: {:?}",
            reply.headers
        );
        assert_eq!(reply.header("x-backend"), Some("a"), "request {i}");
        assert_eq!(
            reply.header("connection"),
            None,
            "request {i}: {:?}",
            reply.headers
        );
        assert!(
            reply.text().contains(&format!("\ntarget /k/{i}\n")),
            "request {i}: {}",
            reply.text()
        );
    }
    let targets: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("/k/{i}")).collect();
    assert_eq!(targets, expected);
}

/// `backendKeepAlive` (nginx's upstream `keepalive`) decides whether tinylb reuses its
/// connections to a backend: by default 20 sequential requests share one, with 0 each opens
/// its own. Health checks run once an hour here, so only the first round's check adds one.
#[test]
fn backend_keep_alive_decides_whether_backend_connections_are_reused() {
    for (extra, fewest, most) in [("", 1, 2), (r#", "backendKeepAlive": 0"#, 20, 21)] {
        let a = Backend::start("a");
        let lb = start_lb(&[&a], &format!(r#""healthCheckInterval": "1h"{extra}"#));
        let before = a.connections_accepted();
        let agent = client();
        for i in 0..20 {
            let (status, body, _) = get(&agent, &format!("{}/pool/{i}", lb.url()));
            assert_eq!(status, 200, "{extra}: request {i}: {body}");
        }
        let opened = a.connections_accepted() - before;
        assert!(
            (fewest..=most).contains(&opened),
            "config {{{extra}}}: 20 requests opened {opened} backend connections, \
             expected {fewest} to {most}"
        );
    }
}
