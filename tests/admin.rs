//! The admin listener over real sockets: off unless `adminAddress` is set and never proxying;
//! the self-contained status page with a row per backend; `/status.json`; `/metrics` in the
//! Prometheus text format (checked line by line here, and by `promtool` when it is installed);
//! draining a backend; and the access log of the `tinylb` binary.

mod common;
use common::process::*;
use common::scripted::ScriptedBackend;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
const ADMIN: &str = r#""adminAddress": "127.0.0.1:0""#;
/// Health checks once a second, each with a 1 s limit, and one result flips a backend: a
/// stopped backend shows as down within about a second, yet a loaded machine does not take a
/// live one out (with `start_lb`'s 100 ms limit, a slow check sometimes did, and a backend
/// could even start down).
const CHECKS: &str = r#""healthCheckInterval": "1s", "healthCheckFall": 1, "healthCheckRise": 1"#;

/// tinylb in-process with the admin listener on, in front of `servers_json` (the inside of
/// the `servers` list), with [`CHECKS`] and `extra` keys.
fn start_admin(servers_json: &str, extra: &str) -> TestLb {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    start_lb_from_json(&format!(
        r#"{{"port": "127.0.0.1:0", {ADMIN}, {CHECKS}, "servers": [{servers_json}]{extra}}}"#
    ))
}

/// `"http://a", "http://b"` for [`start_admin`].
fn urls(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A config file for the binary with [`CHECKS`] and `extra` keys.
fn binary_config(label: &str, backend: &Backend, extra: &str) -> TempConfig {
    let keys = if extra.is_empty() {
        CHECKS.to_string()
    } else {
        format!("{CHECKS}, {extra}")
    };
    lb_config(label, &[backend.url()], &keys)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// One HTTP answer, with the headers these tests look at.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    allow: String,
    backend: Option<String>,
    body: String,
}

/// GET with ureq (keep-alive, like a browser or Prometheus).
fn fetch(agent: &ureq::Agent, url: &str) -> Answer {
    let mut response = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    };
    let content_type = header("content-type").unwrap_or_default();
    let allow = header("allow").unwrap_or_default();
    let backend = header("x-backend");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .expect("body is complete UTF-8");
    Answer {
        status,
        content_type,
        allow,
        backend,
        body,
    }
}

/// A request written by hand, as `curl -X POST -H 'X-Tinylb-Admin: 1'` sends it (no body), on
/// its own connection.
fn raw_request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Tinylb-Admin: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_exchange(addr, request.as_bytes(), Duration::from_secs(5));
    let answer = read_full_response(&mut &raw[..], false).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {e} in {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    let header = |name: &str| answer.header(name).map(str::to_string);
    Answer {
        status: answer.status,
        content_type: header("content-type").unwrap_or_default(),
        allow: header("allow").unwrap_or_default(),
        backend: header("x-backend"),
        body: answer.text(),
    }
}

/// The admin listener's address of an in-process tinylb.
fn admin_of(lb: &TestLb) -> SocketAddr {
    lb.lb()
        .admin_addr()
        .expect("adminAddress is set, so the admin listener runs")
}

/// Polls `/status.json` until `condition` holds; returns the JSON that satisfied it.
fn wait_for_status(admin: SocketAddr, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let held = wait_until(WAIT, || {
        last = status_json(admin);
        condition(&last)
    });
    assert!(held, "status.json never showed {what}:\n{last:#}");
    last
}

/// Answers relayed over every backend, from `/status.json`.
fn served_total(status: &Value) -> u64 {
    backends_of(status)
        .iter()
        .map(|b| b["served"].as_u64().expect("served is a count"))
        .sum()
}

fn backends_of(status: &Value) -> &Vec<Value> {
    status["backends"].as_array().expect("backends is a list")
}

// ---------------------------------------------------------------------------------------------
// The status page's HTML
// ---------------------------------------------------------------------------------------------

/// The page's text with tags removed and whitespace collapsed.
fn text_of(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `<tr id="backend-N">` row.
fn row_of(page: &str, index: usize) -> &str {
    let start_tag = format!("<tr id=\"backend-{index}\"");
    let start = page
        .find(&start_tag)
        .unwrap_or_else(|| panic!("no row {start_tag} in the page:\n{page}"));
    let rest = &page[start..];
    let end = rest.find("</tr>").expect("the row ends");
    assert_eq!(
        page.matches(&start_tag).count(),
        1,
        "backend {index} has more than one row"
    );
    &rest[..end]
}

/// The text of the cell labelled `label` in a row.
fn cell(row: &str, label: &str) -> String {
    let marker = format!("data-label=\"{label}\">");
    let start = row
        .find(&marker)
        .unwrap_or_else(|| panic!("no {label} cell in {row}"))
        + marker.len();
    let end = row[start..].find("</td>").expect("the cell ends") + start;
    text_of(&row[start..end])
}

/// The values of every `attr="..."` in the page.
fn attribute_values<'a>(page: &'a str, attr: &str) -> Vec<&'a str> {
    let marker = format!("{attr}=\"");
    page.match_indices(&marker)
        .map(|(i, _)| {
            let rest = &page[i + marker.len()..];
            &rest[..rest.find('"').expect("attribute ends")]
        })
        .collect()
}

