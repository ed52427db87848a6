//! The HTTP clients people really put in front of a load balancer, driven through tinylb to a
//! real test backend: curl (plain, `--http2`, and a chunked upload from stdin), the JDK's
//! `HttpClient` with its defaults, Node's `fetch` with a streamed body, and Python's
//! `http.client` with chunked bodies (also with `Connection: close`). Hand-written requests
//! prove what tinylb does with the bytes we chose; these prove it works with the bytes real
//! clients choose for us: the JDK and curl `--http2` offer an `h2c` upgrade on every first
//! request to an http:// URL (the JDK even on a chunked POST), curl sends `Expect:
//! 100-continue` before a chunked upload, fetch its own `Connection: keep-alive`. Each client
//! does a GET of a 1 MiB body and (but curl `--http2`) a streamed upload of about 2 MiB; the
//! test checks status 200, HTTP/1.1, the downloaded bytes' sha256, and the backend's sha256
//! and length of the bytes it received. The client programs live in
//! tests/clients/ and are run as child processes with a deadline. A missing client program
//! fails its test with a line saying how to install it: a skipped check must not look passed.

mod common;
use common::process::KillOnDrop;
use common::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Size of each download: 1 MiB and a bit, so it spans many reads and is no power of two.
const DOWNLOAD: u64 = 1024 * 1024 + 7;
/// Size of each upload: big enough that every client streams it in many chunks.
const UPLOAD: u64 = 2 * 1024 * 1024 + 12_345;

/// How long one client run may take. The JDK's single-file launcher compiles the client first,
/// which takes seconds on a busy 2-core machine.
const QUICK_CLIENT: Duration = Duration::from_secs(30);
const JVM_CLIENT: Duration = Duration::from_secs(90);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The client program `name` on PATH, or a failed test that says how to install it.
fn require_program(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH, so this client cannot be tested: {install}")
        })
}

/// Runs `command` to its end within `deadline` (else kills it and fails the test), requires
/// exit status 0, and returns its stdout.
fn run_client(mut command: Command, deadline: Duration) -> String {
    let shown = format!("{command:?}");
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if command.get_current_dir().is_none() {
        command.current_dir(manifest_dir());
    }
    let mut child = KillOnDrop(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}")),
    );
    let collect = |mut pipe: Box<dyn Read + Send>| {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
        });
        receiver
    };
    let stdout = collect(Box::new(child.0.stdout.take().expect("piped stdout")));
    let stderr = collect(Box::new(child.0.stderr.take().expect("piped stderr")));
    let mut status = None;
    wait_until(deadline, || {
        status = child.0.try_wait().expect("try_wait on a client");
        status.is_some()
    });
    if status.is_none() {
        drop(child); // kills it, so that its pipes close
    }
    let output = |pipe: mpsc::Receiver<String>| {
        pipe.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "(no output)".to_string())
    };
    let (out, err) = (output(stdout), output(stderr));
    match status {
        None => {
            panic!("{shown} still running after {deadline:?}, killed; stdout:\n{out}stderr:\n{err}")
        }
        Some(status) if !status.success() => {
            panic!("{shown} failed with {status}; stdout:\n{out}stderr:\n{err}")
        }
        Some(_) => out,
    }
}

/// One line a client program printed: `OP STATUS VERSION BODY_LENGTH BODY_SHA256 PREVIEW`.
#[derive(Debug)]
struct Answer {
    op: String,
    status: u16,
    version: String,
    length: u64,
    sha256: String,
    preview: String,
}

