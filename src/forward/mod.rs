//! One request, start to finish: check the head, pick a backend, send the request there with
//! ureq (body streamed from the client), relay the answer, and retry on another backend when
//! the first could not take the request. Every failure maps to one status in one place
//! (`Failure::status`). An upgrade (a WebSocket handshake) takes the side road in
//! [`tunnelling`].

mod tunnelling;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use std::time::Instant;

use tiny_http::{HTTPVersion, Method, Request};
use ureq::http::{self, HeaderName, HeaderValue};
use ureq::{SendBody, Timeout};

use crate::access_log::AccessLine;
use crate::backend::{Backend, InFlight};
use crate::balancer::Balancer;
use crate::chunked::ChunkedReader;
use crate::hangup::Hangups;
use crate::headers::ConnectionTokens;
use crate::relay::{self, Buffers, ClientSide, Relayed};
use crate::request_check::{self, BodyFraming, Head, Rejection};
use crate::stats::ErrorKind;
use crate::tunnel::{TunnelLimits, Tunnels};
use crate::upgrade::HandshakeTimeouts;

/// Everything a worker needs to forward requests, shared by all workers.
pub struct Forwarder {
    /// Picks backends and counts requests in flight.
    pub balancer: Arc<Balancer>,
    /// Ends client connections that tiny_http would keep open.
    pub hangups: Hangups,
    /// Whether to add the seed article's `X-Forwarded-Server` header (a reload may change it).
    pub forwarded_server_header: AtomicBool,
    /// Whether to write an access log line per request (a reload may change it).
    pub access_log: AtomicBool,
    /// Requests sent again after a failed attempt, for metrics.
    pub retries: AtomicU64,
    /// Open WebSocket (and other upgrade) tunnels and their limits.
    pub tunnels: Arc<Tunnels>,
    /// Timeouts for a tunnel's handshake, which does not go through ureq.
    handshake_timeouts: RwLock<HandshakeTimeouts>,
}

impl Forwarder {
    /// A forwarder for this config, with the switches a reload may change later.
    pub fn new(
        balancer: Arc<Balancer>,
        hangups: Hangups,
        config: &crate::config::Config,
    ) -> Forwarder {
        let forwarder = Forwarder {
            balancer,
            hangups,
            forwarded_server_header: AtomicBool::new(false),
            access_log: AtomicBool::new(false),
            retries: AtomicU64::new(0),
            tunnels: Tunnels::new(tunnel_limits(config)),
            handshake_timeouts: RwLock::new(handshake_timeouts(config)),
        };
        forwarder.set_switches(config);
        forwarder
    }

    /// Takes over the switches of a (re)loaded config.
    pub fn set_switches(&self, config: &crate::config::Config) {
        self.forwarded_server_header
            .store(config.forwarded_server_header, Ordering::Relaxed);
        self.access_log.store(config.access_log, Ordering::Relaxed);
        self.tunnels.set_limits(tunnel_limits(config));
        *self.handshake_timeouts.write() = handshake_timeouts(config);
    }
}

fn tunnel_limits(config: &crate::config::Config) -> TunnelLimits {
    TunnelLimits {
        max_open: config.max_tunnels,
        idle_timeout: config.tunnel_idle_timeout,
    }
}

fn handshake_timeouts(config: &crate::config::Config) -> HandshakeTimeouts {
    HandshakeTimeouts {
        connect: config.connect_timeout,
        answer: config.backend_timeout,
    }
}

/// What the client finally got: for the access log and the statistics.
struct Outcome {
    status: u16,
    body_bytes: u64,
    backend: Option<Arc<Backend>>,
}

