//! Load balancing through the running proxy with real backends: each algorithm's exact
//! distribution, down backends getting no traffic (active and passive checks) and tinylb's own
//! 503 once none is left, retries that keep clients from ever seeing a failure while a backend
//! dies under load, and the health-check rise/fall thresholds and pass/fail statuses.

mod common;
use common::scripted::{Act, ScriptedBackend};
use common::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(5);

/// Fixture backends named a, b and c, in that order.
fn three_backends() -> [Backend; 3] {
    ["a", "b", "c"].map(Backend::start)
}

/// How many times each name occurs.
fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    counts
}

/// `[("a", 10), ("b", 10)]` as a map, for comparing with [`tally`].
fn counts(expected: &[(&str, usize)]) -> BTreeMap<String, usize> {
    expected.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// Requests tinylb is forwarding right now, over every backend.
fn total_in_flight(lb: &TestLb) -> usize {
    lb.lb().backends().iter().map(|b| b.in_flight()).sum()
}

/// GETs `path` and waits until tinylb has released the request's in-flight count, so the next
/// pick sees only the load the test created (the count is released just after the response).
fn get_settled(lb: &TestLb, agent: &ureq::Agent, path: &str, baseline: usize) -> String {
    let name = answered_by(agent, &lb.url(), path, 1).remove(0);
    assert!(
        wait_until(WAIT, || total_in_flight(lb) == baseline),
        "in-flight count did not return to {baseline}"
    );
    name
}

// ---------------------------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------------------------

#[test]
fn round_robin_rotates_strictly_with_equal_shares() {
    let [a, b, c] = three_backends();
    let lb = start_lb(&[&a, &b, &c], r#""algorithm": "round-robin""#);
    let picks = answered_by(&client(), &lb.url(), "/rr", 30);

    assert_eq!(
        tally(&picks),
        counts(&[("a", 10), ("b", 10), ("c", 10)]),
        "{picks:?}"
    );
    for (i, name) in picks.iter().enumerate() {
        assert_eq!(name, &picks[i % 3], "not a strict rotation: {picks:?}");
    }
    for backend in [&a, &b, &c] {
        assert_eq!(
            backend.proxied_count(),
            10,
            "backend {} saw",
            backend.name()
        );
    }
}

#[test]
fn weighted_round_robin_gives_nginxs_smooth_sequence() {
    let [a, b, c] = three_backends();
    let servers = format!(
        r#"{{"url": "{}", "weight": 5}}, {{"url": "{}", "weight": 1}}, {{"url": "{}", "weight": 1}}"#,
        a.url(),
        b.url(),
        c.url()
    );
    let lb = start_lb_with_servers(&servers, r#""algorithm": "weighted-round-robin""#);
    let picks = answered_by(&client(), &lb.url(), "/wrr", 14).concat();

    // One full cycle of 7 is nginx's `a a b a c a a`; the second cycle repeats it exactly.
    assert_eq!(picks, "aabacaaaabacaa");
    assert_eq!(
        (a.proxied_count(), b.proxied_count(), c.proxied_count()),
        (10, 2, 2)
    );
}

#[test]
fn least_connections_avoids_backends_with_requests_in_flight() {
    let [a, b, c] = three_backends();
    let lb = start_lb(&[&a, &b, &c], r#""algorithm": "least-connections""#);
    let names = ["a", "b", "c"];
    let busy_index = |lb: &TestLb, not: Option<usize>| {
        (0..3).find(|&i| Some(i) != not && lb.lb().backends()[i].in_flight() == 1)
    };

    // Two slow requests, started one after the other: each must land on an idle backend.
    let slow =
        |url: String| std::thread::spawn(move || get(&client(), &format!("{url}/slow/1500")));
    let first_slow = slow(lb.url());
    assert!(
        wait_until(WAIT, || total_in_flight(&lb) == 1),
        "first slow request never started"
    );
    let x = busy_index(&lb, None).expect("one backend holds the first slow request");
    let second_slow = slow(lb.url());
    assert!(
        wait_until(WAIT, || total_in_flight(&lb) == 2),
        "second slow request never started"
    );
    let y = busy_index(&lb, Some(x)).expect("the second slow request went to another backend");
    let z = 3 - x - y;

    // Every quick request goes to the one backend with nothing in flight.
    let quick: Vec<String> = (0..20)
        .map(|_| get_settled(&lb, &client(), "/quick", 2))
        .collect();
    assert_eq!(
        tally(&quick),
        counts(&[(names[z], 20)]),
        "slow ones on {} and {}",
        names[x],
        names[y]
    );
    // The slow requests really were in flight the whole time.
    assert_eq!(lb.lb().backends()[x].in_flight(), 1);
    assert_eq!(lb.lb().backends()[y].in_flight(), 1);

    for (handle, index) in [(first_slow, x), (second_slow, y)] {
        let (status, _, backend) = handle.join().expect("slow client thread");
        assert_eq!((status, backend.as_deref()), (200, Some(names[index])));
    }
    // Idle again: ties rotate, so every backend gets its turn.
    assert!(wait_until(WAIT, || total_in_flight(&lb) == 0));
    let idle: Vec<String> = (0..6)
        .map(|_| get_settled(&lb, &client(), "/idle", 0))
        .collect();
    assert_eq!(
        tally(&idle),
        counts(&[("a", 2), ("b", 2), ("c", 2)]),
        "{idle:?}"
    );
}

#[test]
fn ip_hash_keeps_a_client_on_one_backend_until_that_backend_fails() {
    let mut backends = three_backends();
    let lb = {
        let [a, b, c] = &backends;
        start_lb(&[a, b, c], r#""algorithm": "ip-hash""#)
    };
    let agent = client();

    let picks = answered_by(&agent, &lb.url(), "/ip", 50);
    let home = picks[0].clone();
    assert_eq!(
        tally(&picks),
        counts(&[(&home, 50)]),
        "127.0.0.1 was spread: {picks:?}"
    );
    let home_index = backends
        .iter()
        .position(|b| b.name() == home)
        .expect("known name");

    backends[home_index].stop();
    assert!(
        wait_until(WAIT, || !is_healthy(&lb, home_index)),
        "{home} never marked down"
    );
    let moved = answered_by(&agent, &lb.url(), "/ip", 50);
    let fallback = moved[0].clone();
    assert_ne!(fallback, home);
    assert_eq!(
        tally(&moved),
        counts(&[(&fallback, 50)]),
        "failover was spread: {moved:?}"
    );

    backends[home_index].restart();
    assert!(
        wait_until(WAIT, || is_healthy(&lb, home_index)),
        "{home} never came back"
    );
    let back = answered_by(&agent, &lb.url(), "/ip", 50);
    assert_eq!(
        tally(&back),
        counts(&[(&home, 50)]),
        "the client did not return home: {back:?}"
    );
}

#[test]
fn ip_hash_choice_ignores_list_order_and_removal_of_other_backends() {
    let mut backends = three_backends();
    let ip_hash = r#""algorithm": "ip-hash""#;
    let agent = client();
    // Where this client (127.0.0.1) goes with a load balancer over exactly `list`.
    let home_with = |list: &[&Backend]| {
        let lb = start_lb(list, ip_hash);
        let picks = answered_by(&agent, &lb.url(), "/ip", 10);
        assert_eq!(
            tally(&picks).len(),
            1,
            "one client, several backends: {picks:?}"
        );
        picks[0].clone()
    };

    let [a, b, c] = &backends;
    let home = home_with(&[a, b, c]);
    assert_eq!(
        home_with(&[c, a, b]),
        home,
        "reordering the list moved the client"
    );
    assert_eq!(
        home_with(&[b, c, a]),
        home,
        "reordering the list moved the client"
    );
    for removed in backends.iter().filter(|x| x.name() != home) {
        let rest: Vec<&Backend> = backends
            .iter()
            .filter(|x| x.name() != removed.name())
            .collect();
        assert_eq!(
            home_with(&rest),
            home,
            "removing {} moved the client",
            removed.name()
        );
    }
    let others: Vec<&Backend> = backends.iter().filter(|x| x.name() != home).collect();
    let fallback = home_with(&others);
    assert_ne!(fallback, home);

    // Stopping the client's backend sends it where removing that backend from the list does.
    let lb = start_lb(&[a, b, c], ip_hash);
    let home_index = backends
        .iter()
        .position(|x| x.name() == home)
        .expect("known name");
    backends[home_index].stop();
    assert!(
        wait_until(WAIT, || !is_healthy(&lb, home_index)),
        "{home} never marked down"
    );
    let picks = answered_by(&agent, &lb.url(), "/ip", 10);
    assert_eq!(tally(&picks), counts(&[(&fallback, 10)]), "{picks:?}");
}

// ---------------------------------------------------------------------------------------------
// Down backends
// ---------------------------------------------------------------------------------------------

#[test]
fn stopped_backend_gets_no_traffic_and_returns_after_restart() {
    let [a, mut b, c] = three_backends();
    let lb = start_lb(&[&a, &b, &c], "");
    let agent = client();
    assert_eq!(tally(&answered_by(&agent, &lb.url(), "/warm", 3)).len(), 3);

    b.stop();
    assert!(
        wait_until(WAIT, || !is_healthy(&lb, 1)),
        "b never marked down"
    );
    let seen_by_b = b.proxied_count();
    let picks = answered_by(&agent, &lb.url(), "/down", 30);
    // The two live backends share evenly: a down one does not double its neighbour's load.
    assert_eq!(tally(&picks), counts(&[("a", 15), ("c", 15)]), "{picks:?}");
    for pair in picks.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {picks:?}");
    }
    assert_eq!(b.proxied_count(), seen_by_b);

    b.restart();
    assert!(wait_until(WAIT, || is_healthy(&lb, 1)), "b never came back");
    let picks = answered_by(&agent, &lb.url(), "/up", 30);
    assert_eq!(
        tally(&picks),
        counts(&[("a", 10), ("b", 10), ("c", 10)]),
        "{picks:?}"
    );
    assert_eq!(b.proxied_count(), seen_by_b + 10);
}

#[test]
fn backend_dead_at_start_gets_no_traffic_from_the_first_request() {
    let a = Backend::start("a");
    // Port 1 is below the ephemeral range, so no test can be listening there: it refuses for
    // sure, where a stopped fixture's port could be taken by a test running in parallel.
    let servers = format!("\"{}\", \"http://127.0.0.1:1\"", a.url());
    // An interval of an hour: only the first round at start-up can know it is dead.
    let lb = start_lb_with_servers(&servers, r#""healthCheckInterval": "1h""#);
    assert!(
        !is_healthy(&lb, 1),
        "the first check round did not mark the dead backend down"
    );
    let picks = answered_by(&client(), &lb.url(), "/first", 10);
    assert_eq!(tally(&picks), counts(&[("a", 10)]));
}

#[test]
fn all_backends_down_gives_503() {
    let (mut a, mut b) = (Backend::start("a"), Backend::start("b"));
    let lb = start_lb(&[&a, &b], "");
    let agent = client();
    assert_eq!(get(&agent, &lb.url()).0, 200);

    a.stop();
    b.stop();
    assert!(wait_until(WAIT, || !is_healthy(&lb, 0) && !is_healthy(&lb, 1)));
    for _ in 0..3 {
        let (status, body, backend) = get(&agent, &format!("{}/nothing", lb.url()));
        assert_eq!(status, 503, "{body}");
        assert_eq!(body, "No healthy server available\n");
        assert_eq!(backend, None, "tinylb's own answer");
    }

    b.restart();
    assert!(wait_until(WAIT, || is_healthy(&lb, 1)), "b never came back");
    let (status, _, backend) = get(&agent, &lb.url());
    assert_eq!((status, backend.as_deref()), (200, Some("b")));
}

#[test]
fn refused_connection_marks_backend_down_at_once_and_is_retried() {
    let [a, mut b, c] = three_backends();
    // Only the start-up round runs: anything that notices the stop is the passive check.
    let lb = start_lb(&[&a, &b, &c], r#""healthCheckInterval": "1h""#);
    let agent = client();
    assert_eq!(tally(&answered_by(&agent, &lb.url(), "/warm", 3)).len(), 3);

    b.stop();
    assert!(
        is_healthy(&lb, 1),
        "nothing but a request can have noticed yet"
    );
    let mut sent = 0;
    while is_healthy(&lb, 1) && sent < 3 {
        let (status, body, backend) = get(&agent, &format!("{}/passive", lb.url()));
        assert_eq!(status, 200, "request {sent} after the stop: {body}");
        assert_ne!(backend.as_deref(), Some("b"));
        sent += 1;
    }
    assert!(
        !is_healthy(&lb, 1),
        "round robin reached b within 3 requests but b is not down"
    );

    let picks = answered_by(&agent, &lb.url(), "/after", 10);
    assert_eq!(tally(&picks), counts(&[("a", 5), ("c", 5)]), "{picks:?}");
}

#[test]
fn posts_are_retried_when_the_backend_refuses_the_connection() {
    let [a, mut b, c] = three_backends();
    let lb = start_lb(&[&a, &b, &c], r#""healthCheckInterval": "1h""#);
    let agent = client();
    let post = |i: usize| {
        let body = format!("order number {i}: two coffees");
        let digest: String = Sha256::digest(body.as_bytes())
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        let mut response = agent
            .post(format!("{}/sha256", lb.url()))
            .send(body.as_bytes())
            .expect("POST completes");
        let status = response.status().as_u16();
        let answer = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 200, "POST {i}: {answer}");
        assert_eq!(
            answer,
            format!("{digest} {}\n", body.len()),
            "POST {i} body changed"
        );
    };
    (0..3).for_each(post);
    assert_eq!(b.proxied_count(), 1);

    b.stop();
    (3..12).for_each(post);
    assert!(
        !is_healthy(&lb, 1),
        "round robin reached b, but a refused POST did not mark it down"
    );
    assert_eq!(
        a.proxied_count() + c.proxied_count(),
        11,
        "the 2 warm-up POSTs and the 9 after the stop each reached a or c once"
    );
}

/// The backend's answer is a 204 because the fixture writes it in one piece. A backend killed
/// between writing its head and its body leaves a truncated answer, which tinylb (like nginx)
/// does not retry once the answer has begun: the client sees the transfer cut short, as the
/// design says. That race (about 1 run in 100) would make this test flaky without testing
/// anything new.
#[test]
fn no_request_fails_while_a_backend_is_killed_under_load() {
    let [a, mut b, c] = three_backends();
    let lb = start_lb(&[&a, &b, &c], "");
    let done = Arc::new(AtomicUsize::new(0));
    let after_stop = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let clients: Vec<JoinHandle<Vec<String>>> = (0..4)
        .map(|t| {
            let (url, done, after_stop, stopped) =
                (lb.url(), done.clone(), after_stop.clone(), stopped.clone());
            std::thread::spawn(move || {
                let agent = client();
                let mut failures = Vec::new();
                for i in 0..2000 {
                    if started.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                    let was_stopped = stopped.load(Ordering::SeqCst);
                    let outcome = agent
                        .get(format!("{url}/status/204?load={t}-{i}"))
                        .call()
                        .map_err(|e| e.to_string())
                        .and_then(|mut response| {
                            let status = response.status().as_u16();
                            let from_backend = response.headers().contains_key("x-backend");
                            let body = response.body_mut().read_to_string();
                            match body {
                                Ok(body) if status == 204 && from_backend && body.is_empty() => {
                                    Ok(())
                                }
                                Ok(body) => Err(format!("{status} {body}")),
                                Err(e) => Err(format!("{status}, body broke off: {e}")),
                            }
                        });
                    if let Err(failure) = outcome {
                        failures.push(format!("request {t}/{i}: {failure}"));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    if was_stopped {
                        after_stop.fetch_add(1, Ordering::SeqCst);
                    }
                }
                failures
            })
        })
        .collect();

    assert!(
        wait_until(WAIT, || done.load(Ordering::SeqCst) >= 1000),
        "load never got going"
    );
    b.stop();
    stopped.store(true, Ordering::SeqCst);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();

    let total = done.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        after_stop.load(Ordering::SeqCst) >= 200,
        "only {} requests after the stop",
        after_stop.load(Ordering::SeqCst)
    );
    assert!(!is_healthy(&lb, 1));
    // A GET that b had already read when it died is retried elsewhere (it is idempotent), so it
    // is seen twice; each of the 4 clients had at most one request in flight at that moment.
    let seen = a.proxied_count() + b.proxied_count() + c.proxied_count();
    assert!(
        (total..=total + 4).contains(&seen),
        "{seen} requests seen by backends for {total} sent"
    );
}

// ---------------------------------------------------------------------------------------------
// Health-check thresholds and statuses
// ---------------------------------------------------------------------------------------------

/// A raw backend that answers every request with one status (changeable while it runs), no
/// body, and `Connection: close`, and records every method and status it answered.
struct StatusBackend {
    backend: ScriptedBackend,
    status: Arc<AtomicU16>,
    answered: Arc<Mutex<Vec<(String, u16)>>>,
}

impl StatusBackend {
    fn start(status: u16) -> StatusBackend {
        let status = Arc::new(AtomicU16::new(status));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let backend = {
            let (status, answered) = (status.clone(), answered.clone());
            ScriptedBackend::start(move |request| {
                let status = status.load(Ordering::SeqCst);
                answered.lock().push((request.method.clone(), status));
                let location = if (300..400).contains(&status) {
                    "Location: /elsewhere\r\n"
                } else {
                    ""
                };
                Act::Close(
                    format!(
                        "HTTP/1.1 {status} X\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                )
            })
        };
        StatusBackend {
            backend,
            status,
            answered,
        }
    }

    fn url(&self) -> String {
        self.backend.url()
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Statuses answered to HEAD requests (the health checks), in order.
    fn checks(&self) -> Vec<u16> {
        self.answered
            .lock()
            .iter()
            .filter(|(m, _)| m == "HEAD")
            .map(|(_, s)| *s)
            .collect()
    }

    /// How many of the latest checks in a row were answered with `status`.
    fn trailing_checks(&self, status: u16) -> usize {
        self.checks()
            .iter()
            .rev()
            .take_while(|&&s| s == status)
            .count()
    }
}

#[test]
fn health_checks_honour_fall_and_rise_thresholds() {
    let raw = StatusBackend::start(200);
    let lb = start_lb_with_servers(
        &format!("\"{}\"", raw.url()),
        r#""healthCheckInterval": "200ms", "healthCheckFall": 2, "healthCheckRise": 3"#,
    );
    assert!(is_healthy(&lb, 0));
    assert!(
        wait_until(WAIT, || raw.checks().len() >= 2),
        "no periodic checks"
    );

    raw.set_status(500);
    assert!(wait_until(WAIT, || raw.trailing_checks(500) >= 1));
    assert!(is_healthy(&lb, 0), "down after one failed check; fall is 2");
    assert!(
        wait_until(WAIT, || !is_healthy(&lb, 0)),
        "never marked down"
    );
    assert_eq!(
        raw.trailing_checks(500),
        2,
        "marked down after the wrong number of failures"
    );
    let (status, body, _) = get(&client(), &lb.url());
    assert_eq!(status, 503, "{body}");

    raw.set_status(200);
    assert!(wait_until(WAIT, || raw.trailing_checks(200) >= 2));
    assert!(!is_healthy(&lb, 0), "up after two passed checks; rise is 3");
    assert!(wait_until(WAIT, || is_healthy(&lb, 0)), "never came back");
    assert_eq!(
        raw.trailing_checks(200),
        3,
        "marked up after the wrong number of passes"
    );
    assert_eq!(get(&client(), &lb.url()).0, 200);
}

#[test]
fn redirecting_backend_stays_healthy_and_erroring_ones_start_down() {
    let redirecting = StatusBackend::start(302);
    let failing = StatusBackend::start(500);
    let missing = StatusBackend::start(404);
    let servers = [&redirecting, &failing, &missing]
        .map(|r| format!("\"{}\"", r.url()))
        .join(", ");
    // A fall of 1: a single failed check would take the redirecting backend out.
    let lb = start_lb_with_servers(&servers, r#""healthCheckFall": 1"#);
    assert!(
        !is_healthy(&lb, 1),
        "a backend answering 500 passed the start-up check"
    );
    assert!(
        !is_healthy(&lb, 2),
        "a backend answering 404 passed the start-up check"
    );

    let healthy_throughout = wait_until(Duration::from_secs(2), || {
        !is_healthy(&lb, 0) || redirecting.checks().len() >= 6
    });
    assert!(
        healthy_throughout && is_healthy(&lb, 0),
        "302 backend marked down"
    );
    assert!(redirecting.checks().iter().all(|&s| s == 302));

    // Its redirects reach the client as they are, and nothing goes to the failing ones.
    let agent = client();
    for _ in 0..4 {
        let response = agent
            .get(format!("{}/somewhere", lb.url()))
            .call()
            .expect("answer");
        assert_eq!(response.status().as_u16(), 302);
        assert_eq!(
            response
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap()),
            Some("/elsewhere")
        );
    }
    for raw in [&failing, &missing] {
        assert!(
            raw.answered.lock().iter().all(|(m, _)| m == "HEAD"),
            "got proxied traffic"
        );
    }
}

/// Backends named by host name, as in `make run`'s config.json: tinylb looks the name up once
/// (src/upstream/resolve.rs) and keeps using the answer, and round robin still reaches each backend.
#[test]
fn backends_named_localhost_are_balanced_like_addresses() {
    let [a, b, c] = three_backends();
    let servers: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|backend| format!("\"http://localhost:{}\"", backend.addr().port()))
        .collect();
    let lb = start_lb_with_servers(&servers.join(", "), "");
    let names = answered_by(&client(), &lb.url(), "/by-name", 30);
    assert_eq!(tally(&names), counts(&[("a", 10), ("b", 10), ("c", 10)]));
}
