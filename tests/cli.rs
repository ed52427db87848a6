//! The `tinylb` command as a user runs it: arguments, `--check`, bad configs (exit 2 with one
//! line naming the key and the value), a port in use (exit 1), the start-up log, and a graceful
//! shutdown on SIGTERM/SIGINT that finishes the request in flight and stops accepting at once.

mod common;
use common::process::*;
use common::*;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Checks that `text` is refused with exit 2 and exactly one stderr line containing every
/// fragment, both with `--check` and when starting for real (which must not start).
fn assert_refused(label: &str, text: &str, fragments: &[&str]) {
    let config = TempConfig::new(label, text);
    for args in [
        vec!["--check", "--config", config.path()],
        vec!["--config", config.path()],
    ] {
        let run = run_to_end(&args, QUICK);
        assert_eq!(
            run.code,
            Some(2),
            "{args:?} on {text}\nstderr: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "", "{args:?}: nothing on stdout");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one stderr line, got {lines:?}");
        for fragment in fragments.iter().chain([&config.path()]) {
            assert!(
                lines[0].contains(fragment),
                "{args:?}: {:?} lacks {fragment:?}",
                lines[0]
            );
        }
        assert!(
            run.elapsed < Duration::from_secs(3),
            "{args:?} took {:?}",
            run.elapsed
        );
    }
}

#[test]
fn help_prints_usage_and_exits_0() {
    let run = run_to_end(&["--help"], QUICK);
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.starts_with("usage: tinylb"), "{}", run.stdout);
    for flag in ["--config PATH", "--check", "--help", "--version"] {
        assert!(
            run.stdout.contains(flag),
            "usage lacks {flag}: {}",
            run.stdout
        );
    }
    assert_eq!(run.stderr, "");
}

#[test]
fn version_prints_name_and_version_and_exits_0() {
    let run = run_to_end(&["--version"], QUICK);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout, "tinylb 0.1.0\n");
    assert_eq!(run.stderr, "");
}

#[test]
fn unknown_argument_exits_2_naming_it() {
    let run = run_to_end(&["--frobnicate"], QUICK);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stdout, "");
    let first = run.stderr.lines().next().unwrap_or_default();
    assert_eq!(first, r#"tinylb: unknown argument "--frobnicate""#);
    assert!(run.stderr.contains("usage: tinylb"), "{}", run.stderr);
}

#[test]
fn config_flag_without_a_path_exits_2() {
    let run = run_to_end(&["--config"], QUICK);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.starts_with("tinylb: --config needs a file path"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_prints_a_one_line_summary_without_listening() {
    // The port is held here: were --check to bind it, it would fail instead of saying ok.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().unwrap().port();
    let config = TempConfig::new(
        "check-ok",
        &format!(
            r#"{{"port": "127.0.0.1:{port}", "algorithm": "ip-hash", "workers": 3,
                "servers": ["http://127.0.0.1:9", {{"url": "http://127.0.0.1:10", "weight": 4}}]}}"#
        ),
    );
    let run = run_to_end(&["--check", "--config", config.path()], QUICK);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "", "no logs for --check");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines[0];
    assert!(
        line.starts_with(&format!("{}: ok: ", config.path())),
        "{line}"
    );
    for fragment in [
        format!("listen 127.0.0.1:{port}"),
        "algorithm ip-hash".into(),
        "2 servers [http://127.0.0.1:9, http://127.0.0.1:10 (weight 4)]".into(),
        "3 workers".into(),
    ] {
        assert!(line.contains(&fragment), "{line} lacks {fragment}");
    }
}

#[test]
fn the_seed_articles_config_passes_check_unchanged() {
    let config = TempConfig::new(
        "seed",
        r#"{
  "port": ":8080",
  "healthCheckInterval": "2s",
  "servers": [
    "http://localhost:5001",
    "http://localhost:5002",
    "http://localhost:5003",
    "http://localhost:5004",
    "http://localhost:5005"
  ]
}
"#,
    );
    let run = run_to_end(&["--check", "--config", config.path()], QUICK);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains(": ok: listen 0.0.0.0:8080"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("5 servers"), "{}", run.stdout);
    assert!(
        run.stdout.contains("health check every 2s"),
        "{}",
        run.stdout
    );
}

#[test]
fn invalid_json_is_refused_with_line_and_column() {
    assert_refused(
        "bad-json",
        "{\n  \"port\": \":8080\",\n  \"servers\": [\"http://localhost:5001\"],\n}\n",
        &["invalid JSON at line 4, column 1"],
    );
}

