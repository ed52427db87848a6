//! What a client gets through tinylb (design.md, "What the client gets" and "Headers"): backend
//! statuses, bodies, targets, methods and repeated headers byte for byte; hop-by-hop headers
//! removed and X-Forwarded-* set; tinylb's own 502 for a refused backend and fast 503 for a full
//! queue.

mod common;
use common::raw::{OnError, keep_alive_connection, send_until_close};
use common::*;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Sends `request`, which asks to close, on a new connection: the answer, read once tinylb has
/// closed the connection.
fn exchange(lb: &TestLb, request: &[u8]) -> Response {
    let (answer, closed) =
        send_until_close(lb.addr, request, Duration::from_secs(3), OnError::Panic);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        closed.is_some(),
        "Connection: close was asked for; got {text:?}"
    );
    read_full_response(&mut &answer[..], false).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// The next answer on a keep-alive connection.
fn next_answer(reader: &mut impl std::io::BufRead) -> Response {
    read_full_response(reader, false).expect("an answer on the connection")
}

/// The one request the backend got from tinylb (health checks aside); fails if not exactly one.
fn only_proxied(backend: &Backend) -> Seen {
    let seen = backend.seen_proxied();
    assert_eq!(
        seen.len(),
        1,
        "expected exactly one forwarded request, saw {seen:?}"
    );
    seen.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Backend answered: its status, headers and body, byte for byte.
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_statuses_pass_through_unchanged() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let agent = client();
    for code in [404u16, 500, 503, 599] {
        let (status, body, backend) = get(&agent, &format!("{}/status/{code}", lb.url()));
        assert_eq!(status, code, "status of /status/{code}");
        assert_eq!(body, format!("status {code} from a\n"));
        assert_eq!(backend.as_deref(), Some("a"));
    }
    // On the wire too: the unusual status keeps its number.
    let reply = exchange(
        &lb,
        b"GET /status/599 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 599);
    assert_eq!(reply.text(), "status 599 from a\n");
    assert_eq!(a.proxied_count(), 5, "each request forwarded exactly once");
}

#[test]
fn redirects_are_returned_not_followed() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let mut response = client()
        .get(format!("{}/redirect", lb.url()))
        .call()
        .expect("request completes");
    assert_eq!(response.status().as_u16(), 302);
    assert_eq!(response.headers().get("location").unwrap(), "/elsewhere");
    assert_eq!(response.body_mut().read_to_string().unwrap(), "moved\n");
    let targets: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/redirect"],
        "tinylb must not follow the redirect itself"
    );
}

#[test]
fn compressed_body_passes_through_undecoded() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let reply = exchange(
        &lb,
        b"GET /gzip HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(reply.header("content-length"), Some("8"));
    assert_eq!(reply.body, [0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        only_proxied(&a).header_values("accept-encoding"),
        ["gzip"],
        "the client's Accept-Encoding is passed on, not replaced"
    );
}

#[test]
fn path_and_query_reach_the_backend_byte_for_byte() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let targets = [
        "/a/../b?x=%20&y=%zz",
        "//double//slash/./x/",
        "/%2F%2e%2E/caf%C3%A9?q=a+b&q=c&&=",
        "/semi;colon=1?",
        "/~user/%7e?x=%2F",
    ];
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for target in targets {
        write!(writer, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reply = next_answer(&mut reader);
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        assert!(
            reply.text().contains(&format!("\ntarget {target}\n")),
            "{target}: backend reported {}",
            reply.text()
        );
    }
    let seen: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, targets);
}

