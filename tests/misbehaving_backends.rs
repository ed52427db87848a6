//! Backends that misbehave (issue 3, "Backends that misbehave"): garbage, a bare status line or
//! silence instead of an answer (502 and 504, retried only when that is safe); a backend that
//! hangs while two others keep serving at full rate and it never holds more than half the
//! workers; a pooled keep-alive connection closed just as a request is sent on it (a GET retried
//! on a fresh connection, a POST never replayed); health checks of a healthy backend kept on time
//! beside one whose checks hang; a body cut short by a close or by silence, which the client
//! sees as a truncation; and response heads against the 32 KiB limit.

mod common;
use common::raw::{OnError, send_until_close};
use common::scripted::{Act, RawRequest, ScriptedBackend, head_ok, ok};
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Wrong answers, no answer: 502 and 504, retried only when that is safe.
// ---------------------------------------------------------------------------------------------

/// Passes the health checks, and answers anything else with garbage, then closes.
fn garbage_backend() -> ScriptedBackend {
    ScriptedBackend::healthy_but(|_| Act::Close(b"garbage\r\n\r\n".to_vec()))
}

#[test]
fn garbage_from_backend_gives_502() {
    let garbage = garbage_backend();
    let lb = start_lb_with_servers(&format!("\"{}\"", garbage.url()), "");
    assert!(is_healthy(&lb, 0), "the raw backend passes health checks");
    let (status, body, backend) = get(&client(), &format!("{}/x", lb.url()));
    assert_eq!(status, 502, "{body}");
    assert_eq!(backend, None, "tinylb's own answer");
    assert_eq!(
        garbage.proxied().len(),
        1,
        "one attempt: there is no other backend"
    );
}

#[test]
fn status_line_without_headers_then_close_gives_502() {
    let broken = ScriptedBackend::healthy_but(|_| Act::Close(b"HTTP/1.1 200 OK\r\n".to_vec()));
    let lb = start_lb_with_servers(&format!("\"{}\"", broken.url()), "");
    assert!(is_healthy(&lb, 0));
    let (status, body, _) = get(&client(), &format!("{}/x", lb.url()));
    assert_eq!(status, 502, "{body}");
    // The connection was opened for the request, so its close is the backend's answer: no
    // second try there (only a reused pooled connection earns one, tested below).
    assert_eq!(broken.proxied().len(), 1);
}

#[test]
fn idempotent_request_is_retried_on_another_backend_after_garbage() {
    let garbage = garbage_backend();
    let a = Backend::start("a");
    let lb = start_lb_with_servers(&format!("\"{}\", \"{}\"", garbage.url(), a.url()), "");
    let agent = client();
    for i in 0..4 {
        let (status, body, backend) = get(&agent, &format!("{}/r/{i}", lb.url()));
        assert_eq!(status, 200, "{body}");
        assert_eq!(backend.as_deref(), Some("a"));
    }
    assert!(
        !garbage.proxied().is_empty(),
        "round robin sent some requests to the garbage backend first"
    );
    assert_eq!(a.proxied_count(), 4);
}

#[test]
fn post_is_not_replayed_after_garbage() {
    let garbage = garbage_backend();
    let a = Backend::start("a");
    let lb = start_lb_with_servers(&format!("\"{}\", \"{}\"", garbage.url(), a.url()), "");
    let agent = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let response = agent
            .post(format!("{}/p/{i}", lb.url()))
            .send("hello")
            .expect("request completes");
        statuses.push(response.status().as_u16());
    }
    let bad = statuses.iter().filter(|&&s| s == 502).count();
    let good = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(bad + good, 4, "{statuses:?}");
    assert!(
        bad >= 1,
        "round robin sent some POSTs to the garbage backend: {statuses:?}"
    );
    assert_eq!(
        garbage.proxied().len(),
        bad,
        "each 502 is one POST the garbage backend got"
    );
    assert_eq!(
        a.proxied_count(),
        good,
        "no POST was sent a second time: {statuses:?}"
    );
}

#[test]
fn silent_backend_gives_504_after_backend_timeout() {
    let silent = ScriptedBackend::hanging();
    let lb = start_lb_with_servers(
        &format!("\"{}\"", silent.url()),
        r#""backendTimeout": "300ms""#,
    );
    let started = Instant::now();
    let (status, body, _) = get(&client(), &format!("{}/slow", lb.url()));
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_millis(250),
        "504 before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "504 took {took:?}");
    assert_eq!(
        silent.proxied().len(),
        1,
        "a timed-out request is not retried"
    );
}