fn status_page(admin: SocketAddr) -> String {
    let answer = fetch(&client(), &format!("http://{admin}/"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/html"),
        "status page served as {:?}",
        answer.content_type
    );
    answer.body
}

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text format (0.0.4)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `{a="x",b="y\"z"}` -> labels and what follows the closing brace.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("labels must start with {")?;
    if let Some(after) = rest.strip_prefix('}') {
        return Ok((labels, after));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} has no opening quote"));
        }
        let mut value = String::new();
        let close = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) | None => return Err(format!("label {name} is not closed")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[eq + 1 + close + 1..];
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        rest = rest
            .strip_prefix(',')
            .ok_or("labels must be separated by commas")?;
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if text
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
        {
            text.parse()
                .map_err(|e| format!("value {text:?} is not a number: {e}"))
        }
        _ => Err(format!("value {text:?} is not a number")),
    }
}

/// Parses an exposition strictly: every line is `# HELP name text`, `# TYPE name type`, or
/// `name{labels} value` / `name value` with a number; every sample belongs to the family of
/// the last TYPE line (histograms through `_bucket`, `_sum` and `_count`); every family has
/// both HELP and TYPE. Panics naming the first wrong line.
fn parse_metrics(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut family: Option<String> = None;
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", number + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.strip_prefix(' ').expect(&at).splitn(3, ' ');
            let keyword = parts.next().expect(&at);
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("{at}: no metric name"));
            let rest = parts.next().unwrap_or("");
            assert!(is_metric_name(name), "{at}: bad metric name");
            match keyword {
                "HELP" => {
                    assert!(!rest.trim().is_empty(), "{at}: empty HELP");
                    assert!(helps.insert(name.to_string()), "{at}: second HELP");
                }
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                        "{at}: unknown type"
                    );
                    let previous = types.insert(name.to_string(), rest.to_string());
                    assert!(previous.is_none(), "{at}: second TYPE for {name}");
                    family = Some(name.to_string());
                }
                _ => panic!("{at}: a comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "{at}: blank line");
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{at}: no value"));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "{at}: bad metric name");
        let (labels, after) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| panic!("{at}: {e}"))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value_text = after
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: one space must separate the value"));
        assert!(
            !value_text.contains(' '),
            "{at}: extra fields after the value"
        );
        let value = parse_value(value_text).unwrap_or_else(|e| panic!("{at}: {e}"));
        let owner = if types.contains_key(name) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| types.get(*base).map(String::as_str) == Some("histogram"))
                .unwrap_or_else(|| panic!("{at}: no TYPE line for {name}"))
                .to_string()
        };
        assert_eq!(
            family.as_deref(),
            Some(owner.as_str()),
            "{at}: sample outside its family's block"
        );
        match types[&owner].as_str() {
            "counter" => assert!(value >= 0.0, "{at}: negative counter"),
            "histogram" if name.ends_with("_bucket") => {
                assert!(labels.contains_key("le"), "{at}: bucket without le")
            }
            _ => {}
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for name in types.keys() {
        assert!(helps.contains(name), "{name} has TYPE but no HELP");
    }
    for name in &helps {
        assert!(types.contains_key(name), "{name} has HELP but no TYPE");
    }
    (samples, types)
}

/// The one sample named `name` whose labels are exactly `labels`.
fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == wanted)
        .collect();
    assert_eq!(found.len(), 1, "samples {name}{wanted:?}: {found:?}");
    found[0].value
}

