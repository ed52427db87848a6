#!/usr/bin/env python3
"""`make test-dist`: a smoke test of each static binary in dist/, on its own architecture.

Why: `make dist` cross-builds for machines we do not have (a 64-bit Raspberry Pi, a cloud ARM
box). qemu-user runs such a binary here, so each one is shown to start, parse its config, proxy,
route around a dead backend and shut down cleanly before anyone copies it to a device.

For each target given (the Makefile passes DIST_TARGETS), dist/tinylb-ARCH-linux-musl is run
natively when ARCH is this machine's, otherwise under qemu-ARCH (qemu-user is installed with
apt-get if missing). Then:
1. `--version` names the version in Cargo.toml; `--check` passes a good config and refuses a bad
   one with exit status 2;
2. tinylb is started in front of two backends on 127.0.0.1 (tiny std-lib HTTP servers, each a
   process of its own that answers with its name): requests alternate between them (round robin);
3. one backend is killed: once the health check reports it down (admin /status.json), every
   request is answered 200 by the other one; started again, it is brought back;
4. SIGTERM: tinylb exits with status 0.

Every wait is bounded, and all traffic goes to 127.0.0.1. One line per architecture says passed,
FAILED (with why) or skipped (not built, or no qemu): a skip is not a pass and not a failure. The
last line is `N passed, N failed` (`, N skipped` when some were). Exit status 1 if any failed.
Python 3 standard library only.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Under qemu everything is slower; these bound each wait, never the test's expectations.
RUN_TIMEOUT = 60  # one --version or --check run
START_TIMEOUT = 30  # tinylb listening, a backend listening
HEALTH_TIMEOUT = 30  # a stopped backend marked down, a restarted one up
EXIT_TIMEOUT = 30  # exit after SIGTERM
REQUEST_TIMEOUT = 10
REQUESTS = 10
QEMU = {"x86_64": "qemu-x86_64", "aarch64": "qemu-aarch64", "armv7": "qemu-arm"}
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
             "armv7l": "armv7"}.get(platform.machine().lower())


class Failed(Exception):
    """This architecture's smoke test failed; the message says at which step."""


# --------------------------------------------------------------------------------------------
# The backend: `smoke_dist.py --backend NAME PORT` serves until killed
# --------------------------------------------------------------------------------------------


def serve_backend(name: str, port: int) -> None:
    """Answers every GET and HEAD with 200 and `backend NAME`; prints its port when listening."""
    body = f"backend {name}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as tinylb's pool expects

        def do_GET(self):  # noqa: N802 (the stdlib's naming)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Backend:
    """A backend process; `stop` kills it like a crash (its port then refuses)."""

    def __init__(self, name: str, port: int = 0):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--backend", name, str(port)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        line = read_line(self.proc, START_TIMEOUT)
        if not line.strip().isdigit():
            self.stop()
            raise Failed(f"backend {name} did not start")
        self.port = int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line a child prints, or '' if none comes within `timeout` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str = "/") -> tuple[int, str]:
    """One GET on a new connection to 127.0.0.1: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def wait_until(what: str, condition, timeout: float) -> float:
    """Polls `condition` every 0.1 s; returns the seconds it took, or raises Failed."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, http.client.HTTPException, ValueError, LookupError):
            pass  # not answering yet, or not yet as expected
        time.sleep(0.1)
    raise Failed(f"{what}: not within {timeout} s")


def states(admin_port: int) -> list[str]:
    """Each backend's `state` from /status.json (up, down, draining)."""
    status, body = get(admin_port, "/status.json")
    if status != 200:
        return []
    return [b["state"] for b in json.loads(body)["backends"]]


def cargo_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else "?"


_qemu_install = None  # why qemu-user could not be installed, once tried


def ensure_qemu(name: str) -> tuple[str | None, str]:
    """(path of qemu-user's `name` or None, why not), installing qemu-user with apt-get once."""
    global _qemu_install
    if shutil.which(name):
        return shutil.which(name), ""
    if _qemu_install is None:
        if shutil.which("apt-get") is None:
            _qemu_install = "no apt-get to install qemu-user with"
        elif os.geteuid() != 0:
            _qemu_install = "installing qemu-user needs root"
        else:
            _qemu_install = "apt-get install qemu-user failed"
            print(f"test-dist: {name} not found; installing qemu-user with apt-get", flush=True)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            install = ["apt-get", "install", "-y", "-qq", "qemu-user"]
            for argv in (install, ["apt-get", "update", "-qq"], install):
                try:
                    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=600)
                except subprocess.TimeoutExpired:
                    _qemu_install = "apt-get install qemu-user took over 10 minutes"
                    break
                if shutil.which(name):
                    break
    if shutil.which(name):
        return shutil.which(name), ""
    return None, _qemu_install or "not found"


# --------------------------------------------------------------------------------------------
# The smoke test of one binary
# --------------------------------------------------------------------------------------------


