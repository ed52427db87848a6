//! The HTML status page: one self-contained page (no scripts, fonts or CDNs) built into the
//! binary, rendered on the server from a [`Status`] and refreshed by the browser every two
//! seconds. On a narrow screen each backend's row becomes a card.

use std::fmt::Write as _;

use crate::status::{BackendStatus, Status};

const STYLE: &str = "
:root { color-scheme: light dark; --up: #1a7f37; --down: #cf222e; --drain: #9a6700; --line: #8884; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
h2 { font-size: 1.05rem; margin: 1.2rem 0 .3rem; }
.summary { display: flex; flex-wrap: wrap; gap: .4rem 1.4rem; margin: 0 0 1rem; padding: 0; list-style: none; }
.summary b { font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.state { font-weight: 600; border-radius: .3rem; padding: .05rem .45rem; color: #fff; }
.up { background: var(--up); } .down { background: var(--down); } .draining { background: var(--drain); }
.detail { display: block; font-size: .82rem; opacity: .75; }
footer { margin-top: 1rem; font-size: .8rem; opacity: .7; }
@media (max-width: 720px) {
  thead { display: none; }
  tr { display: block; border: 1px solid var(--line); border-radius: .5rem; margin-bottom: .8rem; padding: .3rem; }
  td { display: flex; justify-content: space-between; gap: 1rem; border: 0; padding: .2rem .4rem; }
  td.n { text-align: right; }
  td::before { content: attr(data-label); font-weight: 600; }
}
";

/// "generation 3 (upgrade); restarts: 1 crash, 0 recycle, 2 upgrade, 0 failed", or "alone (no
/// master)".
fn process_summary(process: &crate::status::ProcessStatus) -> String {
    if !process.supervised {
        return "alone (no master)".into();
    }
    let r = &process.restarts;
    format!(
        "generation {} ({}); restarts: {} crash, {} recycle, {} upgrade, {} failed",
        process.generation,
        process.started_by.name(),
        r.crash,
        r.recycle,
        r.upgrade,
        r.failed
    )
}

/// The whole page.
pub fn render(status: &Status) -> String {
    let mut page = String::with_capacity(8192);
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>tinylb status</title><style>{STYLE}</style></head><body>\
         <h1>tinylb {version}</h1><ul class=\"summary\">\
         <li>algorithm <b>{algorithm}</b></li><li>up <b>{uptime}</b></li>\
         <li>listening on <b>{listen}</b></li>\
         <li>workers busy <b>{busy} / {workers}</b></li>\
         <li>queued <b>{queued} / {capacity}</b></li><li>retries <b>{retries}</b></li>\
         <li>head timeouts <b>{head_timeouts}</b></li>\
         <li>tunnels open <b>{tunnels} / {max_tunnels}</b></li>\
         <li>idle backend connections <b>{idle} / {max_idle}</b></li>\
         <li>process <b>{process}</b></li>\
         <li>stuck connections <b>{stuck} / {max_stuck}</b></li></ul>         <ul class=\"summary\"><li>per client address: <b>{per_client} workers</b></li>         <li>waited for their turn <b>{waited}</b></li>         <li>not forwarded: queue full <b>{queue_full}</b>, pipelined too far <b>{pipelined}</b>,          connection ended <b>{ended}</b>, client gone <b>{gone}</b></li>         <li>too slow: bodies <b>{slow_bodies}</b>, readers <b>{slow_readers}</b></li></ul>",
        version = status.version,
        algorithm = status.algorithm,
        uptime = human_duration(status.uptime_seconds as f64),
        listen = escape(&status.listen),
        busy = status.busy_workers,
        workers = status.workers,
        queued = status.queue_depth,
        capacity = status.queue_capacity,
        retries = status.retries,
        head_timeouts = status.head_timeouts,
        tunnels = status.tunnels.open,
        max_tunnels = status.tunnels.max,
        idle = status.backend_connections.idle,
        max_idle = status.backend_connections.max_idle,
        process = process_summary(&status.process),
        stuck = status.process.stuck_connections,
        max_stuck = status.process.max_stuck_connections,
        per_client = status.clients.max_workers_per_client,
        waited = status.clients.waited_for_turn,
        queue_full = status.clients.refused_queue_full,
        pipelined = status.clients.pipelined_too_far,
        ended = status.clients.from_ended_connections,
        gone = status.clients.client_gone,
        slow_bodies = status.clients.slow_bodies,
        slow_readers = status.clients.slow_readers,
    );
    page.push_str(
        "<table><thead><tr><th>#</th><th>backend</th><th>weight</th><th>health</th>\
         <th>in flight</th><th>served</th><th>2xx / 3xx / 4xx / 5xx</th>\
         <th>errors: connect / timeout / broken</th><th>p50</th><th>p99</th></tr></thead><tbody>",
    );
    for backend in &status.backends {
        row(&mut page, backend);
    }
    page.push_str(
        "</tbody></table><h2>Idle connections per origin</h2><table><thead><tr>\
         <th>origin</th><th>backends</th><th>idle / most</th></tr></thead><tbody>",
    );
    for origin in &status.backend_connections.origins {
        let _ = write!(
            page,
            "<tr><td data-label=\"origin\">{}</td>\
             <td class=\"n\" data-label=\"backends\">{}</td>\
             <td class=\"n\" data-label=\"idle / most\">{} / {}</td></tr>",
            escape(&origin.origin),
            origin.backends,
            origin.idle,
            origin.max_idle
        );
    }
    page.push_str(
        "</tbody></table><h2>Where requests' time goes</h2><table><thead><tr>\
         <th>stage</th><th>requests</th><th>mean</th></tr></thead><tbody>",
    );
    for stage in &status.stages {
        let mean = (stage.count > 0).then(|| stage.sum_seconds * 1000.0 / stage.count as f64);
        let _ = write!(
            page,
            "<tr><td data-label=\"stage\">{}</td>\
             <td class=\"n\" data-label=\"requests\">{}</td>\
             <td class=\"n\" data-label=\"mean\">{}</td></tr>",
            stage.stage,
            stage.count,
            short_time(mean)
        );
    }
    page.push_str(
        "</tbody></table><footer>Refreshes every 2 s. Latency percentiles cover each \
         backend's last 512 requests; stage means cover every request since start (see \
         the access log in README). Also as <a href=\"status.json\">status.json</a> and \
         <a href=\"metrics\">metrics</a>.</footer></body></html>\n",
    );
    page
}

fn row(page: &mut String, backend: &BackendStatus) {
    let check = match &backend.last_check {
        None => "not checked yet".to_string(),
        Some(check) if check.passed => {
            format!(
                "last check passed {} ago",
                human_duration(check.ago_seconds)
            )
        }
        Some(check) => format!(
            "last check failed {} ago: {}",
            human_duration(check.ago_seconds),
            escape(check.reason.as_deref().unwrap_or("?"))
        ),
    };
    let health = if backend.state == "down" {
        "down"
    } else {
        "healthy"
    };
    let since = backend
        .since_flip_seconds
        .map(|s| format!(" {health} for {}", human_duration(s)))
        .unwrap_or_default();
    let r = &backend.responses;
    let e = &backend.errors;
    let _ = write!(
        page,
        "<tr id=\"backend-{index}\"><td data-label=\"#\">{index}</td>\
         <td data-label=\"backend\">{url}</td><td class=\"n\" data-label=\"weight\">{weight}</td>\
         <td data-label=\"health\"><span><span class=\"state {state}\">{state}</span>{since}\
         <span class=\"detail\">{check}</span></span></td>\
         <td class=\"n\" data-label=\"in flight\">{in_flight}{tunnels}</td>\
         <td class=\"n\" data-label=\"served\">{served}</td>\
         <td class=\"n\" data-label=\"2xx / 3xx / 4xx / 5xx\">{} / {} / {} / {}</td>\
         <td class=\"n\" data-label=\"errors\">{} / {} / {}</td>\
         <td class=\"n\" data-label=\"p50\">{p50}</td><td class=\"n\" data-label=\"p99\">{p99}</td></tr>",
        r.c2,
        r.c3,
        r.c4,
        r.c5,
        e.connect,
        e.timeout,
        e.broken,
        index = backend.index,
        url = escape(&backend.url),
        weight = backend.weight,
        state = backend.state,
        in_flight = backend.in_flight,
        tunnels = match backend.tunnels {
            0 => String::new(),
            n => format!("<span class=\"detail\">+ {n} tunnels</span>"),
        },
        served = backend.served,
        p50 = millis(backend.latency_p50_ms),
        p99 = millis(backend.latency_p99_ms),
    );
}

fn millis(value: Option<f64>) -> String {
    match value {
        None => "–".to_string(),
        Some(ms) if ms < 10.0 => format!("{ms:.2} ms"),
        Some(ms) => format!("{ms:.0} ms"),
    }
}

/// Like [`millis`], in microseconds below a millisecond: a stage of a fast request takes tens.
fn short_time(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms < 1.0 => format!("{:.0} µs", ms * 1000.0),
        other => millis(other),
    }
}

/// `3s`, `4m 05s`, `2h 10m`.
fn human_duration(seconds: f64) -> String {
    let whole = seconds as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!("{}h {:02}m", whole / 3600, whole / 60 % 60),
    }
}

/// Escapes text for HTML; backend URLs and failure reasons come from config and the network.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(5.2), "5s");
        assert_eq!(human_duration(245.0), "4m 05s");
        assert_eq!(human_duration(7800.0), "2h 10m");
    }
}