/// Runs `promtool check metrics` on the scrape when promtool is installed (Debian package
/// prometheus); `make check` runs it anyway, so its absence is not a failure here.
fn promtool_accepts(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("promtool is not installed; only the built-in format check ran");
            return;
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads the scrape");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `/metrics`, checked for its content type and format, and parsed.
fn scrape(admin: SocketAddr) -> (Vec<Sample>, BTreeMap<String, String>, String) {
    let answer = fetch(&client(), &format!("http://{admin}/metrics"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "metrics served as {:?}",
        answer.content_type
    );
    let (samples, types) = parse_metrics(&answer.body);
    (samples, types, answer.body)
}

// ---------------------------------------------------------------------------------------------
// The admin listener: off by default, never proxies
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_listener_is_off_unless_admin_address_is_set() {
    let a = Backend::start("a");
    let off = start_lb(&[&a], "");
    assert_eq!(off.lb().admin_addr(), None);

    let on = start_admin(&urls(&[&a]), "");
    let admin = admin_of(&on);
    assert!(admin.ip().is_loopback(), "{admin}");
    assert_ne!(admin.port(), 0, "the bound port, not the configured 0");
    assert_ne!(admin, on.addr, "the admin listener shares the proxy port");
    assert_eq!(backends_of(&status_json(admin)).len(), 1);
}

#[test]
fn binary_logs_the_admin_listener_only_when_configured() {
    let a = Backend::start("a");
    let off_config = binary_config("admin-off", &a, "");
    let mut off = Running::start(&off_config);
    off.listening_addr();
    // The admin listener starts (and logs) before the "listening on" line.
    assert!(
        !off.log_text().contains("admin listener"),
        "admin listener without adminAddress:\n{}",
        off.log_text()
    );

    let on_config = binary_config("admin-on", &a, ADMIN);
    let mut on = Running::start(&on_config);
    let admin = on.admin_addr_since(0);
    let proxy = on.listening_addr();
    assert_ne!(admin, proxy);
    let status = status_json(admin);
    assert_eq!(status["backends"][0]["url"], Value::from(a.url()));
}

#[test]
fn proxy_port_forwards_admin_paths_and_admin_port_never_proxies() {
    let a = Backend::start("a");
    let lb = start_admin(&urls(&[&a]), "");
    let admin = admin_of(&lb);
    let agent = client();
    for path in ["/metrics", "/status.json", "/"] {
        let answer = fetch(&agent, &format!("{}{path}", lb.url()));
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(
            answer.backend.as_deref(),
            Some("a"),
            "{path} on the proxy port did not reach the backend: {}",
            answer.body
        );
        assert!(answer.body.contains(&format!("target {path}\n")), "{path}");
    }
    let drain_on_proxy = raw_request(lb.addr, "POST", "/backends/0/drain");
    assert_eq!(drain_on_proxy.status, 200);
    assert_eq!(drain_on_proxy.backend.as_deref(), Some("a"));
    assert!(
        !lb.lb().backends()[0].is_draining(),
        "the proxy port drained a backend"
    );

    let proxied_before = a.proxied_count();
    assert_eq!(proxied_before, 4);
    for path in ["/anything", "/slow/10", "/index.html", "/status.json/x"] {
        let answer = fetch(&agent, &format!("http://{admin}{path}"));
        assert_eq!(answer.status, 404, "admin {path}: {}", answer.body);
        assert_eq!(answer.backend, None, "admin {path} was proxied");
    }
    assert_eq!(
        a.proxied_count(),
        proxied_before,
        "the admin listener forwarded a request"
    );
}

// ---------------------------------------------------------------------------------------------
// Status page
// ---------------------------------------------------------------------------------------------

#[test]
fn status_page_is_self_contained_with_a_row_per_backend() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let mut c = Backend::start("c");
    let servers = format!(
        r#"{{"url": "{}", "weight": 3}}, {{"url": "{}", "weight": 1}}, {{"url": "{}", "weight": 2}}"#,
        a.url(),
        b.url(),
        c.url()
    );
    let lb = start_admin(
        &servers,
        r#""algorithm": "weighted-round-robin", "workers": 4"#,
    );
    let admin = admin_of(&lb);
    c.stop();
    wait_for_status(admin, "backend 2 down", |s| {
        s["backends"][2]["state"] == "down"
    });

    // Traffic with known outcomes: who answered what.
    let agent = client();
    let mut answered: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    for path in [
        "/",
        "/x",
        "/status/404",
        "/y",
        "/status/500",
        "/z",
        "/w",
        "/v",
    ] {
        let answer = fetch(&agent, &format!("{}{path}", lb.url()));
        let backend = answer.backend.expect("fixture names itself");
        answered.entry(backend).or_default()[usize::from(answer.status / 100 - 1)] += 1;
    }
    let served = |name: &str| answered.get(name).map_or(0, |c| c.iter().sum::<u64>());
    assert_eq!(served("a") + served("b"), 8);
    assert_eq!(served("c"), 0);
    wait_for_status(admin, "8 served and idle workers", |s| {
        served_total(s) == 8 && s["busyWorkers"] == 0
    });

    let page = status_page(admin);
    assert!(page.to_ascii_lowercase().starts_with("<!doctype html>"));
    // Self-contained: nothing is loaded from anywhere.
    let lower = page.to_ascii_lowercase();
    for external in [
        "<script", "src=", "<link", "@import", "url(", "<iframe", "<img",
    ] {
        assert!(!lower.contains(external), "the page loads {external}");
    }
    let mut without_backends = page.clone();
    for backend in [&a, &b, &c] {
        without_backends = without_backends.replace(&backend.url(), "");
    }
    assert!(
        !without_backends.contains("://"),
        "a URL other than the backends' in the page"
    );
    for href in attribute_values(&page, "href") {
        assert!(
            !href.contains(':') && !href.starts_with("//"),
            "link off the admin listener: {href}"
        );
    }
    // Refreshes itself every couple of seconds, and fits a phone.
    let refresh = page
        .find("http-equiv=\"refresh\" content=\"")
        .map(|i| &page[i + "http-equiv=\"refresh\" content=\"".len()..])
        .and_then(|rest| rest.split('"').next())
        .and_then(|seconds| seconds.parse::<u32>().ok())
        .expect("a meta refresh with a whole number of seconds");
    assert!((1..=3).contains(&refresh), "refresh every {refresh} s");
    assert!(page.contains("<meta name=\"viewport\" content=\"width=device-width"));
    assert!(
        page.contains("@media (max-width"),
        "no narrow-screen layout"
    );

    let text = text_of(&page);
    assert!(text.contains("algorithm weighted-round-robin"), "{text}");
    let uptime_shown = text.match_indices("up ").any(|(i, _)| {
        let after = &text[i + 3..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && after[digits..].starts_with(['s', 'm', 'h'])
    });
    assert!(uptime_shown, "no uptime in {text}");
    assert!(text.contains("workers busy 0 / 4"), "{text}");
    assert!(text.contains("queued 0 / 512"), "{text}");

    for (index, (backend, weight)) in [(&a, 3), (&b, 1), (&c, 2)].into_iter().enumerate() {
        let row = row_of(&page, index);
        let name = backend.name();
        let classes = answered.get(name).copied().unwrap_or_default();
        let label = |l: &str| cell(row, l);
        assert_eq!(label("backend"), backend.url(), "row {index}");
        assert_eq!(label("weight"), weight.to_string(), "row {index}");
        assert_eq!(label("in flight"), "0", "row {index}");
        assert_eq!(label("served"), served(name).to_string(), "row {index}");
        assert_eq!(
            label("2xx / 3xx / 4xx / 5xx"),
            format!(
                "{} / {} / {} / {}",
                classes[1], classes[2], classes[3], classes[4]
            ),
            "row {index}"
        );
        assert_eq!(label("errors"), "0 / 0 / 0", "row {index}");
        let health = label("health");
        if name == "c" {
            assert!(row.contains("class=\"state down\""), "{row}");
            assert!(health.starts_with("down"), "{health}");
            assert!(health.contains("last check failed"), "{health}");
            assert!(health.contains("refused"), "no reason: {health}");
            assert_eq!(
                label("p50"),
                "–",
                "latency for a backend that served nothing"
            );
        } else {
            assert!(row.contains("class=\"state up\""), "{row}");
            assert!(health.starts_with("up"), "{health}");
            assert!(health.contains("last check passed"), "{health}");
            for percentile in ["p50", "p99"] {
                let shown = label(percentile);
                let ms: f64 = shown
                    .strip_suffix(" ms")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("row {index} {percentile}: {shown:?}"));
                assert!(ms > 0.0 && ms < 5000.0, "row {index} {percentile}: {shown}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /status.json
// ---------------------------------------------------------------------------------------------

#[test]
fn status_json_has_the_facts_and_moves_with_traffic() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let started = Instant::now();
    let lb = start_admin(&urls(&[&a, &b]), r#""workers": 3"#);
    let admin = admin_of(&lb);

    let status = status_json(admin);
    assert_eq!(status["algorithm"], "round-robin");
    let uptime = status["uptimeSeconds"].as_u64().expect("uptimeSeconds");
    assert!(uptime <= started.elapsed().as_secs() + 1, "uptime {uptime}");
    assert_eq!(status["workers"], 3);
    assert_eq!(status["busyWorkers"], 0);
    assert_eq!(status["queueDepth"], 0);
    let backends = backends_of(&status);
    assert_eq!(backends.len(), 2);
    for (backend, fixture) in backends.iter().zip([&a, &b]) {
        assert_eq!(backend["url"], Value::from(fixture.url()));
        assert_eq!(backend["weight"], 1);
        assert_eq!(backend["state"], "up");
        assert_eq!(backend["inFlight"], 0);
        assert_eq!(backend["served"], 0);
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            assert_eq!(backend["responses"][class], 0, "{class}");
        }
        for kind in ["connect", "timeout", "5xx"] {
            assert_eq!(backend["errors"][kind], 0, "{kind}");
        }
        assert_eq!(backend["latencyP50Ms"], Value::Null);
        assert_eq!(backend["latencyP99Ms"], Value::Null);
        assert_eq!(backend["lastCheck"]["passed"], true, "{backend}");
        assert_eq!(backend["lastCheck"]["reason"], Value::Null);
        assert!(backend["lastCheck"]["agoSeconds"].as_f64().is_some());
    }

    let agent = client();
    let names = answered_by(&agent, &lb.url(), "/", 10);
    assert_eq!((count(&names, "a"), count(&names, "b")), (5, 5));
    let status = wait_for_status(admin, "10 served", |s| served_total(s) >= 10);
    assert_eq!(served_total(&status), 10, "{status:#}");
    for (backend, fixture) in backends_of(&status).iter().zip([&a, &b]) {
        assert_eq!(backend["served"], 5, "{backend}");
        assert_eq!(backend["responses"]["2xx"], 5);
        assert_eq!(fixture.proxied_count(), 5);
        let p50 = backend["latencyP50Ms"].as_f64().expect("p50 after traffic");
        let p99 = backend["latencyP99Ms"].as_f64().expect("p99 after traffic");
        assert!(
            0.0 < p50 && p50 <= p99 && p99 < 5000.0,
            "p50 {p50} p99 {p99}"
        );
    }

    let answer = fetch(&agent, &format!("{}/status/503", lb.url()));
    assert_eq!(answer.status, 503);
    let index = usize::from(answer.backend.as_deref() == Some("b"));
    let status = wait_for_status(admin, "11 served", |s| served_total(s) >= 11);
    assert_eq!(served_total(&status), 11, "{status:#}");
    let backend = &status["backends"][index];
    assert_eq!(backend["served"], 6);
    assert_eq!(backend["responses"]["5xx"], 1);
    assert_eq!(backend["errors"]["5xx"], 1);
    assert_eq!(backend["errors"]["connect"], 0);
}

#[test]
fn stopped_backend_shows_down_with_the_failed_check_everywhere() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    let lb = start_admin(&urls(&[&a, &b]), "");
    let admin = admin_of(&lb);
    let (samples, _, _) = scrape(admin);
    let url_b = b.url();
    assert_eq!(
        value_of(&samples, "tinylb_backend_up", &[("backend", &url_b)]),
        1.0
    );
    assert_eq!(
        value_of(
            &samples,
            "tinylb_health_flips_total",
            &[("backend", &url_b)]
        ),
        0.0
    );

    b.stop();
    let status = wait_for_status(admin, "b down", |s| s["backends"][1]["state"] == "down");
    let row = &status["backends"][1];
    assert_eq!(row["lastCheck"]["passed"], false, "{row}");
    let reason = row["lastCheck"]["reason"].as_str().expect("a reason");
    assert!(reason.contains("refused"), "reason {reason:?}");
    assert_eq!(row["flips"], 1);
    assert!(row["sinceFlipSeconds"].as_f64().is_some_and(|s| s < 5.0));
    assert_eq!(status["backends"][0]["state"], "up");
    let (samples, _, _) = scrape(admin);
    assert_eq!(
        value_of(&samples, "tinylb_backend_up", &[("backend", &url_b)]),
        0.0
    );
    assert_eq!(
        value_of(&samples, "tinylb_backend_up", &[("backend", &a.url())]),
        1.0
    );
    assert_eq!(
        value_of(
            &samples,
            "tinylb_health_flips_total",
            &[("backend", &url_b)]
        ),
        1.0
    );
    let page = status_page(admin);
    assert!(row_of(&page, 1).contains("class=\"state down\""));

    b.restart();
    let status = wait_for_status(admin, "b up again", |s| s["backends"][1]["state"] == "up");
    assert_eq!(status["backends"][1]["lastCheck"]["passed"], true);
    let (samples, _, _) = scrape(admin);
    assert_eq!(
        value_of(&samples, "tinylb_backend_up", &[("backend", &url_b)]),
        1.0
    );
    assert_eq!(
        value_of(
            &samples,
            "tinylb_health_flips_total",
            &[("backend", &url_b)]
        ),
        2.0
    );
}

/// A request whose only backend refused it was not sent again: no retry is counted.
#[test]
fn a_failure_with_no_backend_left_is_not_a_retry() {
    let mut only = Backend::start("only");
    let lb = start_lb_from_json(&format!(
        r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "1m", {ADMIN}, "servers": ["{}"]}}"#,
        only.url()
    ));
    let admin = admin_of(&lb);
    only.stop();
    let status = client()
        .get(&format!("{}/", lb.url()))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 502);
    let json = status_json(admin);
    assert_eq!(json["backends"][0]["errors"]["connect"], 1, "{json:#}");
    assert_eq!(json["retries"], 0, "{json:#}");
}

#[test]
fn refused_connection_counts_a_connect_error_and_a_retry() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    // No active check during the test: only the refused request can find b dead.
    let lb = start_lb_from_json(&format!(
        r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "1m", {ADMIN},
            "servers": ["{}", "{}"]}}"#,
        a.url(),
        b.url()
    ));
    let admin = admin_of(&lb);
    assert_eq!(status_json(admin)["retries"], 0);
    b.stop();

    let names = answered_by(&client(), &lb.url(), "/", 4);
    assert_eq!(count(&names, "a"), 4, "{names:?}");
    let status = wait_for_status(admin, "4 served", |s| served_total(s) >= 4);
    assert_eq!(status["retries"], 1, "{status:#}");
    let row = &status["backends"][1];
    assert_eq!(row["errors"]["connect"], 1, "{row}");
    assert_eq!(row["errors"]["timeout"], 0);
    assert_eq!(row["state"], "down", "the passive check did not take b out");
    assert_eq!(status["backends"][0]["served"], 4);

    let (samples, _, _) = scrape(admin);
    assert_eq!(value_of(&samples, "tinylb_retries_total", &[]), 1.0);
    let connect = [("backend", b.url()), ("kind", "connect".to_string())];
    let connect: Vec<(&str, &str)> = connect.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        value_of(&samples, "tinylb_backend_errors_total", &connect),
        1.0
    );
    assert_eq!(
        value_of(&samples, "tinylb_backend_up", &[("backend", &b.url())]),
        0.0
    );
    assert_eq!(cell(row_of(&status_page(admin), 1), "errors"), "1 / 0 / 0");
}