/// Why an attempt to forward failed, as far as the client's answer is concerned.
#[derive(Debug)]
enum Failure {
    /// Could not connect: nothing was sent, so any request may go to another backend.
    Connect(String),
    /// The backend did not answer within `backendTimeout`.
    Timeout(String),
    /// The connection closed or was reset before an answer came.
    Closed(String),
    /// The backend answered something that is not HTTP.
    Broken(String),
    /// The client's request cannot be expressed upstream (bad header value or target).
    BadRequest(&'static str),
    /// The client's own body failed (it disconnected or sent less than it announced).
    ClientBody(String),
}

impl Failure {
    /// How the failure is counted against the backend, if it is the backend's.
    fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            Failure::Connect(_) => Some(ErrorKind::Connect),
            Failure::Timeout(_) => Some(ErrorKind::Timeout),
            Failure::Closed(_) | Failure::Broken(_) => Some(ErrorKind::Broken),
            Failure::BadRequest(_) | Failure::ClientBody(_) => None,
        }
    }

    /// The one mapping from failure to status: 502 for a refused or broken backend, 504 for a
    /// slow one, 400 for a request that cannot be forwarded.
    fn status(&self) -> u16 {
        match self {
            Failure::Connect(_) | Failure::Closed(_) | Failure::Broken(_) => 502,
            Failure::Timeout(_) => 504,
            Failure::BadRequest(_) | Failure::ClientBody(_) => 400,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Failure::Connect(_) | Failure::Closed(_) | Failure::Broken(_) => "Bad Gateway",
            Failure::Timeout(_) => "Gateway Timeout",
            Failure::BadRequest(reason) => reason,
            Failure::ClientBody(_) => "Bad Request: the request body ended early",
        }
    }
}

/// How an exchange ended when no backend answered it.
struct Failed {
    /// The last attempt's failure; `None` when no backend was available at all.
    failure: Option<Failure>,
    /// The backend of the last attempt, for the access log.
    backend: Option<Arc<Backend>>,
    /// Whether the client connection must end after the answer.
    must_close: bool,
}

/// One client exchange as relaying needs it.
struct Exchange<'a> {
    client: &'a ClientSide,
    method: &'a str,
    started: Instant,
}

/// Where a failed request goes next.
enum Retry {
    SameBackend,
    OtherBackend,
}

/// A request on its way from the intake to a worker, with the verdict of its head check.
pub struct Job {
    request: Request,
    verdict: Result<Head, Rejection>,
}

impl Forwarder {
    /// Runs on the intake thread, which sees each connection's requests in order: drops a
    /// request whose connection tinylb already ended, and marks a connection as ending when its
    /// request will be refused, so that no request tiny_http parses after it (from a body
    /// tinylb will never read) can reach a worker and a backend.
    pub fn admit(&self, request: Request) -> Option<Job> {
        let client_addr = request.remote_addr();
        if self.hangups.is_hung_up(client_addr) {
            log::debug!("dropping a request from {client_addr:?}: its connection was ended");
            // Nothing may be written: the connection was already ended.
            drop(request.into_writer());
            return None;
        }
        let verdict = request_check::check_request(&request);
        if verdict.is_err() {
            self.hangups.remember(client_addr);
        }
        Some(Job { request, verdict })
    }

    /// Answers one client request; never panics on bad input, always answers or hangs up.
    pub fn handle(&self, job: Job, buffers: &mut Buffers) {
        let started = Instant::now();
        let access = self
            .access_log
            .load(Ordering::Relaxed)
            .then(|| AccessLine::of(&job.request));
        let outcome = self.forward(job, buffers, started);
        if let Some(line) = access {
            let backend = outcome.backend.as_ref().map(|b| b.url.original.as_str());
            line.log(
                outcome.status,
                outcome.body_bytes,
                backend,
                started.elapsed(),
            );
        }
    }