#[test]
fn every_method_reaches_the_backend_unchanged() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    // (method, body): extension methods, WebDAV, and tokens that only look like standard ones.
    let methods: [(&str, &str); 12] = [
        ("GET", ""),
        ("POST", "hello"),
        ("PUT", "hello"),
        ("DELETE", ""),
        ("PATCH", "hello"),
        ("OPTIONS", ""),
        ("TRACE", ""),
        ("PROPFIND", "<propfind/>"),
        ("PURGE", ""),
        ("MKCOL", ""),
        ("get", ""),
        ("X-Custom_Token", ""),
    ];
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    for (method, body) in methods {
        let length = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        write!(
            writer,
            "{method} /m HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}"
        )
        .unwrap();
        let reply = next_answer(&mut reader);
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        let text = reply.text();
        assert!(
            text.contains(&format!("\nmethod {method}\n")),
            "{method}: {text}"
        );
        assert!(
            text.contains(&format!("\nbody {} bytes\n", body.len())),
            "{method}: {text}"
        );
    }
    let seen: Vec<(String, u64)> = a
        .seen_proxied()
        .into_iter()
        .map(|s| (s.method, s.body_len))
        .collect();
    let expected: Vec<(String, u64)> = methods
        .iter()
        .map(|(m, b)| (m.to_string(), b.len() as u64))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn head_gets_the_headers_and_no_body() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = read_full_response(&mut reader, true).expect("the answer to HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some("1000"),
        "{:?}",
        head.headers
    );
    assert_eq!(head.header("x-backend"), Some("a"));
    assert_eq!(head.header("connection"), None, "the connection stays open");

    // The next bytes on this connection must be the next response, not 1000 body bytes.
    writer
        .write_all(b"GET /status/201 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let next = read_full_response(&mut reader, false)
        .expect("the next answer right after the head of the HEAD's answer");
    assert_eq!(
        (next.status, next.text().as_str()),
        (201, "status 201 from a\n")
    );
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .expect("Connection: close was asked for");
    assert!(rest.is_empty(), "{rest:?}");
    let seen: Vec<(String, String)> = a
        .seen_proxied()
        .into_iter()
        .map(|s| (s.method, s.target))
        .collect();
    assert_eq!(
        seen,
        [
            ("HEAD".to_string(), "/bytes/1000".to_string()),
            ("GET".to_string(), "/status/201".to_string())
        ]
    );
}

#[test]
fn repeated_headers_stay_separate_both_ways() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let reply = exchange(
        &lb,
        b"GET /cookies HTTP/1.1\r\nHost: x\r\nX-Multi: one\r\nX-Multi: two\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.values("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(only_proxied(&a).header_values("x-multi"), ["one", "two"]);

    // And through an ordinary client.
    let response = client()
        .get(format!("{}/cookies", lb.url()))
        .call()
        .unwrap();
    let cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
}

// ---------------------------------------------------------------------------------------------
// Headers: hop-by-hop removed both ways, X-Forwarded-* set, Host kept.
// ---------------------------------------------------------------------------------------------

#[test]
fn hop_by_hop_request_headers_do_not_reach_the_backend() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(
            b"GET /hop-request HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\
              Proxy-Connection: x\r\nX-End-To-End: kept\r\n\r\n",
        )
        .unwrap();
    let reply = next_answer(&mut reader);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = only_proxied(&a);
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
    ] {
        assert_eq!(
            seen.header_values(name),
            Vec::<String>::new(),
            "{name} reached the backend: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header_values("x-end-to-end"), ["kept"]);
}

#[test]
fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    writer
        .write_all(b"GET /hop HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = next_answer(&mut reader);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hop\n");
    assert_eq!(reply.header("x-hop"), None, "{:?}", reply.headers);
    assert_eq!(reply.header("keep-alive"), None, "{:?}", reply.headers);
    assert_eq!(
        reply.header("connection"),
        None,
        "the backend's Connection: X-Hop leaked: {:?}",
        reply.headers
    );
    assert_eq!(reply.header("x-end"), Some("kept"));
}

