//! Live reload of config.json, with the `tinylb` binary and its stderr: servers added, removed
//! and re-weighted, algorithm and timeouts changed, the file edited in place or replaced by a
//! rename, invalid configs refused with one log line while the old one keeps serving, the
//! listen address refusing to move, and not one failed request or dropped connection while
//! the file is rewritten under load.

mod common;
use common::process::*;
use common::raw::keep_alive_connection;
use common::scripted::ScriptedBackend;
use common::*;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a reload may take to show: the watcher polls every 500 ms.
const RELOAD: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(5);

/// A whole config.json on 127.0.0.1:0. Health checks every 500 ms (each with a 500 ms limit):
/// no test here waits for one, and a shorter limit can take a backend out for a moment on a
/// loaded machine, which would upset the exact counts.
fn config_text(servers: &str, extra: &str) -> String {
    let separator = if extra.is_empty() { "" } else { ", " };
    format!(
        r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "500ms", "servers": [{servers}]{separator}{extra}}}"#
    )
}

/// `"url", {"url": "url", "weight": 3}, ...` for (backend URL, weight) pairs; weight 1 is
/// written as a plain string.
fn servers(entries: &[(&str, u32)]) -> String {
    entries
        .iter()
        .map(|(url, weight)| match weight {
            1 => format!("\"{url}\""),
            w => format!(r#"{{"url": "{url}", "weight": {w}}}"#),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How tinylb's summary line lists these servers: `2 servers [http://a, http://b (weight 3)]`.
fn summary(entries: &[(&str, u32)]) -> String {
    let listed: Vec<String> = entries
        .iter()
        .map(|(url, weight)| match weight {
            1 => url.to_string(),
            w => format!("{url} (weight {w})"),
        })
        .collect();
    format!("{} servers [{}]", entries.len(), listed.join(", "))
}

/// Rewrites the file where it is, as `echo > config.json` or an editor saving in place does.
fn edit_in_place(config: &TempConfig, text: &str) {
    std::fs::write(config.path(), text).expect("rewrite config");
}

/// Writes a new file beside it and renames it over the old one, as config tools do.
fn replace_by_rename(config: &TempConfig, text: &str) {
    let next = format!("{}.next", config.path());
    std::fs::write(&next, text).expect("write the new config");
    std::fs::rename(&next, config.path()).expect("rename over the config");
}

/// Starts tinylb and makes sure its config watcher has taken its baseline, by touching the
/// file (trailing spaces) until a reload is logged. Without this, an edit made right after
/// start-up can be lost: the watcher takes as its baseline whatever the file holds when its
/// thread starts, not what tinylb loaded (the bug that
/// `edit_made_while_tinylb_starts_is_not_lost` shows). The other tests wait it out so that
/// they test what they are named for. Every reload logs the same words, so each wait looks
/// only past a mark.
fn start_watched(config: &TempConfig, text: &str) -> (Running, SocketAddr) {
    let mut lb = Running::start(config);
    let addr = lb.listening_addr();
    for attempt in 1..=5 {
        let from = lb.mark();
        replace_by_rename(config, &format!("{text}{}", " ".repeat(attempt)));
        if lb
            .find_since(from, "config reloaded", Duration::from_millis(1500))
            .is_some()
        {
            return (lb, addr);
        }
    }
    panic!(
        "the config watcher never noticed a change:\n{}",
        lb.log_text()
    );
}

/// GETs `path` `n` times and checks how many answers came from backends a, b and c; on a
/// mismatch the failure shows the end of tinylb's log.
fn assert_served(
    lb: &mut Running,
    addr: SocketAddr,
    agent: &ureq::Agent,
    path: &str,
    n: usize,
    expected: (usize, usize, usize),
) {
    let got = tally3(&answered_by(agent, &format!("http://{addr}"), path, n));
    let from = lb.mark().saturating_sub(30);
    assert_eq!(
        got,
        expected,
        "answers to {path} from (a, b, c); tinylb's log ends:\n{}",
        lb.log[from..].join("\n")
    );
}

/// Waits for the `config reloaded` line, after `from`, that lists this configuration.
fn reloaded(lb: &mut Running, from: usize, fragment: &str) -> String {
    let line = lb.wait_for_line_since(from, fragment, RELOAD);
    assert!(line.contains("config reloaded"), "{line}");
    line
}

/// (a, b, c) counts of who answered.
fn tally3(names: &[String]) -> (usize, usize, usize) {
    (count(names, "a"), count(names, "b"), count(names, "c"))
}

#[test]
fn servers_added_and_removed_live_when_edited_in_place() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let (ua, ub, uc) = (a.url(), b.url(), c.url());
    let first = config_text(&servers(&[(&ua, 1), (&ub, 1)]), "");
    let config = TempConfig::new("reload-add-remove", &first);
    let (mut lb, addr) = start_watched(&config, &first);
    let agent = client();
    assert_served(&mut lb, addr, &agent, "/before", 4, (2, 2, 0));

    let from = lb.mark();
    let edited = Instant::now();
    edit_in_place(&config, &config_text(&servers(&[(&ua, 1), (&uc, 1)]), ""));
    let line = reloaded(&mut lb, from, &summary(&[(&ua, 1), (&uc, 1)]));
    assert!(
        edited.elapsed() < Duration::from_secs(2),
        "reload took {:?}",
        edited.elapsed()
    );
    assert!(line.contains("1 added, 1 removed"), "{line}");

    let b_before = b.proxied_count();
    assert_served(&mut lb, addr, &agent, "/after", 20, (10, 0, 10));
    assert_eq!(
        b.proxied_count(),
        b_before,
        "the removed backend got traffic"
    );
}

#[test]
fn request_in_flight_on_a_removed_backend_finishes() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let (ua, ub) = (a.url(), b.url());
    let first = config_text(&servers(&[(&ua, 1), (&ub, 1)]), "");
    let config = TempConfig::new("reload-in-flight", &first);
    let (mut lb, addr) = start_watched(&config, &first);
    // Round robin sends two requests at once to different backends: one slow request each.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("http://{addr}/slow/2500");
            std::thread::spawn(move || get(&client(), &url))
        })
        .collect();
    assert!(
        wait_until(WAIT, || b.proxied_count() == 1 && a.proxied_count() == 1),
        "the slow requests did not reach both backends"
    );

    let from = lb.mark();
    replace_by_rename(&config, &config_text(&servers(&[(&ua, 1)]), ""));
    reloaded(&mut lb, from, "1 removed");
    assert_served(&mut lb, addr, &client(), "/after", 4, (4, 0, 0));
    let mut answered: Vec<String> = slow
        .into_iter()
        .map(|thread| {
            let (status, body, backend) = thread.join().expect("slow client");
            assert_eq!(status, 200, "{body}");
            backend.expect("named")
        })
        .collect();
    answered.sort();
    assert_eq!(
        answered,
        ["a", "b"],
        "the request on the removed b did not finish"
    );
}