fn parse_answers(stdout: &str) -> Vec<Answer> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.splitn(6, ' ').collect();
            let field = |i: usize| -> &str {
                fields
                    .get(i)
                    .unwrap_or_else(|| panic!("client printed an unexpected line: {line:?}"))
            };
            let number = |i: usize| -> u64 {
                field(i)
                    .parse()
                    .unwrap_or_else(|_| panic!("client printed an unexpected line: {line:?}"))
            };
            Answer {
                op: field(0).to_string(),
                status: u16::try_from(number(1)).expect("a status fits in u16"),
                version: field(2).to_string(),
                length: number(3),
                sha256: field(4).to_string(),
                preview: fields.get(5).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// What the backend's `/sha256` route answers for an upload of `len` pattern bytes.
fn upload_receipt(len: u64) -> Vec<u8> {
    format!("{} {len}\n", pattern_sha256(len)).into_bytes()
}

/// The answer must be a 200 over HTTP/`version` (None: the client cannot tell).
fn assert_ok_over(client: &str, answer: &Answer, version: Option<&str>) {
    assert_eq!(
        answer.status, 200,
        "{client} {}: status {} through tinylb, body starts {:?}",
        answer.op, answer.status, answer.preview
    );
    if let Some(version) = version {
        assert_eq!(
            answer.version, version,
            "{client} {}: answered over HTTP/{}",
            answer.op, answer.version
        );
    }
}

/// The answer must be a 200 over HTTP/`version` whose body is exactly `expected`.
fn assert_answer(client: &str, answer: &Answer, version: Option<&str>, expected: &[u8]) {
    assert_ok_over(client, answer, version);
    assert_eq!(
        (answer.length, answer.sha256.as_str()),
        (expected.len() as u64, sha256_hex(expected).as_str()),
        "{client} {}: the body differs from what the backend sent (starts {:?}, expected {:?})",
        answer.op,
        answer.preview,
        String::from_utf8_lossy(&expected[..expected.len().min(80)])
    );
}

/// The answer to a GET of `/bytes/DOWNLOAD`: checked by digest, without holding the body.
fn assert_download(client: &str, answer: &Answer, version: Option<&str>) {
    assert_ok_over(client, answer, version);
    assert_eq!(
        (answer.length, answer.sha256.clone()),
        (DOWNLOAD, pattern_sha256(DOWNLOAD)),
        "{client} {}: the downloaded body differs from the backend's /bytes/{DOWNLOAD}",
        answer.op
    );
}

/// The backend saw exactly one proxied upload, of `UPLOAD` bytes, with this method.
fn assert_backend_got_upload(backend: &Backend, method: &str) {
    let uploads: Vec<Seen> = backend
        .seen_proxied()
        .into_iter()
        .filter(|s| s.target.starts_with("/sha256"))
        .collect();
    assert_eq!(
        uploads.len(),
        1,
        "the backend saw these uploads: {uploads:?}"
    );
    assert_eq!(uploads[0].method, method, "upload method");
    assert_eq!(uploads[0].body_len, UPLOAD, "upload length at the backend");
}

/// A file of `UPLOAD` pattern bytes, removed when dropped.
struct UploadFile(PathBuf);

impl UploadFile {
    fn new(label: &str) -> UploadFile {
        let path = std::env::temp_dir().join(format!(
            "tinylb-real-clients-{}-{label}.bin",
            std::process::id()
        ));
        let bytes: Vec<u8> = (0..UPLOAD).map(backend::pattern_byte).collect();
        std::fs::write(&path, bytes).expect("write the upload file");
        UploadFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `Upgrade` header the backend saw on its request to `target` (sent to it directly).
fn upgrade_offered(backend: &Backend, target: &str) -> Vec<String> {
    backend
        .seen()
        .iter()
        .filter(|s| s.target == target)
        .flat_map(|s| s.header_values("upgrade"))
        .collect()
}

const CURL_INSTALL: &str = "install curl (Debian: apt-get install curl), or run .ci/run";

/// curl with the options every call here shares: no proxy from the environment, a time limit,
/// errors shown, the body to `out` and `STATUS VERSION` on stdout.
fn curl_command(curl: &Path, out: &Path) -> Command {
    let mut command = Command::new(curl);
    command
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "30",
        ])
        .args(["--write-out", "%{http_code} %{http_version}", "--output"])
        .arg(out);
    command
}

/// Runs a curl command and returns (status, HTTP version, the body it wrote).
fn curl_exchange(command: Command, out: &Path) -> (u16, String, Vec<u8>) {
    let stdout = run_client(command, QUICK_CLIENT);
    let (status, version) = stdout
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("curl printed {stdout:?}"));
    let body = std::fs::read(out).unwrap_or_default();
    let _ = std::fs::remove_file(out);
    (
        status.parse().expect("curl's status is a number"),
        version.to_string(),
        body,
    )
}

