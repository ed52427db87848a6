//! Idle floods are cheap and temporary: a crowd of connections that send nothing, or trickle a
//! request head, costs a thread each only until `clientHeaderTimeout`; a normal request is
//! answered meanwhile; afterwards the server process's threads and descriptors are back where
//! they were and its memory within twice the start (the watchdog hands freed memory back).
//! The figures are printed: README's security section quotes a 5,000-connection run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::ChildLb;
use common::raw::fresh_get;
use common::{Backend, ProcStats, mib, wait_until};

const IDLE: usize = 1000;
const TRICKLING: usize = 500;

#[test]
fn an_idle_and_trickling_crowd_is_closed_at_the_head_deadline_and_leaves_nothing_behind() {
    tinylb::client::socket_options::raise_open_files_limit().expect("raise the fd limit");
    let backend = Backend::start("a");
    // clientTimeout far beyond the test: only the head deadline can end the crowd in time.
    let lb = ChildLb::start(
        "idle-floods",
        &[backend.url()],
        r#""clientTimeout": "60s", "clientHeaderTimeout": "2s", "healthCheckInterval": "1s""#,
    );
    let addr = lb.addr;
    assert_eq!(fresh_get(addr, "/warm", Duration::from_secs(5)), Some(200));
    let server = lb.pid();
    let before = ProcStats::of(server);

    let mut crowd: Vec<TcpStream> = Vec::with_capacity(IDLE + TRICKLING);
    for i in 0..IDLE + TRICKLING {
        let mut stream = TcpStream::connect(addr).expect("connect");
        if i >= IDLE {
            stream
                .write_all(b"GET /never HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("begin a head");
        }
        crowd.push(stream);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        ProcStats::of(server).threads >= before.threads + (IDLE + TRICKLING) as i64 / 2
    }));
    let crowded = ProcStats::of(server);
    let asked = Instant::now();
    let normal = fresh_get(addr, "/normal", Duration::from_secs(5));
    let took = asked.elapsed();
    eprintln!("with the crowd open, a normal request took {took:?}");
    assert_eq!(
        normal,
        Some(200),
        "a normal request is answered beside the crowd"
    );

    // tinylb closes the crowd itself: nothing here closes a socket before it.
    let recovered = wait_until(Duration::from_secs(30), || {
        let now = ProcStats::of(server);
        now.threads <= before.threads + 4 && now.fds <= before.fds + 4
    });
    let after = ProcStats::of(server);
    let answered_408 = crowd[IDLE..]
        .iter()
        .filter(|stream| {
            let mut stream: &TcpStream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 408"
        })
        .count();
    drop(crowd);
    eprintln!(
        "server process: before {} threads, {} fds, {:.1} MiB; crowded {} threads, {} fds, \
         {:.1} MiB; after {} threads, {} fds, {:.1} MiB; {answered_408} of {TRICKLING} \
         trickled heads answered 408",
        before.threads,
        before.fds,
        mib(before.rss_kib),
        crowded.threads,
        crowded.fds,
        mib(crowded.rss_kib),
        after.threads,
        after.fds,
        mib(after.rss_kib)
    );
    assert!(
        recovered,
        "threads and descriptors not back within 30 s: {after:?}"
    );
    assert_eq!(answered_408, TRICKLING, "every trickled head gets 408");
    // The watchdog gives memory back a look or two after the threads end.
    let memory_back = wait_until(Duration::from_secs(5), || {
        ProcStats::of(server).rss_kib <= before.rss_kib * 2
    });
    let rss = ProcStats::of(server).rss_kib;
    assert!(
        memory_back,
        "RSS {:.1} MiB after, {:.1} MiB before",
        mib(rss),
        mib(before.rss_kib)
    );
    assert_eq!(
        backend.proxied_count(),
        2,
        "nothing of the crowd was forwarded"
    );
}
