//! A differential test against an application nobody here wrote: httpbin (Flask) under
//! gunicorn, started from a Python virtualenv. Every request is sent twice, byte for byte the
//! same, once straight to httpbin and once through tinylb, and the two answers must agree on
//! status, end-to-end headers and body. Our own test backend only exercises what we thought
//! of; httpbin brings a real framework's idea of redirects, cookies, ranges, conditional
//! requests, gzip, streamed and chunked responses, odd status codes, HEAD, and chunked uploads
//! (sent as separate writes, with and without `Connection: close`). What a proxy legitimately
//! changes (the framing, hop-by-hop headers, `Date`, `X-Forwarded-*` and everything httpbin
//! echoes of them) is normalised explicitly below, each with its reason; everything else must
//! be identical.
//!
//! The interpreter comes from `TINYLB_HTTPBIN_PYTHON`, else `<repo>/.venv/bin/python`, which
//! `.ci/run` creates. Without it the test fails and says how to make one.

mod common;
use common::raw::{chunked_pieces, exchange_in_pieces};
use common::*;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Host every request carries, to httpbin and to tinylb alike: tinylb passes the client's
/// Host on unchanged, so the URLs httpbin echoes are the same on both sides.
const HOST: &str = "httpbin.test";

const VENV_HINT: &str = "in the repository run `python3 -m venv .venv && .venv/bin/pip \
     install -r tests/httpbin-requirements.txt` (httpbin and gunicorn; .ci/run does it), or \
     point TINYLB_HTTPBIN_PYTHON at a Python that has both";

/// The Python that runs httpbin: `TINYLB_HTTPBIN_PYTHON`, else the repository's `.venv`.
fn httpbin_python() -> PathBuf {
    if let Some(path) = std::env::var_os("TINYLB_HTTPBIN_PYTHON") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "TINYLB_HTTPBIN_PYTHON={} does not exist; {VENV_HINT}",
            path.display()
        );
        return path;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        path.exists(),
        "no Python with httpbin and gunicorn: {} is missing; {VENV_HINT}",
        path.display()
    );
    path
}

/// httpbin under gunicorn (2 sync workers) on a free port of 127.0.0.1. Dropping it stops
/// gunicorn: SIGINT (a quick shutdown that also ends the workers), then SIGKILL if needed.
struct Httpbin {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The threads that read its stdout and stderr.
    readers: [JoinHandle<()>; 2],
}

impl Httpbin {
    fn start() -> Httpbin {
        let python = httpbin_python();
        // gunicorn 23 and later keep a control socket in ~/.gunicorn, shared by every gunicorn
        // of the user; this one needs none. An older gunicorn does not know the flag.
        match Httpbin::try_start(&python, true) {
            Ok(httpbin) => httpbin,
            Err(log) if log.contains("--no-control-socket") => Httpbin::try_start(&python, false)
                .unwrap_or_else(|log| panic!("gunicorn did not start ({VENV_HINT}):\n{log}")),
            Err(log) => panic!("gunicorn did not start ({VENV_HINT}):\n{log}"),
        }
    }