    fn forward(&self, job: Job, buffers: &mut Buffers, started: Instant) -> Outcome {
        let Job {
            mut request,
            verdict,
        } = job;
        let client_addr = request.remote_addr().copied();
        let client = client_side(&request);
        let head = match verdict {
            Ok(head) => head,
            Err(rejection) => {
                let status = self.reject(request, &client, &rejection, buffers);
                return Outcome {
                    status,
                    body_bytes: 0,
                    backend: None,
                };
            }
        };
        let client_ip = client_addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        if let Some(protocols) = &head.upgrade
            && self.tunnels.limits().max_open > 0
        {
            return self.tunnel(request, &client, client_ip, protocols, buffers, started);
        }
        let framing = head.framing;
        let method = request.method().to_string();
        let idempotent = matches!(
            method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        );

        let mut tried: Vec<u64> = Vec::new();
        let mut last_failure: Option<Failure> = None;
        let mut last_backend: Option<Arc<Backend>> = None;
        'backends: while let Some(in_flight) = self.balancer.pick(client_ip, &tried) {
            let backend = Arc::clone(in_flight.backend());
            // A pooled keep-alive connection can be closed by the backend just as a request is
            // sent on it; a request that is safe to repeat gets one more try, on a fresh one.
            let mut may_retry_here = idempotent;
            loop {
                // The one retry on this backend must not take another pooled connection.
                let fresh = idempotent && !may_retry_here;
                let attempt = self.attempt(&mut request, &backend, client_addr, &head, fresh);
                let (failure, body_started) = match attempt {
                    Ok(response) => {
                        let exchange = Exchange {
                            client: &client,
                            method: &method,
                            started,
                        };
                        return self.deliver(request, response, in_flight, &exchange, buffers);
                    }
                    Err(failed) => failed,
                };
                self.charge_failure(&method, &backend, &failure);
                let replayable = !body_started;
                let next = match &failure {
                    Failure::Connect(_) => replayable.then_some(Retry::OtherBackend),
                    Failure::Closed(_) if replayable && may_retry_here => Some(Retry::SameBackend),
                    Failure::Closed(_) | Failure::Broken(_) if replayable && idempotent => {
                        Some(Retry::OtherBackend)
                    }
                    _ => None,
                };
                last_failure = Some(failure);
                if next.is_some() {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                match next {
                    Some(Retry::SameBackend) => may_retry_here = false,
                    Some(Retry::OtherBackend) => {
                        tried.push(backend.key);
                        last_backend = Some(backend);
                        continue 'backends;
                    }
                    None => {
                        last_backend = Some(backend);
                        break 'backends;
                    }
                }
            }
        }
        let must_close =
            matches!(last_failure, Some(Failure::ClientBody(_))) || framing != BodyFraming::Empty;
        let failed = Failed {
            failure: last_failure,
            backend: last_backend,
            must_close,
        };
        self.answer_failure(request, &client, failed, buffers)
    }

    /// Logs a failed attempt and charges it to its backend: counted by kind, and a backend that
    /// could not even be reached is marked down at once.
    fn charge_failure(&self, what: &str, backend: &Backend, failure: &Failure) {
        log::warn!(
            "{what} to {} failed: {}",
            backend.url.original,
            describe_failure(failure)
        );
        if let Some(kind) = failure.error_kind() {
            backend.stats.record_error(kind);
        }
        if let Failure::Connect(reason) = failure {
            backend.mark_down(reason);
        }
    }

    /// Answers with the status of the last failed attempt, or 503 when no backend was left to
    /// try.
    fn answer_failure(
        &self,
        request: Request,
        client: &ClientSide,
        failed: Failed,
        buffers: &mut Buffers,
    ) -> Outcome {
        let (status, message) = match &failed.failure {
            Some(failure) => (failure.status(), failure.message()),
            None => (503, "No healthy server available"),
        };
        let body_bytes = self.answer(
            request,
            client,
            status,
            message,
            None,
            failed.must_close,
            buffers,
        );
        Outcome {
            status,
            body_bytes,
            backend: failed.backend,
        }
    }

    /// Relays a backend's answer to the client and records it against the backend.
    fn deliver(
        &self,
        request: Request,
        response: http::Response<ureq::Body>,
        in_flight: InFlight,
        exchange: &Exchange,
        buffers: &mut Buffers,
    ) -> Outcome {
        let backend = Arc::clone(in_flight.backend());
        let client_addr = request.remote_addr().copied();
        let forwarded = self
            .forwarded_server_header
            .load(Ordering::Relaxed)
            .then_some(backend.url.original.as_str());
        let mut writer = request.into_writer();
        let outcome =
            relay::relay_response(&mut *writer, response, exchange.client, forwarded, buffers);
        drop(in_flight);
        let (status, body_bytes) = self.finish_relay(
            outcome,
            writer,
            client_addr,
            exchange.method,
            exchange.started,
        );
        backend
            .stats
            .record_answer(status, exchange.started.elapsed());
        Outcome {
            status,
            body_bytes,
            backend: Some(backend),
        }
    }

    /// Answers 503 with `Retry-After` when every worker is busy and the queue is full.
    pub fn refuse_busy(&self, job: Job, buffers: &mut Buffers) {
        let started = Instant::now();
        let Job { request, verdict } = job;
        let access = self
            .access_log
            .load(Ordering::Relaxed)
            .then(|| AccessLine::of(&request));
        let client = client_side(&request);
        let unread_body = !verdict.is_ok_and(|head| head.framing == BodyFraming::Empty);
        let body_bytes = self.answer(
            request,
            &client,
            503,
            "Service Unavailable: every worker is busy, try again shortly",
            Some("Retry-After: 1"),
            unread_body,
            buffers,
        );
        if let Some(line) = access {
            line.log(503, body_bytes, None, started.elapsed());
        }
    }

