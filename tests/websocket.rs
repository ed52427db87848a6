//! WebSocket through tinylb, with a real WebSocket implementation (tungstenite) on both ends:
//! frames of every size both ways, ping/pong, a clean close, a client that vanishes, a backend
//! that declines, the `maxTunnels` bound and the idle timeout, tunnels not holding workers, and
//! shutdown. tinylb runs as its own process, so its threads and descriptors can be counted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::process::ChildLb;
use common::raw::{RawServer, peek_head};
use common::{open_fds, raw_exchange, read_response, status_json, wait_until};
use parking_lot::Mutex;
use tungstenite::{Message, WebSocket};

/// What the test backend does with a WebSocket handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Accepts it and echoes every text and binary message.
    Echo,
    /// Answers 403 with a short body, as a server that does not want this client would.
    Decline,
}

/// A backend that answers health checks with 200 and handshakes as its [`Mode`] says.
struct WsBackend {
    server: RawServer,
    /// WebSocket connections it is serving right now.
    open: Arc<AtomicUsize>,
    /// Every handshake head it received.
    handshakes: Arc<Mutex<Vec<String>>>,
}

impl WsBackend {
    fn start(mode: Mode) -> WsBackend {
        let open = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (open, handshakes) = (Arc::clone(&open), Arc::clone(&handshakes));
            RawServer::start(move |stream, _, _| serve(stream, mode, &open, &handshakes))
        };
        WsBackend {
            server,
            open,
            handshakes,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, mode: Mode, open: &AtomicUsize, handshakes: &Mutex<Vec<String>>) {
    let Some(head) = peek_head(&stream) else {
        return;
    };
    if !head.to_ascii_lowercase().contains("upgrade: websocket") {
        // A health check (HEAD /) or a plain request.
        let mut stream = stream;
        let _ = stream.read(&mut vec![0; head.len()]);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        return;
    }
    handshakes.lock().push(head.clone());
    if mode == Mode::Decline {
        let mut stream = stream;
        let _ = stream.read(&mut vec![0; head.len()]);
        let _ = stream.write_all(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nno websockets here!\n",
        );
        return;
    }
    let Ok(mut socket) = tungstenite::accept(stream) else {
        return;
    };
    open.fetch_add(1, Ordering::SeqCst);
    loop {
        match socket.read() {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if socket.send(message).is_err() {
                    break;
                }
            }
            // Pongs to pings and the answer to a close are queued by tungstenite and sent by
            // the next read.
            Ok(_) => {}
            Err(_) => break,
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// tinylb as a child process, with its admin listener.
struct Lb {
    child: ChildLb,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Lb {
    fn start(label: &str, backends: &[&WsBackend], extra: &str) -> Lb {
        let urls: Vec<String> = backends.iter().map(|b| b.url()).collect();
        let keys = [r#""adminAddress": "127.0.0.1:0""#, extra]
            .into_iter()
            .filter(|keys| !keys.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        let mut child = ChildLb::start(&format!("ws-{label}"), &urls, &keys);
        let admin = child.run.admin_addr_since(0);
        Lb {
            addr: child.addr,
            child,
            admin,
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Threads named `tunnel-up` or `tunnel-down`.
    fn tunnel_threads(&self) -> usize {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.trim().starts_with("tunnel-"))
            })
            .count()
    }

    fn fds(&self) -> usize {
        open_fds(self.pid())
    }

    /// `/status.json`.
    fn status(&self) -> serde_json::Value {
        status_json(self.admin)
    }

    /// `/status.json`'s `tunnels` object.
    fn tunnel_status(&self) -> serde_json::Value {
        self.status()["tunnels"].clone()
    }

    /// A POST to the admin listener, such as a drain.
    fn admin_post(&self, path: &str) {
        let admin = self.admin;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Tinylb-Admin: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange(admin, request.as_bytes(), Duration::from_secs(5));
        assert!(
            answer.starts_with(b"HTTP/1.1 2"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    fn metrics(&self) -> String {
        let admin = self.admin;
        let answer = raw_exchange(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// A WebSocket client connected through tinylb; reads time out rather than hang.
fn connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect to tinylb");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (socket, response) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("the handshake passes");
    assert_eq!(response.status(), 101);
    socket
}

fn expect_echo(socket: &mut WebSocket<TcpStream>, message: Message) {
    socket.send(message.clone()).expect("send");
    let echoed = socket.read().expect("an echo");
    assert_eq!(echoed.len(), message.len());
    assert!(
        echoed == message,
        "the echo differs ({} bytes)",
        message.len()
    );
}

#[test]
fn text_and_binary_frames_from_1_byte_to_1_mb_pass_both_ways() {
    let backend = WsBackend::start(Mode::Echo);
    let lb = Lb::start("frames", &[&backend], "");
    let mut socket = connect(lb.addr, "/chat?room=1");
    for size in [1usize, 125, 126, 65_535, 65_536, 300_000, 1 << 20] {
        let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        expect_echo(&mut socket, Message::text(text));
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        expect_echo(&mut socket, Message::binary(bytes));
    }
    socket.close(None).expect("close");
    while socket.read().is_ok() {}

    let handshake = backend.handshakes.lock()[0].to_ascii_lowercase();
    assert!(
        handshake.starts_with("get /chat?room=1 http/1.1\r\n"),
        "{handshake}"
    );
    assert!(
        handshake.contains("\r\nconnection: upgrade\r\n"),
        "{handshake}"
    );
    assert!(
        handshake.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{handshake}"
    );
    assert!(handshake.contains("\r\nsec-websocket-key: "), "{handshake}");
}

#[test]
fn ping_gets_the_backends_pong_and_a_clean_close_ends_the_tunnel() {
    let backend = WsBackend::start(Mode::Echo);
    let lb = Lb::start("ping", &[&backend], "");
    let fds_before = lb.fds();
    let mut socket = connect(lb.addr, "/");
    assert!(wait_until(Duration::from_secs(5), || lb.tunnel_threads() == 2));
    assert_eq!(lb.tunnel_status()["open"], 1);

    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match socket.read().expect("a pong") {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    socket.close(None).expect("close");
    let mut closed_cleanly = false;
    loop {
        match socket.read() {
            Ok(Message::Close(_)) => closed_cleanly = true,
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("the close handshake failed: {error}"),
        }
    }
    assert!(closed_cleanly, "the backend's close frame came through");
    drop(socket);

    assert!(
        wait_until(Duration::from_secs(5), || lb.tunnel_threads() == 0),
        "the tunnel's threads end with it"
    );
    assert!(
        wait_until(Duration::from_secs(10), || lb.fds() <= fds_before),
        "the tunnel's descriptors are closed: {} now, {fds_before} before",
        lb.fds()
    );
    assert_eq!(lb.tunnel_status()["open"], 0);
    assert_eq!(lb.tunnel_status()["opened"], 1);
    assert_eq!(backend.open(), 0);
}

#[test]
fn a_client_that_vanishes_frees_its_tunnel_and_the_backend_connection() {
    let backend = WsBackend::start(Mode::Echo);
    let lb = Lb::start("vanish", &[&backend], "");
    let fds_before = lb.fds();
    // One client leaves with a FIN and no close frame, the other with a reset.
    let polite = connect(lb.addr, "/");
    let rude = connect(lb.addr, "/");
    assert!(wait_until(Duration::from_secs(5), || backend.open() == 2));
    drop(polite);
    let stream = rude.into_inner();
    set_linger_zero(&stream);
    drop(stream);

    assert!(
        wait_until(Duration::from_secs(5), || backend.open() == 0),
        "the backend's connections are closed"
    );
    assert!(wait_until(Duration::from_secs(5), || lb.tunnel_threads() == 0));
    assert!(
        wait_until(Duration::from_secs(10), || lb.fds() <= fds_before),
        "descriptors: {} now, {fds_before} before",
        lb.fds()
    );
    assert_eq!(lb.tunnel_status()["open"], 0);
}

/// Makes the next close send a reset instead of a FIN.
fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct that lives for the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0);
}

#[test]
fn a_hundred_open_websockets_do_not_hold_the_workers() {
    let backend = WsBackend::start(Mode::Echo);
    // Two workers: if a tunnel held one, the third WebSocket would already starve requests.
    let lb = Lb::start("many", &[&backend], r#""workers": 2"#);
    let mut sockets: Vec<_> = (0..100).map(|_| connect(lb.addr, "/")).collect();
    assert!(wait_until(Duration::from_secs(10), || backend.open() == 100));
    assert_eq!(lb.tunnel_status()["open"], 100);
    assert!(
        wait_until(Duration::from_secs(5), || lb.tunnel_threads() == 200),
        "two threads per tunnel: {}",
        lb.tunnel_threads()
    );

    for n in 0..50 {
        let answer = raw_exchange(
            lb.addr,
            format!("GET /plain/{n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        let (status, body) = read_response(&mut &answer[..]).expect("an answer");
        assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    }
    // And every tunnel still works.
    for socket in &mut sockets {
        expect_echo(socket, Message::text("still here"));
    }
}

#[test]
fn handshakes_beyond_max_tunnels_get_503_until_one_closes() {
    let backend = WsBackend::start(Mode::Echo);
    // One client address may hold all of them here: the bound under test is maxTunnels.
    let lb = Lb::start(
        "max",
        &[&backend],
        r#""maxTunnels": 2, "clientMaxTunnels": 2"#,
    );
    let first = connect(lb.addr, "/");
    let _second = connect(lb.addr, "/");

    let stream = TcpStream::connect(lb.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match tungstenite::client(format!("ws://{}/", lb.addr), stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 503)
        }
        Err(other) => panic!("expected a 503, got {other}"),
        Ok(_) => panic!("a third tunnel opened despite maxTunnels 2"),
    }
    let status = lb.tunnel_status();
    assert_eq!(
        (status["open"].as_u64(), status["max"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(status["refused"], 1);
    assert!(lb.metrics().contains("\ntinylb_tunnels_refused_total 1\n"));

    drop(first);
    assert!(wait_until(
        Duration::from_secs(5),
        || lb.tunnel_status()["open"] == 1
    ));
    let mut third = connect(lb.addr, "/");
    expect_echo(&mut third, Message::text("room again"));
}

#[test]
fn a_tunnel_idle_for_tunnel_idle_timeout_is_closed() {
    let backend = WsBackend::start(Mode::Echo);
    let lb = Lb::start("idle", &[&backend], r#""tunnelIdleTimeout": "600ms""#);
    let mut busy = connect(lb.addr, "/");
    let mut quiet = connect(lb.addr, "/");
    // The scenario: the busy one talks every 200 ms for 1.5 s and must survive; the quiet one
    // must not.
    for _ in 0..8 {
        expect_echo(&mut busy, Message::text("tick"));
        std::thread::sleep(Duration::from_millis(200));
    }
    match quiet.read() {
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::Protocol(_)) => {}
        Err(tungstenite::Error::Io(error)) => panic!("the quiet tunnel was not closed: {error}"),
        other => panic!("unexpected: {other:?}"),
    }
    expect_echo(&mut busy, Message::text("still ticking"));
    assert!(wait_until(Duration::from_secs(5), || backend.open() == 1));
}

#[test]
fn a_backend_that_declines_the_upgrade_is_relayed_as_is() {
    let backend = WsBackend::start(Mode::Decline);
    let lb = Lb::start("decline", &[&backend], "");
    let answer = raw_exchange(
        lb.addr,
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
    assert!(text.ends_with("no websockets here!\n"), "{text}");
    // The handshake held a tunnel's place until the refusal was relayed; it gives it back.
    assert!(
        wait_until(Duration::from_secs(5), || lb.tunnel_status()["open"] == 0),
        "{}",
        lb.tunnel_status()
    );
}

#[test]
fn sigterm_gives_open_tunnels_the_grace_period_then_closes_them() {
    let backend = WsBackend::start(Mode::Echo);
    let mut lb = Lb::start("sigterm", &[&backend], r#""shutdownGracePeriod": "1500ms""#);
    let mut socket = connect(lb.addr, "/");
    expect_echo(&mut socket, Message::text("before"));
    lb.child.run.signal("TERM");
    lb.child
        .run
        .wait_for_line("waiting for 1 open tunnels", Duration::from_secs(5));
    // Within the grace period the tunnel still works.
    expect_echo(&mut socket, Message::text("during the grace period"));
    let exit = lb.child.run.wait_exit(Duration::from_secs(10));
    let exit = exit.unwrap_or_else(|| panic!("tinylb exits; log:\n{}", lb.child.run.log_text()));
    assert!(exit.success(), "{exit:?}");
    assert!(
        lb.child.run.log_text().contains("closed 1 tunnels"),
        "{}",
        lb.child.run.log_text()
    );
    assert!(socket.read().is_err(), "the tunnel was closed at the end");
}

#[test]
fn least_connections_counts_open_tunnels_as_load() {
    let a = WsBackend::start(Mode::Echo);
    let b = WsBackend::start(Mode::Echo);
    let lb = Lb::start("least", &[&a, &b], r#""algorithm": "least-connections""#);
    // Three WebSockets to a while b is drained...
    lb.admin_post("/backends/1/drain");
    let _on_a: Vec<_> = (0..3).map(|_| connect(lb.addr, "/")).collect();
    assert!(wait_until(Duration::from_secs(5), || a.open() == 3));
    lb.admin_post("/backends/1/undrain");
    // ...then two more: both must go to b, the backend with fewer open connections. Counting
    // only requests in flight (none between handshakes) would alternate them.
    let _on_b: Vec<_> = (0..2).map(|_| connect(lb.addr, "/")).collect();
    assert!(wait_until(Duration::from_secs(5), || b.open() == 2));
    assert_eq!(a.open(), 3);
    // tinylb counts a tunnel once it has relayed the backend's 101, a moment after the backend
    // sees it open.
    let mut tunnels: Vec<u64> = Vec::new();
    let counted = wait_until(Duration::from_secs(5), || {
        tunnels = lb.status()["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|backend| backend["tunnels"].as_u64().expect("a count"))
            .collect();
        tunnels == [3, 2]
    });
    assert!(counted, "tunnels per backend on status.json: {tunnels:?}");
}