// ---------------------------------------------------------------------------------------------
// A backend that accepts and never answers, beside two healthy ones.
// ---------------------------------------------------------------------------------------------

/// Client threads for the load runs: more than the 8 workers, so that without a per-backend
/// limit the hanging backend would take every worker (each request it gets holds one for
/// `backendTimeout`); with the limit it holds 4 workers (and the 4 clients waiting on them), and
/// the other 8 clients keep the healthy backends busy through the other 4 workers.
const CLIENTS: usize = 12;
const LOAD_FOR: Duration = Duration::from_secs(3);
/// Clients start this far apart. tiny_http 0.12's thread pool can queue a connection of a burst
/// behind a thread that is already taken; tinylb's pings rescue one such connection each 50 ms,
/// which can still cost a client of a burst a second (before they did, such a client waited
/// for seconds). Staggering keeps that out of this test, which is about the backends.
const STAGGER: Duration = Duration::from_millis(25);

/// What one load run produced.
#[derive(Default)]
struct Load {
    /// 200s from the healthy backends.
    ok: usize,
    /// When each of those 200s had arrived.
    ok_at: Vec<Instant>,
    /// How long each 504 took.
    timed_out: Vec<Duration>,
    /// Anything else, described.
    failures: Vec<String>,
}

/// `CLIENTS` threads send GETs in a loop for `duration`; `sample` runs every 10 ms meanwhile.
fn run_load(url: &str, duration: Duration, mut sample: impl FnMut()) -> Load {
    let finished = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let finished = &finished;
                scope.spawn(move || {
                    // The scenario: clients that start a little apart (see STAGGER).
                    std::thread::sleep(STAGGER * t as u32);
                    let load = client_loop(url, t, started + duration);
                    finished.fetch_add(1, Ordering::SeqCst);
                    load
                })
            })
            .collect();
        // The clients stop sending after `duration` and each waits at most backendTimeout
        // (and the client's own timeouts) for its last answer.
        wait_until(duration + Duration::from_secs(20), || {
            sample();
            finished.load(Ordering::SeqCst) == CLIENTS
        });
        let mut total = Load::default();
        for handle in clients {
            let load = handle.join().expect("client thread");
            total.ok += load.ok;
            total.ok_at.extend(load.ok_at);
            total.timed_out.extend(load.timed_out);
            total.failures.extend(load.failures);
        }
        total
    })
}

/// One client: GETs on one keep-alive connection until `until`.
fn client_loop(url: &str, t: usize, until: Instant) -> Load {
    // Phase timeouts only: ureq's global timeout would start a thread per request (for name
    // resolution), which costs the clients more CPU than tinylb spends on the request.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut load = Load::default();
    for i in 0..1_000_000 {
        if Instant::now() >= until {
            break;
        }
        let sent = Instant::now();
        let outcome = agent.get(format!("{url}/load/{t}/{i}")).call();
        let took = sent.elapsed();
        let mut response = match outcome {
            Ok(response) => response,
            Err(e) => {
                load.failures.push(e.to_string());
                continue;
            }
        };
        let status = response.status().as_u16();
        let backend = response
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match (
            status,
            backend.as_deref(),
            response.body_mut().read_to_string(),
        ) {
            (200, Some("a" | "b"), Ok(_)) => {
                load.ok += 1;
                load.ok_at.push(Instant::now());
            }
            (504, None, Ok(_)) => load.timed_out.push(took),
            (status, backend, body) => load.failures.push(format!(
                "{status} from {backend:?} after {took:?}: {body:?}"
            )),
        }
    }
    load
}