    /// Sends the request to one backend; on failure also says whether client body bytes were
    /// already consumed (then the request cannot be replayed elsewhere).
    fn attempt(
        &self,
        request: &mut Request,
        backend: &Backend,
        client_addr: Option<SocketAddr>,
        head: &Head,
        fresh_connection: bool,
    ) -> Result<http::Response<ureq::Body>, (Failure, bool)> {
        let framing = head.framing;
        let upstream = build_upstream_request(request, backend, client_addr, framing)
            .map_err(|f| (f, false))?;
        let mut body = ClientBody::new(request, head, &self.hangups, client_addr);
        let agent = if fresh_connection {
            backend.fresh_agent()
        } else {
            backend.agent()
        };
        let result = match framing {
            BodyFraming::Empty => agent.run(upstream),
            BodyFraming::Length(_) | BodyFraming::Chunked => {
                agent.run(upstream.map(|()| SendBody::from_reader(&mut body)))
            }
        };
        let body_started = body.bytes_read > 0;
        match result {
            Ok(response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => Err((
                Failure::Broken("backend switched protocols on a request without Upgrade".into()),
                body_started,
            )),
            Ok(response) => Ok(response),
            Err(_) if body.failure.is_some() => Err((
                Failure::ClientBody(body.failure.take().unwrap_or_default()),
                body_started,
            )),
            Err(error) => Err((classify(&error), body_started)),
        }
    }

    /// After relaying: log, and end the connection where the framing requires it.
    fn finish_relay(
        &self,
        outcome: Relayed,
        writer: Box<dyn Write + Send>,
        client_addr: Option<SocketAddr>,
        method: &str,
        started: Instant,
    ) -> (u16, u64) {
        // Hang up while still holding the writer: once it is dropped, tiny_http may write an
        // answer of its own (to bytes it parsed after this request) before the socket closes.
        let result = match outcome {
            Relayed::Complete { status, body_bytes } => {
                log::debug!(
                    "{method} -> {status}, {body_bytes} bytes in {:?}",
                    started.elapsed()
                );
                (status, body_bytes)
            }
            Relayed::ClientGone {
                status,
                body_bytes,
                error,
            } => {
                log::debug!("{method} -> {status}: client went away ({error})");
                self.hangups.hang_up(client_addr.as_ref());
                (status, body_bytes)
            }
            Relayed::BackendFailed {
                status,
                body_bytes,
                error,
            } => {
                log::warn!(
                    "{method} -> {status}: backend body broke off ({error}); closing the client connection"
                );
                self.hangups.hang_up(client_addr.as_ref());
                (status, body_bytes)
            }
            Relayed::CloseDelimited { status, body_bytes } => {
                log::debug!(
                    "{method} -> {status}, {body_bytes} bytes, connection closed to end the body"
                );
                self.hangups.hang_up(client_addr.as_ref());
                (status, body_bytes)
            }
        };
        drop(writer);
        result
    }

    /// Refuses a request before forwarding anything, and ends its connection: the unread body
    /// would otherwise be parsed as the next request.
    fn reject(
        &self,
        request: Request,
        client: &ClientSide,
        rejection: &Rejection,
        buffers: &mut Buffers,
    ) -> u16 {
        log::info!(
            "refused {} {} from {:?}: {}",
            request.method(),
            request.url(),
            request.remote_addr(),
            rejection.reason
        );
        self.answer(
            request,
            client,
            rejection.status,
            rejection.reason,
            None,
            true,
            buffers,
        );
        rejection.status
    }

    /// Writes tinylb's own answer; `must_close` ends the connection after it.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        request: Request,
        client: &ClientSide,
        status: u16,
        message: &str,
        extra_header: Option<&str>,
        must_close: bool,
        buffers: &mut Buffers,
    ) -> u64 {
        let client_addr = request.remote_addr().copied();
        if must_close {
            // Before the request (and its body reader) goes back to tiny_http.
            self.hangups.remember(client_addr.as_ref());
        }
        let mut writer = request.into_writer();
        let written = relay::write_simple(
            &mut *writer,
            client,
            status,
            message,
            extra_header,
            must_close,
            buffers,
        );
        if must_close {
            // Before the writer is dropped, as in `finish_relay`.
            self.hangups.close_socket(client_addr.as_ref());
        }
        drop(writer);
        match written {
            Ok(()) if client.head_request => 0,
            Ok(()) => message.len() as u64 + 1,
            Err(error) => {
                log::debug!("could not send {status} to {client_addr:?}: {error}");
                0
            }
        }
    }
}

