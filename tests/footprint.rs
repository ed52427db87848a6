//! What tinylb's memory grows by per pooled backend connection, on the binary: with the idle
//! budget raised to the number of backends, each backend it has talked to keeps a keep-alive
//! connection in its pool, and ureq gives every connection an input and an output buffer,
//! allocated and zero-filled when it opens. With ureq's defaults (128 KiB each way) that was
//! 256 KiB of resident memory per pooled connection, 136-146 MiB with 500 backends; sized from
//! the head limits (32 KiB in, 68 KiB out) it is about 100 KiB. (By default
//! `backendKeepAliveTotal` keeps far fewer in all: tests/backend_pool.rs.)

mod common;
use common::process::ChildLb;
use common::raw::keep_alive_connection;
use common::{Backend, open_fds, proc_status, read_response};

use std::io::Write;

/// Backends behind the one tinylb: enough that their pooled connections dwarf the noise of a
/// few hundred requests (allocator arenas, worker buffers).
const BACKENDS: usize = 100;
/// Requests per backend: the first opens its pooled connection, the others reuse it.
const ROUNDS: usize = 3;
/// Growth allowed per pooled connection: well above the ~100 KiB of ureq's sized buffers and
/// the bookkeeping around them, well below the 256 KiB of ureq's default buffers.
const BOUND_KIB_PER_BACKEND: u64 = 160;

/// Starts tinylb with 100 backends and sends 300 sequential GETs on one keep-alive client
/// connection: round robin sends each backend three, so each gets exactly one pooled connection
/// (the descriptor count shows them). The resident memory this adds, divided by the number of
/// backends, must stay under 160 KiB: 256 KiB each before ureq's buffers were sized from the
/// head limits. Health checks run once at start-up only (the interval is a minute), so their
/// connections (fresh ones, with ureq's default buffers) do not come and go while measuring.
#[test]
fn pooled_backend_connections_cost_well_under_256_kib_each() {
    let backends: Vec<Backend> = (0..BACKENDS)
        .map(|i| Backend::start(&format!("b{i}")))
        .collect();
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let mut lb = ChildLb::start(
        "footprint",
        &urls,
        &format!(r#""healthCheckInterval": "60s", "backendKeepAliveTotal": {BACKENDS}"#),
    );
    let (addr, pid) = (lb.addr, lb.pid());
    let rss_before = proc_status(pid, "VmRSS");
    let fds_before = open_fds(pid);

    let (mut writer, mut reader) = keep_alive_connection(addr);
    for i in 0..BACKENDS * ROUNDS {
        writer
            .write_all(format!("GET /footprint/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("send a request");
        let (status, body) =
            read_response(&mut reader).unwrap_or_else(|e| panic!("request {i}: no answer: {e}"));
        assert_eq!(
            status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    let rss_after = proc_status(pid, "VmRSS");
    let fds_after = open_fds(pid);
    let hwm = proc_status(pid, "VmHWM");
    let per_backend: Vec<usize> = backends.iter().map(Backend::proxied_count).collect();
    let (fewest, most) = (
        per_backend.iter().min().copied().unwrap_or(0),
        per_backend.iter().max().copied().unwrap_or(0),
    );
    let growth = rss_after.saturating_sub(rss_before);
    let growth_per_backend = growth / BACKENDS as u64;
    let report = format!(
        "{BACKENDS} backends, {} GETs on one client connection (each backend got {fewest} to \
         {most}): VmRSS {rss_before} -> {rss_after} KiB (+{growth} KiB, {growth_per_backend} KiB \
         per backend; bound {BOUND_KIB_PER_BACKEND}), VmHWM {hwm} KiB, fds {fds_before} -> \
         {fds_after}",
        BACKENDS * ROUNDS
    );
    eprintln!("footprint: {report}");
    drop((writer, reader));

    assert!(fewest >= 1, "a backend got no request: {report}");
    assert!(
        fds_after >= fds_before + BACKENDS,
        "fewer than one pooled connection per backend: {report}"
    );
    assert!(
        growth_per_backend < BOUND_KIB_PER_BACKEND,
        "each pooled backend connection costs {growth_per_backend} KiB of memory: {report}"
    );
    assert!(
        lb.run.child.0.try_wait().expect("try_wait").is_none(),
        "tinylb exited: {}",
        lb.run.log_text()
    );
}