#[test]
fn hanging_backend_gets_504s_and_holds_at_most_half_the_workers_while_others_serve() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // Answers the health checks, so it stays in rotation, and never answers anything else.
    let hanging = ScriptedBackend::hanging();
    // Eight workers, and every client here shares one address: the cap under test is the
    // backend's (half the workers), not the client's.
    let settings = r#""backendTimeout": "2s", "algorithm": "round-robin", "workers": 8, "clientMaxWorkers": 8"#;
    let servers = format!("\"{}\", \"{}\", \"{}\"", a.url(), b.url(), hanging.url());
    let lb = start_lb_with_servers(&servers, settings);
    // The baseline: two other healthy backends alone behind their own tinylb, same clients,
    // half the time just before and half just after, so that a change in what else the machine
    // is doing meanwhile affects both sides alike.
    let (a0, b0) = (Backend::start("a"), Backend::start("b"));
    let baseline_lb = start_lb(&[&a0, &b0], settings);

    let mut baseline = run_load(&baseline_lb.url(), LOAD_FOR / 2, || {});
    let mut max_in_flight = 0;
    let with_hang = run_load(&lb.url(), LOAD_FOR, || {
        max_in_flight = max_in_flight.max(lb.lb().backends()[2].in_flight());
    });
    let after = run_load(&baseline_lb.url(), LOAD_FOR / 2, || {});
    baseline.ok += after.ok;
    baseline.timed_out.extend(after.timed_out);
    baseline.failures.extend(after.failures);
    assert!(
        baseline.failures.is_empty() && baseline.timed_out.is_empty(),
        "baseline: {:?}, {} timeouts",
        &baseline.failures[..baseline.failures.len().min(5)],
        baseline.timed_out.len()
    );
    assert_eq!(a0.proxied_count() + b0.proxied_count(), baseline.ok);

    let rate = |load: &Load| load.ok as f64 / LOAD_FOR.as_secs_f64();
    let ratio = rate(&with_hang) / rate(&baseline);
    let mut latencies = with_hang.timed_out.clone();
    latencies.sort();
    let mut served_at = with_hang.ok_at.clone();
    served_at.sort();
    let longest_without_200 = served_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(LOAD_FOR);
    eprintln!(
        "hanging backend: healthy backends served {:.0}/s alone and {:.0}/s beside it (ratio \
         {ratio:.2}, longest time without a 200 {longest_without_200:?}); {} requests got 504 \
         after {:?}..{:?}; requests on it at once: at most {max_in_flight} counted by tinylb, {} \
         seen by the backend",
        rate(&baseline),
        rate(&with_hang),
        latencies.len(),
        latencies.first().copied().unwrap_or_default(),
        latencies.last().copied().unwrap_or_default(),
        hanging.max_held(),
    );

    assert!(
        with_hang.failures.is_empty(),
        "{:?}",
        &with_hang.failures[..with_hang.failures.len().min(5)]
    );
    // (a) Every request the hanging backend got came back as a 504 after backendTimeout.
    let hung = hanging.proxied().len();
    assert_eq!(
        latencies.len(),
        hung,
        "one 504 for each request the hanging backend received (and no retry)"
    );
    assert!(
        hung >= 4,
        "only {hung} requests reached the hanging backend"
    );
    for took in &latencies {
        assert!(
            *took >= Duration::from_millis(1950) && *took < Duration::from_secs(3),
            "a 504 took {took:?}, backendTimeout is 2s"
        );
    }
    // (b) The healthy backends kept serving, never starved and at (nearly) the rate they had
    // alone. Without a per-backend limit every worker would be waiting on the hanging backend
    // within milliseconds, again after each round of 504s: nothing served for 2 s at a time,
    // a few dozen requests in all. The ratio is 0.8 to 1.1 on a quiet machine; the bound leaves
    // room for a machine whose load changes between the runs.
    assert!(
        longest_without_200 < Duration::from_secs(1),
        "the healthy backends served nothing for {longest_without_200:?}"
    );
    assert!(
        ratio >= 0.4,
        "healthy backends served {:.0}/s beside a hanging one, {:.0}/s alone",
        rate(&with_hang),
        rate(&baseline)
    );
    assert_eq!(
        a.proxied_count() + b.proxied_count(),
        with_hang.ok,
        "every 200 came from a healthy backend, each forwarded once"
    );
    // (c) One backend holds at most ceil(workers / 2) = 4 requests, and it did reach that. The
    // backend itself may briefly see one more: it notices tinylb's close of a timed-out request
    // a moment after tinylb has counted that request done and sent the next one.
    assert_eq!(
        max_in_flight, 4,
        "requests in flight on the hanging backend"
    );
    assert!(
        (4..=5).contains(&hanging.max_held()),
        "the hanging backend held {} requests at once",
        hanging.max_held()
    );
    assert!(
        is_healthy(&lb, 2),
        "a backend that only times out stays in rotation (passive checks mark only refusals)"
    );
    assert!(
        wait_until(Duration::from_secs(3), || hanging.held() == 0),
        "tinylb closed every connection to the hanging backend"
    );
}