fn temp_path(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tinylb-real-clients-{}-{label}.out",
        std::process::id()
    ))
}

#[test]
fn curl_gets_and_streams_a_chunked_upload_from_stdin_over_http11() {
    let curl = require_program("curl", CURL_INSTALL);
    let backend = Backend::start("b");
    let lb = start_lb(&[&backend], "");
    let out = temp_path("curl-plain");

    let mut get = curl_command(&curl, &out);
    get.arg(format!("{}/bytes/{DOWNLOAD}", lb.url()));
    let (status, version, body) = curl_exchange(get, &out);
    let answer = Answer {
        op: "get".into(),
        status,
        version,
        length: body.len() as u64,
        sha256: sha256_hex(&body),
        preview: String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned(),
    };
    assert_download("curl", &answer, Some("1.1"));

    // `-T -` reads stdin as it goes and, with no length known, sends it chunked (and, for an
    // upload of unknown size, `Expect: 100-continue` first).
    let upload = UploadFile::new("curl");
    let mut put = curl_command(&curl, &out);
    put.args(["-H", "Transfer-Encoding: chunked", "-T", "-"])
        .arg(format!("{}/sha256", lb.url()))
        .stdin(std::fs::File::open(upload.path()).expect("open the upload file"));
    let (status, version, body) = curl_exchange(put, &out);
    assert_eq!(
        (status, version.as_str()),
        (200, "1.1"),
        "curl -T - through tinylb answered {:?}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&upload_receipt(UPLOAD)),
        "the backend's digest of curl's chunked upload"
    );
    assert_backend_got_upload(&backend, "PUT");
}

#[test]
fn curl_http2_upgrade_offer_is_answered_over_http11() {
    let curl = require_program("curl", CURL_INSTALL);
    let backend = Backend::start("b");
    let lb = start_lb(&[&backend], "");
    let out = temp_path("curl-http2");

    // First straight to the backend: proves this curl really offers h2c on http:// (the
    // backend ignores the offer and answers HTTP/1.1, as tinylb should).
    let mut probe = curl_command(&curl, &out);
    probe.arg("--http2").arg(format!("{}/probe", backend.url()));
    let (status, _, _) = curl_exchange(probe, &out);
    assert_eq!(status, 200, "the backend answers curl --http2 directly");
    assert_eq!(
        upgrade_offered(&backend, "/probe"),
        ["h2c"],
        "curl --http2 no longer offers an h2c upgrade, so this test proves nothing"
    );

    let mut get = curl_command(&curl, &out);
    get.arg("--http2")
        .arg(format!("{}/bytes/{DOWNLOAD}", lb.url()));
    let (status, version, body) = curl_exchange(get, &out);
    let answer = Answer {
        op: "get --http2".into(),
        status,
        version,
        length: body.len() as u64,
        sha256: sha256_hex(&body),
        preview: String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned(),
    };
    assert_download("curl", &answer, Some("1.1"));
    let forwarded = backend
        .seen_proxied()
        .into_iter()
        .find(|s| s.target.starts_with("/bytes/"))
        .expect("the backend saw the download");
    assert!(
        forwarded.header_values("upgrade").is_empty()
            && forwarded.header_values("http2-settings").is_empty(),
        "tinylb passed the h2c offer on to the backend: {:?}",
        forwarded.headers
    );
}

