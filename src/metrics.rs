//! `/metrics` in the Prometheus text exposition format (version 0.0.4), names prefixed
//! `tinylb_`. Built from the same [`Status`] snapshot as the status page.

use std::fmt::Write as _;

use crate::stages::STAGE_BUCKETS;
use crate::stats::LATENCY_BUCKETS;
use crate::status::Status;

/// The whole exposition.
pub fn render(status: &Status) -> String {
    let mut out = String::with_capacity(4096);
    header(
        &mut out,
        "requests_total",
        "counter",
        "Answers relayed from backends to clients, by backend and status class.",
    );
    for b in &status.backends {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                out,
                "tinylb_requests_total{{backend=\"{}\",class=\"{class}\"}} {}",
                label(&b.url),
                b.stats.by_class[i]
            );
        }
    }
    header(
        &mut out,
        "backend_errors_total",
        "counter",
        "Failed attempts to forward, by backend and kind (connect, timeout, broken).",
    );
    for b in &status.backends {
        for (kind, value) in [
            ("connect", b.errors.connect),
            ("timeout", b.errors.timeout),
            ("broken", b.errors.broken),
        ] {
            let _ = writeln!(
                out,
                "tinylb_backend_errors_total{{backend=\"{}\",kind=\"{kind}\"}} {value}",
                label(&b.url)
            );
        }
    }
    header(
        &mut out,
        "requests_in_flight",
        "gauge",
        "Requests a backend is serving right now.",
    );
    per_backend(&mut out, status, "requests_in_flight", |b| {
        b.in_flight as f64
    });
    header(
        &mut out,
        "backend_tunnels_open",
        "gauge",
        "WebSocket and other upgrade tunnels open to each backend.",
    );
    per_backend(&mut out, status, "backend_tunnels_open", |b| {
        b.tunnels as f64
    });
    header(
        &mut out,
        "backend_up",
        "gauge",
        "1 if the backend passes its health checks, else 0.",
    );
    per_backend(&mut out, status, "backend_up", |b| {
        f64::from(u8::from(b.state != "down"))
    });
    header(
        &mut out,
        "backend_draining",
        "gauge",
        "1 if the backend is drained from the admin listener.",
    );
    per_backend(&mut out, status, "backend_draining", |b| {
        f64::from(u8::from(b.state == "draining"))
    });
    header(
        &mut out,
        "health_flips_total",
        "counter",
        "Times the backend's health state flipped.",
    );
    per_backend(&mut out, status, "health_flips_total", |b| b.flips as f64);
    header(
        &mut out,
        "request_duration_seconds",
        "histogram",
        "Time from a worker taking the request to the end of the answer, by backend.",
    );
    for b in &status.backends {
        let labels = format!("backend=\"{}\"", label(&b.url));
        let stats = &b.stats;
        histogram(
            &mut out,
            "request_duration_seconds",
            &labels,
            &LATENCY_BUCKETS,
            &stats.cumulative_buckets,
            stats.latency_sum_seconds,
        );
    }
    header(
        &mut out,
        "request_stage_seconds",
        "histogram",
        "Time each request spent in each stage: client (since the previous answer on the connection), queue, connect, response (head), relay, and total (queue to relay).",
    );
    for s in &status.stages {
        let labels = format!("stage=\"{}\"", s.stage);
        histogram(
            &mut out,
            "request_stage_seconds",
            &labels,
            &STAGE_BUCKETS,
            &s.cumulative_buckets,
            s.sum_seconds,
        );
    }
    let pool = &status.backend_connections;
    header(
        &mut out,
        "backend_idle_connections",
        "gauge",
        "Idle keep-alive connections to backends, over all origins.",
    );
    let _ = writeln!(out, "tinylb_backend_idle_connections {}", pool.idle);
    header(
        &mut out,
        "backend_idle_connections_max",
        "gauge",
        "Most idle connections kept to backends in all (backendKeepAliveTotal).",
    );
    let _ = writeln!(out, "tinylb_backend_idle_connections_max {}", pool.max_idle);
    header(
        &mut out,
        "origin_idle_connections",
        "gauge",
        "Idle keep-alive connections to each backend origin (scheme, host and port).",
    );
    for o in &pool.origins {
        let _ = writeln!(
            out,
            "tinylb_origin_idle_connections{{origin=\"{}\"}} {}",
            label(&o.origin),
            o.idle
        );
    }
    header(
        &mut out,
        "origin_idle_connections_max",
        "gauge",
        "Most idle connections kept to each backend origin (backendKeepAlive).",
    );
    for o in &pool.origins {
        let _ = writeln!(
            out,
            "tinylb_origin_idle_connections_max{{origin=\"{}\"}} {}",
            label(&o.origin),
            o.max_idle
        );
    }
    header(
        &mut out,
        "retries_total",
        "counter",
        "Requests sent again after a failed attempt.",
    );
    let _ = writeln!(out, "tinylb_retries_total {}", status.retries);
    header(
        &mut out,
        "client_head_timeouts_total",
        "counter",
        "Client connections ended because their request head took longer than clientHeaderTimeout.",
    );
    let _ = writeln!(
        out,
        "tinylb_client_head_timeouts_total {}",
        status.head_timeouts
    );
    let clients = &status.clients;
    header(
        &mut out,
        "requests_not_forwarded_total",
        "counter",
        "Requests answered or dropped by tinylb itself to protect other clients, by reason.",
    );
    for (reason, count) in [
        ("queue_full", clients.refused_queue_full),
        ("pipelined_too_far", clients.pipelined_too_far),
        ("connection_ended", clients.from_ended_connections),
        ("client_gone", clients.client_gone),
    ] {
        let _ = writeln!(
            out,
            "tinylb_requests_not_forwarded_total{{reason=\"{reason}\"}} {count}"
        );
    }
    header(
        &mut out,
        "requests_waited_for_client_turn_total",
        "counter",
        "Requests that waited because their client address held clientMaxWorkers workers.",
    );
    let _ = writeln!(
        out,
        "tinylb_requests_waited_for_client_turn_total {}",
        clients.waited_for_turn
    );
    header(
        &mut out,
        "clients_too_slow_total",
        "counter",
        "Connections ended because a request body or an answer moved slower than clientBodyMinRate or clientSendMinRate.",
    );
    for (direction, count) in [
        ("request_body", clients.slow_bodies),
        ("response", clients.slow_readers),
    ] {
        let _ = writeln!(
            out,
            "tinylb_clients_too_slow_total{{direction=\"{direction}\"}} {count}"
        );
    }
    header(
        &mut out,
        "queue_depth",
        "gauge",
        "Requests waiting for a worker.",
    );
    let _ = writeln!(out, "tinylb_queue_depth {}", status.queue_depth);
    header(&mut out, "workers", "gauge", "Size of the worker pool.");
    let _ = writeln!(out, "tinylb_workers {}", status.workers);
    header(
        &mut out,
        "workers_busy",
        "gauge",
        "Workers forwarding a request right now.",
    );
    let _ = writeln!(out, "tinylb_workers_busy {}", status.busy_workers);
    let tunnels = &status.tunnels;
    header(
        &mut out,
        "tunnels_open",
        "gauge",
        "WebSocket and other upgrade tunnels open now.",
    );
    let _ = writeln!(out, "tinylb_tunnels_open {}", tunnels.open);
    header(
        &mut out,
        "tunnels_max",
        "gauge",
        "Most tunnels that may be open at once (maxTunnels).",
    );
    let _ = writeln!(out, "tinylb_tunnels_max {}", tunnels.max);
    header(
        &mut out,
        "tunnels_opened_total",
        "counter",
        "Tunnels opened since start.",
    );
    let _ = writeln!(out, "tinylb_tunnels_opened_total {}", tunnels.opened);
    header(
        &mut out,
        "tunnels_refused_total",
        "counter",
        "Upgrade handshakes answered 503 because maxTunnels were open.",
    );
    let _ = writeln!(out, "tinylb_tunnels_refused_total {}", tunnels.refused);
    header(
        &mut out,
        "uptime_seconds",
        "gauge",
        "Seconds since this server process started.",
    );
    let _ = writeln!(out, "tinylb_uptime_seconds {}", status.uptime_seconds);
    let process = &status.process;
    header(
        &mut out,
        "generation",
        "gauge",
        "Which server process this is: 1 for the first, one more with each replacement.",
    );
    let _ = writeln!(out, "tinylb_generation {}", process.generation);
    header(
        &mut out,
        "restarts_total",
        "counter",
        "Server processes the master replaced, by cause, before this one.",
    );
    let r = &process.restarts;
    for (cause, count) in [
        ("crash", r.crash),
        ("recycle", r.recycle),
        ("upgrade", r.upgrade),
    ] {
        let _ = writeln!(out, "tinylb_restarts_total{{cause=\"{cause}\"}} {count}");
    }
    header(
        &mut out,
        "failed_successors_total",
        "counter",
        "Server processes started to replace one (SIGHUP, recycle) that never served; the one before kept serving.",
    );
    let _ = writeln!(out, "tinylb_failed_successors_total {}", r.failed);
    header(
        &mut out,
        "stuck_connections",
        "gauge",
        "Client connections no thread serves any more, at the last count.",
    );
    let _ = writeln!(
        out,
        "tinylb_stuck_connections {}",
        process.stuck_connections
    );
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP tinylb_{name} {help}");
    let _ = writeln!(out, "# TYPE tinylb_{name} {kind}");
}

fn per_backend(
    out: &mut String,
    status: &Status,
    name: &str,
    value: impl Fn(&crate::status::BackendStatus) -> f64,
) {
    for b in &status.backends {
        let _ = writeln!(
            out,
            "tinylb_{name}{{backend=\"{}\"}} {}",
            label(&b.url),
            value(b)
        );
    }
}

/// One histogram's series for one label set: a line per bucket bound, then `+Inf`, sum and
/// count. `cumulative` holds the count at each bound, then the total.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    cumulative: &[u64],
    sum_seconds: f64,
) {
    for (bound, count) in bounds.iter().zip(cumulative) {
        let _ = writeln!(
            out,
            "tinylb_{name}_bucket{{{labels},le=\"{bound}\"}} {count}"
        );
    }
    let total = cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "tinylb_{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "tinylb_{name}_sum{{{labels}}} {sum_seconds}");
    let _ = writeln!(out, "tinylb_{name}_count{{{labels}}} {total}");
}

/// Escapes a label value: backslash, double quote and newline.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