// ---------------------------------------------------------------------------------------------
// A pooled keep-alive connection closed just as a request is sent on it.
// ---------------------------------------------------------------------------------------------

/// Answers the first request on each connection with keep-alive (Content-Length, no
/// `Connection: close`), then closes the connection without answering when the next request
/// arrives on it: the race a backend's keep-alive timeout creates, made to happen every time.
/// First requests for `/prime/...` are answered after 300 ms, so that a few sent at once leave
/// as many connections in tinylb's pool.
fn closes_reused_connections() -> ScriptedBackend {
    ScriptedBackend::start(|request| match (request.method.as_str(), request.index) {
        ("HEAD", 0) => Act::Answer(head_ok()),
        (_, 0) => {
            if request.target.starts_with("/prime/") {
                // The scenario: a backend that answers these late.
                std::thread::sleep(Duration::from_millis(300));
            }
            Act::Answer(ok(&format!(
                "answered {} {} on connection {}",
                request.method, request.target, request.connection
            )))
        }
        _ => Act::Close(Vec::new()),
    })
}

/// Sends `n` GETs for `/prime/K` at once (n <= 4: see `STAGGER`) and checks that each was
/// answered on a connection of its own, which tinylb then keeps in its pool.
fn prime_pool(lb: &TestLb, backend: &ScriptedBackend, n: usize) {
    std::thread::scope(|scope| {
        let primes: Vec<_> = (0..n)
            .map(|k| scope.spawn(move || get(&client(), &format!("{}/prime/{k}", lb.url()))))
            .collect();
        for prime in primes {
            let (status, body, _) = prime.join().expect("prime thread");
            assert_eq!(status, 200, "{body}");
        }
    });
    let mut connections: Vec<usize> = backend.proxied().iter().map(|r| r.connection).collect();
    connections.sort_unstable();
    connections.dedup();
    assert_eq!(connections.len(), n, "{:#?}", backend.proxied());
}

/// Like a backend whose keep-alive timeout ends for all its idle connections at once: every
/// connection in tinylb's pool is closed by the backend as the next request is sent on it. A
/// GET must then be retried on a fresh connection, not on the next pooled one.
#[test]
fn get_on_pooled_connections_the_backend_closes_is_retried_on_a_fresh_one() {
    let backend = closes_reused_connections();
    let lb = start_lb_with_servers(&format!("\"{}\"", backend.url()), "");
    prime_pool(&lb, &backend, 3);
    let agent = client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (status, _, _) = get(&agent, &format!("{}/get/{i}", lb.url()));
        statuses.push(status);
    }
    let proxied = backend.proxied();
    let closed = proxied.iter().filter(|r| r.index > 0).count();
    eprintln!(
        "keep-alive race: 6 GETs after 3 primed connections got {statuses:?}; the backend closed \
         {closed} requests unanswered on reused connections"
    );
    assert_eq!(
        statuses, [200; 6],
        "each GET was sent on a reused connection the backend closed; it must be retried on a \
         fresh connection, got: {proxied:#?}"
    );
    assert!(closed >= 3, "the race was hit only {closed} times");
    for i in 0..6 {
        let target = format!("/get/{i}");
        let copies: Vec<&RawRequest> = proxied.iter().filter(|r| r.target == target).collect();
        let answered = copies.iter().filter(|r| r.index == 0).count();
        assert_eq!(answered, 1, "{target}: {copies:#?}");
        assert!(copies.len() <= 2, "{target} sent {} times", copies.len());
    }
}