/// A health-check timeout longer than the interval cannot be honoured (a check never outlasts
/// its round); tinylb accepts the config but says, on `--check` and in the log, what it uses.
#[test]
fn a_check_timeout_longer_than_the_interval_is_accepted_with_a_warning() {
    let config = TempConfig::new(
        "check-timeout-clamped",
        r#"{"port": "127.0.0.1:0", "servers": ["http://127.0.0.1:9"],
            "healthCheckInterval": "1s", "healthCheckTimeout": "5s"}"#,
    );
    let run = run_to_end(&["--check", "--config", config.path()], QUICK);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(
        run.stderr.trim_end(),
        "tinylb: warning: healthCheckTimeout: 5s is longer than healthCheckInterval 1s; \
         checks wait at most 1s"
    );
    assert!(run.stdout.contains(": ok: "), "{}", run.stdout);

    let mut running = Running::start(&config);
    running.wait_for_line("healthCheckTimeout: 5s is longer", Duration::from_secs(5));
}

/// serde_json alone would keep the second `port` and listen there without a word; a key given
/// twice is a leftover of an edit, so tinylb refuses it and says where.
#[test]
fn a_key_given_twice_is_refused_with_its_position() {
    assert_refused(
        "duplicate-key",
        "{\n  \"port\": \"127.0.0.1:0\",\n  \"servers\": [\"http://localhost:5001\"],\n  \"port\": \":8080\"\n}\n",
        &[r#"invalid JSON at line 4, column 8: the key "port" appears twice"#],
    );
}

#[test]
fn unknown_key_is_refused_naming_it() {
    assert_refused(
        "unknown-key",
        r#"{"port": "127.0.0.1:0", "servers": ["http://localhost:5001"], "algoritm": "ip-hash"}"#,
        &[r#""algoritm": unknown key"#, "algorithm"],
    );
}

#[test]
fn missing_servers_are_refused() {
    assert_refused(
        "no-servers",
        r#"{"port": "127.0.0.1:0"}"#,
        &["servers: is missing"],
    );
}

#[test]
fn empty_servers_are_refused() {
    assert_refused(
        "empty-servers",
        r#"{"port": "127.0.0.1:0", "servers": []}"#,
        &["servers: is empty"],
    );
}

#[test]
fn url_without_scheme_is_refused_with_the_fix() {
    assert_refused(
        "no-scheme",
        r#"{"port": "127.0.0.1:0", "servers": ["http://localhost:5001", "http://localhost:5002", "localhost:5003"]}"#,
        &[r#"servers[2]: "localhost:5003" has no scheme; write "http://localhost:5003""#],
    );
}

#[test]
fn https_backend_is_refused_as_not_supported() {
    assert_refused(
        "https",
        r#"{"port": "127.0.0.1:0", "servers": ["https://localhost:5001"]}"#,
        &[
            r#"servers[0]: "https://localhost:5001""#,
            "https backends are not supported",
        ],
    );
}

#[test]
fn weight_zero_is_refused() {
    assert_refused(
        "weight-zero",
        r#"{"port": "127.0.0.1:0", "servers": ["http://localhost:5001", {"url": "http://localhost:5002", "weight": 0}]}"#,
        &["servers[1].weight: 0 is not allowed"],
    );
}

#[test]
fn duration_without_unit_is_refused() {
    assert_refused(
        "no-unit",
        r#"{"port": "127.0.0.1:0", "healthCheckInterval": "2", "servers": ["http://localhost:5001"]}"#,
        &[r#"healthCheckInterval: "2" has no unit; write "2s" or "2ms""#],
    );
}

#[test]
fn unknown_algorithm_is_refused_listing_the_known_ones() {
    assert_refused(
        "bad-algorithm",
        r#"{"port": "127.0.0.1:0", "algorithm": "fastest", "servers": ["http://localhost:5001"]}"#,
        &[
            r#"algorithm: "fastest" is not one of"#,
            "round-robin",
            "least-connections",
            "ip-hash",
        ],
    );
}

#[test]
fn missing_config_file_exits_2_naming_the_path() {
    let path = std::env::temp_dir().join(format!(
        "tinylb-cli-{}-does-not-exist.json",
        std::process::id()
    ));
    let path = path.to_str().expect("UTF-8 path");
    assert!(!Path::new(path).exists());
    for args in [vec!["--check", "--config", path], vec!["--config", path]] {
        let run = run_to_end(&args, QUICK);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(&format!("cannot read {path}")),
            "{}",
            lines[0]
        );
    }
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().unwrap();
    let a = Backend::start("a");
    let config = TempConfig::new(
        "port-in-use",
        &format!(r#"{{"port": "{addr}", "servers": ["{}"]}}"#, a.url()),
    );
    let run = run_to_end(&["--config", config.path()], QUICK);
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("listening on"),
        "claimed to listen: {}",
        run.stderr
    );
}

#[test]
fn startup_log_names_address_algorithm_servers_and_workers() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let mut lb = ChildLb::start(
        "startup-log",
        &[a.url(), b.url()],
        r#""algorithm": "least-connections", "workers": 3"#,
    );
    let line = lb
        .run
        .wait_for_line("listening on", Duration::from_secs(10));
    let addr = parse_listening_addr(&line);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the bound port, not the configured 0");
    assert!(starts_with_timestamp(&line), "no timestamp: {line}");
    assert!(line.contains("INFO"), "{line}");
    for fragment in [
        "tinylb 0.1.0".to_string(),
        "algorithm least-connections".into(),
        format!("2 servers [{}, {}]", a.url(), b.url()),
        "3 workers".into(),
    ] {
        assert!(line.contains(&fragment), "{line} lacks {fragment}");
    }
    for log_line in &lb.run.log {
        assert!(starts_with_timestamp(log_line), "no timestamp: {log_line}");
    }
    // The logged address is the real one: a request through it reaches a backend.
    let (status, body, _) = get(&client(), &format!("http://{addr}/via-log"));
    assert_eq!(status, 200);
    assert!(body.contains("target /via-log"), "{body}");
}

#[test]
fn sigterm_drains_the_slow_request_and_stops_accepting() {
    let a = Backend::start("a");
    let mut child = ChildLb::start("sigterm", &[a.url()], "");
    let (lb, addr) = (&mut child.run, child.addr);

    let client_thread = std::thread::spawn(move || {
        let mut response = client()
            .get(&format!("http://{addr}/slow/2000"))
            .call()
            .expect("slow request answered");
        let length = response
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.body_mut().read_to_string().expect("whole body");
        (response.status().as_u16(), length, body)
    });
    // The request is inside the backend (which answers 2 s late) before the signal comes, so
    // it is in flight: a worker counts itself busy before it forwards.
    assert!(wait_until(Duration::from_secs(5), || {
        a.seen_proxied().iter().any(|s| s.target == "/slow/2000")
    }));
    lb.signal("TERM");

    // The listener closes at once, while the slow request is still being served.
    let refused = wait_until(Duration::from_millis(1500), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(refused, "new connections still accepted after SIGTERM");
    assert!(
        !client_thread.is_finished(),
        "the listener should close before the drain ends"
    );

    let (status, length, body) = client_thread.join().expect("client thread");
    assert_eq!(status, 200);
    assert!(
        body.starts_with("backend a\nmethod GET\ntarget /slow/2000\n"),
        "{body}"
    );
    assert!(body.ends_with("body 0 bytes\n"), "{body}");
    assert_eq!(length, Some(body.len().to_string()));

    let exit = lb.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "exit: {exit:?}");
    let log = lb.log_text();
    assert!(
        log.contains("shutting down: no longer accepting; 1 requests in flight"),
        "{log}"
    );
    assert!(log.contains("drained 1 requests; stopped cleanly"), "{log}");
}

#[test]
fn sigint_exits_0_cleanly() {
    let a = Backend::start("a");
    let mut child = ChildLb::start("sigint", &[a.url()], "");
    let (lb, addr) = (&mut child.run, child.addr);
    let (status, _, _) = get(&client(), &format!("http://{addr}/before"));
    assert_eq!(status, 200);
    lb.signal("INT");
    let exit = lb.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "exit: {exit:?}");
    let log = lb.log_text();
    assert!(log.contains("drained 0 requests; stopped cleanly"), "{log}");
}

#[test]
fn second_signal_cuts_the_drain_short() {
    let a = Backend::start("a");
    let mut child = ChildLb::start(
        "second-signal",
        &[a.url()],
        r#""shutdownGracePeriod": "30s""#,
    );
    let (lb, addr) = (&mut child.run, child.addr);
    let _client_thread = std::thread::spawn(move || {
        // Its answer does not matter: the process is told to stop before it comes.
        let _ = client().get(&format!("http://{addr}/slow/20000")).call();
    });
    assert!(wait_until(Duration::from_secs(5), || {
        a.seen_proxied().iter().any(|s| s.target == "/slow/20000")
    }));
    lb.signal("TERM");
    lb.wait_for_line("shutting down", Duration::from_secs(5));
    let second = Instant::now();
    lb.signal("TERM");
    let exit = lb.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "exit: {exit:?}");
    assert!(second.elapsed() < Duration::from_secs(3));
    let log = lb.log_text();
    assert!(log.contains("1 requests abandoned"), "{log}");
}
