//! The stage timers (`src/stages.rs`) over real sockets, read where users read them: the access
//! log line and the `tinylb_request_stage_seconds` histograms on `/metrics`. Each test makes one
//! stage slow on purpose (the backend, the queue, the client reading, the client's pause
//! between requests) and checks that the time shows up in that stage and not in the others.

mod common;
use common::process::*;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const LOGGED: &str = r#""accessLog": true, "adminAddress": "127.0.0.1:0""#;

/// tinylb (the binary) with the access log and the admin listener on, and its admin address.
fn start(label: &str, backend: &Backend, extra: &str) -> (ChildLb, SocketAddr) {
    let extra = format!("{LOGGED}, {extra}");
    let mut lb = ChildLb::start(label, &[backend.url()], extra.trim_end_matches(", "));
    let admin = lb.run.admin_addr_since(0);
    (lb, admin)
}

/// The access log line of the request with this target.
fn access_line(lb: &mut ChildLb, target: &str) -> String {
    lb.run
        .wait_for_line(&format!("\"GET {target} HTTP/1.1\""), WAIT)
}

/// A stage's length in seconds from an access log line; `None` for `-`.
fn stage(line: &str, name: &str) -> Option<f64> {
    let value = line
        .split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no {name}= in {line}"));
    if value == "-" {
        return None;
    }
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} in {line}")),
    )
}

/// Every stage of a line: client, queue, connect, response, relay, total.
fn stages(line: &str) -> [Option<f64>; 6] {
    ["client", "queue", "connect", "response", "relay", "total"].map(|name| stage(line, name))
}

/// One sample of the stage histogram from `/metrics`: `suffix` is `count`, `sum`, or
/// `bucket` with `le`.
fn stage_metric(admin: SocketAddr, stage: &str, suffix: &str, le: Option<&str>) -> f64 {
    let (status, text, _) = get(&client(), &format!("http://{admin}/metrics"));
    assert_eq!(status, 200);
    let labels = match le {
        Some(le) => format!("{{stage=\"{stage}\",le=\"{le}\"}}"),
        None => format!("{{stage=\"{stage}\"}}"),
    };
    let name = format!("tinylb_request_stage_seconds_{suffix}{labels} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&name))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn a_slow_backend_shows_in_the_response_stage_and_a_pause_in_the_client_stage() {
    let a = Backend::start("a");
    let (mut lb, admin) = start("stages-slow-backend", &a, "");
    let agent = client();
    let base = format!("http://{}", lb.addr);
    let (status, _, _) = get(&agent, &format!("{base}/slow/400"));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, _) = get(&agent, &format!("{base}/fast"));
    assert_eq!(status, 200);

    let slow = access_line(&mut lb, "/slow/400");
    let [client_stage, queue, connect, response, relay, total] = stages(&slow);
    assert_eq!(client_stage, None, "a connection's first request: {slow}");
    let [queue, connect, response, relay, total] =
        [queue, connect, response, relay, total].map(|s| s.expect(&slow));
    assert!(
        response >= 0.4,
        "the backend's 400 ms is in response: {slow}"
    );
    assert!(queue < 0.2 && connect < 0.2 && relay < 0.2, "{slow}");
    assert!(total >= response, "{slow}");
    let sum = queue + connect + response + relay;
    assert!(
        (total - sum).abs() < 1e-5,
        "stages add up to the total: {slow}"
    );

    let fast = access_line(&mut lb, "/fast");
    let client_stage = stage(&fast, "client").expect("a kept-alive connection's second request");
    assert!(client_stage >= 0.3, "the client's 300 ms pause: {fast}");
    assert!(stage(&fast, "response").expect(&fast) < 0.2, "{fast}");

    assert_eq!(stage_metric(admin, "response", "count", None), 2.0);
    assert_eq!(stage_metric(admin, "response", "bucket", Some("0.25")), 1.0);
    assert_eq!(stage_metric(admin, "response", "bucket", Some("0.5")), 2.0);
    assert!(stage_metric(admin, "response", "sum", None) >= 0.4);
    assert_eq!(stage_metric(admin, "client", "count", None), 1.0);
    assert_eq!(stage_metric(admin, "client", "bucket", Some("0.25")), 0.0);
    assert_eq!(stage_metric(admin, "queue", "bucket", Some("0.25")), 2.0);
}

