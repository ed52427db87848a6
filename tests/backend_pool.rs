//! Idle backend connections are bounded in all, not per backend: backends that differ only by
//! path prefix share their origin's pool, and all origins together keep at most
//! `backendKeepAliveTotal`. Checked over real sockets, by the backends' own count of the
//! connections open to them, and on the status page, status.json and /metrics; a reload that
//! changes the budget rebuilds the pools.

mod common;
use common::process::TempConfig;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

/// Prefixes per backend port: 2 ports × 20 = 40 backends.
const PREFIXES: usize = 20;
const WAIT: Duration = Duration::from_secs(5);

/// The config: 40 backends on the two ports, 8 workers, health checks rare enough that none
/// holds a connection open while the test counts (the first round runs at start).
fn config_text(a: &Backend, b: &Backend, extra: &str) -> String {
    let servers: Vec<String> = (0..PREFIXES)
        .flat_map(|i| {
            [
                format!("\"{}/p{i}\"", a.url()),
                format!("\"{}/p{i}\"", b.url()),
            ]
        })
        .collect();
    format!(
        r#"{{"port": "127.0.0.1:0", "adminAddress": "127.0.0.1:0", "workers": 8, "clientMaxWorkers": 8,
            "healthCheckInterval": "1m", "servers": [{}]{extra}}}"#,
        servers.join(", ")
    )
}

/// 16 clients at once, 10 requests each, every one held 30 ms by its backend: the 8 workers
/// are all busy, so up to 8 backend connections are in use at once, on every backend in turn.
fn load(lb: &TestLb) {
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = format!("{}/slow/30", lb.url());
            std::thread::spawn(move || {
                let agent = client();
                for _ in 0..10 {
                    assert_eq!(get(&agent, &url).0, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
}

fn admin(lb: &TestLb) -> SocketAddr {
    lb.lb().admin_addr().expect("admin listener")
}

/// Connections open to both backends once nothing is in flight and the count has settled
/// (a connection tinylb closed is seen by its backend's next read).
fn settled_open(lb: &TestLb, a: &Backend, b: &Backend) -> usize {
    assert!(wait_until(WAIT, || {
        status_json(admin(lb))["busyWorkers"] == 0
    }));
    let open = || a.open_connections() + b.open_connections();
    let mut last = open();
    wait_until(WAIT, || {
        std::thread::sleep(Duration::from_millis(100));
        let now = open();
        std::mem::replace(&mut last, now) == now
    });
    last
}

fn get_admin(lb: &TestLb, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(admin(lb), request.as_bytes(), WAIT);
    read_full_response(&mut &answer[..], false)
        .expect("an answer")
        .text()
}

#[test]
fn idle_connections_to_many_backends_stay_within_the_total() {
    let a = Backend::start("a");
    let b = Backend::start("b");

    // Without a small total, the same load leaves more idle connections than 4: the test can
    // fail. (Each origin keeps up to backendKeepAlive = 8.)
    let lb = start_lb_from_json(&config_text(&a, &b, r#", "backendKeepAliveTotal": 1000"#));
    load(&lb);
    let unbounded = settled_open(&lb, &a, &b);
    assert!(
        unbounded > 4,
        "only {unbounded} connections without the bound"
    );
    drop(lb);
    assert!(wait_until(WAIT, || a.open_connections()
        + b.open_connections()
        == 0));

    let lb = start_lb_from_json(&config_text(&a, &b, r#", "backendKeepAliveTotal": 4"#));
    load(&lb);
    let open = settled_open(&lb, &a, &b);
    assert!(
        (1..=4).contains(&open),
        "{open} connections open after the load, bound 4"
    );

    // status.json shows the pool: what it counts is what the backends see.
    let status = status_json(admin(&lb));
    let pool = &status["backendConnections"];
    assert_eq!(pool["maxIdle"], 4, "{pool}");
    assert_eq!(pool["idle"], open, "{pool}");
    let origins = pool["origins"].as_array().expect("origins");
    assert_eq!(origins.len(), 2, "{pool}");
    for (origin, backend) in origins.iter().zip([&a, &b]) {
        assert_eq!(origin["origin"], backend.url());
        assert_eq!(origin["backends"], PREFIXES);
        assert_eq!(origin["maxIdle"], 4); // backendKeepAlive 8, within the total
        assert_eq!(origin["idle"], backend.open_connections());
    }

    let page = get_admin(&lb, "/");
    assert!(
        page.contains(&format!("idle backend connections <b>{open} / 4</b>")),
        "{page}"
    );
    let metrics = get_admin(&lb, "/metrics");
    for line in [
        format!("tinylb_backend_idle_connections {open}"),
        "tinylb_backend_idle_connections_max 4".to_string(),
        format!(
            "tinylb_origin_idle_connections_max{{origin=\"{}\"}} 4",
            a.url()
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
}

#[test]
fn a_reload_that_changes_the_total_rebuilds_the_pools() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let text = config_text(&a, &b, r#", "backendKeepAliveTotal": 4"#);
    let config = TempConfig::new("backend-pool-reload", &text);
    let mut lb = start_lb_from_json(&text);
    lb.watch_config(config.path(), &text);
    load(&lb);
    assert!(settled_open(&lb, &a, &b) <= 4);

    std::fs::write(
        config.path(),
        config_text(&a, &b, r#", "backendKeepAliveTotal": 2"#),
    )
    .expect("rewrite the config");
    assert!(
        wait_until(WAIT, || {
            status_json(admin(&lb))["backendConnections"]["maxIdle"] == 2
        }),
        "the new total never showed"
    );
    load(&lb);
    let open = settled_open(&lb, &a, &b);
    assert!(
        open <= 2,
        "{open} connections open after the reload, bound 2"
    );
    assert_eq!(status_json(admin(&lb))["backendConnections"]["idle"], open);
}

#[test]
fn more_origins_than_the_total_still_keep_only_the_total() {
    let backends: Vec<Backend> = (0..10).map(|i| Backend::start(&format!("b{i}"))).collect();
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    let lb = start_lb_from_json(&format!(
        r#"{{"port": "127.0.0.1:0", "adminAddress": "127.0.0.1:0", "workers": 8, "clientMaxWorkers": 8,
            "healthCheckInterval": "1m", "backendKeepAliveTotal": 4, "servers": [{}]}}"#,
        servers.join(", ")
    ));
    load(&lb);
    assert!(wait_until(WAIT, || {
        status_json(admin(&lb))["busyWorkers"] == 0
    }));
    let open = || {
        backends
            .iter()
            .map(Backend::open_connections)
            .sum::<usize>()
    };
    assert!(
        wait_until(WAIT, || open() <= 4),
        "{} connections open to 10 origins, bound 4",
        open()
    );
    let pool = &status_json(admin(&lb))["backendConnections"];
    assert_eq!(pool["origins"].as_array().map(Vec::len), Some(10));
    assert!(
        pool["idle"].as_u64().is_some_and(|idle| idle <= 4),
        "{pool}"
    );
}