/// What the request says about how its answer must be written.
fn client_side(request: &Request) -> ClientSide {
    ClientSide {
        http10: *request.http_version() == HTTPVersion(1, 0),
        keep_alive: request_check::client_keeps_alive(request),
        head_request: *request.method() == Method::Head,
    }
}

/// Builds the upstream request head: same method, path and query byte for byte, end-to-end
/// headers kept in order (repeated ones too), hop-by-hop ones dropped, X-Forwarded-* added.
fn build_upstream_request(
    request: &Request,
    backend: &crate::backend::Backend,
    client_addr: Option<SocketAddr>,
    framing: BodyFraming,
) -> Result<http::Request<()>, Failure> {
    let target = origin_form(request.url())
        .ok_or(Failure::BadRequest("Bad Request: invalid request target"))?;
    let uri = format!("{}{}{}", backend.url.origin, backend.url.prefix, target);
    let method = http::Method::from_bytes(request.method().as_str().as_bytes())
        .map_err(|_| Failure::BadRequest("Bad Request: invalid method"))?;
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .version(http::Version::HTTP_11);
    let headers = builder
        .headers_mut()
        .ok_or(Failure::BadRequest("Bad Request: invalid request target"))?;

    let raw = request.headers();
    let tokens = ConnectionTokens::from_headers(
        raw.iter()
            .map(|h| (h.field.as_str().as_str(), h.value.as_str().as_bytes())),
    );
    let mut forwarded_for: Option<String> = None;
    let mut host: Option<&str> = None;
    for header in raw {
        let name = header.field.as_str().as_str();
        let value = header.value.as_str();
        if tokens.is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            let list = forwarded_for.get_or_insert_with(String::new);
            if !list.is_empty() {
                list.push_str(", ");
            }
            list.push_str(value.trim());
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            host = Some(value);
            // An absolute-form target names the host itself (RFC 9112, 3.2.2): it wins.
            if let Some(authority) = target_authority(request.url()) {
                host = Some(authority);
                let value = HeaderValue::from_str(authority)
                    .map_err(|_| Failure::BadRequest("Bad Request: invalid request target"))?;
                headers.append(http::header::HOST, value);
                continue;
            }
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Failure::BadRequest("Bad Request: invalid header name"))?;
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| Failure::BadRequest("Bad Request: invalid header value"))?;
        headers.append(name, value);
    }
    if let Some(client) = client_addr {
        let list = forwarded_for.get_or_insert_with(String::new);
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push_str(&client.ip().to_string());
    }
    let mut add = |name: &'static str, value: &str| -> Result<(), Failure> {
        let value = HeaderValue::from_str(value)
            .map_err(|_| Failure::BadRequest("Bad Request: invalid header value"))?;
        headers.insert(HeaderName::from_static(name), value);
        Ok(())
    };
    if let Some(list) = &forwarded_for {
        add("x-forwarded-for", list)?;
    }
    add("x-forwarded-proto", "http")?;
    if let Some(host) = host {
        add("x-forwarded-host", host)?;
    }
    match framing {
        BodyFraming::Length(n) => add("content-length", &n.to_string())?,
        // ureq would send an empty chunked body for these methods; say "no body" plainly.
        BodyFraming::Empty
            if matches!(
                method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            ) =>
        {
            add("content-length", "0")?
        }
        _ => {}
    }
    builder
        .body(())
        .map_err(|_| Failure::BadRequest("Bad Request: invalid request target"))
}

/// The path and query to send upstream: an origin-form target as received, or the path of an
/// absolute-form one (`GET http://host/path`), which HTTP/1.1 servers must accept.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// The authority of an absolute-form target (`http://example.com/x` gives `example.com`).
fn target_authority(target: &str) -> Option<&str> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    (!authority.is_empty()).then_some(authority)
}

/// The client's request body as ureq reads it: counts what was consumed (a consumed body cannot
/// be replayed on another backend) and turns a short body into an error, because ureq spins
/// forever on a reader that ends before Content-Length.
struct ClientBody<'a> {
    source: BodySource<'a>,
    remaining: Option<u64>,
    bytes_read: u64,
    failure: Option<String>,
    /// For chunked bodies decoded by tiny_http: to ask whether an end of body was really the
    /// client leaving.
    hangups: &'a Hangups,
    client: Option<SocketAddr>,
}