#[test]
fn requests_waiting_for_the_one_worker_show_in_the_queue_stage() {
    let a = Backend::start("a");
    let (mut lb, admin) = start("stages-queue", &a, r#""workers": 1, "queueSize": 4"#);
    let addr = lb.addr;
    // One worker, and one client address, which may keep half the queue (two) waiting: the
    // first request is served at once (500 ms at the backend), the next two wait in the queue,
    // the fourth finds the client's share full.
    let senders: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60 * i));
                raw::fresh_get(addr, &format!("/q{i}/slow/500"), WAIT)
            })
        })
        .collect();
    let statuses: Vec<Option<u16>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(statuses, [Some(200), Some(200), Some(200), Some(503)]);

    let queued: Vec<f64> = (0..3)
        .map(|i| {
            let line = access_line(&mut lb, &format!("/q{i}/slow/500"));
            let response = stage(&line, "response").expect(&line);
            assert!(response >= 0.45, "{line}");
            stage(&line, "queue").expect(&line)
        })
        .collect();
    assert!(
        queued[0] < 0.2,
        "the first request waits for nobody: {queued:?}"
    );
    // Sent 60 and 120 ms in, they wait about 440 and 880 ms; the bounds leave room for a
    // sender thread that wakes late on a loaded machine.
    assert!(
        queued[1] >= 0.3,
        "the second waits for the first: {queued:?}"
    );
    assert!(queued[2] >= 0.6, "the third waits for both: {queued:?}");

    let refused = access_line(&mut lb, "/q3/slow/500");
    assert!(refused.contains("\" 503 "), "{refused}");
    let [_, queue, connect, response, relay, total] = stages(&refused);
    assert_eq!(
        [queue, connect, response, relay],
        [None; 4],
        "never queued: {refused}"
    );
    assert!(total.expect(&refused) < 0.2, "refused at once: {refused}");

    assert_eq!(stage_metric(admin, "queue", "count", None), 3.0);
    assert_eq!(stage_metric(admin, "queue", "bucket", Some("0.25")), 1.0);
    assert_eq!(stage_metric(admin, "total", "count", None), 4.0);
    assert!(stage_metric(admin, "queue", "sum", None) >= 0.9);
}

#[test]
fn a_client_reading_slowly_shows_in_the_relay_stage() {
    let a = Backend::start("a");
    let (mut lb, _admin) = start("stages-relay", &a, "");
    const SIZE: usize = 32 << 20;
    let mut socket = TcpStream::connect(lb.addr).expect("connect");
    socket.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        socket,
        "GET /bytes/{SIZE} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 65536];
    socket.read_exact(&mut first).expect("the answer starts");
    // More than any socket buffer holds is still to come: tinylb's relay waits on this client.
    std::thread::sleep(Duration::from_millis(600));
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest).expect("the rest");
    assert!(first.len() + rest.len() > SIZE, "the whole body came");

    let line = access_line(&mut lb, &format!("/bytes/{SIZE}"));
    assert!(stage(&line, "relay").expect(&line) >= 0.5, "{line}");
    assert!(stage(&line, "response").expect(&line) < 0.3, "{line}");
}

#[test]
fn stage_timers_off_leave_the_fields_unknown_and_the_histograms_empty() {
    let a = Backend::start("a");
    let (mut lb, admin) = start("stages-off", &a, r#""stageTimers": false"#);
    let (status, _, _) = get(&client(), &format!("http://{}/off", lb.addr));
    assert_eq!(status, 200);
    let line = access_line(&mut lb, "/off");
    assert_eq!(stages(&line), [None; 6], "{line}");
    assert_eq!(stage_metric(admin, "total", "count", None), 0.0);
}