#[test]
fn backend_timeout_counts_a_timeout_error() {
    let hanging = ScriptedBackend::hanging();
    let lb = start_admin(
        &format!("\"{}\"", hanging.url()),
        r#""backendTimeout": "300ms""#,
    );
    let admin = admin_of(&lb);
    let started = Instant::now();
    let answer = fetch(&client(), &format!("{}/hang", lb.url()));
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(hanging.proxied().len(), 1);

    let status = wait_for_status(admin, "a timeout", |s| {
        s["backends"][0]["errors"]["timeout"] != 0
    });
    let row = &status["backends"][0];
    assert_eq!(row["errors"]["timeout"], 1, "{row}");
    assert_eq!(row["errors"]["connect"], 0, "{row}");
    assert_eq!(row["inFlight"], 0, "{row}");
    let (samples, _, _) = scrape(admin);
    let url = hanging.url();
    assert_eq!(
        value_of(
            &samples,
            "tinylb_backend_errors_total",
            &[("backend", &url), ("kind", "timeout")]
        ),
        1.0
    );
    assert_eq!(cell(row_of(&status_page(admin), 0), "errors"), "0 / 1 / 0");
}

#[test]
fn queued_requests_and_busy_workers_are_shown() {
    let a = Backend::start("a");
    let lb = start_admin(&urls(&[&a]), r#""workers": 1"#);
    let admin = admin_of(&lb);
    let url = lb.url();
    // The one worker is held by a slow request; a second request waits in the queue.
    let slow = {
        let url = url.clone();
        std::thread::spawn(move || fetch(&client(), &format!("{url}/slow/1500")))
    };
    assert!(
        wait_until(WAIT, || a.proxied_count() == 1),
        "slow request never arrived"
    );
    let queued = std::thread::spawn(move || fetch(&client(), &format!("{url}/after")));
    let status = wait_for_status(admin, "one request queued", |s| s["queueDepth"] == 1);
    assert_eq!(status["busyWorkers"], 1);
    assert_eq!(status["backends"][0]["inFlight"], 1);
    let (samples, _, _) = scrape(admin);
    assert_eq!(value_of(&samples, "tinylb_queue_depth", &[]), 1.0);
    assert_eq!(value_of(&samples, "tinylb_workers_busy", &[]), 1.0);
    assert_eq!(value_of(&samples, "tinylb_workers", &[]), 1.0);
    assert_eq!(
        value_of(
            &samples,
            "tinylb_requests_in_flight",
            &[("backend", &a.url())]
        ),
        1.0
    );
    let text = text_of(&status_page(admin));
    assert!(text.contains("queued 1 / 512"), "{text}");
    assert!(text.contains("workers busy 1 / 1"), "{text}");

    assert_eq!(slow.join().expect("slow client").status, 200);
    assert_eq!(queued.join().expect("queued client").status, 200);
    let status = wait_for_status(admin, "idle again", |s| {
        s["queueDepth"] == 0 && s["busyWorkers"] == 0 && served_total(s) == 2
    });
    assert_eq!(status["backends"][0]["inFlight"], 0);
}

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_are_valid_prometheus_text_and_count_requests() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = start_admin(&urls(&[&a, &b]), "");
    let admin = admin_of(&lb);
    let (samples, types, text) = scrape(admin);
    promtool_accepts(&text);
    for (family, kind) in [
        ("tinylb_requests_total", "counter"),
        ("tinylb_requests_in_flight", "gauge"),
        ("tinylb_queue_depth", "gauge"),
        ("tinylb_backend_up", "gauge"),
        ("tinylb_health_flips_total", "counter"),
        ("tinylb_retries_total", "counter"),
        ("tinylb_request_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert!(
        types.keys().all(|name| name.starts_with("tinylb_")),
        "{types:?}"
    );
    let urls = [a.url(), b.url()];
    let requests = |samples: &[Sample], url: &str, class: &str| {
        value_of(
            samples,
            "tinylb_requests_total",
            &[("backend", url), ("class", class)],
        )
    };
    let before: Vec<f64> = urls.iter().map(|u| requests(&samples, u, "2xx")).collect();
    assert_eq!(before, [0.0, 0.0]);

    let names = answered_by(&client(), &lb.url(), "/", 10);
    wait_for_status(admin, "10 served", |s| served_total(s) >= 10);
    let (samples, _, text) = scrape(admin);
    promtool_accepts(&text);
    let mut total = 0.0;
    for (url, name) in urls.iter().zip(["a", "b"]) {
        let served = requests(&samples, url, "2xx");
        assert_eq!(served, count(&names, name) as f64, "{url}");
        total += served;
        for class in ["1xx", "3xx", "4xx", "5xx"] {
            assert_eq!(requests(&samples, url, class), 0.0, "{url} {class}");
        }
        let backend = [("backend", url.as_str())];
        assert_eq!(
            value_of(&samples, "tinylb_requests_in_flight", &backend),
            0.0
        );
        assert_eq!(value_of(&samples, "tinylb_backend_up", &backend), 1.0);
        assert_eq!(
            value_of(&samples, "tinylb_health_flips_total", &backend),
            0.0
        );

        // The histogram: cumulative buckets in rising `le` order, +Inf = _count = served.
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| {
                s.name == "tinylb_request_duration_seconds_bucket"
                    && s.labels.get("backend") == Some(url)
            })
            .map(|s| {
                (
                    parse_value(&s.labels["le"]).expect("le is a number"),
                    s.value,
                )
            })
            .collect();
        assert!(buckets.len() >= 2, "{buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "buckets not cumulative in le order: {buckets:?}"
        );
        let (last_le, last_count) = *buckets.last().expect("buckets");
        assert_eq!(last_le, f64::INFINITY, "the last bucket is not +Inf");
        let count = value_of(&samples, "tinylb_request_duration_seconds_count", &backend);
        assert_eq!(last_count, count);
        assert_eq!(count, served);
        let sum = value_of(&samples, "tinylb_request_duration_seconds_sum", &backend);
        assert!(sum > 0.0 && sum < count * 5.0, "sum {sum} for {count}");
    }
    assert_eq!(total, 10.0);
    assert_eq!(value_of(&samples, "tinylb_queue_depth", &[]), 0.0);
    assert_eq!(value_of(&samples, "tinylb_retries_total", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------------------------

#[test]
fn drained_backend_gets_no_new_requests_and_finishes_its_in_flight_one() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = start_admin(&urls(&[&a, &b]), "");
    let admin = admin_of(&lb);
    // Round robin sends two requests at once to different backends: one slow request each.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("{}/slow/2000", lb.url());
            std::thread::spawn(move || fetch(&client(), &url))
        })
        .collect();
    // Counted in flight when picked, and seen by b once its head arrived: wait for both.
    assert!(
        wait_until(WAIT, || {
            lb.lb().backends()[1].in_flight() == 1 && b.proxied_count() == 1
        }),
        "no slow request reached b"
    );

    let drained = raw_request(admin, "POST", "/backends/1/drain");
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert!(drained.content_type.starts_with("application/json"));
    let body: Value = serde_json::from_str(&drained.body).expect("drain answers JSON");
    assert_eq!(body["index"], 1);
    assert_eq!(body["url"], Value::from(b.url()));
    assert_eq!(body["draining"], true);
    assert_eq!(
        body["inFlight"], 1,
        "the slow request was not in flight on b"
    );

    let on_b = b.proxied_count();
    assert_eq!(on_b, 1);
    let names = answered_by(&client(), &lb.url(), "/after-drain", 30);
    assert_eq!(count(&names, "a"), 30, "{names:?}");
    assert_eq!(
        b.proxied_count(),
        on_b,
        "b got a new request while draining"
    );

    let status = status_json(admin);
    assert_eq!(status["backends"][1]["state"], "draining");
    assert_eq!(status["backends"][0]["state"], "up");
    let page = status_page(admin);
    assert!(
        row_of(&page, 1).contains("class=\"state draining\""),
        "{page}"
    );
    let (samples, _, _) = scrape(admin);
    assert_eq!(
        value_of(
            &samples,
            "tinylb_backend_draining",
            &[("backend", &b.url())]
        ),
        1.0
    );

    let mut finished: Vec<String> = slow
        .into_iter()
        .map(|thread| {
            let answer = thread.join().expect("slow client");
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.backend.expect("named")
        })
        .collect();
    finished.sort();
    assert_eq!(
        finished,
        ["a", "b"],
        "the in-flight request on b did not finish"
    );

    let undrained = raw_request(admin, "POST", "/backends/1/undrain");
    assert_eq!(undrained.status, 200, "{}", undrained.body);
    let body: Value = serde_json::from_str(&undrained.body).expect("undrain answers JSON");
    assert_eq!(body["draining"], false);
    assert_eq!(status_json(admin)["backends"][1]["state"], "up");
    let names = answered_by(&client(), &lb.url(), "/after-undrain", 10);
    assert_eq!((count(&names, "a"), count(&names, "b")), (5, 5));
}