#[test]
fn post_on_a_connection_the_backend_closes_is_never_replayed() {
    let backend = closes_reused_connections();
    let lb = start_lb_with_servers(&format!("\"{}\"", backend.url()), "");
    let agent = client();
    let mut statuses = Vec::new();
    for i in 0..5 {
        // Leaves a pooled connection that the backend will close on its next request. (A 502
        // here is the bug of the test above: two pooled connections, retried on the second.)
        let (status, body, _) = get(&agent, &format!("{}/warm/{i}", lb.url()));
        assert!(matches!(status, 200 | 502), "{status} {body}");
        let payload = format!("post body {i}");
        let mut response = agent
            .post(format!("{}/post/{i}", lb.url()))
            .send(payload.as_bytes())
            .expect("answered");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        assert!(matches!(status, 200 | 502), "POST {i}: {status} {body}");
        statuses.push(status);
    }
    eprintln!("keep-alive race: POST statuses {statuses:?}");
    let proxied = backend.proxied();
    for i in 0..5 {
        let payload = format!("post body {i}");
        let copies = proxied
            .iter()
            .filter(|r| r.body == payload.as_bytes())
            .count();
        assert_eq!(copies, 1, "POST {i} reached the backend {copies} times");
    }
    // A 200 would mean the POST went on a fresh connection and was answered there.
    for (i, status) in statuses.iter().enumerate() {
        let answered = proxied
            .iter()
            .any(|r| r.target == format!("/post/{i}") && r.index == 0);
        assert_eq!(*status == 200, answered, "POST {i}: {proxied:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Slow health checks.
// ---------------------------------------------------------------------------------------------

#[test]
fn hanging_health_check_does_not_delay_the_other_backends_checks() {
    let hang_checks = Arc::new(AtomicBool::new(false));
    let hung_checks = Arc::new(AtomicUsize::new(0));
    // First in the list, so in every round its check runs (and hangs) before the other's.
    let hanging = {
        let (hang_checks, hung_checks) = (hang_checks.clone(), hung_checks.clone());
        ScriptedBackend::start(move |request| {
            if request.method == "HEAD" && hang_checks.load(Ordering::SeqCst) {
                hung_checks.fetch_add(1, Ordering::SeqCst);
                return Act::Hold(Vec::new());
            }
            Act::Answer(head_ok())
        })
    };
    let normal = ScriptedBackend::start(|_| Act::Answer(head_ok()));
    let servers = format!("\"{}\", \"{}\"", hanging.url(), normal.url());
    let lb = start_lb_with_servers(
        &servers,
        r#""healthCheckInterval": "300ms", "healthCheckTimeout": "250ms""#,
    );
    assert!(is_healthy(&lb, 0) && is_healthy(&lb, 1));

    let window = Duration::from_secs(3);
    let flipped = Instant::now();
    hang_checks.store(true, Ordering::SeqCst);
    let mut went_down: Option<Instant> = None;
    // Watches for the whole window (bounded by it): the normal backend must stay up.
    while flipped.elapsed() < window {
        assert!(is_healthy(&lb, 1), "the normal backend went down");
        if went_down.is_none() && !is_healthy(&lb, 0) {
            went_down = Some(Instant::now());
        }
        // The sampling period of this watch, which lasts the whole window whatever happens.
        std::thread::sleep(Duration::from_millis(2));
    }
    let went_down = went_down.expect("the hanging backend was marked down");
    // Failed checks when it went down: the hanging checks whose connection tinylb had closed
    // (at the check's timeout) by then. The next one ends 300 ms after the third, so a watcher
    // (or backend thread) running up to 150 ms late still counts right.
    let failed_at_down = hanging
        .hold_ends()
        .iter()
        .filter(|&&end| end <= went_down + Duration::from_millis(150))
        .count();
    let down_after = went_down - flipped;
    let checks = normal.checks();
    let in_window: Vec<Instant> = checks
        .iter()
        .copied()
        .filter(|&at| at >= flipped && at <= flipped + window)
        .collect();
    let max_gap = checks
        .windows(2)
        .filter(|w| w[1] >= flipped && w[1] <= flipped + window)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(window);
    eprintln!(
        "slow health checks: normal backend checked {} times in {window:?} (largest gap {max_gap:?}); \
         hanging backend down {down_after:?} after its checks began to hang, after \
         {failed_at_down} failed checks ({} hung in all)",
        in_window.len(),
        hung_checks.load(Ordering::SeqCst)
    );
    // One check per 300 ms interval: 10 in 3 s (9 seen in the window as a rule); the hanging
    // check only shifts them by its 250 ms timeout, so no gap exceeds 550 ms. The bounds leave
    // room for a loaded machine, where a check can come late or time out itself; a check
    // round that waited for the hanging backend would give 3 checks or fewer.
    assert!(in_window.len() >= 6, "{} checks in 3 s", in_window.len());
    assert!(
        max_gap <= Duration::from_secs(1),
        "a gap of {max_gap:?} between checks of the normal backend (interval 300ms + timeout 250ms)"
    );
    assert_eq!(
        failed_at_down, 3,
        "marked down after healthCheckFall (3) failed checks"
    );
    assert!(
        down_after >= Duration::from_millis(800) && down_after <= Duration::from_millis(1600),
        "down after {down_after:?}: three checks (two intervals and a timeout) after the flip"
    );
}

// ---------------------------------------------------------------------------------------------
// A body cut short: the backend closes, or goes silent with the connection open.
// ---------------------------------------------------------------------------------------------

/// tinylb (backendTimeout 1 s) in front of a backend that answers a GET with `partial` and then
/// closes the connection, or (`hold`) goes silent and leaves it open. Returns what a keep-alive
/// client got, the head and the body bytes as they came, and when tinylb closed the connection;
/// checks that the started answer was not retried and that tinylb let go of the backend.
fn fetch_cut_short(partial: Vec<u8>, hold: bool) -> (Response, Vec<u8>, Duration) {
    let backend = ScriptedBackend::healthy_but(move |_| match hold {
        true => Act::Hold(partial.clone()),
        false => Act::Close(partial.clone()),
    });
    let lb = start_lb_with_servers(
        &format!("\"{}\"", backend.url()),
        r#""backendTimeout": "1s""#,
    );
    // A keep-alive request: only tinylb closing the connection can end this read.
    let (answer, closed) = send_until_close(
        lb.addr,
        b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
        OnError::Panic,
    );
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "connection still open 5 s after the body broke off; got {:?}",
            String::from_utf8_lossy(&answer)
        )
    });
    assert_eq!(
        backend.proxied().len(),
        1,
        "a started answer is not retried"
    );
    assert!(
        wait_until(Duration::from_secs(2), || backend.held() == 0),
        "tinylb closed its connection to the backend"
    );
    let (head, body) = split_response(&answer);
    (head, body.to_vec(), closed)
}