/// Where the body's bytes come from.
enum BodySource<'a> {
    /// No body: nothing is read at all.
    None,
    /// tiny_http's body reader: a decoded chunked body, or one framed by Content-Length.
    Framed(&'a mut dyn Read),
    /// A chunked body in the raw bytes tiny_http hands over for `Connection: upgrade`, decoded
    /// here (that connection ends after this request, so reading ahead does no harm).
    RawChunked(ChunkedReader<io::BufReader<&'a mut dyn Read>>),
}

impl<'a> ClientBody<'a> {
    fn new(
        request: &'a mut Request,
        head: &Head,
        hangups: &'a Hangups,
        client: Option<SocketAddr>,
    ) -> ClientBody<'a> {
        let remaining = match head.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        // Only touch the reader when there is a body: as_reader() sends `100 Continue`.
        let source = match head.framing {
            BodyFraming::Empty => BodySource::None,
            BodyFraming::Chunked if head.body_is_raw => {
                BodySource::RawChunked(ChunkedReader::new(io::BufReader::new(request.as_reader())))
            }
            BodyFraming::Length(_) | BodyFraming::Chunked => {
                BodySource::Framed(request.as_reader())
            }
        };
        ClientBody {
            source,
            remaining,
            bytes_read: 0,
            failure: None,
            hangups,
            client,
        }
    }
}

impl Read for ClientBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = match self.remaining {
            Some(0) => return Ok(0),
            Some(n) => buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let (result, decoded_by_tiny_http) = match &mut self.source {
            BodySource::None => return Ok(0),
            BodySource::Framed(inner) => (inner.read(&mut buf[..limit]), true),
            BodySource::RawChunked(inner) => (inner.read(&mut buf[..limit]), false),
        };
        let read = match result {
            // tiny_http's chunked decoder ends a body cut mid-chunk as if it were complete.
            Ok(0)
                if self.remaining.is_some()
                    || (decoded_by_tiny_http
                        && self.hangups.client_closed(self.client.as_ref())) =>
            {
                let message = "the client closed the connection before sending its whole body";
                self.failure = Some(message.into());
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
            }
            Ok(n) => n,
            Err(error) => {
                self.failure = Some(format!("reading the client's body failed: {error}"));
                return Err(error);
            }
        };
        self.bytes_read += read as u64;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= read as u64;
        }
        Ok(read)
    }
}

/// Sorts a ureq error into what the client's answer and the retry decision need.
fn classify(error: &ureq::Error) -> Failure {
    let text = describe_error(error);
    match error {
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound => Failure::Connect(text),
        ureq::Error::Io(e) if is_connect_error(e.kind()) => Failure::Connect(text),
        ureq::Error::Timeout(_) => Failure::Timeout(text),
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => Failure::Timeout(text),
        ureq::Error::Io(e) if is_closed_error(e.kind()) => Failure::Closed(text),
        _ => Failure::Broken(text),
    }
}

fn is_connect_error(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

fn is_closed_error(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn describe_failure(failure: &Failure) -> String {
    match failure {
        Failure::Connect(text)
        | Failure::Closed(text)
        | Failure::Timeout(text)
        | Failure::Broken(text)
        | Failure::ClientBody(text) => text.clone(),
        Failure::BadRequest(reason) => (*reason).to_string(),
    }
}

/// A short, human reason for a ureq error, for log lines ("connection refused").
pub fn describe_error(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused".into()
        }
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::Protocol(e) => format!("not a valid HTTP response ({e})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_form;

    #[test]
    fn targets_become_origin_form() {
        assert_eq!(origin_form("/a/../b?x=%20"), Some("/a/../b?x=%20"));
        assert_eq!(origin_form("http://example.com/p?q"), Some("/p?q"));
        assert_eq!(origin_form("http://example.com"), Some("/"));
        assert_eq!(origin_form("example.com:443"), None);
        assert_eq!(origin_form("*"), None);
    }

    #[test]
    fn absolute_form_targets_name_their_host() {
        use super::target_authority;
        assert_eq!(
            target_authority("http://example.com/p?q"),
            Some("example.com")
        );
        assert_eq!(
            target_authority("http://example.com:8080"),
            Some("example.com:8080")
        );
        assert_eq!(target_authority("/p"), None);
    }
}