#[test]
fn weights_and_algorithm_change_live_when_replaced_by_rename() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let (ua, ub) = (a.url(), b.url());
    let first = config_text(&servers(&[(&ua, 1), (&ub, 1)]), "");
    let config = TempConfig::new("reload-weights", &first);
    let (mut lb, addr) = start_watched(&config, &first);
    let agent = client();
    assert_served(&mut lb, addr, &agent, "/rr", 8, (4, 4, 0));

    let wrr = r#""algorithm": "weighted-round-robin""#;
    let three_to_one = [(ua.as_str(), 3), (ub.as_str(), 1)];
    let from = lb.mark();
    replace_by_rename(&config, &config_text(&servers(&three_to_one), wrr));
    reloaded(
        &mut lb,
        from,
        &format!("algorithm weighted-round-robin, {}", summary(&three_to_one)),
    );
    assert_served(&mut lb, addr, &agent, "/3-1", 8, (6, 2, 0));

    let one_to_three = [(ua.as_str(), 1), (ub.as_str(), 3)];
    let from = lb.mark();
    replace_by_rename(&config, &config_text(&servers(&one_to_three), wrr));
    reloaded(&mut lb, from, &summary(&one_to_three));
    assert_served(&mut lb, addr, &agent, "/1-3", 8, (2, 6, 0));

    // And back to an algorithm that ignores weights.
    let rr = r#""algorithm": "round-robin""#;
    let from = lb.mark();
    replace_by_rename(&config, &config_text(&servers(&one_to_three), rr));
    reloaded(
        &mut lb,
        from,
        &format!("algorithm round-robin, {}", summary(&one_to_three)),
    );
    assert_served(&mut lb, addr, &agent, "/rr-again", 8, (4, 4, 0));
}