#[test]
fn forwarding_headers_are_set_and_host_is_kept() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (mut writer, mut reader) = keep_alive_connection(lb.addr);
    // A client that already went through a proxy, and one that tries to spoof the scheme.
    writer
        .write_all(
            b"GET /fwd/1 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.1.2.3\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed.test\r\n\r\n",
        )
        .unwrap();
    assert_eq!(next_answer(&mut reader).status, 200);
    writer
        .write_all(b"GET /fwd/2 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n")
        .unwrap();
    let reply = next_answer(&mut reader);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-forwarded-server"), None, "opt-in only");

    let seen = a.seen_proxied();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header_values("host"), ["example.test"]);
    assert_eq!(
        seen[0].header_values("x-forwarded-for"),
        ["10.1.2.3, 127.0.0.1"]
    );
    assert_eq!(seen[0].header_values("x-forwarded-proto"), ["http"]);
    assert_eq!(seen[0].header_values("x-forwarded-host"), ["example.test"]);
    assert_eq!(
        seen[0].header_values("x-forwarded-server"),
        Vec::<String>::new()
    );

    assert_eq!(seen[1].header_values("host"), ["example.test:8080"]);
    assert_eq!(seen[1].header_values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen[1].header_values("x-forwarded-proto"), ["http"]);
    assert_eq!(
        seen[1].header_values("x-forwarded-host"),
        ["example.test:8080"]
    );
}

#[test]
fn forwarded_server_header_is_opt_in() {
    let a = Backend::start("a");
    let agent = client();

    let plain = start_lb(&[&a], "");
    let response = agent.get(format!("{}/who", plain.url())).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("x-forwarded-server"), None);

    let telling = start_lb(&[&a], r#""forwardedServerHeader": true"#);
    let response = agent.get(format!("{}/who", telling.url())).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let values: Vec<&str> = response
        .headers()
        .get_all("x-forwarded-server")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values, [a.url()]);
}

// ---------------------------------------------------------------------------------------------
// tinylb's own answers: 502, 503, 504.
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_backend_gives_502_then_503_once_marked_down() {
    let mut a = Backend::start("a");
    // Healthy at start, and no health round for an hour: only the failed request can notice.
    let lb = start_lb(&[&a], r#""healthCheckInterval": "1h""#);
    assert!(is_healthy(&lb, 0));
    a.stop();
    let agent = client();
    let (status, body, _) = get(&agent, &format!("{}/first", lb.url()));
    assert_eq!(status, 502, "{body}");
    assert!(
        !is_healthy(&lb, 0),
        "a refused connection marks the backend down at once"
    );
    for _ in 0..3 {
        let (status, body, _) = get(&agent, &format!("{}/later", lb.url()));
        assert_eq!(status, 503);
        assert_eq!(body, "No healthy server available\n");
    }
}

#[test]
fn full_queue_gives_fast_503_with_retry_after() {
    let a = Backend::start("a");
    let lb = start_lb(
        &[&a],
        r#""workers": 1, "queueSize": 1, "adminAddress": "127.0.0.1:0""#,
    );
    let admin = lb.lb().admin_addr().expect("admin listener");
    let url = lb.url();

    let occupy = {
        let url = url.clone();
        std::thread::spawn(move || get(&client(), &format!("{url}/slow/2000")))
    };
    assert!(
        wait_until(Duration::from_secs(3), || a
            .seen_proxied()
            .iter()
            .any(|s| s.target == "/slow/2000")),
        "the slow request reached the backend"
    );
    let queued = {
        let url = url.clone();
        std::thread::spawn(move || get(&client(), &format!("{url}/queued")))
    };
    assert!(
        wait_until(Duration::from_secs(3), || status_json(admin)["queueDepth"]
            == 1),
        "the second request took the queue slot"
    );

    let started = Instant::now();
    let mut response = client()
        .get(format!("{url}/third"))
        .call()
        .expect("answered");
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        retry_after
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|secs| secs >= 1),
        "{:?}",
        response.headers()
    );
    let body = response.body_mut().read_to_string().unwrap();
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");

    let (status, _, _) = occupy.join().unwrap();
    assert_eq!(status, 200);
    let (status, _, _) = queued.join().unwrap();
    assert_eq!(
        status, 200,
        "the queued request is served once the worker is free"
    );
    let targets: Vec<String> = a.seen_proxied().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/slow/2000", "/queued"],
        "the refused request was not forwarded ({body})"
    );
}
