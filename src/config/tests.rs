//! The config reader's tests; the submodules' tests share [`assert_refused`].

use super::*;

/// Checks that each config text is refused with a message containing the expected part;
/// the submodules' tests share it.
pub(super) fn assert_refused(cases: &[(&str, &str)]) {
    for (text, expected) in cases {
        let message = Config::parse(text).unwrap_err().0;
        assert!(
            message.contains(expected),
            "{text}\n  gave: {message}\n  wanted: {expected}"
        );
    }
}

#[test]
fn the_seed_articles_file_works_unchanged() {
    let config = Config::parse(
        r#"{
          "port": ":8080",
          "healthCheckInterval": "2s",
          "servers": ["http://localhost:5001", "http://localhost:5002"]
        }"#,
    )
    .unwrap();
    assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.servers.len(), 2);
    assert_eq!(config.servers[0].url.origin, "http://localhost:5001");
    assert_eq!(config.servers[0].url.prefix, "");
    assert_eq!(config.algorithm, Algorithm::RoundRobin);
    assert_eq!(config.health.interval, Duration::from_secs(2));
    assert_eq!(config.workers, DEFAULT_WORKERS);
    assert_eq!(config.backend_keep_alive, DEFAULT_WORKERS);
    assert_eq!(
        config.backend_keep_alive_total,
        DEFAULT_KEEP_ALIVE_TOTAL_PER_WORKER * DEFAULT_WORKERS
    );
}

#[test]
fn weights_prefixes_and_options_are_read() {
    let config = Config::parse(
        r#"{"port": "127.0.0.1:0", "algorithm": "weighted-round-robin",
            "servers": [{"url": "http://127.0.0.1:1/api/", "weight": 5}, "http://[::1]:2"],
            "workers": 3, "queueSize": 7, "forwardedServerHeader": true, "backendKeepAlive": 0,
            "backendKeepAliveTotal": 5,
            "backendTimeout": "250ms", "healthCheckRise": 1}"#,
    )
    .unwrap();
    assert_eq!(config.servers[0].weight, 5);
    assert_eq!(config.servers[0].url.prefix, "/api");
    assert_eq!(config.servers[1].url.origin, "http://[::1]:2");
    assert_eq!(config.workers, 3);
    assert_eq!(config.queue_size, 7);
    assert_eq!(config.backend_keep_alive, 0);
    assert_eq!(config.backend_keep_alive_total, 5);
    assert!(config.forwarded_server_header);
    assert_eq!(config.backend_timeout, Duration::from_millis(250));
    assert_eq!(config.health.rise, 1);
}

#[test]
fn a_file_that_is_not_a_json_object_is_refused() {
    assert_refused(&[
        (r#"{"port": ":8080",}"#, "invalid JSON at line 1, column 18"),
        (
            r#"{"port": ":8080", "servers": ["http://a:1"], "port": ":9090"}"#,
            r#"invalid JSON at line 1, column 51: the key "port" appears twice"#,
        ),
        (r#"[1]"#, "top level must be a JSON object"),
    ]);
}