#[test]
fn backend_timeout_changes_live() {
    let hanging = ScriptedBackend::hanging();
    let url = hanging.url();
    let first = config_text(&servers(&[(&url, 1)]), r#""backendTimeout": "5s""#);
    let config = TempConfig::new("reload-timeout", &first);
    let (mut lb, addr) = start_watched(&config, &first);

    // With 5 s, a client that waits 1 s gets nothing.
    let impatient = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .new_agent();
    let before = impatient.get(format!("http://{addr}/before")).call();
    assert!(
        before.is_err(),
        "answered within 1 s with a 5 s backendTimeout: {:?}",
        before.map(|r| r.status())
    );
    assert_eq!(hanging.proxied().len(), 1);

    // The timeout and the algorithm change in one reload.
    let from = lb.mark();
    replace_by_rename(
        &config,
        &config_text(
            &servers(&[(&url, 1)]),
            r#""backendTimeout": "300ms", "algorithm": "least-connections""#,
        ),
    );
    reloaded(&mut lb, from, "algorithm least-connections");
    let started = Instant::now();
    let (status, body, _) = get(&client(), &format!("http://{addr}/after"));
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "504 after {took:?} with a 300 ms backendTimeout"
    );
    assert_eq!(hanging.proxied().len(), 2);
}