def smoke(runner: list[str], tmp: Path, serve_flags: list[str]) -> str:
    """Runs every step against `runner` (the binary, maybe behind qemu), serving with
    `serve_flags`; returns a summary."""
    version = cargo_version()
    out = subprocess.run([*runner, "--version"], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    if out.returncode != 0 or out.stdout.strip() != f"tinylb {version}":
        raise Failed(f"--version: status {out.returncode}, {out.stdout.strip()!r}"
                     f" {out.stderr.strip()[:200]!r}")

    backends = [Backend("one"), Backend("two")]
    tinylb = None
    try:
        port, admin = free_port(), free_port()
        config = {
            "port": f"127.0.0.1:{port}",
            "servers": [f"http://127.0.0.1:{b.port}" for b in backends],
            "healthCheckInterval": "500ms",
            "adminAddress": f"127.0.0.1:{admin}",
            "shutdownGracePeriod": "2s",
        }
        good, bad = tmp / "config.json", tmp / "bad.json"
        good.write_text(json.dumps(config, indent=2))
        bad.write_text(json.dumps({**config, "port": 8080}))
        out = subprocess.run([*runner, "--check", "--config", str(good)], capture_output=True,
                             text=True, timeout=RUN_TIMEOUT)
        if out.returncode != 0 or ": ok: " not in out.stdout:
            raise Failed(f"--check: status {out.returncode}, {out.stdout.strip()!r}")
        out = subprocess.run([*runner, "--check", "--config", str(bad)], capture_output=True,
                             text=True, timeout=RUN_TIMEOUT)
        if out.returncode != 2 or "port" not in out.stderr:
            raise Failed(f"--check of a bad config: status {out.returncode} (expected 2)")

        with open(tmp / "tinylb.log", "wb") as log:
            tinylb = subprocess.Popen([*runner, *serve_flags, "--config", str(good)],
                                      stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log,
                                      env=dict(os.environ, RUST_LOG="info"))
        try:
            took = wait_until("tinylb answering /status.json with both backends up",
                              lambda: tinylb.poll() is None and states(admin) == ["up", "up"],
                              START_TIMEOUT)
        except Failed:
            if tinylb.poll() is not None:
                raise Failed(f"tinylb exited with status {tinylb.returncode} at start: "
                             + tail(tmp / "tinylb.log")) from None
            raise
        started = f"started in {took:.1f} s"

        answers = [get(port) for _ in range(REQUESTS)]
        names = [body.strip() for status, body in answers if status == 200]
        expected = [f"backend {backends[i % 2].name}" for i in range(REQUESTS)]
        if names != expected and names != expected[1:] + expected[:1]:
            raise Failed(f"round robin: got {[(s, b.strip()) for s, b in answers]}")

        backends[1].stop()
        took = wait_until("the stopped backend reported down", lambda: states(admin)[1] == "down",
                          HEALTH_TIMEOUT)
        down = f"stopped backend down after {took:.1f} s"
        answers = [get(port) for _ in range(REQUESTS)]
        wrong = [(s, b.strip()) for s, b in answers if (s, b.strip()) != (200, "backend one")]
        if wrong:
            raise Failed(f"with a backend down, {len(wrong)} of {REQUESTS} requests went wrong:"
                         f" {wrong[:3]}")

        backends[1] = Backend("two", backends[1].port)
        took = wait_until("the restarted backend reported up",
                          lambda: states(admin) == ["up", "up"], HEALTH_TIMEOUT)
        answers = {get(port)[1].strip() for _ in range(REQUESTS)}
        if answers != {"backend one", "backend two"}:
            raise Failed(f"after the restart, answers came from {sorted(answers)}")
        back = f"back up after {took:.1f} s"

        sent = time.monotonic()
        tinylb.send_signal(signal.SIGTERM)
        try:
            status = tinylb.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failed(f"no exit within {EXIT_TIMEOUT} s of SIGTERM") from None
        if status != 0:
            raise Failed(f"exit status {status} after SIGTERM (expected 0): "
                         + tail(tmp / "tinylb.log"))
        stopped = f"SIGTERM: exit 0 in {time.monotonic() - sent:.1f} s"
        return (f"--version, --check, {started}, round robin {REQUESTS}/{REQUESTS},"
                f" {down} and skipped {REQUESTS}/{REQUESTS}, {back}, {stopped}")
    finally:
        if tinylb is not None and tinylb.poll() is None:
            tinylb.kill()
            tinylb.wait(timeout=10)
        for backend in backends:
            backend.stop()


def tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-3:]) or "(no output)"


def test_target(target: str) -> tuple[str, str]:
    """('passed' | 'FAILED' | 'skipped', one line) for one target triple."""
    arch = target.split("-")[0]
    binary = ROOT / "dist" / f"tinylb-{target.replace('-unknown-', '-')}"
    if not binary.exists():
        shown = binary.relative_to(ROOT)
        return "skipped", f"{arch}: skipped: {shown} was not built (see make dist's output)"
    if arch == HOST_ARCH:
        runner, how, serve_flags = [str(binary)], "native", []
    else:
        name = QEMU.get(arch, f"qemu-{arch}")
        qemu, why = ensure_qemu(name)
        if qemu is None:
            return "skipped", f"{arch}: skipped: cannot run it here: no {name} ({why})"
        # tinylb's master starts its server by executing its own binary again, which the kernel
        # can hand to qemu only through binfmt_misc (absent in most containers); on the device
        # it runs natively. So under qemu-user the server runs alone, in one process.
        runner, how, serve_flags = [qemu, str(binary)], f"{Path(qemu).name}, --no-master", [
            "--no-master"
        ]
    with tempfile.TemporaryDirectory(prefix="tinylb-smoke-") as tmp:
        try:
            summary = smoke(runner, Path(tmp), serve_flags)
        except Failed as err:
            return "FAILED", f"{arch} ({how}): FAILED: {err}"
        except Exception as err:  # a request that timed out or was cut, say: still one line
            return "FAILED", f"{arch} ({how}): FAILED: {type(err).__name__}: {err}"
    return "passed", f"{arch} ({how}): passed: {summary}"


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--backend":
        serve_backend(argv[1], int(argv[2]))
        return 0
    if not argv:
        print("usage: smoke_dist.py TARGET...", file=sys.stderr)
        return 2
    counts = {"passed": 0, "FAILED": 0, "skipped": 0}
    for target in argv:
        verdict, line = test_target(target)
        counts[verdict] += 1
        print(line, flush=True)
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    print(f"{counts['passed']} passed, {counts['FAILED']} failed{skipped}")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