#[test]
fn jdk_http_client_with_defaults_gets_http11_answers() {
    let java = require_program(
        "java",
        "install a JDK 11 or newer (Debian: apt-get install openjdk-17-jdk-headless), or run .ci/run",
    );
    let backend = Backend::start("b");
    let lb = start_lb(&[&backend], "");
    let upload = UploadFile::new("jdk");
    let client = manifest_dir().join("tests/clients/JdkClient.java");

    let mut command = Command::new(java);
    command
        .arg(&client)
        .args(["get", &format!("{}/probe", backend.url())])
        .args(["get", &format!("{}/bytes/{DOWNLOAD}", lb.url())])
        .args(["post", &format!("{}/sha256", lb.url()), upload.path()]);
    let answers = parse_answers(&run_client(command, JVM_CLIENT));
    assert_eq!(answers.len(), 3, "one line per request: {answers:?}");
    // The first request went straight to the backend: it proves the defaults offer h2c, so the
    // two through tinylb did too (each operation uses a new client).
    assert_eq!(
        answers[0].status, 200,
        "the backend answers the JDK directly"
    );
    assert_eq!(
        upgrade_offered(&backend, "/probe"),
        ["h2c"],
        "this JDK's HttpClient no longer offers h2c by default, so this test proves nothing"
    );
    assert_download("JDK HttpClient", &answers[1], Some("1.1"));
    assert_answer(
        "JDK HttpClient",
        &answers[2],
        Some("1.1"),
        &upload_receipt(UPLOAD),
    );
    assert_backend_got_upload(&backend, "POST");
}

#[test]
fn node_fetch_gets_and_streams_a_readable_stream_upload() {
    let node = require_program(
        "node",
        "install Node.js 18 or newer (Debian: apt-get install nodejs), or run .ci/run",
    );
    let backend = Backend::start("b");
    let lb = start_lb(&[&backend], "");
    let upload = UploadFile::new("node");

    let mut command = Command::new(node);
    command
        .arg(manifest_dir().join("tests/clients/node_fetch.mjs"))
        .args(["get", &format!("{}/bytes/{DOWNLOAD}", lb.url())])
        .args(["post", &format!("{}/sha256", lb.url()), upload.path()]);
    let answers = parse_answers(&run_client(command, QUICK_CLIENT));
    assert_eq!(answers.len(), 2, "one line per request: {answers:?}");
    // fetch does not say which version answered (see node_fetch.mjs); it speaks only HTTP/1.1
    // to http:// URLs, and tiny_http nothing else.
    assert_download("node fetch", &answers[0], None);
    assert_answer("node fetch", &answers[1], None, &upload_receipt(UPLOAD));
    assert_backend_got_upload(&backend, "POST");
}

const PYTHON_INSTALL: &str = "install Python 3 (Debian: apt-get install python3), or run .ci/run";

#[test]
fn python_http_client_gets_and_sends_a_chunked_upload() {
    let python = require_program("python3", PYTHON_INSTALL);
    let backend = Backend::start("b");
    let lb = start_lb(&[&backend], "");
    let upload = UploadFile::new("python");

    let mut command = Command::new(python);
    command
        .arg(manifest_dir().join("tests/clients/py_client.py"))
        .args(["get", &format!("{}/bytes/{DOWNLOAD}", lb.url())])
        .args(["post", &format!("{}/sha256", lb.url()), upload.path()]);
    let answers = parse_answers(&run_client(command, QUICK_CLIENT));
    assert_eq!(answers.len(), 2, "one line per request: {answers:?}");
    assert_download("python http.client", &answers[0], Some("1.1"));
    assert_answer(
        "python http.client",
        &answers[1],
        Some("1.1"),
        &upload_receipt(UPLOAD),
    );
    assert_backend_got_upload(&backend, "POST");
}

#[test]
fn python_http_client_sends_a_chunked_upload_with_connection_close() {
    let python = require_program("python3", PYTHON_INSTALL);
    let backend = Backend::start("b");
    let lb = start_lb(&[&backend], "");
    let upload = UploadFile::new("python-close");

    let mut command = Command::new(python);
    command
        .arg(manifest_dir().join("tests/clients/py_client.py"))
        .args(["post-close", &format!("{}/sha256", lb.url()), upload.path()]);
    let answers = parse_answers(&run_client(command, QUICK_CLIENT));
    assert_eq!(answers.len(), 1, "one line per request: {answers:?}");
    assert_answer(
        "python http.client",
        &answers[0],
        Some("1.1"),
        &upload_receipt(UPLOAD),
    );
    assert_backend_got_upload(&backend, "POST");
}