#[test]
fn invalid_config_is_refused_with_one_line_and_the_old_one_keeps_serving() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let (ua, ub) = (a.url(), b.url());
    let good = config_text(&servers(&[(&ua, 1), (&ub, 1)]), "");
    let config = TempConfig::new("reload-invalid", &good);
    let (mut lb, addr) = start_watched(&config, &good);
    let agent = client();
    let start = lb.mark();

    let weight_zero = config_text(&format!(r#""{ua}", {{"url": "{ub}", "weight": 0}}"#), "");
    replace_by_rename(&config, &weight_zero);
    let line = lb.wait_for_line_since(start, "config reload refused", RELOAD);
    assert!(
        line.contains("servers[1].weight: 0 is not allowed"),
        "{line}"
    );
    assert!(
        line.contains(config.path()),
        "the line does not name the file: {line}"
    );
    assert!(line.contains("ERROR"), "{line}");
    assert_served(&mut lb, addr, &agent, "/after-weight-0", 6, (3, 3, 0));

    // The watcher reads the unchanged bad file again every 500 ms: it must not log it again.
    let refused_once = lb.mark();
    let again = lb.find_since(refused_once, "refused", Duration::from_millis(1200));
    assert_eq!(again, None, "the same bad file was refused again");
    replace_by_rename(&config, &good.replace("]}", "],}"));
    let line = lb.wait_for_line_since(start, "invalid JSON at line", RELOAD);
    assert!(line.contains("config reload refused"), "{line}");
    assert_served(&mut lb, addr, &agent, "/after-bad-json", 6, (3, 3, 0));

    replace_by_rename(
        &config,
        &config_text(&servers(&[(&ua, 1)]), r#""algoritm": "ip-hash""#),
    );
    let line = lb.wait_for_line_since(start, "\"algoritm\": unknown key", RELOAD);
    assert!(line.contains("config reload refused"), "{line}");
    assert_served(&mut lb, addr, &agent, "/after-typo", 6, (3, 3, 0));

    // The watcher is still alive: a valid file is applied.
    replace_by_rename(&config, &config_text(&servers(&[(&ua, 1)]), ""));
    reloaded(&mut lb, start, &summary(&[(&ua, 1)]));
    assert_served(&mut lb, addr, &agent, "/after-fix", 4, (4, 0, 0));

    assert_eq!(
        lb.count_since(start, "refused"),
        3,
        "one line per bad file:\n{}",
        lb.log[start..].join("\n")
    );
    assert_eq!(
        lb.count_since(start, "config reloaded"),
        1,
        "a refused config was applied:\n{}",
        lb.log[start..].join("\n")
    );
}

#[test]
fn listen_address_change_is_logged_and_the_old_port_keeps_serving() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let (ua, ub) = (a.url(), b.url());
    let first = config_text(&servers(&[(&ua, 1), (&ub, 1)]), "");
    let config = TempConfig::new("reload-port", &first);
    let (mut lb, addr) = start_watched(&config, &first);
    let elsewhere = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");

    let moved = config_text(&servers(&[(&ua, 1)]), "")
        .replace("\"127.0.0.1:0\"", &format!("\"{elsewhere}\""));
    let from = lb.mark();
    replace_by_rename(&config, &moved);
    let warning = lb.wait_for_line_since(from, "cannot change while tinylb runs", RELOAD);
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("port"),
        "the warning does not name the key: {warning}"
    );
    // The rest of the file is applied: b is gone, and the summary keeps the old address.
    let line = reloaded(&mut lb, from, &summary(&[(&ua, 1)]));
    assert!(line.contains("listen 127.0.0.1:0,"), "{line}");
    assert_served(&mut lb, addr, &client(), "/old-port", 6, (6, 0, 0));
    assert!(
        TcpStream::connect(elsewhere).is_err(),
        "tinylb started listening on {elsewhere}"
    );
}

#[test]
fn edit_made_while_tinylb_starts_is_not_lost() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // Takes connections into the kernel's backlog and never answers: tinylb's start-up health
    // check waits its whole healthCheckTimeout there, so start-up lasts 1.5 s after the file
    // was read.
    let stalled = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stalled_url = format!("http://{}", stalled.local_addr().expect("bound"));
    let (ua, ub) = (a.url(), b.url());
    let text = |entries: &[(&str, u32)]| {
        format!(
            r#"{{"port": "127.0.0.1:0", "healthCheckInterval": "2s",
                "healthCheckTimeout": "1500ms", "servers": [{}]}}"#,
            servers(entries)
        )
    };
    let config = TempConfig::new(
        "reload-at-start",
        &text(&[(&ua, 1), (&stalled_url, 1), (&ub, 1)]),
    );
    let mut lb = Running::start(&config);
    // a is checked first: tinylb has loaded the file and now waits on the stalled backend.
    lb.wait_for_line_since(0, &format!("backend {ua} is up"), WAIT);
    replace_by_rename(&config, &text(&[(&ub, 1)]));
    let addr = lb.listening_addr();
    reloaded(&mut lb, 0, &summary(&[(&ub, 1)]));
    assert_served(&mut lb, addr, &client(), "/edited", 4, (0, 4, 0));
}

// ---------------------------------------------------------------------------------------------
// Reloads under load
// ---------------------------------------------------------------------------------------------

/// Backend URLs with their weights.
type Servers<'a> = Vec<(&'a str, u32)>;

/// What one client connection saw.
#[derive(Debug, Default)]
struct ClientReport {
    ok: usize,
    failures: Vec<String>,
}

/// Reads one response on a keep-alive connection: status and body; a `Connection: close` is a
/// failure too.
fn next_answer(reader: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let response = read_full_response(reader, false).map_err(|e| e.to_string())?;
    if response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        return Err(format!("{} with Connection: close", response.status));
    }
    Ok((response.status, response.text()))
}