    /// Starts gunicorn and waits (at most 30 s) until httpbin answers; on failure returns
    /// gunicorn's output.
    fn try_start(python: &PathBuf, no_control_socket: bool) -> Result<Httpbin, String> {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("find a free port");
            probe.local_addr().expect("bound").port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(python);
        command.args(["-m", "gunicorn"]);
        if no_control_socket {
            command.arg("--no-control-socket");
        }
        command
            .args(["-b", &addr.to_string(), "-w", "2", "httpbin:app"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {VENV_HINT}", python.display()));
        // Both pipes are drained all along, so gunicorn never blocks on a full pipe.
        let log = Arc::new(Mutex::new(String::new()));
        let readers = [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ]
        .map(|pipe| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        });
        let mut httpbin = Httpbin {
            child,
            addr,
            log,
            readers,
        };
        let request = format!("GET /get HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        let mut exited = None;
        let answers = wait_until(Duration::from_secs(30), || {
            exited = httpbin.child.try_wait().ok().flatten();
            exited.is_some()
                || send_request(addr, request.as_bytes(), &[]).is_ok_and(|a| a.status == 200)
        });
        match exited {
            Some(status) => {
                // The rest of its output: the readers end with the pipes.
                wait_until(Duration::from_secs(2), || {
                    httpbin.readers.iter().all(|r| r.is_finished())
                });
                Err(format!("gunicorn exited with {status}:\n{}", httpbin.log()))
            }
            None if answers => Ok(httpbin),
            None => Err(format!(
                "httpbin did not answer on {addr} within 30 s:\n{}",
                httpbin.log()
            )),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Httpbin {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        if !wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `head`, then each of `chunks` as its own write (a chunked body, finished with the
/// last chunk), and reads one response. Every read has a 10 s timeout, so nothing hangs.
fn send_request(addr: SocketAddr, head: &[u8], chunks: &[&[u8]]) -> std::io::Result<Response> {
    let mut pieces = vec![head.to_vec()];
    if !chunks.is_empty() {
        pieces.extend(chunked_pieces(chunks));
    }
    // A pause between writes, so each chunk really arrives as a segment of its own.
    exchange_in_pieces(addr, &pieces, Duration::from_millis(5))
}

/// How two bodies are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Byte for byte.
    Exact,
    /// httpbin's JSON echo of the request, normalised (see [`normalise_echo`]).
    Json,
    /// One JSON echo per line (`/stream/N`).
    JsonLines,
    /// gzip of a JSON echo: the compressed bytes hold the echo, which legitimately differs (the
    /// `X-Forwarded-*` headers tinylb adds), so they cannot be compared byte for byte, and
    /// there is no gzip decoder among the dev-dependencies: both must be gzip streams
    /// (magic `1f 8b`, method 8) of nearly the same length.
    Gzip,
}

struct Exchange {
    name: &'static str,
    /// The whole request head, ending with the blank line.
    head: String,
    /// Chunks of a chunked request body, each sent as its own write.
    chunks: Vec<&'static [u8]>,
    body: Body,
    /// The status httpbin must give, so a broken httpbin cannot make both sides agree on
    /// nonsense.
    status: u16,
}

/// A request with the headers every exchange shares, `extra` header lines and a body.
fn request(method: &str, target: &str, extra: &[(&str, &str)], body: &str) -> String {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: tinylb-differential\r\n\
         Accept: */*\r\n"
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head
}

fn ex(name: &'static str, status: u16, body: Body, head: String) -> Exchange {
    Exchange {
        name,
        head,
        chunks: Vec::new(),
        body,
        status,
    }
}

const CHUNKS: [&[u8]; 5] = [b"hello ", b"chunked ", b"world, ", b"in five ", b"writes"];

fn exchanges() -> Vec<Exchange> {
    use Body::*;
    let get = |target: &str, extra: &[(&str, &str)]| request("GET", target, extra, "");
    let json = [("Content-Type", "application/json")];
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let text = [("Content-Type", "text/plain")];
    let chunked_head = |close: bool| {
        let mut extra = vec![
            ("Content-Type", "text/plain"),
            ("Transfer-Encoding", "chunked"),
        ];
        if close {
            extra.push(("Connection", "close"));
        }
        request("POST", "/anything/chunked", &extra, "")
    };
    vec![
        ex("GET /anything", 200, Json, get("/anything?a=1&b=two", &[])),
        ex(
            "POST /anything",
            200,
            Json,
            request("POST", "/anything", &json, r#"{"answer": 42}"#),
        ),
        ex(
            "PUT /anything",
            200,
            Json,
            request("PUT", "/anything/put", &form, "x=1&y=%C3%A9"),
        ),
        ex(
            "PATCH /anything",
            200,
            Json,
            request("PATCH", "/anything", &text, "a small patch"),
        ),
        ex(
            "DELETE /anything",
            200,
            Json,
            request("DELETE", "/anything/7", &[], ""),
        ),
        ex(
            "redirect, not followed",
            302,
            Exact,
            get("/redirect/2", &[]),
        ),
        ex(
            "redirect-to with 307",
            307,
            Exact,
            get("/redirect-to?url=%2Fget%3Fk%3Dv&status_code=307", &[]),
        ),
        ex("Set-Cookie", 302, Exact, get("/cookies/set?x=1&y=2", &[])),
        ex(
            "Cookie",
            200,
            Json,
            get("/cookies", &[("Cookie", "x=1; y=two")]),
        ),
        ex(
            "Range",
            206,
            Exact,
            get("/range/1000", &[("Range", "bytes=10-99")]),
        ),
        ex(
            "If-None-Match",
            304,
            Exact,
            get("/etag/abc", &[("If-None-Match", "\"abc\"")]),
        ),
        ex(
            "If-Match that fails",
            412,
            Exact,
            get("/etag/abc", &[("If-Match", "\"other\"")]),
        ),
        ex(
            "If-Modified-Since",
            304,
            Exact,
            get(
                "/cache",
                &[("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT")],
            ),
        ),
        ex(
            "gzip",
            200,
            Gzip,
            get("/gzip", &[("Accept-Encoding", "gzip")]),
        ),
        ex(
            "streamed JSON lines",
            200,
            JsonLines,
            get("/stream/20", &[]),
        ),
        ex(
            "streamed bytes",
            200,
            Exact,
            get("/stream-bytes/100000?seed=1&chunk_size=1000", &[]),
        ),
        ex(
            "drip",
            200,
            Exact,
            get("/drip?numbytes=100&duration=0.5&delay=0", &[]),
        ),
        ex("status 418", 418, Exact, get("/status/418", &[])),
        ex("status 204", 204, Exact, get("/status/204", &[])),
        ex("status 304", 304, Exact, get("/status/304", &[])),
        ex("status 500", 500, Exact, get("/status/500", &[])),
        ex("bytes", 200, Exact, get("/bytes/100000?seed=7", &[])),
        ex(
            "repeated response headers",
            200,
            Exact,
            get("/response-headers?X-Test=a&X-Test=b&freeform=c", &[]),
        ),
        ex(
            "HEAD",
            200,
            Exact,
            request("HEAD", "/bytes/1000?seed=3", &[], ""),
        ),
        ex(
            "HEAD of a page",
            200,
            Exact,
            request("HEAD", "/html", &[], ""),
        ),
        Exchange {
            name: "chunked upload",
            head: chunked_head(false),
            chunks: CHUNKS.to_vec(),
            body: Json,
            status: 200,
        },
        Exchange {
            name: "chunked upload with Connection: close",
            head: chunked_head(true),
            chunks: CHUNKS.to_vec(),
            body: Json,
            status: 200,
        },
    ]
}

/// Whether the two headers may differ between httpbin direct and through tinylb.
fn proxy_may_change(
    name: &str,
    exchange: &Exchange,
    direct: &Response,
    proxied: &Response,
) -> bool {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        // Set by whoever writes the response: the clock, and tiny_http may name itself.
        "date" | "server" => true,
        // Hop-by-hop: each connection has its own (gunicorn's sync workers close every
        // connection; tinylb keeps its client connections alive).
        "connection" | "keep-alive" | "transfer-encoding" => true,
        // The framing is tinylb's to choose; and when the body is a normalised echo, its
        // length differs with the echo.
        "content-length" => {
            exchange.body != Body::Exact
                || !matches!(
                    (direct.framing, proxied.framing),
                    (Framing::Length(_), Framing::Length(_)) | (Framing::NoBody, Framing::NoBody)
                )
        }
        _ => false,
    }
}

/// The end-to-end headers of a response, sorted by name (the order of different names carries
/// no meaning; the order of one name's values does, and a stable sort keeps it).
fn end_to_end(response: &Response, keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers
}

/// Which side of tinylb an answer came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Proxied,
}

/// Makes httpbin's JSON echo of a request comparable across the two sides. Only what a proxy
/// legitimately changes about the request it passes on is touched, and what tinylb adds is
/// checked before it is removed.
fn normalise_echo(echo: &mut Value, side: Side, problems: &mut Vec<String>) {
    let Some(headers) = echo.get_mut("headers").and_then(Value::as_object_mut) else {
        return;
    };
    // tinylb adds X-Forwarded-For, -Proto and -Host (README, "Headers"); the client sent none.
    // (httpbin hides X-Forwarded-For and -Proto from its echo, so only -Host shows.)
    let added = [
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", HOST),
    ];
    for (name, expected) in added {
        match (side, headers.remove(name)) {
            (Side::Proxied, Some(value)) if value != expected => {
                problems.push(format!("tinylb sent {name}: {value}, expected {expected}"))
            }
            (Side::Direct, Some(value)) => {
                problems.push(format!("httpbin direct echoed {name}: {value}"))
            }
            _ => {}
        }
    }
    // Hop-by-hop: the client's `Connection: close` is for its connection to tinylb, and is
    // not passed on (RFC 9110 7.6.1); tinylb's connection to httpbin has its own.
    headers.remove("Connection");
}

/// The differences between the two answers to `exchange`, as one line each.
fn differences(exchange: &Exchange, direct: &Response, proxied: &Response) -> Vec<String> {
    let mut found = Vec::new();
    if direct.status != exchange.status {
        found.push(format!(
            "httpbin direct answered {} instead of {} (is httpbin 0.10?)",
            direct.status, exchange.status
        ));
    }
    if proxied.status != direct.status {
        found.push(format!(
            "status {} through tinylb, {} direct",
            proxied.status, direct.status
        ));
    }
    let keep = |name: &str| !proxy_may_change(name, exchange, direct, proxied);
    let (direct_headers, proxied_headers) = (end_to_end(direct, keep), end_to_end(proxied, keep));
    if direct_headers != proxied_headers {
        let only = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
            a.iter()
                .filter(|h| !b.contains(h))
                .map(|(n, v)| format!("{n}: {v}"))
                .collect()
        };
        found.push(format!(
            "headers: only direct {:?}, only through tinylb {:?}",
            only(&direct_headers, &proxied_headers),
            only(&proxied_headers, &direct_headers)
        ));
    }
    match exchange.body {
        Body::Exact => {
            if direct.body != proxied.body {
                found.push(format!(
                    "body: {} bytes direct, {} through tinylb, first difference at byte {}",
                    direct.body.len(),
                    proxied.body.len(),
                    direct
                        .body
                        .iter()
                        .zip(&proxied.body)
                        .position(|(a, b)| a != b)
                        .unwrap_or(direct.body.len().min(proxied.body.len()))
                ));
            }
        }
        Body::Json | Body::JsonLines => {
            let parse = |body: &[u8], side: Side, found: &mut Vec<String>| -> Vec<Value> {
                let text = String::from_utf8_lossy(body);
                let parts: Vec<&str> = if exchange.body == Body::JsonLines {
                    text.lines().filter(|l| !l.trim().is_empty()).collect()
                } else {
                    vec![&text]
                };
                parts
                    .into_iter()
                    .map(|part| {
                        let mut echo: Value = serde_json::from_str(part)
                            .unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {part}")));
                        normalise_echo(&mut echo, side, found);
                        echo
                    })
                    .collect()
            };
            let direct_echo = parse(&direct.body, Side::Direct, &mut found);
            let proxied_echo = parse(&proxied.body, Side::Proxied, &mut found);
            if direct_echo != proxied_echo {
                found.push(format!(
                    "echo differs:\n  direct  {}\n  proxied {}",
                    serde_json::to_string(&direct_echo).unwrap_or_default(),
                    serde_json::to_string(&proxied_echo).unwrap_or_default()
                ));
            }
            if exchange.body == Body::JsonLines && direct_echo.len() < 2 {
                found.push(format!("only {} JSON lines direct", direct_echo.len()));
            }
        }
        Body::Gzip => {
            let gzip = |body: &[u8]| body.starts_with(&[0x1f, 0x8b, 0x08]);
            let (a, b) = (direct.body.len(), proxied.body.len());
            if !gzip(&direct.body) || !gzip(&proxied.body) || a.abs_diff(b) > 64 {
                found.push(format!(
                    "gzip bodies: {a} bytes direct (gzip: {}), {b} through tinylb (gzip: {})",
                    gzip(&direct.body),
                    gzip(&proxied.body)
                ));
            }
        }
    }
    found
}

#[test]
fn httpbin_answers_the_same_through_tinylb_as_directly() {
    let httpbin = Httpbin::start();
    let lb = start_lb_with_servers(
        &format!("\"http://{}\"", httpbin.addr),
        r#""healthCheckInterval": "1s", "healthCheckTimeout": "1s""#,
    );
    let started = Instant::now();
    let exchanges = exchanges();
    let mut mismatches = Vec::new();
    let mut upload_echoes = Vec::new();
    for exchange in &exchanges {
        let send = |addr: SocketAddr, side: &str| {
            send_request(addr, exchange.head.as_bytes(), &exchange.chunks).unwrap_or_else(|e| {
                panic!(
                    "{}: no answer {side}: {e}\ngunicorn's log:\n{}",
                    exchange.name,
                    httpbin.log()
                )
            })
        };
        let direct = send(httpbin.addr, "from httpbin direct");
        let proxied = send(lb.addr, "through tinylb");
        if !exchange.chunks.is_empty() {
            let data = |r: &Response| {
                serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v.get("data").cloned())
            };
            upload_echoes.push((exchange.name, data(&direct), data(&proxied)));
        }
        let found = differences(exchange, &direct, &proxied);
        if !found.is_empty() {
            mismatches.push(format!("{}:\n    {}", exchange.name, found.join("\n    ")));
        }
    }
    println!(
        "httpbin differential: {} of {} exchanges matched (status, end-to-end headers, body) in {:.1?}",
        exchanges.len() - mismatches.len(),
        exchanges.len(),
        started.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} exchanges differ through tinylb:\n{}",
        mismatches.len(),
        exchanges.len(),
        mismatches.join("\n")
    );
    let sent: String = CHUNKS.iter().map(|c| String::from_utf8_lossy(c)).collect();
    for (name, direct, proxied) in upload_echoes {
        let expected = Some(Value::String(sent.clone()));
        assert_eq!(direct, expected, "{name}: httpbin direct echoed this data");
        assert_eq!(
            proxied, expected,
            "{name}: httpbin echoed this data through tinylb"
        );
    }
}