/// `head`, then `len` bytes of `fill`.
fn partial(head: &[u8], fill: u8, len: usize) -> Vec<u8> {
    let mut bytes = head.to_vec();
    bytes.resize(head.len() + len, fill);
    bytes
}

/// A body cut short four ways: the backend closes the connection, or goes silent with it open
/// (then `backendTimeout`, 1 s, ends it), in a Content-Length body or in a chunked one. The
/// client gets a transfer it can tell is truncated (fewer bytes than Content-Length, or no final
/// chunk), and its connection is closed.
#[test]
fn a_body_cut_short_reaches_the_client_truncated() {
    for (case, chunked, hold) in [
        ("closed in a Content-Length body", false, false),
        ("closed in a chunked body", true, false),
        ("silent in a Content-Length body", false, true),
        ("silent in a chunked body", true, true),
    ] {
        // 100 bytes of a 1,000-byte body; a chunked body's first chunk is whole.
        let mut sent = if chunked {
            partial(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n",
                b'x',
                100,
            )
        } else {
            partial(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                b'x',
                100,
            )
        };
        if chunked {
            sent.extend_from_slice(b"\r\n");
        }
        let (head, body, closed) = fetch_cut_short(sent, hold);
        assert_eq!(head.status, 200, "{case}");
        let data = if chunked {
            assert_eq!(
                head.header("transfer-encoding"),
                Some("chunked"),
                "{case}: {:?}",
                head.headers
            );
            let (data, complete) = decode_chunked(&body);
            assert!(
                !complete,
                "{case}: the client got a final chunk: {:?}",
                String::from_utf8_lossy(&body)
            );
            data
        } else {
            assert_eq!(
                head.header("content-length"),
                Some("1000"),
                "{case}: {:?}",
                head.headers
            );
            assert_eq!(head.header("transfer-encoding"), None, "{case}");
            body
        };
        // A silent backend's bytes all arrive; a closing one's may be cut by its reset.
        assert!(
            data.iter().all(|&b| b == b'x') && (data.len() == 100 || !hold && data.len() < 100),
            "{case}: {} bytes, not the bytes the backend sent",
            data.len()
        );
        let expected = if hold {
            Duration::from_millis(950)..Duration::from_secs(3)
        } else {
            Duration::ZERO..Duration::from_millis(900)
        };
        assert!(
            expected.contains(&closed),
            "{case}: closed after {closed:?}; a backend's close must end it at once, silence \
             after backendTimeout (1 s)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Response heads against the 32 KiB limit.
// ---------------------------------------------------------------------------------------------

/// tinylb's limit on a backend's response head (`MAX_RESPONSE_HEAD_BYTES` in src/message.rs),
/// written out so that a change to it shows up here.
const RESPONSE_HEAD_LIMIT: usize = 32 * 1024;

/// A 200 answer whose head (status line to blank line) is `head_len` bytes, made up by one
/// `X-Large` header with a value that shows truncation or reordering (a 37-byte cycle), and a
/// short body. Returns the answer and the `X-Large` value.
fn answer_with_head_of(head_len: usize) -> (Vec<u8>, String) {
    const CYCLE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.";
    let body = "large head\n";
    let fixed = format!(
        "HTTP/1.1 200 OK\r\nX-Large: \r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let value: String = (0..head_len - fixed.len())
        .map(|i| CYCLE[i % CYCLE.len()] as char)
        .collect();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nX-Large: {value}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(answer.len(), head_len + body.len());
    (answer.into_bytes(), value)
}

/// A raw backend that answers `GET /head/N` with a head of N bytes ([`answer_with_head_of`])
/// and health checks with a plain 200.
fn large_head_backend() -> ScriptedBackend {
    ScriptedBackend::healthy_but(|request| {
        let len = request
            .target
            .strip_prefix("/head/")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected target {}", request.target));
        Act::Answer(answer_with_head_of(len).0)
    })
}

/// GETs `target` through tinylb on a new connection (`Connection: close`): the answer.
fn get_through(lb: &TestLb, target: &str) -> Response {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (answer, closed) = send_until_close(
        lb.addr,
        request.as_bytes(),
        Duration::from_secs(10),
        OnError::CountAsClose,
    );
    assert!(closed.is_some(), "{target}: connection left open");
    read_full_response(&mut &answer[..], false).expect("an answer")
}

/// A response head over 32 KiB (one 40 KiB header) is a broken answer: tinylb answers 502
/// instead of relaying it, and serves the next request normally. Before, ureq's defaults (a
/// 64 KiB limit, a 128 KiB input buffer) let it through. ureq's input buffer is 4 KiB larger
/// than the limit, so ureq reports the head as too large (not as the backend closing, which
/// would be retried on a fresh connection): the backend is asked once. One backend only,
/// because with more the GET would be retried on another backend.
#[test]
fn response_head_over_32_kib_gets_502() {
    let backend = large_head_backend();
    let lb = start_lb_with_servers(&format!("\"{}\"", backend.url()), "");
    assert_eq!(get_through(&lb, "/head/2000").status, 200);

    let target = format!("/head/{}", 40 * 1024);
    let answer = get_through(&lb, &target);
    let copies = backend
        .proxied()
        .iter()
        .filter(|r| r.target == target)
        .count();
    eprintln!(
        "response head of 40 KiB (limit {RESPONSE_HEAD_LIMIT}): tinylb answered {:?} ({:?}); \
         the backend was asked {copies} times",
        answer.status,
        answer.text().trim()
    );
    assert_eq!(
        answer.status,
        502,
        "a 40 KiB response head got {} (X-Large {} bytes)",
        answer.status,
        answer.header("x-large").map_or(0, str::len)
    );
    assert_eq!(answer.header("x-large"), None);
    assert_eq!(
        copies, 1,
        "asked {copies} times: a head that is too large is not retried on the same backend"
    );

    assert_eq!(get_through(&lb, "/head/3000").status, 200, "after the 502");
}

/// Response heads under the limit, of 20 KiB and of 31 KiB, reach the client byte for byte: the
/// status, the large header's value and the body.
#[test]
fn response_heads_of_20_and_31_kib_pass_through_intact() {
    let backend = large_head_backend();
    let lb = start_lb_with_servers(&format!("\"{}\"", backend.url()), "");
    for len in [20 * 1024, 31 * 1024] {
        assert!(len < RESPONSE_HEAD_LIMIT);
        let (_, value) = answer_with_head_of(len);
        let answer = get_through(&lb, &format!("/head/{len}"));
        let relayed = answer.header("x-large").unwrap_or("");
        eprintln!(
            "response head of {len} bytes: {}, X-Large {} of {} bytes relayed",
            answer.status,
            relayed.len(),
            value.len()
        );
        assert_eq!(answer.status, 200, "{len}");
        assert!(
            relayed == value,
            "{len}: X-Large relayed as {} bytes, not the {} the backend sent",
            relayed.len(),
            value.len()
        );
        assert_eq!(answer.body, b"large head\n", "{len}: body");
    }
    assert_eq!(backend.proxied().len(), 2, "{:#?}", backend.proxied());
}