/// One keep-alive connection sending GETs until `stop`: every answer must be 200 from a
/// backend, and the connection must stay open throughout.
fn keep_alive_client(addr: SocketAddr, id: usize, path: &str, stop: &AtomicBool) -> ClientReport {
    let mut report = ClientReport::default();
    let (mut writer, mut reader) = keep_alive_connection(addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        i += 1;
        let target = format!("{path}?client={id}&i={i}");
        let request = format!("GET {target} HTTP/1.1\r\nHost: tinylb\r\n\r\n");
        if let Err(e) = writer.write_all(request.as_bytes()) {
            report.failures.push(format!("request {i}: send: {e}"));
            return report;
        }
        match next_answer(&mut reader) {
            Ok((200, body)) if body.contains(&format!("target {target}\n")) => report.ok += 1,
            Ok((status, body)) => report
                .failures
                .push(format!("request {i}: {status} {body}")),
            Err(e) => {
                report.failures.push(format!("request {i}: {e}"));
                return report; // the connection is gone or out of step
            }
        }
    }
    report
}

#[test]
fn no_request_fails_and_no_connection_drops_during_reloads_under_load() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let (ua, ub, uc) = (a.url(), b.url(), c.url());
    let first = config_text(&servers(&[(&ua, 1), (&ub, 1)]), "");
    let config = TempConfig::new("reload-load", &first);
    let (mut lb, addr) = start_watched(&config, &first);
    let start = lb.mark();

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|id| {
            let stop = Arc::clone(&stop);
            // One client keeps a slow request in flight most of the time, so reloads land while
            // backends (soon removed ones too) are serving.
            let path = if id == 0 { "/slow/150" } else { "/load" };
            std::thread::spawn(move || keep_alive_client(addr, id, path, &stop))
        })
        .collect();
    assert!(
        wait_until(WAIT, || a.proxied_count() + b.proxied_count() >= 20),
        "no load"
    );

    // Five rewrites, in place and by rename, each a different set; a always serves.
    let rewrites: [(Servers, &str, bool); 5] = [
        (vec![(&ua, 1), (&uc, 1)], "round-robin", true),
        (vec![(&ua, 1), (&ub, 1), (&uc, 1)], "round-robin", false),
        (vec![(&ua, 3), (&uc, 1)], "weighted-round-robin", true),
        (vec![(&ua, 1), (&ub, 2)], "least-connections", false),
        (
            vec![(&ua, 2), (&ub, 1), (&uc, 1)],
            "weighted-round-robin",
            true,
        ),
    ];
    for (entries, algorithm, in_place) in &rewrites {
        let text = config_text(&servers(entries), &format!(r#""algorithm": "{algorithm}""#));
        let from = lb.mark();
        if *in_place {
            edit_in_place(&config, &text);
        } else {
            replace_by_rename(&config, &text);
        }
        reloaded(
            &mut lb,
            from,
            &format!("algorithm {algorithm}, {}", summary(entries)),
        );
    }
    // The scenario: the load stays on for about 4 s in all, the last configuration included.
    let rest = Duration::from_secs(4).saturating_sub(started.elapsed());
    std::thread::sleep(rest.max(Duration::from_millis(300)));
    stop.store(true, Ordering::SeqCst);

    let reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    assert!(failures.is_empty(), "failed during reloads: {failures:#?}");
    let ok: usize = reports.iter().map(|r| r.ok).sum();
    assert!(
        reports.iter().all(|r| r.ok >= 5),
        "a client barely ran: {reports:?}"
    );
    assert_eq!(
        ok,
        a.proxied_count() + b.proxied_count() + c.proxied_count(),
        "requests answered vs requests the backends saw"
    );
    for backend in [&a, &b, &c] {
        assert!(
            backend.proxied_count() > 0,
            "{} got nothing",
            backend.name()
        );
    }
    assert_eq!(
        lb.count_since(start, "config reloaded"),
        5,
        "{}",
        lb.log[start..].join("\n")
    );
}