#[test]
fn drain_endpoint_wants_post_and_an_existing_index() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = start_admin(&urls(&[&a, &b]), "");
    let admin = admin_of(&lb);
    for path in ["/backends/1/drain", "/backends/1/undrain"] {
        let answer = raw_request(admin, "GET", path);
        assert_eq!(answer.status, 405, "GET {path}: {}", answer.body);
        assert_eq!(answer.allow, "POST", "GET {path}");
    }
    for path in [
        "/backends/2/drain",
        "/backends/99/undrain",
        "/backends/x/drain",
    ] {
        let answer = raw_request(admin, "POST", path);
        assert_eq!(answer.status, 404, "POST {path}: {}", answer.body);
    }
    assert!(
        lb.lb().backends().iter().all(|b| !b.is_draining()),
        "a refused request drained a backend"
    );
    let answer = raw_request(admin, "POST", "/status.json");
    assert_eq!(answer.status, 405);
}

// ---------------------------------------------------------------------------------------------
// Access log (the binary's stderr)
// ---------------------------------------------------------------------------------------------

#[test]
fn access_log_writes_one_combined_format_line_per_request() {
    let a = Backend::start("a");
    let config = binary_config("access-on", &a, r#""accessLog": true"#);
    let mut lb = Running::start(&config);
    let addr = lb.listening_addr();
    let agent = client();
    let mut response = agent
        .get(format!("http://{addr}/path?q=1"))
        .header("User-Agent", "tinylb-test/1.0 (access log)")
        .header("Referer", "/from-here")
        .call()
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.body_mut().read_to_vec().expect("body").len();

    let line = lb.wait_for_line("\"GET /path?q=1 HTTP/1.1\"", WAIT);
    assert!(line.contains("tinylb::access"), "{line}");
    assert!(starts_with_timestamp(&line), "{line}");
    let clf = line
        .find("127.0.0.1 - - [")
        .map(|i| &line[i..])
        .unwrap_or_else(|| panic!("no client IP in {line}"));
    let date = &clf["127.0.0.1 - - [".len()..];
    let date = &date[..date.find(']').expect("date ends")];
    // 25/Nov/2026:16:20:05 +0000
    assert_eq!(date.len(), 26, "{date}");
    assert_eq!(&date[2..3], "/", "{date}");
    assert_eq!(&date[6..7], "/", "{date}");
    assert_eq!(&date[11..12], ":", "{date}");
    assert!(date.ends_with(" +0000"), "{date}");
    let expected = format!(
        "\"GET /path?q=1 HTTP/1.1\" 200 {bytes} \"/from-here\" \"tinylb-test/1.0 (access log)\" backend={} client=- queue=",
        a.url()
    );
    assert!(clf.contains(&expected), "{line}\nlacks\n{expected}");
    // The stage timers end the line (tests/stage_timers.rs checks what they measure).
    let total: f64 = line
        .rsplit(" total=")
        .next()
        .and_then(|d| d.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in {line}"));
    assert!((0.0..5.0).contains(&total), "{total}");

    let (status, _, _) = get(&agent, &format!("http://{addr}/second"));
    assert_eq!(status, 200);
    lb.wait_for_line("\"GET /second HTTP/1.1\" 200", WAIT);
    let access_lines: Vec<&String> = lb
        .log
        .iter()
        .filter(|l| l.contains("tinylb::access"))
        .collect();
    assert_eq!(access_lines.len(), 2, "{access_lines:#?}");
}

#[test]
fn access_log_is_off_unless_enabled() {
    let a = Backend::start("a");
    for (label, extra) in [
        ("access-absent", ""),
        ("access-false", r#""accessLog": false"#),
    ] {
        let config = binary_config(label, &a, extra);
        let mut lb = Running::start(&config);
        let addr = lb.listening_addr();
        let (status, _, _) = get(&client(), &format!("http://{addr}/quiet?{label}"));
        assert_eq!(status, 200);
        // Stop it and read its whole stderr: the request must not be in it.
        lb.signal("TERM");
        assert!(
            lb.wait_exit(Duration::from_secs(10)).is_some(),
            "{label}: no exit"
        );
        let log = lb.log_text();
        assert!(
            log.contains("stopped cleanly"),
            "{label}: log incomplete:\n{log}"
        );
        assert!(
            !log.contains("tinylb::access") && !log.contains("/quiet"),
            "{label}: access log written:\n{log}"
        );
    }
}

#[test]
fn metrics_checker_rejects_malformed_expositions() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"q\\\"\",b=\"\"} 3\n\
                # HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let (samples, _) = parse_metrics(good);
    assert_eq!(
        value_of(&samples, "x_total", &[("a", "q\""), ("b", "")]),
        3.0
    );
    let bad = [
        ("no TYPE", "y 1\n"),
        ("no HELP", "# TYPE y gauge\ny 1\n"),
        ("bad value", "# HELP y Y.\n# TYPE y gauge\ny one\n"),
        (
            "unclosed labels",
            "# HELP y Y.\n# TYPE y gauge\ny{a=\"1\" 1\n",
        ),
        ("unquoted label", "# HELP y Y.\n# TYPE y gauge\ny{a=1} 1\n"),
        (
            "timestamp or junk",
            "# HELP y Y.\n# TYPE y gauge\ny 1 2 3\n",
        ),
        (
            "outside its block",
            "# HELP y Y.\n# TYPE y gauge\n# HELP z Z.\n# TYPE z gauge\ny 1\n",
        ),
        (
            "bucket without le",
            "# HELP h H.\n# TYPE h histogram\nh_bucket 1\n",
        ),
        (
            "negative counter",
            "# HELP c_total C.\n# TYPE c_total counter\nc_total -1\n",
        ),
        ("no final newline", "# HELP y Y.\n# TYPE y gauge\ny 1"),
    ];
    for (what, text) in bad {
        let outcome = std::panic::catch_unwind(|| parse_metrics(text));
        assert!(outcome.is_err(), "the checker accepted: {what}");
    }
}

#[test]
fn admin_connection_stays_usable_after_a_post_with_a_chunked_body() {
    let a = Backend::start("a");
    let lb = start_admin(&urls(&[&a]), "");
    let admin = admin_of(&lb);
    // A POST whose (ignored) body is chunked, then a second request on the same connection:
    // the body must be consumed, not parsed as the next request.
    let raw = raw_exchange(
        admin,
        b"POST /backends/0/undrain HTTP/1.1\r\nHost: localhost\r\nX-Tinylb-Admin: 1\r\n\
          Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /status.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200"], "{text}");
}
