#!/usr/bin/env python3
"""`make soak`: a bounded soak run of tinylb, 30 minutes unless told otherwise.

What it does
------------
It starts three demo backends (examples/backend, one process per free port of 127.0.0.1) and
tinylb's master process in front of them, with a config.json in a temporary directory that
sets an adminAddress. Then, for the length of the run, it drives tinylb at a steady, moderate
load and disturbs it on a schedule:

- load: wrk (`-t1 -c16 --latency`) in back-to-back 1-second slices, each connection waiting a
  fixed delay between requests (a small Lua script), so the load stays far below what tinylb can
  serve here; every slice gives one second's requests, non-2xx (wrk counts status >= 400),
  socket errors and p99;
- every 60 s one backend gets SIGKILL and is started again 5 s later (the three in turn);
- every 90 s config.json is rewritten (a temp file renamed over it) with healthCheckInterval
  toggled between 1s and 2s, which tinylb applies live;
- every 5 minutes (for runs shorter than that, once at a third of the run) a flood: 500 idle
  connections (nothing sent), 500 trickling request heads (one byte every 2 s) and 500 HTTP/2
  prefaces (which park a tiny_http thread for good), held 30 s and then closed. The parked
  threads make the server process ask the master for a successor (maxStuckConnections), so a
  flood should end with a new generation and the memory back where it was.

Beside that load (wrk connects from 127.0.0.1: it is the bystander), bad clients run for the
whole run, all from 127.0.0.3 (the limits of README's "One client cannot starve another" are per
client address), each on a thread of its own that reconnects, after a short pause, whenever its
connection ends, and stops by itself at the end of the run:

- a pipelining connection: 100 `GET /slow?ms=2000` in one write, nothing read, closed after 20 s
  (what had arrived by then is read and counted as it closes);
- 4 slow uploads: `POST /` announcing 99,999 body bytes, then one byte every 2 s, until tinylb
  answers (408 expected once the body falls below clientBodyMinRate, about clientTimeout in) or
  closes;
- 4 slow readers: `GET /bytes/100000000` with SO_RCVBUF 4096, reading 4 KiB every 0.5 s until
  tinylb cuts them off (or nothing came for 60 s);
- refused, then reconnected: once a second, from a fixed source port (SO_REUSEADDR; one per
  round from 20000-20999, below the ephemeral range), a malformed chunked POST that must get 400
  and a close, then at once from the same address and port a `GET /` with `Connection: close`
  that must get 200 (each given 30 s: a request of 127.0.0.3 may wait for its address's turn).
  A bind or connect the kernel refuses (EADDRINUSE or EADDRNOTAVAIL after 2 s of retrying) is
  the kernel's doing and counted apart.

Each bad client counts its connections, how each ended (408, cut off, reset, an answer, closed
by itself, still open at the end) and the answers it got.

Every second it records, for tinylb's whole process tree (the master and its children, found
through /proc/PID/task/TID/children): RSS (sum of VmRSS), threads, open file descriptors and CPU;
the whole machine's CPU (it may be shared: a slow second with the machine busy is not tinylb's
doing); and from the admin listener's /status.json: the generation, the stuck connections and
the `clients` counters (what tinylb did to clients that asked for more than their share; each
server process counts from 0, so the report sums them over the generations).
tinylb runs with RUST_LOG=info, so its master's lines (recycles, drains) and config reloads can
be set beside the events.

At the end it stops tinylb with SIGTERM (which must exit 0), writes docs/soak.md (totals, the
range of every line, the floods, the bad clients and tinylb's `clients` counters, the events,
for every second with errors or non-2xx the event that explains it, or that none does, and
whether the bystander's p99 stayed flat: every full minute's median p99 within 2x of the whole
run's median) and docs/soak.svg (the picture, drawn here), and prints a summary. The report
names paths relative to the repository (a binary built outside it by its file name). Exit
status: 0 if tinylb ran throughout and exited 0; 1 if tinylb died (the master exited, or a
server process crashed and was replaced), did not exit 0 on SIGTERM, or the run could not
proceed; 130 if interrupted (the report is then not written). Unexplained failures, of the
bystander or of the bad clients' GETs, are listed in the report and the summary but do not
change the exit status.

Everything it starts runs in its own process group and is killed when the run ends, fails or
is interrupted (Ctrl-C). All traffic goes to 127.0.0.1 (the bad clients' from 127.0.0.3).
Python 3.11 standard library only; wrk is installed with apt-get if it is missing. The binaries
are built (`cargo build --release --bin tinylb --example backend`) only if they are missing or
`--build` is given; the binaries are looked for in $CARGO_TARGET_DIR if set, else target/.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import errno
import hashlib
import html
import http.client
import json
import math
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# The process and port helpers are bench.py's (this directory is on sys.path when run as a
# script), so both scripts handle processes alike.
from bench import BenchError, free_ports, group_alive, machine_description, signal_group

ROOT = Path(__file__).resolve().parent.parent
_target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
TARGET = _target if _target.is_absolute() else ROOT / _target
TINYLB = TARGET / "release" / "tinylb"
BACKEND = TARGET / "release" / "examples" / "backend"
DEFAULT_OUT = ROOT / "docs" / "soak.md"
HOST = "127.0.0.1"

# The load: wrk's connections, and the pause each one takes between requests (about
# CONNECTIONS * 1000 / DELAY_MS requests/s, less the latency: ~700-800 req/s, while an
# unthrottled wrk gets several thousand through tinylb on two cores).
CONNECTIONS = 16
DELAY_MS = 20
WRK_TIMEOUT = "2s"
# The schedule, in seconds from the start of the load.
BACKENDS = 3
KILL_EVERY = 60
DOWN_FOR = 5
CONFIG_EVERY = 90
FLOOD_EVERY = 300
# Floods start this long after their 5-minute mark, so they do not fall on a backend kill
# (every 60 s) and the two can be told apart in the report.
FLOOD_OFFSET = 20
FLOOD_SOCKETS = 500
FLOOD_HOLD = 30
TRICKLE_EVERY = 2.0
# A flood needs this long to open, hold, close and be seen to settle.
FLOOD_NEEDS = FLOOD_HOLD + 20
TRICKLE_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-a: "
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The bad clients (see the module docstring), all from this address: tinylb's limits are per
# client address, and the bystander (wrk) connects from 127.0.0.1.
BAD_SOURCE = "127.0.0.3"
PIPELINED = 100
PIPELINE_REQUEST = b"GET /slow?ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n"
PIPELINE_HOLD = 20.0
UPLOADS = 4
UPLOAD_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n"
UPLOAD_EVERY = 2.0
READERS = 4
READER_REQUEST = b"GET /bytes/100000000 HTTP/1.1\r\nHost: x\r\n\r\n"
READER_RCVBUF = 4096
READ_SIZE = 4096
READ_EVERY = 0.5
# A reader that got nothing for this long gives up (tinylb holds it without sending).
READER_STALL = 60.0
REFUSE_EVERY = 1.0
# Source ports of the refused-then-reconnected rounds: below the ephemeral range (32768 and up
# here), so no other connect takes one; a round uses the next one.
REFUSE_PORTS = (20000, 21000)
MALFORMED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"
AFTER_REFUSAL = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
# How long the refusal (400 and the close) and the GET after it may take: longer than
# clientTimeout, since a request of 127.0.0.3 may wait for its turn (clientMaxWorkers) while
# its uploads hold workers. A GET slower than GET_PROMPT is counted apart (tests/one_client.rs
# wants the bystander's answers within 3 s).
REFUSAL_WITHIN = 30.0
ANSWER_WITHIN = 30.0
GET_PROMPT = 3.0
# How long a bind and connect from a fixed port is tried again while the kernel still holds the
# address pair of the connection before (EADDRINUSE, EADDRNOTAVAIL).
PORT_RETRY = 2.0
# Between the end of a bad client's connection and its next one, so that nothing spins.
BAD_PAUSE = 0.5
BAD_CONNECT_TIMEOUT = 5.0
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
# tinylb's `clients` counters in /status.json, and what each counts.
CLIENT_COUNTERS = {
    "waitedForTurn": "requests that waited for their client's turn (clientMaxWorkers)",
    "refusedQueueFull": "requests answered 503: the queue, or their client's share of it, full",
    "pipelinedTooFar": "requests discarded: their connection pipelined more than tinylb takes"
                       " ahead (64)",
    "fromEndedConnections": "requests discarded: parsed from a connection tinylb had ended",
    "clientGone": "requests dropped before reaching a backend: their client had left",
    "slowBodies": "request bodies ended for arriving slower than clientBodyMinRate (408)",
    "slowReaders": "answers cut off: the client read slower than clientSendMinRate",
}
# The bystander's p99 is flat if every full minute's median p99 is within this factor of the
# whole run's median (above or below).
FLAT_FACTOR = 2.0
# How long after an event failures are put down to it (from its start; for a flood, from its
# end, since it disturbs tinylb the whole time it is held).
WINDOWS = {"kill": 5.0, "restart": 3.0, "config": 3.0, "flood": 5.0, "generation": 5.0}
# Slack for the time of an event seen through /status.json (sampled once a second).
SLACK = 1.0
# After SIGTERM tinylb drains; past this it is killed and the run fails.
STOP_GRACE = 15.0
MIB = 1024 * 1024
FULL_MINUTES = 30


class SoakError(Exception):
    """A failure that ends the run with a one-line message (exit status 1)."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; the run cleans up and exits 130."""


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final summary."""
    print(f"soak: {message}", file=sys.stderr, flush=True)


def clock(t: float) -> str:
    """Seconds from the start as m:ss."""
    t = max(0, int(round(t)))
    return f"{t // 60}:{t % 60:02d}"


# --------------------------------------------------------------------------------------------
# Command line, tools, binaries
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="soak.py", description="A bounded soak run of tinylb (see the module docstring)."
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES") or FULL_MINUTES),
        help=f"length of the run ($SOAK_MINUTES, else {FULL_MINUTES})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report to write")
    parser.add_argument("--no-write", action="store_true", help="print the summary only")
    parser.add_argument("--build", action="store_true", help="run cargo build even if the"
                        " binaries exist")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also save every slice, sample, event and flood as JSON")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (config, logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.minutes <= 24 * 60:
        parser.error("--minutes: give a number from 1 to 1440")
    return args


def exact_command(argv: list[str], minutes: float) -> str:
    if os.environ.get("MAKELEVEL"):
        shown = f"{minutes:g}"
        return "make soak" if minutes == FULL_MINUTES else f"make soak SOAK_MINUTES={shown}"
    return shlex.join(["python3", "benches/soak.py", *argv])


def ensure_wrk() -> str:
    """The path of wrk, installed with apt-get if it is missing (said on stderr)."""
    found = shutil.which("wrk")
    if found:
        return found
    command = "apt-get update && apt-get install -y wrk"
    if os.geteuid() != 0 and shutil.which("sudo"):
        command = "sudo apt-get update && sudo apt-get install -y wrk"
    log(f"wrk not found; installing it with: {command}")
    if shutil.which("apt-get") is None:
        raise SoakError("apt-get is not available; install wrk yourself")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["sh", "-c", command], env=env, stdout=sys.stderr, timeout=900)
    found = shutil.which("wrk")
    if not found:
        raise SoakError(f"could not install wrk (apt-get exit status {result.returncode})")
    return found


def ensure_binaries(build: bool) -> bool:
    """Builds tinylb and the demo backend if asked or missing (then True); warns if they look
    stale."""
    if build or not (TINYLB.exists() and BACKEND.exists()):
        argv = ["cargo", "build", "--release", "--bin", "tinylb", "--example", "backend"]
        log(f"building: {' '.join(argv)}")
        result = subprocess.run(argv, cwd=ROOT, stdout=sys.stderr)
        if result.returncode != 0 or not TINYLB.exists() or not BACKEND.exists():
            raise SoakError(f"{' '.join(argv)} failed (see above)")
        return True
    if TARGET != ROOT / "target":
        return False  # built from another tree (CARGO_TARGET_DIR): its sources are not these
    built = TINYLB.stat().st_mtime
    sources = [ROOT / "Cargo.toml", ROOT / "Cargo.lock", *(ROOT / "src").rglob("*.rs")]
    newer = [p for p in sources if p.exists() and p.stat().st_mtime > built]
    if newer:
        log(f"warning: {len(newer)} source file(s) are newer than {TINYLB}"
            f" (e.g. {newer[0].relative_to(ROOT)}); pass --build to rebuild first")
    return False


def binary_identity(path: Path) -> tuple[str, str]:
    """(sha256 prefix, mtime) of a binary, to tell whether it changed during the run."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
    return digest, mtime.strftime("%Y-%m-%d %H:%M:%S UTC")


def source_tree() -> str:
    """The commit of the tree the binaries were built in (as it is now), and whether it has
    uncommitted changes; `target/`'s parent, or this repository. Named without the build
    machine's paths: "this repository", or another checkout by its directory's name."""
    tree_dir = TARGET.parent if (TARGET.parent / ".git").exists() else ROOT
    try:
        head = subprocess.run(["git", "-C", str(tree_dir), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree_dir), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not head:
        return "unknown"
    name = "this repository" if tree_dir.resolve() == ROOT.resolve() else (
        f"another checkout, {tree_dir.name}/")
    return f"{name} at {head}" + (" with uncommitted changes" if dirty else "")


def binary_shown(built_here: bool) -> str:
    """The tinylb binary as the report names it: its path in the repository, or (built
    elsewhere, with CARGO_TARGET_DIR) its file name and how it was built."""
    try:
        return f"`{TINYLB.resolve().relative_to(ROOT.resolve())}`"
    except ValueError:
        how = ("built by this run with `cargo build --release --bin tinylb --example backend`"
               if built_here else "built before this run")
        return (f"`{TINYLB.name}`, the release build in a CARGO_TARGET_DIR outside the repository"
                f" ({how})")


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


# --------------------------------------------------------------------------------------------
# Processes and /proc
# --------------------------------------------------------------------------------------------


class Processes:
    """Every long-running process the run starts, each in its own process group."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []
        self.lock = threading.Lock()
        self.run: Run | None = None  # for its stop event and the wrk slice in progress

    def start(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with self.lock:
            self.started.append((name, proc))
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float) -> tuple[int | None, float]:
        """SIGTERM to the group, SIGKILL after `grace` s; (exit status, seconds it took)."""
        started = time.monotonic()
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        while group_alive(proc.pid) and time.monotonic() - started < grace:
            time.sleep(0.05)
        took = time.monotonic() - started
        if proc.poll() is None or group_alive(proc.pid):
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return proc.returncode, took

    def stop_all(self) -> None:
        if self.run is not None:
            self.run.stop.set()
            wrk = self.run.wrk
            if wrk is not None and wrk.poll() is None:
                wrk.kill()
        with self.lock:
            started = list(reversed(self.started))
            self.started.clear()
        for name, proc in started:
            if proc.poll() is None or group_alive(proc.pid):
                log(f"stopping {name} (pid {proc.pid})")
                self.stop(proc, grace=3.0)




def tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc/PID/task/TID/children (every thread's list: a
    child started by another thread than the main one is listed under that thread)."""
    pids, todo, seen = [], [root], set()
    while todo and len(seen) < 10_000:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        pids.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except (OSError, ValueError):
                continue
    return pids


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return int(rest[11]) + int(rest[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def proc_numbers(pids: list[int]) -> tuple[int, int, int, int]:
    """(RSS KiB, threads, open fds, processes) summed over the pids still alive."""
    rss = threads = fds = alive = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            count = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue  # ended meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        rss += int(fields.get("VmRSS", "0 kB").split()[0])
        threads += int(fields.get("Threads", "0").strip() or 0)
        fds += count
        alive += 1
    return rss, threads, fds, alive


# --------------------------------------------------------------------------------------------
# Ports, config, start-up
# --------------------------------------------------------------------------------------------



def wait_port(port: int, proc: subprocess.Popen, seconds: float) -> bool:
    """Whether `port` accepts a connection within `seconds` while `proc` lives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tinylb_config(port: int, admin: int, backends: list[int], interval: str) -> dict:
    return {
        "port": f"{HOST}:{port}",
        "servers": [f"http://{HOST}:{p}" for p in backends],
        "healthCheckInterval": interval,
        "adminAddress": f"{HOST}:{admin}",
    }


def write_config(path: Path, config: dict) -> None:
    """Writes a temp file beside `path` and renames it over: tinylb never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def get_status(admin: int) -> dict | None:
    """/status.json, or None if the admin listener did not answer within a second."""
    conn = http.client.HTTPConnection(HOST, admin, timeout=1.0)
    try:
        conn.request("GET", "/status.json")
        response = conn.getresponse()
        if response.status != 200:
            return None
        return json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# What the run records
# --------------------------------------------------------------------------------------------


@dataclass
class Event:
    t: float  # seconds from the start of the load
    kind: str  # one of WINDOWS
    what: str
    until: float | None = None  # the end of a band: a backend's restart, a flood's close
    label: str = ""  # short, for the picture

    def covers(self, t0: float, t1: float) -> bool:
        """Whether failures in [t0, t1] may be put down to this event."""
        end = (self.until if self.until is not None and self.kind == "flood" else self.t)
        return self.t <= t1 + SLACK and t0 <= end + WINDOWS[self.kind]


@dataclass
class Slice:
    t0: float
    t1: float
    requests: int = 0
    non2xx: int = 0
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    p99_ms: float | None = None
    note: str = ""

    @property
    def errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def rps(self) -> float:
        return self.requests / max(self.t1 - self.t0, 1e-3)

    @property
    def failed(self) -> bool:
        return self.errors > 0 or self.non2xx > 0 or bool(self.note)


@dataclass
class Sample:
    t: float
    rss_kib: int
    threads: int
    fds: int
    processes: int
    generation: int | None
    stuck: int | None
    cpu_tinylb: float | None = None  # % of all cores, since the sample before
    cpu_machine: float | None = None
    clients: dict | None = None  # /status.json's `clients`: the per-client limits and counters
    stale: bool = False  # /status.json answered by an older server process, while it drained


@dataclass
class FloodResult:
    number: int
    start: float
    opened: dict = field(default_factory=collections.Counter)
    refused: dict = field(default_factory=collections.Counter)
    closed_early: dict = field(default_factory=collections.Counter)
    answered: dict = field(default_factory=collections.Counter)
    # Seconds from the flood's sockets being open to tinylb closing each one, by kind.
    close_after: dict = field(default_factory=lambda: collections.defaultdict(list))
    opened_at: float | None = None
    closed: float | None = None


class Run:
    """The shared state of one soak run; the threads write it under `lock`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = time.monotonic()
        self.wall0 = time.time()  # the same moment on the clock of tinylb's log lines
        self.end = self.t0 + seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.events: list[Event] = []
        self.slices: list[Slice] = []
        self.samples: list[Sample] = []
        self.floods: list[FloodResult] = []
        self.bad: list[BadClient] = []
        self.fatal: str | None = None
        self.crashes: list[str] = []
        self.status_misses = 0
        self.stale_status = 0  # /status.json answers from an older, draining server process
        self.wrk: subprocess.Popen | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.end - time.monotonic()

    def add(self, event: Event) -> Event:
        with self.lock:
            self.events.append(event)
        log(f"{clock(event.t)} {event.what}")
        return event

    def fail(self, message: str) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = message
        self.stop.set()


# --------------------------------------------------------------------------------------------
# The load: wrk in 1-second slices
# --------------------------------------------------------------------------------------------

WRK_LINES = {
    "requests": re.compile(r"^\s*(\d+) requests in ", re.M),
    "non2xx": re.compile(r"Non-2xx or 3xx responses:\s*(\d+)"),
    "socket": re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"),
    "p99": re.compile(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M),
}
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(text: str, out: Slice) -> None:
    found = WRK_LINES["requests"].search(text)
    if not found:
        out.note = "wrk: " + (" ".join(text.split())[-160:] or "no output")
        return
    out.requests = int(found.group(1))
    if m := WRK_LINES["non2xx"].search(text):
        out.non2xx = int(m.group(1))
    if m := WRK_LINES["socket"].search(text):
        out.connect, out.read, out.write, out.timeout = map(int, m.groups())
    if (m := WRK_LINES["p99"].search(text)) and out.requests:
        out.p99_ms = float(m.group(1)) * UNIT_MS[m.group(2)]


def load_loop(run: Run, wrk: str, port: int, script: Path) -> None:
    """wrk slices back to back until the end of the run."""
    argv = [wrk, "-t1", f"-c{CONNECTIONS}", "-d1s", "--latency", "--timeout", WRK_TIMEOUT,
            "-s", str(script), f"http://{HOST}:{port}/"]
    failures_in_a_row = 0
    while not run.stop.is_set() and run.left() >= 1.0:
        piece = Slice(t0=run.now(), t1=0.0)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        except OSError as err:
            run.fail(f"could not run wrk: {err}")
            return
        run.wrk = proc
        try:
            text, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate(timeout=5)
            piece.note = "wrk hung and was killed"
        run.wrk = None
        piece.t1 = run.now()
        if run.stop.is_set() and proc.returncode and proc.returncode < 0:
            return  # killed by the cleanup
        if not piece.note:
            parse_wrk(text, piece)
        if proc.returncode not in (0, None) and not piece.note:
            piece.note = f"wrk exited with {proc.returncode}: {text.strip()[-200:]}"
        with run.lock:
            run.slices.append(piece)
        failures_in_a_row = failures_in_a_row + 1 if piece.note else 0
        if failures_in_a_row >= 10:
            run.fail(f"wrk failed 10 s in a row; last: {piece.note}")
            return
        if piece.note:
            # A wrk that fails at once (nothing listens) must not spin: one slice a second.
            run.stop.wait(max(0.0, math.ceil(run.now()) - run.now()))


# --------------------------------------------------------------------------------------------
# The sampler: tinylb's process tree and /status.json, once a second
# --------------------------------------------------------------------------------------------


def sample_loop(run: Run, master: subprocess.Popen, admin: int) -> None:
    generation = None
    tick = 0
    cores = os.cpu_count() or 1
    last_ticks: dict[int, int] = {}
    last_machine = machine_ticks()
    last_time = time.monotonic()
    while not run.stop.is_set():
        wait = run.t0 + tick - time.monotonic()
        if wait > 0 and run.stop.wait(min(wait, max(run.left(), 0))):
            return
        if run.left() <= 0:
            return
        if master.poll() is not None:
            code = master.returncode
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            run.fail(f"tinylb's master exited ({how}) at {clock(run.now())}")
            return
        t = run.now()
        pids = tree(master.pid)
        rss, threads, fds, processes = proc_numbers(pids)
        # CPU since the last sample: per pid, so a process that ended does not count negative.
        ticks = {pid: v for pid in pids if (v := cpu_ticks(pid)) is not None}
        machine, now = machine_ticks(), time.monotonic()
        used = sum(v - last_ticks.get(pid, v) for pid, v in ticks.items())
        elapsed = max(now - last_time, 1e-3)
        cpu_tinylb = 100.0 * used / CLK_TCK / elapsed / cores if last_ticks else None
        total = machine[1] - last_machine[1]
        cpu_machine = 100.0 * (machine[0] - last_machine[0]) / total if total > 0 else None
        last_ticks, last_machine, last_time = ticks, machine, now
        status = get_status(admin)
        process = (status or {}).get("process") or {}
        gen, stuck = process.get("generation"), process.get("stuckConnections")
        clients = (status or {}).get("clients")
        if status is None:
            run.status_misses += 1
        with run.lock:
            run.samples.append(Sample(t, rss, threads, fds, processes, gen, stuck, cpu_tinylb,
                                      cpu_machine, clients if isinstance(clients, dict) else None))
        if gen is not None and generation is not None and gen < generation:
            # A server process that is being replaced still answers on the admin port while
            # it drains: its numbers are not news, and not a new generation.
            run.stale_status += 1
            run.samples[-1].stale = True
        elif gen is not None and gen != generation:
            if generation is not None:
                cause = process.get("startedBy", "?")
                uptime = float(status.get("uptimeSeconds") or 0)
                began = max(t - uptime - 0.5, 0.0)
                run.add(Event(began, "generation",
                              f"server process generation {gen} serves (started by {cause})",
                              label=f"gen {gen}"))
                if cause == "crash":
                    run.crashes.append(f"generation {gen} at {clock(began)}")
            generation = gen
        tick = int(run.now()) + 1


# --------------------------------------------------------------------------------------------
# The disturbances: backend kills, config rewrites, floods
# --------------------------------------------------------------------------------------------


def flood(run: Run, result: FloodResult, event: Event, port: int) -> None:
    """Opens the flood's sockets, holds them FLOOD_HOLD s (trickling), closes them."""
    kinds = ("idle", "trickle", "h2")
    socks: dict[str, list[socket.socket]] = {k: [] for k in kinds}
    answered: set[int] = set()  # fds of the sockets tinylb sent something on

    def done() -> bool:
        return run.stop.is_set() or run.left() <= 0.5

    try:
        for _ in range(FLOOD_SOCKETS):
            for kind in kinds:
                if done():
                    break
                try:
                    sock = socket.create_connection((HOST, port), timeout=3.0)
                except OSError:
                    result.refused[kind] += 1
                    continue
                sock.settimeout(2.0)
                try:
                    if kind == "trickle":
                        sock.sendall(TRICKLE_HEAD)
                    elif kind == "h2":
                        sock.sendall(H2_PREFACE)
                except OSError:
                    result.closed_early[kind] += 1
                    sock.close()
                    continue
                socks[kind].append(sock)
                result.opened[kind] += 1
        opened_at = result.opened_at = run.now()
        log(f"{clock(opened_at)} flood {result.number}: {sum(result.opened.values())} sockets"
            f" open ({dict(result.opened)}), refused {dict(result.refused) or 0}")
        for kind in kinds:
            for sock in socks[kind]:
                sock.setblocking(False)  # from here on only peeks and one-byte sends
        hold_until = opened_at + FLOOD_HOLD
        while not done() and run.now() < hold_until:
            if run.stop.wait(min(TRICKLE_EVERY, max(hold_until - run.now(), 0))):
                break
            # Which sockets did tinylb close (or answer) meanwhile? A peek tells without
            # blocking; the trickling ones then get their next byte.
            for kind in kinds:
                alive = []
                for sock in socks[kind]:
                    state = peek(sock)
                    if state == "open" and kind == "trickle":
                        try:
                            sock.send(b"a")
                        except OSError:
                            state = "closed"
                    if state == "closed":
                        result.closed_early[kind] += 1
                        result.close_after[kind].append(run.now() - opened_at)
                        sock.close()
                        continue
                    if state == "answered":
                        if sock.fileno() not in answered:
                            answered.add(sock.fileno())
                            result.answered[kind] += 1
                        try:
                            sock.recv(65536)  # read it, so the next peek sees what follows
                        except OSError:
                            pass
                    alive.append(sock)
                socks[kind] = alive
    finally:
        for kind in kinds:
            for sock in socks[kind]:
                sock.close()
        result.closed = run.now()
        event.until = result.closed
        if not run.stop.is_set():
            early = {k: v for k, v in result.closed_early.items() if v}
            answered = {k: v for k, v in result.answered.items() if v}
            log(f"{clock(result.closed)} flood {result.number} closed; closed by tinylb before"
                f" that: {early or 0}; answered: {answered or 0}")


def peek(sock: socket.socket) -> str:
    """`open`, `closed` (by the peer, or reset) or `answered` (bytes waiting), without blocking."""
    try:
        return "answered" if sock.recv(1, socket.MSG_PEEK) else "closed"
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"


# --------------------------------------------------------------------------------------------
# The bad clients: from 127.0.0.3, for the whole run
# --------------------------------------------------------------------------------------------

# How a bad client's connection may end: by tinylb ("408"; "cut off": closed with no answer or
# an incomplete one; "reset"), or otherwise ("answered NNN", "stalled": a reader got nothing for
# READER_STALL s, "closed by itself" as planned, "still open at the end" of the run).
TINYLB_ENDED = ("408", "cut off", "reset")


@dataclass
class BadClient:
    """One bad client's counts; its own thread writes them, the report reads them after."""
    name: str
    kind: str  # pipeline, upload, reader, refusal
    connections: int = 0
    connect_errors: collections.Counter = field(default_factory=collections.Counter)
    endings: collections.Counter = field(default_factory=collections.Counter)
    answers: collections.Counter = field(default_factory=collections.Counter)  # status → count
    # Seconds from the connect to the end, by ending.
    lasted: dict = field(default_factory=lambda: collections.defaultdict(list))
    spans: list = field(default_factory=list)  # (opened, ended, ending), seconds of the run
    sent: int = 0
    received: int = 0
    # The refused-then-reconnected rounds (kind refusal).
    rounds: collections.Counter = field(default_factory=collections.Counter)
    get_seconds: list = field(default_factory=list)  # GETs answered 200: how long each took
    refusal_seconds: list = field(default_factory=list)  # refusals answered: how long each took
    failures: list = field(default_factory=list)  # (t, what): GETs after a refusal without a 200
    port_retries: int = 0

    def finish(self, run: Run, ending: str, opened: float) -> None:
        now = run.now()
        self.endings[ending] += 1
        self.lasted[ending].append(now - opened)
        self.spans.append((opened, now, ending))


def bad_done(run: Run) -> bool:
    return run.stop.is_set() or run.left() <= 0


def error_name(err: BaseException | None) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    code = getattr(err, "errno", None)
    return errno.errorcode.get(code, str(err)) if code else type(err).__name__


def connect_bad(port: int, to: int, *, reuse: bool = False,
                rcvbuf: int | None = None) -> socket.socket:
    """A connection from BAD_SOURCE:port (0: any port) to tinylb's port `to`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(BAD_CONNECT_TIMEOUT)
        sock.bind((BAD_SOURCE, port))
        sock.connect((HOST, to))
    except BaseException:
        sock.close()
        raise
    return sock


def open_bad(run: Run, me: BadClient, to: int, rcvbuf: int | None = None) -> socket.socket | None:
    """A new connection of `me`, or None (counted, after a pause) if it could not connect."""
    try:
        sock = connect_bad(0, to, rcvbuf=rcvbuf)
    except OSError as err:
        me.connect_errors[error_name(err)] += 1
        run.stop.wait(1.0)
        return None
    me.connections += 1
    return sock


def connect_fixed_port(run: Run, me: BadClient, port: int, to: int
                       ) -> tuple[socket.socket | None, OSError | None]:
    """From BAD_SOURCE:port with SO_REUSEADDR, tried again for PORT_RETRY s while the kernel
    still holds the address pair (EADDRINUSE, EADDRNOTAVAIL)."""
    deadline = time.monotonic() + PORT_RETRY
    while True:
        try:
            sock = connect_bad(port, to, reuse=True)
        except OSError as err:
            if (err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
                    and time.monotonic() < deadline and not run.stop.is_set()):
                me.port_retries += 1
                time.sleep(0.05)
                continue
            return None, err
        me.connections += 1
        return sock, None


def tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state of a socket (TCP_INFO's first byte; 1 is ESTABLISHED), which
    tells whether the peer closed or reset it without reading what waits on it."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return None


def drain(sock: socket.socket, limit: int = 4 * MIB) -> tuple[bytes, str]:
    """What has arrived, without waiting; and `eof`, `reset` or `open` after it."""
    chunks, total = [], 0
    sock.setblocking(False)
    try:
        while total < limit:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return b"".join(chunks), "open"
            if not data:
                return b"".join(chunks), "eof"
            chunks.append(data)
            total += len(data)
    except OSError:
        return b"".join(chunks), "reset"
    return b"".join(chunks), "open"


def read_to_close(sock: socket.socket, within: float, run: Run) -> tuple[bytes, str]:
    """Everything until the peer closes, for at most `within` s; and `eof`, `reset`, `timed
    out` or `run ended` (the run stopped first) after it."""
    chunks = []
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), "timed out"
        if run.stop.is_set():
            return b"".join(chunks), "run ended"
        sock.settimeout(min(left, 0.5))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return b"".join(chunks), "reset"
        if not data:
            return b"".join(chunks), "eof"
        chunks.append(data)


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in STATUS_LINE.findall(data)]


def pipeline_client(run: Run, me: BadClient, to: int) -> None:
    """PIPELINED slow GETs in one write, nothing read; closed after PIPELINE_HOLD s."""
    while not bad_done(run):
        sock = open_bad(run, me, to)
        if sock is None:
            continue
        opened, ending = run.now(), None
        with sock:
            try:
                sock.sendall(PIPELINE_REQUEST * PIPELINED)
                me.sent += len(PIPELINE_REQUEST) * PIPELINED
            except OSError:
                ending = "reset"
            # Held without reading: TCP_INFO tells whether tinylb closed or reset it.
            while ending is None and not bad_done(run) and run.now() < opened + PIPELINE_HOLD:
                run.stop.wait(min(0.5, max(opened + PIPELINE_HOLD - run.now(), 0.0)))
                if tcp_state(sock) != 1:
                    break
            data, how = drain(sock)
            me.received += len(data)
            for status in statuses(data):
                me.answers[status] += 1
            if ending is None:
                ending = {"eof": "cut off", "reset": "reset"}.get(how) or (
                    "still open at the end" if bad_done(run) else "closed by itself")
        me.finish(run, ending, opened)
        run.stop.wait(BAD_PAUSE)


def upload_client(run: Run, me: BadClient, to: int) -> None:
    """A POST announcing 99,999 body bytes, then one byte every UPLOAD_EVERY s, until tinylb
    answers or closes."""
    while not bad_done(run):
        sock = open_bad(run, me, to)
        if sock is None:
            continue
        opened, ending = run.now(), None
        with sock:
            try:
                sock.sendall(UPLOAD_HEAD)
                me.sent += len(UPLOAD_HEAD)
            except OSError:
                ending = "reset"
            while ending is None:
                if bad_done(run):
                    ending = "still open at the end"
                    break
                wait = min(UPLOAD_EVERY, max(run.left(), 0.05))
                readable = select.select([sock], [], [], wait)[0]
                failed = False
                if not readable:
                    try:
                        sock.send(b"x")
                        me.sent += 1
                        continue
                    except OSError:
                        failed = True  # an answer may wait all the same
                data, how = read_to_close(sock, 5.0, run) if not failed else drain(sock)
                me.received += len(data)
                found = statuses(data)
                for status in found:
                    me.answers[status] += 1
                if found:
                    ending = "408" if found[0] == 408 else f"answered {found[0]}"
                elif how == "run ended":
                    ending = "still open at the end"
                else:
                    ending = "reset" if failed or how == "reset" else "cut off"
        me.finish(run, ending, opened)
        run.stop.wait(BAD_PAUSE)


def reader_client(run: Run, me: BadClient, to: int) -> None:
    """GET /bytes/100000000 with a small receive buffer, READ_SIZE bytes every READ_EVERY s,
    until tinylb cuts it off."""
    while not bad_done(run):
        sock = open_bad(run, me, to, rcvbuf=READER_RCVBUF)
        if sock is None:
            continue
        opened, ending = run.now(), None
        head, body, length, status = b"", 0, None, None
        with sock:
            try:
                sock.sendall(READER_REQUEST)
                me.sent += len(READER_REQUEST)
            except OSError:
                ending = "reset"
            sock.settimeout(READ_EVERY)
            next_read = last_byte = time.monotonic()
            while ending is None:
                if bad_done(run):
                    ending = "still open at the end"
                    break
                run.stop.wait(max(0.0, next_read - time.monotonic()))
                next_read = max(next_read + READ_EVERY, time.monotonic())
                try:
                    data = sock.recv(READ_SIZE)
                except TimeoutError:
                    if time.monotonic() - last_byte > READER_STALL:
                        ending = "stalled"
                    continue
                except OSError:
                    ending = "reset"
                    break
                if not data:
                    complete = length is not None and 0 <= length <= body
                    ending = f"answered {status}" if complete else "cut off"
                    break
                last_byte = time.monotonic()
                me.received += len(data)
                if length is None:
                    head += data
                    if b"\r\n\r\n" in head:
                        top, rest = head.split(b"\r\n\r\n", 1)
                        found = statuses(top[:16])
                        status = found[0] if found else 0
                        me.answers[status] += 1
                        m = re.search(rb"(?im)^content-length:\s*(\d+)", top)
                        length, body = (int(m.group(1)) if m else -1), len(rest)
                        head = b""
                else:
                    body += len(data)
                if length is not None and 0 <= length <= body:
                    ending = f"answered {status}"  # all of it (a short error answer)
        me.finish(run, ending, opened)
        run.stop.wait(BAD_PAUSE)


def refusal_client(run: Run, me: BadClient, to: int) -> None:
    """Once a second: a malformed request from a fixed port, which must get 400 and a close,
    then at once a GET from the same address and port, which must get 200."""
    first, count = REFUSE_PORTS[0], REFUSE_PORTS[1] - REFUSE_PORTS[0]
    offset = os.getpid() % count
    n = 0
    while not bad_done(run):
        started = run.now()
        port = first + (offset + n) % count
        n += 1
        me.rounds["rounds"] += 1
        sock, err = connect_fixed_port(run, me, port, to)
        if sock is None:
            kernel = err is not None and err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
            me.rounds["kernel: first connect" if kernel else "first connect failed"] += 1
            me.connect_errors[f"first: {error_name(err)}"] += 1
        else:
            opened = run.now()
            with sock:
                try:
                    sock.sendall(MALFORMED)
                    me.sent += len(MALFORMED)
                    data, how = read_to_close(sock, REFUSAL_WITHIN, run)
                except OSError:
                    data, how = b"", "reset"
                me.received += len(data)
                found = statuses(data)
                for status in found:
                    me.answers[status] += 1
                what = f"{found[0]}" if found else "no answer"
                closed = {"eof": "closed", "reset": "reset"}.get(how, "not closed")
                if found:
                    me.refusal_seconds.append(run.now() - opened)
                if how != "run ended":
                    me.rounds[f"refusal: {what}, {closed}"] += 1
            if how == "run ended":
                me.rounds["cut short by the end of the run"] += 1
                me.finish(run, "still open at the end", opened)
                break
            me.finish(run, f"refusal: {what}, {closed}", opened)
            if what != "400" or how not in ("eof", "reset"):
                me.failures.append((run.now(), f"refusal from port {port}: {what}, {closed}"
                                               f" after {run.now() - opened:.1f} s"))
            if how not in ("eof", "reset"):
                # tinylb has not closed its end: the address pair is not free again, and a
                # connect from it would test the kernel, not tinylb. No GET this round.
                me.failures[-1] = (me.failures[-1][0], me.failures[-1][1] + "; no GET")
                run.stop.wait(max(0.0, started + REFUSE_EVERY - run.now()))
                continue
            # At once, from the same address and port.
            sock, err = connect_fixed_port(run, me, port, to)
            if sock is None:
                kernel = err is not None and err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
                me.rounds["kernel: reconnect" if kernel else "reconnect failed"] += 1
                me.connect_errors[f"reconnect: {error_name(err)}"] += 1
                if not kernel:
                    me.failures.append((run.now(), f"reconnect from port {port}:"
                                                   f" {error_name(err)}"))
            else:
                opened = run.now()
                sent = time.monotonic()
                me.rounds["GETs"] += 1
                with sock:
                    try:
                        sock.sendall(AFTER_REFUSAL)
                        me.sent += len(AFTER_REFUSAL)
                        data, how = read_to_close(sock, ANSWER_WITHIN, run)
                    except OSError:
                        data, how = b"", "reset"
                took = time.monotonic() - sent
                me.received += len(data)
                found = statuses(data)
                for status in found:
                    me.answers[status] += 1
                if how == "run ended" and not found:
                    me.rounds["GETs"] -= 1
                    me.rounds["cut short by the end of the run"] += 1
                    me.finish(run, "still open at the end", opened)
                    break
                if found and found[0] == 200:
                    me.rounds["GET: 200"] += 1
                    if took > GET_PROMPT:
                        me.rounds["GET: 200, slow"] += 1
                    me.get_seconds.append(took)
                    me.finish(run, "GET: 200", opened)
                else:
                    what = (f"status {found[0]}" if found else
                            {"eof": "closed without an answer", "reset": "reset",
                             "timed out": f"no answer within {ANSWER_WITHIN:g} s",
                             "run ended": "an incomplete answer"}[how])
                    me.rounds["GET: no 200"] += 1
                    me.failures.append((run.now(), f"GET from port {port}: {what} after"
                                                   f" {took:.1f} s"))
                    me.finish(run, "GET: no 200", opened)
        run.stop.wait(max(0.0, started + REFUSE_EVERY - run.now()))


def bad_clients(run: Run, to: int) -> list[threading.Thread]:
    """The bad clients' threads, started; each stops by itself at the end of the run."""
    plan = [(BadClient("pipeline", "pipeline"), pipeline_client)]
    plan += [(BadClient(f"upload {i + 1}", "upload"), upload_client) for i in range(UPLOADS)]
    plan += [(BadClient(f"reader {i + 1}", "reader"), reader_client) for i in range(READERS)]
    plan += [(BadClient("refused, then reconnect", "refusal"), refusal_client)]
    threads = []
    for me, loop in plan:
        run.bad.append(me)

        def body(loop=loop, me=me):
            try:
                loop(run, me, to)
            except Exception as err:  # a bug here must not end the run, but must be seen
                me.connect_errors[f"the thread failed: {err!r}"] += 1
                log(f"bad client {me.name} failed: {err!r}")

        thread = threading.Thread(target=body, name=f"bad-{me.name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def schedule(seconds: float) -> list[tuple[float, str, int]]:
    """(time, action, number) for the whole run, in order; every action fits in the run."""
    plan: list[tuple[float, str, int]] = []
    kills = [t for t in range(KILL_EVERY, int(seconds), KILL_EVERY) if t + DOWN_FOR + 5 <= seconds]
    for n, t in enumerate(kills):
        plan += [(t, "kill", n), (t + DOWN_FOR, "restart", n)]
    plan += [(t, "config", n) for n, t in
             enumerate(range(CONFIG_EVERY, int(seconds), CONFIG_EVERY)) if t + 5 <= seconds]
    floods = [t + FLOOD_OFFSET for t in range(FLOOD_EVERY, int(seconds), FLOOD_EVERY)
              if t + FLOOD_OFFSET + FLOOD_NEEDS <= seconds]
    if not floods:
        # A short run still gets one, at a third of it, off any backend kill.
        t = round(seconds / 3)
        if any(abs(t - k) < 15 for k in kills):
            t = min(k for k in kills if abs(t - k) < 15) + 15
        floods = [t]
    plan += [(t, "flood", n) for n, t in enumerate(floods)]
    return sorted(plan)


class Harness:
    """The processes under test and what the scheduler does to them."""

    def __init__(self, procs: Processes, tmp: Path) -> None:
        self.procs, self.tmp = procs, tmp
        self.run: Run | None = None  # set once everything is up
        ports = free_ports(BACKENDS + 2)
        self.backend_ports, self.port, self.admin = ports[:BACKENDS], ports[-2], ports[-1]
        self.backends: list[subprocess.Popen | None] = [None] * BACKENDS
        self.config_path = tmp / "config.json"
        self.interval = "1s"
        self.config = tinylb_config(self.port, self.admin, self.backend_ports, self.interval)
        self.master: subprocess.Popen | None = None
        self.kill_events: dict[int, Event] = {}
        self.flood_threads: list[threading.Thread] = []

    def start_backend(self, i: int) -> bool:
        port = self.backend_ports[i]
        proc = self.procs.start(f"backend {i + 1}", [str(BACKEND), str(port)],
                                self.tmp / f"backend-{i + 1}.log")
        self.backends[i] = proc
        return wait_port(port, proc, 5.0)

    def start(self) -> None:
        for i in range(BACKENDS):
            if not self.start_backend(i):
                raise SoakError(f"backend {i + 1} did not listen on {self.backend_ports[i]}"
                                f" (see {self.tmp}/backend-{i + 1}.log)")
        write_config(self.config_path, self.config)
        env = dict(os.environ, RUST_LOG="info")
        self.master = self.procs.start("tinylb", [str(TINYLB), "--config",
                                                  str(self.config_path)],
                                       self.tmp / "tinylb.log", env)
        if not wait_port(self.port, self.master, 10.0) or get_status_retry(self.admin) is None:
            tail = tail_of(self.tmp / "tinylb.log")
            raise SoakError(f"tinylb did not start on {self.port} with its admin on"
                            f" {self.admin}:\n{tail}")
        log(f"backends on {self.backend_ports}, tinylb on {self.port}, admin on {self.admin}")

    def act(self, action: str, n: int) -> None:
        run = self.run
        assert run is not None
        if action == "kill":
            i = n % BACKENDS
            proc = self.backends[i]
            if proc is not None:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            self.kill_events[n] = run.add(Event(run.now(), "kill", f"SIGKILL to backend {i + 1}"
                                                f" (port {self.backend_ports[i]})",
                                                label=f"kill b{i + 1}"))
        elif action == "restart":
            i = n % BACKENDS
            for attempt in range(3):
                if self.start_backend(i):
                    break
                log(f"backend {i + 1} did not listen again (attempt {attempt + 1})")
                if run.stop.wait(1.0):
                    return
            else:
                raise SoakError(f"backend {i + 1} could not be restarted"
                                f" (see {self.tmp}/backend-{i + 1}.log)")
            t = run.now()
            if n in self.kill_events:
                self.kill_events[n].until = t
            run.add(Event(t, "restart", f"backend {i + 1} started again"))
        elif action == "config":
            old, self.interval = self.interval, "2s" if self.interval == "1s" else "1s"
            self.config["healthCheckInterval"] = self.interval
            write_config(self.config_path, self.config)
            run.add(Event(run.now(), "config", f"config.json rewritten: healthCheckInterval"
                          f" {old} → {self.interval}", label=f"cfg {self.interval}"))
        elif action == "flood":
            number = n + 1
            result = FloodResult(number, run.now())
            with run.lock:
                run.floods.append(result)
            event = run.add(Event(result.start, "flood", f"flood {number}: {FLOOD_SOCKETS} idle,"
                                  f" {FLOOD_SOCKETS} trickling, {FLOOD_SOCKETS} HTTP/2 prefaces,"
                                  f" held {FLOOD_HOLD} s", label=f"flood {number}"))
            thread = threading.Thread(target=flood, args=(run, result, event, self.port),
                                      name=f"flood-{number}", daemon=True)
            thread.start()
            self.flood_threads.append(thread)

    def stop_tinylb(self) -> tuple[int | None, float]:
        assert self.master is not None
        return Processes.stop(self.master, grace=STOP_GRACE)


def get_status_retry(admin: int) -> dict | None:
    for _ in range(20):
        status = get_status(admin)
        if status is not None:
            return status
        time.sleep(0.25)
    return None


def tail_of(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def explain(piece: Slice, events: list[Event]) -> tuple[Event | None, list[Event]]:
    """The event that explains a failing slice, and the others whose windows reach it too.

    The explaining one is the nearest event before the middle of the slice whose window reaches
    it (an event late in the slice hardly caused what went wrong earlier in it); failing that,
    the first one inside the slice.
    """
    covering = sorted((e for e in events if e.covers(piece.t0, piece.t1)), key=lambda e: e.t)
    if not covering:
        return None, []
    middle = (piece.t0 + piece.t1) / 2
    before = [e for e in covering if e.t <= middle]
    best = before[-1] if before else covering[0]
    return best, [e for e in covering if e is not best]


def spread(values: list[float]) -> tuple[float, float, float] | None:
    return (min(values), statistics.median(values), max(values)) if values else None


def at(samples: list[Sample], t: float) -> Sample | None:
    """The last sample at or before t (else the first)."""
    before = [s for s in samples if s.t <= t]
    return before[-1] if before else (samples[0] if samples else None)


def peak(samples: list[Sample], t0: float, t1: float, key) -> float | None:
    values = [key(s) for s in samples if t0 <= s.t <= t1]
    return max(values) if values else None


def client_counters(samples: list[Sample]) -> tuple[list[tuple[float, dict]], dict[int, dict]]:
    """tinylb's `clients` counters over time, summed over its server processes: each counts
    from 0, and one being replaced still answers /status.json while it drains, so the latest
    (highest) value of every generation is kept and the generations are added up. Also the
    latest values by generation."""
    latest: dict[int, dict] = {}
    series = []
    for s in samples:
        if not s.clients or s.generation is None:
            continue
        seen = latest.setdefault(s.generation, {})
        for key in CLIENT_COUNTERS:
            value = s.clients.get(key)
            if isinstance(value, int):
                seen[key] = max(seen.get(key, 0), value)
        series.append((s.t, {k: sum(g[k] for g in latest.values() if k in g)
                             for k in CLIENT_COUNTERS if any(k in g for g in latest.values())}))
    return series, latest


def p99_minutes(slices: list[Slice]) -> tuple[float | None, list[tuple[int, float]]]:
    """The whole run's median p99 and, for every full minute (30 slices or more), its median."""
    values = [s.p99_ms for s in slices if s.p99_ms is not None]
    by_minute: dict[int, list[float]] = collections.defaultdict(list)
    for s in slices:
        if s.p99_ms is not None:
            by_minute[int(s.t0 // 60)].append(s.p99_ms)
    minutes = [(m, statistics.median(v)) for m, v in sorted(by_minute.items()) if len(v) >= 30]
    return (statistics.median(values) if values else None), minutes


def spans_open(run: Run, t: float) -> int:
    """The bad clients' connections open at `t`, those of the refusal rounds left out (each
    lasts a moment)."""
    return sum(1 for me in run.bad if me.kind != "refusal"
               for opened, ended, _ in me.spans if opened <= t < ended)


def seconds_range(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"after {values[0]:.0f} s"
    lo, mid, hi = spread(values)
    if round(lo) == round(hi):
        return f"after {lo:.0f} s"
    return f"after {lo:.0f}–{hi:.0f} s, median {mid:.0f}"


# How each bad client's connections are expected to end; any other ending is listed.
EXPECTED_ENDINGS = {
    "pipeline": {"cut off", "reset", "closed by itself", "still open at the end"},
    "upload": {"408", "still open at the end"},
    "reader": {"cut off", "still open at the end"},
}


def bad_cause(t: float, events: list[Event]) -> Event | None:
    """The latest event whose window reaches `t`, for a bad client's connection: a backend
    kill until its restart, a flood until it was closed, a new server process until the one
    it replaced finished draining (that one's connections end with it); each plus its window."""
    found = None
    for e in sorted(events, key=lambda e: e.t):
        end = e.until if e.until is not None else e.t
        if e.t - SLACK <= t <= end + WINDOWS[e.kind]:
            found = e
    return found


def outlived(events: list[Event]):
    """Whether a connection open from `opened` to `ended` outlived its server process: it was
    open before a new one began serving and ended once the old one had finished draining (its
    connections end with it; a slow reader's minutes later, once the kernel has sent what was
    left in the orphaned socket)."""
    changes = [(e.t, e.until if e.until is not None else e.t) for e in events
               if e.kind == "generation"]
    return lambda opened, ended: any(opened < t and ended >= done - SLACK
                                     for t, done in changes)


def bad_client_report(run: Run) -> tuple[list[str], list[str], list[str]]:
    """The report's section on the bad clients and tinylb's `clients` counters; the verdict's
    lines about them; the summary's besides the verdict."""
    events = sorted(run.events, key=lambda e: e.t)
    crossed = outlived(events)
    lines = ["## Bad clients (from 127.0.0.3)", "",
             "For the whole run, beside the bystander (wrk, from 127.0.0.1), each on a thread of"
             f" its own that connected again {BAD_PAUSE:g} s after its connection ended:", "",
             f"- **pipeline**: {PIPELINED} pipelined `GET /slow?ms=2000` in one write, nothing"
             f" read, closed after {PIPELINE_HOLD:g} s (what had arrived is counted as it"
             " closes);",
             f"- **upload 1–{UPLOADS}**: `POST /` announcing 99,999 body bytes, then one byte"
             f" every {UPLOAD_EVERY:g} s until tinylb answers or closes (408 expected once the"
             " body falls below clientBodyMinRate, after about clientTimeout);",
             f"- **reader 1–{READERS}**: `GET /bytes/100000000` with SO_RCVBUF {READER_RCVBUF},"
             f" reading {READ_SIZE // 1024} KiB every {READ_EVERY:g} s"
             f" ({READ_SIZE / READ_EVERY / 1024:g} KiB/s) until tinylb cuts it off (or"
             f" {READER_STALL:g} s without a byte);",
             f"- **refused, then reconnect**: every {REFUSE_EVERY:g} s, from a fixed source port"
             f" (the next of {REFUSE_PORTS[0]}–{REFUSE_PORTS[1] - 1}, SO_REUSEADDR), a chunked"
             " POST with the chunk size `zz` (400 and a close expected), then at once, from the"
             " same address and port, `GET /` with `Connection: close` (200 expected, within"
             f" {ANSWER_WITHIN:g} s).", "",
             "How their connections ended: *408*, *cut off* (tinylb closed it, with no answer or"
             " an incomplete one) and *reset* are tinylb's doing; *closed by itself* is the"
             " client's plan; *still open at the end* were open when the run ended. *Outlived"
             " its server process*: a new one began serving while the connection was open, and"
             " it ended with the old one (its drain, or later: an orphaned socket still sends"
             " what it holds), not by a per-client limit.", ""]
    rows = []
    for me in run.bad:
        def cell(k: str, n: int) -> str:
            if k not in TINYLB_ENDED and k != "stalled":
                return f"{k} ×{n}"
            old = sum(1 for opened, ended, ending in me.spans
                      if ending == k != "408" and crossed(opened, ended))
            return (f"{k} ×{n} ({seconds_range(me.lasted[k])}"
                    + (f"; {old} outlived its server process" if old else "") + ")")
        ended = ", ".join(cell(k, n) for k, n in me.endings.most_common())
        failed = sum(me.connect_errors.values())
        conns = f"{me.connections:,}" + (
            f" ({failed} could not: {', '.join(f'{k} {v}' for k, v in me.connect_errors.items())})"
            if failed else "")
        answers = ", ".join(f"{k} ×{n:,}" for k, n in sorted(me.answers.items())) or "none"
        rows.append([me.name, conns, html.escape(ended) or "–", answers,
                     f"{me.sent:,} / {me.received:,}"])
    lines += table(["bad client", "connections", "how they ended", "answers received",
                    "bytes sent / received"], rows, "lrlll")

    others = [(ended, me.name, ending, ended - opened, bad_cause(ended, events))
              for me in run.bad if me.kind in EXPECTED_ENDINGS
              for opened, ended, ending in me.spans
              if ending not in EXPECTED_ENDINGS[me.kind]]
    others.sort()
    odd = [o for o in others if o[4] is None]
    lines += ["Endings other than expected (an upload's 408, a reader's cut-off, the pipeline's"
              " cut-off, reset or own close; and still open at the end), each put down to the"
              " latest event whose window reaches it: a backend kill until its restart, a flood"
              " until closed, a new server process until the one it replaced had finished"
              f" draining, each plus its window ({SLACK:g} s slack before)."
              f" {len(others)} in all" + (":" if others else "."), ""]
    if others:
        by_cause = collections.Counter(e.kind if e else "**unexplained**" for *_, e in others)
        by_ending = collections.Counter(f"{name.split()[0]} {ending}"
                                        for _, name, ending, _, _ in others)
        lines += [f"- by ending: {', '.join(f'{k} ×{v}' for k, v in by_ending.most_common())}",
                  f"- by event: {', '.join(f'{k} ×{v}' for k, v in by_cause.most_common())}", ""]
        if odd:
            lines += ["Unexplained:", "",
                      *[f"- {clock(t)}: {name}, {ending} after {lasted:.1f} s"
                        for t, name, ending, lasted, _ in odd[:40]]]
            if len(odd) > 40:
                lines += [f"- … and {len(odd) - 40} more"]
            lines += [""]

    refusal = next((me for me in run.bad if me.kind == "refusal"), None)
    verdict, summary = [], []
    if refusal is not None:
        r = refusal.rounds
        kernel = r["kernel: first connect"] + r["kernel: reconnect"]
        refusals = {k.removeprefix("refusal: "): v for k, v in r.items()
                    if k.startswith("refusal: ")}
        times, waits = refusal.get_seconds, refusal.refusal_seconds
        lines += ["### Refused, then reconnected from the same address and port", "",
                  f"- rounds: {r['rounds']:,}"
                  + (f" ({r['cut short by the end of the run']} cut short by the end of the run)"
                     if r["cut short by the end of the run"] else "")
                  + f"; bind or connect retried on EADDRINUSE or EADDRNOTAVAIL"
                  f" {refusal.port_retries:,} times",
                  "- the malformed request: " + (", ".join(
                      f"{k} ×{v:,}" for k, v in sorted(refusals.items(), key=lambda kv: -kv[1]))
                      or "never sent") + (
                      f"; answered in {spread(waits)[0]:.3f}–{spread(waits)[2]:.3f} s, median"
                      f" {spread(waits)[1]:.3f}; slower than {GET_PROMPT:g} s:"
                      f" {sum(1 for w in waits if w > GET_PROMPT)}" + (
                          " (a request of 127.0.0.3, the refused one too, waits for its turn"
                          " while the address's uploads and readers hold its clientMaxWorkers"
                          " workers)" if max(waits) > GET_PROMPT else "") if waits else ""),
                  f"- could not connect, the kernel's doing (EADDRINUSE or EADDRNOTAVAIL after"
                  f" {PORT_RETRY:g} s of retrying), not tinylb's: {r['kernel: first connect']}"
                  f" first connects, {r['kernel: reconnect']} reconnects; other connect"
                  f" failures: {r['first connect failed']} first, {r['reconnect failed']}"
                  " reconnects",
                  f"- **GETs after the refusal answered 200: {r['GET: 200']:,} of"
                  f" {r['GETs']:,}**" + (f" (in {spread(times)[0]:.3f}–{spread(times)[2]:.3f} s,"
                                         f" median {spread(times)[1]:.3f}; slower than"
                                         f" {GET_PROMPT:g} s: {r['GET: 200, slow']})"
                                         if times else ""),
                  ""]
        failures = [(t, what, bad_cause(t, events)) for t, what in refusal.failures]
        if failures:
            lines += ["Rounds that failed (a refusal not answered 400 and closed, a reconnect"
                      " tinylb refused, a GET without a 200), with the event whose window"
                      " reaches them:", "",
                      *[f"- {clock(t)}: {html.escape(what)}"
                        f" ({f'{e.what}, {clock(e.t)}' if e else '**unexplained**'})"
                        for t, what, e in failures[:50]]]
            if len(failures) > 50:
                lines += [f"- … and {len(failures) - 50} more"]
            lines += [""]
        line = (f"Rounds of a refused request then a GET from the same address and port:"
                f" {r['rounds']:,}; {r['GET: 200']:,} of {r['GETs']:,} GETs answered 200")
        if failures:
            unexplained = sum(1 for *_, e in failures if e is None)
            line += (f"; **{len(failures)} round(s) failed, {unexplained} of them unexplained by"
                     " an event**")
        line += (f"; {kernel} round(s) the kernel would not connect (not tinylb's doing)"
                 if kernel else "")
        verdict.append(line + ".")

    # Ended by tinylb's limits, or with a server process that was replaced.
    by_limits = collections.Counter()
    with_process = 0
    for me in run.bad:
        for opened, ended, ending in me.spans:
            if me.kind != "refusal" and ending in TINYLB_ENDED:
                if ending != "408" and crossed(opened, ended):
                    with_process += 1
                else:
                    by_limits[ending] += 1
    never = [me.name for me in run.bad if me.kind != "refusal" and not any(
        ending == "408" or ending in TINYLB_ENDED and not crossed(opened, ended)
        for opened, ended, ending in me.spans)]
    line = (f"Bad clients (pipeline, {UPLOADS} uploads, {READERS} readers from 127.0.0.3):"
            f" {sum(me.connections for me in run.bad if me.kind != 'refusal'):,} connections;"
            f" {sum(by_limits.values()):,} ended by tinylb"
            f" ({', '.join(f'{k} {v}' for k, v in by_limits.most_common()) or 'none'})"
            + (f", {with_process} more with their server process (it was replaced)"
               if with_process else ""))
    if never:
        line += f"; **never ended by tinylb's limits: {', '.join(never)}**"
        last = next((s.clients for s in reversed(run.samples) if s.clients), None) or {}
        rate, floor = READ_SIZE / READ_EVERY, last.get("sendMinRate")
        if any(name.startswith("reader") for name in never) and isinstance(floor, int) and (
                0 < floor < rate):
            line += (f" (the readers take {rate:,.0f} B/s, above clientSendMinRate {floor} B/s:"
                     " the rule lets each keep its worker while it reads)")
    if others:
        line += (f"; {len(others)} other ending(s), "
                 + (f"**{len(odd)} unexplained** by an event" if odd
                    else "all in an event's window"))
    verdict.insert(0, line + ".")

    series, latest = client_counters(run.samples)
    lines += ["### tinylb's `clients` counters", ""]
    last = next((s.clients for s in reversed(run.samples) if s.clients), None)
    if not series:
        lines += ["/status.json had no `clients` object (a tinylb without these counters).", ""]
        return lines, verdict, summary
    totals = series[-1][1]
    lines += [f"Limits: clientMaxWorkers {last.get('maxWorkersPerClient', '?')},"
              f" clientBodyMinRate {last.get('bodyMinRate', '?')} B/s, clientSendMinRate"
              f" {last.get('sendMinRate', '?')} B/s. Each server process counts from 0: *whole"
              " run* adds up the last value each generation showed (what a replaced one counted"
              " after its last answer is missed).", ""]
    gens = sorted(latest)
    rows = [[f"`{k}`", what, fmt(totals.get(k)),
             " / ".join(fmt(latest[g].get(k)) for g in gens)]
            for k, what in CLIENT_COUNTERS.items()]
    lines += table(["counter", "counts", "whole run", "per generation (" + ", ".join(
        str(g) for g in gens) + ")"], rows, "llrr")
    summary.append("tinylb's clients counters: " + ", ".join(
        f"{k} {fmt(totals.get(k))}" for k in CLIENT_COUNTERS))
    return lines, verdict, summary


def normalise(line: str) -> str:
    """A log line without its timestamp and with numbers as N, to count like lines."""
    line = re.sub(r"^\S*\d{4}-\d\d-\d\d\S*\s+", "", line.strip())
    return re.sub(r"\d+", "N", line)[:160]


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(\w+)\s+\[([\w:]+)[^\]]*\]\s+(.*)$")


LOGGED_EVENTS = {"tinylb::master": "master", "tinylb::reload": "reload"}


def logged_events(path: Path, wall0: float) -> list[tuple[float, str]]:
    """(seconds from the start of the load, `master: ...` or `reload: ...`) for the lines of
    tinylb's master (why a server process was replaced, when the next one served, how the old
    one ended) and of its config reloads (that a rewrite was applied). The watchdog asks for a
    successor between two samples of /status.json, so only the log tells how many were stuck."""
    found = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if not m or m.group(3) not in LOGGED_EVENTS:
            continue
        when = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.UTC)
        found.append((when.timestamp() - wall0, f"{LOGGED_EVENTS[m.group(3)]}: {m.group(4)}"))
    return found


def log_summary(path: Path) -> tuple[collections.Counter, collections.Counter]:
    levels: collections.Counter = collections.Counter()
    messages: collections.Counter = collections.Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return levels, messages
    for line in text.splitlines():
        m = re.search(r"\b(ERROR|WARN|INFO|DEBUG|TRACE)\b", line)
        if m:
            levels[m.group(1)] += 1
            if m.group(1) in ("ERROR", "WARN"):
                messages[normalise(line)] += 1
        elif line.strip():
            levels["other"] += 1
            messages[normalise(line)] += 1
    return levels, messages


# --------------------------------------------------------------------------------------------
# The picture
# --------------------------------------------------------------------------------------------

COLORS = {"kill": "#d62728", "restart": "#2ca02c", "config": "#1f77b4", "flood": "#9467bd",
          "generation": "#ff7f0e"}


def nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def short_number(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    if abs(v) >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.3g}"


def polyline(points: list, color: str, x, fy) -> list[str]:
    """SVG polylines through (t, value) points, broken where a value is missing."""
    segments: list[list[str]] = [[]]
    for t, v in points:
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(f"{x(t):.1f},{fy(v):.1f}")
    out = []
    for seg in segments:
        if len(seg) == 1:
            cx, cy = seg[0].split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="1.5" fill="{color}"/>')
        elif seg:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.3"'
                       f' points="{" ".join(seg)}"/>')
    return out


def svg(run: Run, seconds: float, title: str) -> str:
    W, L, R = 1100, 70, 24
    PW = W - L - R
    panel_h, gap = 110, 26
    events = sorted(run.events, key=lambda e: e.t)
    x = lambda t: L + PW * min(max(t, 0.0), seconds) / seconds  # noqa: E731
    out: list[str] = []

    # Event labels: a band of rows per kind (floods and new processes, config rewrites, kills),
    # each label in the first row of its band where it does not overlap the one before; a
    # label that fits nowhere is left out (its line or band is still drawn).
    bands = (("flood", "generation"), ("config",), ("kill",))
    placed: list[tuple[Event, int]] = []
    first_row = 0
    for kinds in bands:
        rows: list[float] = []
        for e in (e for e in events if e.kind in kinds and e.label):
            left, width = x(e.t) + 2, 6.2 * len(e.label) + 6
            row = next((r for r, free_from in enumerate(rows) if left >= free_from), None)
            if row is None and len(rows) < 3:
                rows.append(0.0)
                row = len(rows) - 1
            if row is not None:
                rows[row] = left + width
                placed.append((e, first_row + row))
        first_row += len(rows)
    top = 44 + 14 * max(first_row, 1) + 22  # room for the first panel's title
    bucket = 60 if seconds >= 900 else 10
    panels = [
        ("the bystander (wrk from 127.0.0.1): requests/s, 1 s slices", "rps"),
        ("the bystander: non-2xx and socket errors per second", "errors"),
        ("the bystander: p99 latency, ms (log scale)", "p99"),
        (f"bad clients from 127.0.0.3: connections ended per {bucket} s, by how (bars); open"
         " (line)", "bad"),
        ("tinylb's clients counters, summed over its server processes (log scale)", "counters"),
        ("RSS of tinylb's processes, MiB", "rss"),
        ("threads of tinylb's processes", "threads"),
        ("open fds of tinylb's processes", "fds"),
        ("stuck connections (/status.json)", "stuck"),
        ("CPU, % of all cores", "cpu"),
    ]
    # A panel with a legend row gets it between its title and its frame.
    legend_row = {"bad", "counters"}
    tops = []
    y = top
    for _, key in panels:
        y += 14 if key in legend_row else 0
        tops.append(y)
        y += panel_h + gap
    H = y + 30
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}"'
               f' viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">')
    out.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    out.append(f'<text x="{L}" y="18" font-size="15" font-weight="bold">'
               f'{html.escape(title)}</text>')
    # Legend.
    lx = L
    for text, color, kind in (("backend down (SIGKILL → restart)", COLORS["kill"], "band"),
                              ("flood held (open → closed)", COLORS["flood"], "band"),
                              ("config.json rewritten", COLORS["config"], "dash"),
                              ("new server process", COLORS["generation"], "line")):
        if kind == "band":
            out.append(f'<rect x="{lx}" y="26" width="14" height="10" fill="{color}"'
                       f' fill-opacity="0.25"/>')
        else:
            dash = ' stroke-dasharray="4,3"' if kind == "dash" else ""
            out.append(f'<line x1="{lx}" y1="31" x2="{lx + 14}" y2="31" stroke="{color}"'
                       f' stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 18}" y="35" fill="#333">{html.escape(text)}</text>')
        lx += 18 + 6.6 * len(text) + 22
    for e, row in placed:
        y = 44 + 14 * row + 10
        out.append(f'<text x="{x(e.t) + 2:.1f}" y="{y}" font-size="11"'
                   f' fill="{COLORS[e.kind]}">{html.escape(e.label)}</text>')
    bottom = tops[-1] + panel_h
    # Bands and lines across every panel (drawn first, under the data).
    for e in events:
        ex = x(e.t)
        if e.kind in ("kill", "flood"):
            end = e.until if e.until is not None else seconds
            out.append(f'<rect x="{ex:.1f}" y="{top}" width="{max(x(end) - ex, 1):.1f}"'
                       f' height="{bottom - top}" fill="{COLORS[e.kind]}" fill-opacity="0.13"/>')
        elif e.kind == "config":
            out.append(f'<line x1="{ex:.1f}" y1="{top}" x2="{ex:.1f}" y2="{bottom}"'
                       f' stroke="{COLORS["config"]}" stroke-width="1" stroke-dasharray="4,3"/>')
        elif e.kind == "generation":
            out.append(f'<line x1="{ex:.1f}" y1="{top}" x2="{ex:.1f}" y2="{bottom}"'
                       f' stroke="{COLORS["generation"]}" stroke-width="1.5"/>')
    for e, row in placed:
        y = 44 + 14 * row + 12
        out.append(f'<line x1="{x(e.t):.1f}" y1="{y}" x2="{x(e.t):.1f}" y2="{top}"'
                   f' stroke="{COLORS[e.kind]}" stroke-width="0.8" stroke-opacity="0.6"/>')

    step = next(s for s in (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
                if seconds / s <= 14)
    slices, samples = run.slices, run.samples
    for i, (name, key) in enumerate(panels):
        y0 = tops[i]
        y1 = y0 + panel_h
        title_y = y0 - 5 - (14 if key in legend_row else 0)
        out.append(f'<text x="{L}" y="{title_y}" font-weight="bold" fill="#222">'
                   f'{html.escape(name)}</text>')
        out.append(f'<rect x="{L}" y="{y0}" width="{PW}" height="{panel_h}" fill="none"'
                   f' stroke="#999"/>')
        for t in range(0, int(seconds) + 1, step):
            out.append(f'<line x1="{x(t):.1f}" y1="{y0}" x2="{x(t):.1f}" y2="{y1}"'
                       f' stroke="#e4e4e4"/>')
        if key == "errors":
            series = [(s, s.non2xx, s.errors) for s in slices]
            vmax = nice_ceiling(max([a + b for _, a, b in series] + [2]))
            fy = lambda v: y1 - panel_h * v / vmax  # noqa: E731
            for s, non2xx, errors in series:
                if non2xx + errors == 0:
                    continue
                bx, bw = x(s.t0), max(x(s.t1) - x(s.t0), 1.5)
                if errors:
                    out.append(f'<rect x="{bx:.1f}" y="{fy(errors):.1f}" width="{bw:.1f}"'
                               f' height="{y1 - fy(errors):.1f}" fill="#d62728"/>')
                if non2xx:
                    out.append(f'<rect x="{bx:.1f}" y="{fy(errors + non2xx):.1f}"'
                               f' width="{bw:.1f}" height="{fy(errors) - fy(errors + non2xx):.1f}"'
                               f' fill="#ff9896"/>')
            ticks = [0, vmax / 2, vmax]
            out.append(f'<text x="{L + PW - 4}" y="{y0 + 13}" text-anchor="end" font-size="11">'
                       f'<tspan fill="#d62728">■ socket errors</tspan>'
                       f'<tspan fill="#e07b7a" dx="8">■ non-2xx</tspan></text>')
            if not any(a + b for _, a, b in series):
                out.append(f'<text x="{L + PW / 2}" y="{y0 + panel_h / 2 + 4}"'
                           f' text-anchor="middle" fill="#2ca02c">none</text>')
        elif key == "bad":
            kinds = [("408", "#1f77b4"), ("cut off", "#ff7f0e"), ("reset", "#d62728"),
                     ("stalled", "#8c564b"), ("answered", "#2ca02c"),
                     ("closed by itself", "#aaaaaa"),
                     ("refusal round failed", "#000000")]
            counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
            for me in run.bad:
                for _, ended, ending in me.spans:
                    what = "answered" if ending.startswith("answered") else ending
                    if me.kind == "refusal":
                        if ending in ("GET: 200", "refusal: 400, closed"):
                            continue
                        what = "refusal round failed"
                    if what in dict(kinds):
                        counts[int(ended // bucket)][what] += 1
            open_points = [(s.t, spans_open(run, s.t)) for s in samples]
            vmax = nice_ceiling(max([sum(c.values()) for c in counts.values()]
                                    + [v for _, v in open_points] + [2]) * 1.05)
            fy = lambda v: y1 - panel_h * v / vmax  # noqa: E731
            for b, c in sorted(counts.items()):
                bx = x(b * bucket) + 0.5
                bw = max(x(min((b + 1) * bucket, seconds)) - x(b * bucket) - 1.0, 1.0)
                level = 0
                for what, color in kinds:
                    if c[what]:
                        height = fy(level) - fy(level + c[what])
                        out.append(f'<rect x="{bx:.1f}" y="{fy(level + c[what]):.1f}"'
                                   f' width="{bw:.1f}" height="{height:.1f}" fill="{color}"/>')
                        level += c[what]
            out += polyline(open_points, "#444444", x, fy)
            seen = {what for c in counts.values() for what in c}
            legend = "".join(
                f'<tspan fill="{color}" dx="{8 if n else 0}">■ {html.escape(what)}'
                '</tspan>'
                for n, (what, color) in enumerate((w, c) for w, c in kinds if w in seen))
            refusal = next((me for me in run.bad if me.kind == "refusal"), None)
            rounds = (f' · refused, then reconnect: {refusal.rounds["GET: 200"]:,} of'
                      f' {refusal.rounds["GETs"]:,} GETs got 200') if refusal else ""
            out.append(f'<text x="{L}" y="{y0 - 5}" font-size="11">{legend}'
                       f'<tspan fill="#444" dx="8">— connections open{rounds}</tspan></text>')
            ticks = [0, vmax / 2, vmax]
        elif key == "counters":
            palette = ["#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#2ca02c",
                       "#e377c2"]
            series, _ = client_counters(samples)
            totals = series[-1][1] if series else {}
            top_value = max([v for _, c in series for v in c.values()] + [10])
            lo, hi = 1.0, 10 ** math.ceil(math.log10(top_value))
            fy = lambda v: y1 - panel_h * math.log10(max(v, lo)) / math.log10(hi)  # noqa: E731
            ticks = [10.0 ** k for k in range(round(math.log10(hi)) + 1)]
            legend = []
            for n, (name_, color) in enumerate(zip(CLIENT_COUNTERS, palette)):
                out += polyline([(t, c.get(name_) if c.get(name_) else None) for t, c in series],
                                color, x, fy)
                legend.append(f'<tspan fill="{color}" dx="{8 if n else 0}">— {name_}'
                              f' {fmt(totals.get(name_))}</tspan>')
            if not series:
                out.append(f'<text x="{L + PW / 2}" y="{y0 + panel_h / 2 + 4}"'
                           f' text-anchor="middle" fill="#999">no clients counters in'
                           f' /status.json</text>')
            out.append(f'<text x="{L}" y="{y0 - 5}" font-size="11">{"".join(legend)}</text>')
        else:
            colors = {"rps": "#1f77b4", "p99": "#8c564b", "rss": "#2ca02c", "threads": "#17becf",
                      "fds": "#7f7f7f", "stuck": "#ff7f0e"}
            extra: list[tuple[str, list]] = []
            late: list[str] = []  # drawn over the line
            if key == "rps":
                points = [((s.t0 + s.t1) / 2, s.rps) for s in slices]
            elif key == "cpu":
                points = [(s.t, s.cpu_tinylb) for s in samples]
                extra = [("#aaaaaa", [(s.t, s.cpu_machine) for s in samples])]
                colors["cpu"] = "#2ca02c"
                out.append(f'<text x="{L + PW - 4}" y="{y0 + 13}" text-anchor="end"'
                           f' font-size="11"><tspan fill="#2ca02c">— tinylb\'s processes</tspan>'
                           f'<tspan fill="#999" dx="8">■ whole machine</tspan></text>')
            elif key == "p99":
                points = [((s.t0 + s.t1) / 2, s.p99_ms) for s in slices]
            elif key == "rss":
                points = [(s.t, s.rss_kib / 1024) for s in samples]
            elif key == "stuck":
                # Every answer, a draining server process's too: only it has counted the
                # connections stuck in it (the zigzag while both answer is theirs).
                points = [(s.t, s.stuck) for s in samples]
            else:
                points = [(s.t, getattr(s, key)) for s in samples]
            values = [v for _, v in points + [p for _, ps in extra for p in ps] if v is not None]
            if key == "p99":
                lo = 10 ** math.floor(math.log10(max(min(values, default=1.0), 0.01)))
                hi = 10 ** math.ceil(math.log10(max(max(values, default=10.0), lo * 10)))
                fy = lambda v: y1 - panel_h * (math.log10(max(v, lo)) - math.log10(lo)) / (  # noqa: E731
                    math.log10(hi) - math.log10(lo))
                ticks = []
                v = lo
                while v <= hi * 1.001:
                    ticks.append(v)
                    v *= 10
                # The flatness judged in the verdict: the whole run's median ×/÷ FLAT_FACTOR (a
                # grey band) and each full minute's median p99 (dark steps).
                whole, minutes = p99_minutes(slices)
                if whole is not None:
                    clamp = lambda y: min(max(y, y0), y1)  # noqa: E731
                    b_top = clamp(fy(whole * FLAT_FACTOR))
                    b_bottom = clamp(fy(whole / FLAT_FACTOR))
                    out.append(f'<rect x="{L}" y="{b_top:.1f}" width="{PW}"'
                               f' height="{b_bottom - b_top:.1f}" fill="#000"'
                               ' fill-opacity="0.07"/>')
                    for m, v in minutes:
                        late.append(f'<line x1="{x(m * 60):.1f}" y1="{fy(v):.1f}"'
                                   f' x2="{x(min((m + 1) * 60, seconds)):.1f}" y2="{fy(v):.1f}"'
                                   f' stroke="#222" stroke-width="2.2"/>')
                    out.append(f'<text x="{L + PW - 4}" y="{y0 + 13}" text-anchor="end"'
                               f' font-size="11"><tspan fill="#8c564b">— each second</tspan>'
                               f'<tspan fill="#222" dx="8">━ each minute\'s median</tspan>'
                               f'<tspan fill="#888" dx="8">■ run median ×/÷ {FLAT_FACTOR:g}'
                               f'</tspan></text>')
            else:
                vmax = 100.0 if key == "cpu" else nice_ceiling(max(values + [2], default=2) * 1.05)
                fy = lambda v: y1 - panel_h * v / vmax  # noqa: E731
                ticks = [0, vmax / 2, vmax]
            for color, pts in extra:  # the machine's CPU: an area under tinylb's line
                known = [(t, v) for t, v in pts if v is not None]
                if len(known) > 1:
                    outline = " ".join(f"{x(t):.1f},{fy(v):.1f}" for t, v in known)
                    out.append(f'<polygon fill="{color}" fill-opacity="0.35" stroke="none"'
                               f' points="{x(known[0][0]):.1f},{y1} {outline}'
                               f' {x(known[-1][0]):.1f},{y1}"/>')
            out += polyline(points, colors[key], x, fy)
            out += late
        for v in ticks:
            ty = fy(v)
            out.append(f'<line x1="{L - 4}" y1="{ty:.1f}" x2="{L}" y2="{ty:.1f}" stroke="#999"/>')
            out.append(f'<text x="{L - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="11"'
                       f' fill="#444">{short_number(v)}</text>')
    for t in range(0, int(seconds) + 1, step):
        out.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11"'
                   f' fill="#444">{clock(t)}</text>')
    out.append(f'<text x="{L + PW / 2}" y="{bottom + 30}" text-anchor="middle" fill="#444">'
               f'time since the load started (m:ss)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A markdown table; `align` has an l or r per column (default: the first l, others r)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    if digits == 0 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def event_rows(events: list[Event], logged: list[tuple[float, str]]) -> list[list[str]]:
    """The events, and tinylb's own lines about them in time order among them (in italics)."""
    merged = [(e.t, 0, html.escape(e.what)) for e in events]
    merged += [(t, 1, f"*{html.escape(m)}*") for t, m in logged]
    return [[clock(t), what] for t, _, what in sorted(merged)]


def build_report(ctx: dict) -> tuple[str, list[str]]:
    """The markdown and the summary lines."""
    run: Run = ctx["run"]
    seconds = ctx["seconds"]
    slices, samples = run.slices, run.samples
    events = sorted(run.events, key=lambda e: e.t)
    requests = sum(s.requests for s in slices)
    non2xx = sum(s.non2xx for s in slices)
    errors = {k: sum(getattr(s, k) for s in slices) for k in ("connect", "read", "write",
                                                               "timeout")}
    failed = [s for s in slices if s.failed]
    explained = [(s, *explain(s, events)) for s in failed]
    unexplained = [s for s, e, _ in explained if e is None]
    gens = [e for e in events if e.kind == "generation"]
    last_gen = next((s.generation for s in reversed(samples) if s.generation), None)
    short = ctx["minutes"] < FULL_MINUTES
    exit_status, exit_took = ctx["exit"]

    verdict = []
    if run.fatal:
        verdict.append(f"**The run failed:** {run.fatal}.")
    else:
        verdict.append(f"tinylb ran throughout ({len(slices)} one-second slices of load).")
    if run.crashes:
        verdict.append(f"**A server process crashed** and was replaced: {', '.join(run.crashes)}.")
    causes = collections.Counter(re.search(r"started by (\w+)", e.what).group(1) for e in gens)
    verdict.append(f"Server processes: generation 1 to {last_gen}"
                   + (f" ({', '.join(f'{n} by {c}' for c, n in causes.items())})" if gens
                      else " (never replaced)") + ".")
    verdict.append(f"The bystander (wrk from 127.0.0.1, beside the bad clients): {requests:,}"
                   f" requests, {non2xx:,} non-2xx, {sum(errors.values()):,} socket errors;"
                   f" seconds with errors or non-2xx: {len(failed)}, of which"
                   f" **{len(unexplained)} unexplained** by an event.")
    whole_p99, minutes = p99_minutes(slices)
    if whole_p99 is not None and minutes:
        lo, hi = whole_p99 / FLAT_FACTOR, whole_p99 * FLAT_FACTOR
        outside = [(m, v) for m, v in minutes if not lo <= v <= hi]
        meds = [v for _, v in minutes]
        judged = (f"each full minute's median p99 {min(meds):.2f}–{max(meds):.2f} ms against"
                  f" the whole run's median {whole_p99:.2f} ms (flat: every minute within"
                  f" {FLAT_FACTOR:g}× of it, either way; {len(minutes)} minute(s) judged)")
        if outside:
            verdict.append(f"The bystander's p99 **did not stay flat**: {judged}; outside it: "
                           + ", ".join(f"{clock(m * 60)}–{clock(m * 60 + 60)} ({v:.2f} ms)"
                                       for m, v in outside) + ".")
        else:
            verdict.append(f"The bystander's p99 stayed flat: {judged}.")
    else:
        verdict.append("The bystander's p99: too few slices to judge (a minute needs 30).")
    bad_lines, bad_verdict, bad_summary = bad_client_report(run)
    verdict += bad_verdict
    if exit_status is None:
        verdict.append("tinylb was not stopped by the script (it had already gone).")
    else:
        ok = "as expected" if exit_status == 0 else "**expected 0**"
        verdict.append(f"After SIGTERM tinylb exited with status {exit_status} in {exit_took:.1f} s"
                       f" ({ok}).")
    if ctx["binary"][1] != ctx["binary"][0]:
        verdict.append(f"**The tinylb binary on disk changed during the run** (now sha256"
                       f" {ctx['binary'][1][0]}…, modified {ctx['binary'][1][1]}): a server"
                       " process started after that may run the new build.")
    if ctx["leftover"]:
        verdict.append(f"**Processes of tinylb's tree outlived it** and were killed:"
                       f" {ctx['leftover']}.")

    lines = ["# Soak run", "",
             "<!-- Generated by benches/soak.py (`make soak`); replaced on each run. -->", ""]
    if short:
        lines += [f"> **Short trial ({ctx['minutes']:g} min), not the {FULL_MINUTES}-minute soak.**"
                  " Its numbers only show that the harness works; `make soak` runs the real"
                  " one.", ""]
    cfg = dict(ctx["config"])
    cfg["servers"] = f"{BACKENDS} backends (examples/backend) on 127.0.0.1"
    lines += [
        f"- **Date:** {ctx['date']}",
        f"- **Duration:** {ctx['minutes']:g} min planned; load from 0:00 to"
        f" {clock(slices[-1].t1 if slices else 0)}",
        f"- **Command:** `{ctx['command']}`",
        f"- **Machine:** {ctx['machine']}; load average {ctx['load_start']} at the start,"
        f" {ctx['load_end']} at the end",
        f"- **Versions:** {ctx['versions']}",
        f"- **Binary:** {binary_shown(ctx['built'])} (sha256 {ctx['binary'][0][0]}…, modified"
        f" {ctx['binary'][0][1]}); the tree it was built in is now {ctx['binary'][2]}",
        f"- **tinylb config:** `{json.dumps(cfg)}`; RUST_LOG=info; everything else default"
        " (clientTimeout 20s, maxStuckConnections 100)",
        f"- **Load (the bystander, from 127.0.0.1):** `wrk -t1 -c{CONNECTIONS} -d1s --latency"
        f" --timeout {WRK_TIMEOUT}` in back-to-back 1 s slices, GET /, each connection pausing"
        f" {DELAY_MS} ms between requests"
        f" (at most {CONNECTIONS * 1000 // DELAY_MS} req/s; unthrottled, tinylb serves several"
        " thousand here)",
        f"- **Disturbances:** every {KILL_EVERY} s SIGKILL to one backend (in turn), started again"
        f" {DOWN_FOR} s later; every {CONFIG_EVERY} s config.json rewritten (temp file renamed"
        " over it) with healthCheckInterval toggled 1s ↔ 2s; every"
        f" {FLOOD_EVERY // 60} min (+{FLOOD_OFFSET} s; once at a third of a shorter run) a"
        f" flood of {FLOOD_SOCKETS} idle connections, {FLOOD_SOCKETS} trickling request heads"
        f" (one byte every {TRICKLE_EVERY:g} s) and {FLOOD_SOCKETS} HTTP/2 prefaces, held"
        f" {FLOOD_HOLD} s, then closed; and for the whole run, from 127.0.0.3, bad clients (see"
        f" [Bad clients](#bad-clients-from-127003)): a connection pipelining {PIPELINED} slow"
        f" GETs it never reads, {UPLOADS} uploads of a byte every {UPLOAD_EVERY:g} s,"
        f" {READERS} readers of {READ_SIZE // 1024} KiB every {READ_EVERY:g} s, and every"
        f" {REFUSE_EVERY:g} s a refused request followed by a GET from the same address and"
        " port",
        f"- **Sampled every second:** RSS (sum of VmRSS), threads and open fds of tinylb's"
        " process tree (master and children); generation, stuck connections and the"
        f" `clients` counters from /status.json ({run.status_misses} sample(s) without an"
        f" answer, {run.stale_status} answered by an older server process while it drained)",
        "",
        "## Verdict",
        "",
        *[f"- {v}" for v in verdict],
        "",
        "## Totals",
        "",
        *table(["requests", "non-2xx", "socket errors", "connect", "read", "write", "timeout"],
               [[f"{requests:,}", f"{non2xx:,}", f"{sum(errors.values()):,}",
                 *(f"{errors[k]:,}" for k in ("connect", "read", "write", "timeout"))]]),
    ]
    series = [
        ("requests/s", [s.rps for s in slices], 0),
        ("non-2xx per second", [s.non2xx for s in slices], 0),
        ("socket errors per second", [s.errors for s in slices], 0),
        ("p99 latency, ms", [s.p99_ms for s in slices if s.p99_ms is not None], 2),
        ("RSS, MiB", [s.rss_kib / 1024 for s in samples], 1),
        ("threads", [s.threads for s in samples], 0),
        ("open fds", [s.fds for s in samples], 0),
        ("processes", [s.processes for s in samples], 0),
        ("stuck connections", [s.stuck for s in samples if s.stuck is not None], 0),
        ("CPU of tinylb's processes, % of all cores",
         [s.cpu_tinylb for s in samples if s.cpu_tinylb is not None], 1),
        ("CPU of the machine, % of all cores",
         [s.cpu_machine for s in samples if s.cpu_machine is not None], 1),
    ]
    rows = []
    for name, values, digits in series:
        sp = spread(values)
        first = values[0] if values else None
        last = values[-1] if values else None
        rows.append([name, *(fmt(v, digits) for v in (sp or (None, None, None))),
                     fmt(first, digits), fmt(last, digits)])
    lines += ["## Each line", "",
              "Per wrk slice (the first four) or per one-second sample of tinylb's processes.", "",
              *table(["line", "min", "median", "max", "first", "last"], rows)]

    lines += ["## Floods", ""]
    flood_rows = []
    for f in run.floods:
        before = at(samples, f.start - 0.5)
        closed = f.closed if f.closed is not None else seconds
        after_t = min(closed + 30, seconds)
        after = at(samples, after_t)
        pk = lambda key: peak(samples, f.start, closed + 5, key)  # noqa: E731

        def trio(key, fmt_digits=0, scale=1.0):
            b = key(before) / scale if before else None
            p = pk(lambda s: key(s) / scale)
            a = key(after) / scale if after else None
            return f"{fmt(b, fmt_digits)} → {fmt(p, fmt_digits)} → {fmt(a, fmt_digits)}"

        opened = "/".join(str(f.opened[k]) for k in ("idle", "trickle", "h2"))
        refused = "/".join(str(f.refused[k]) for k in ("idle", "trickle", "h2"))
        early = " / ".join(
            f"{f.closed_early[k]}" + (f" ({statistics.median(f.close_after[k]):.0f} s)"
                                     if f.close_after[k] else "")
            for k in ("idle", "trickle", "h2"))
        gb = before.generation if before else None
        ga = after.generation if after else None
        flood_rows.append([f"{f.number} at {clock(f.start)}", opened, refused, early,
                           trio(lambda s: s.rss_kib, 1, 1024), trio(lambda s: s.threads),
                           trio(lambda s: s.fds), f"{gb} → {ga}"])
    if flood_rows:
        lines += ["Sockets as idle/trickling/HTTP/2; *closed by tinylb* counts those tinylb"
                  " closed while they were held, with the median time from the flood's sockets"
                  " being open to the close. tinylb's numbers: before the flood → peak while it"
                  " was held (and 5 s after) → 30 s after it was closed"
                  f" ({clock(seconds)} at the latest).", "",
                  *table(["flood", "opened", "refused", "closed by tinylb", "RSS MiB",
                          "threads", "fds", "generation"], flood_rows)]
    else:
        lines += ["None in this run.", ""]

    lines += bad_lines
    svg_name = ctx["svg_name"]
    lines += ["## Picture", "",
              f"![Soak run: the bystander's req/s, errors and p99, the bad clients' connections"
              f" and tinylb's clients counters, RSS, threads, fds, stuck connections and CPU over"
              f" time, with the events marked]({svg_name})", "",
              "Red bands: a backend down (from its SIGKILL to its restart); purple bands: a flood"
              " held; blue dashes: config.json rewritten; orange lines: a new server process"
              " serves. The first three panels are the bystander (wrk); in its p99 panel the"
              " dark steps are each minute's median p99 and the grey band the whole run's"
              f" median ×/÷ {FLAT_FACTOR:g} (flat: every step inside it). The next two are the"
              " bad clients: how their connections ended per interval, with how many were"
              " open, and tinylb's `clients` counters summed over its server processes. While a"
              " replaced server process drains it answers /status.json too, so the stuck line"
              " may jump between its count and its successor's.", ""]
    lines += ["## Events", "",
              "In italics, tinylb's own log lines about them: its master's (why a server process"
              " was replaced, when the next one served, how the old one ended) and its config"
              " reloads.", "",
              *table(["time", "event"], event_rows(events, ctx["logged"]), "rl")]
    lines += ["## Seconds with errors or non-2xx", "",
              "Each is put down to the nearest event before the middle of its slice whose window"
              " reaches it (else the first event inside it), others whose window reaches it are"
              " named too. Windows: a kill"
              f" {WINDOWS['kill']:g} s, a restart {WINDOWS['restart']:g} s, a config rewrite"
              f" {WINDOWS['config']:g} s, a new server process {WINDOWS['generation']:g} s, a"
              f" flood from its start to {WINDOWS['flood']:g} s after it is closed"
              f" ({SLACK:g} s slack for times read once a second).", ""]
    if explained:
        rows = []
        for s, e, others in explained[:300]:
            why = f"{e.what} ({clock(e.t)})" if e else "**unexplained**"
            if others:
                why += "; also in the window of: " + ", ".join(
                    f"{o.label or o.kind} ({clock(o.t)})" for o in others)
            err = f"{s.errors} ({s.connect}/{s.read}/{s.write}/{s.timeout})" if s.errors else "0"
            rows.append([f"{clock(s.t0)}–{clock(s.t1)}", f"{s.requests:,}", f"{s.non2xx:,}",
                         err, fmt(s.p99_ms, 1), html.escape(s.note) or "", why])
        lines += table(["slice", "requests", "non-2xx", "socket errors (c/r/w/t)", "p99 ms",
                        "note", "explained by"], rows, "lrrrrll")
        if len(explained) > 300:
            lines += [f"… and {len(explained) - 300} more.", ""]
    else:
        lines += ["None.", ""]
    lines += ["### Unexplained failures", ""]
    if unexplained:
        lines += [f"- {clock(s.t0)}–{clock(s.t1)}: {s.requests} requests, {s.non2xx} non-2xx,"
                  f" {s.errors} socket errors{'; ' + s.note if s.note else ''}"
                  for s in unexplained] + [""]
    else:
        lines += ["None.", ""]
    levels, messages = ctx["log"]
    lines += ["## tinylb's log", "",
              f"With RUST_LOG=info: {levels.get('ERROR', 0)} error and {levels.get('WARN', 0)}"
              f" warning lines ({levels.get('INFO', 0)} info, {levels.get('other', 0)} other)."
              " The most frequent, numbers shown as N:", ""]
    if messages:
        lines += table(["line", "count"],
                       [[f"`{html.escape(m).replace('|', '∣')}`", str(n)]
                        for m, n in messages.most_common(12)])
    else:
        lines += ["(none)", ""]

    summary = [
        f"{'short trial, ' if short else ''}{ctx['minutes']:g} min: {requests:,} requests,"
        f" {non2xx:,} non-2xx, {sum(errors.values()):,} socket errors"
        f" ({', '.join(f'{k} {v}' for k, v in errors.items())})",
        *verdict,
        *bad_summary,
    ]
    for name, values, digits in series[3:8]:
        sp = spread(values)
        if sp:
            summary.append(f"{name}: min {fmt(sp[0], digits)}, median {fmt(sp[1], digits)},"
                           f" max {fmt(sp[2], digits)}, last {fmt(values[-1], digits)}")
    for row in flood_rows:
        summary.append(f"flood {row[0]}: opened {row[1]}, RSS MiB {row[4]}, threads {row[5]},"
                       f" fds {row[6]}, generation {row[7]}")
    for s in unexplained:
        summary.append(f"UNEXPLAINED: {clock(s.t0)}–{clock(s.t1)} {s.non2xx} non-2xx,"
                       f" {s.errors} socket errors {s.note}")
    return "\n".join(lines), [re.sub(r"\*\*", "", s) for s in summary]



# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, argv: list[str], procs: Processes, tmp: Path) -> int:
    seconds = args.minutes * 60
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4 * FLOOD_SOCKETS:
        raise SoakError(f"the open-file limit is below {4 * FLOOD_SOCKETS}; raise `ulimit -n`")
    wrk = ensure_wrk()
    built = ensure_binaries(args.build)
    versions = f"{first_line([str(TINYLB), '--version'])}; {first_line([wrk, '-v']).split(' Copyright')[0]}"
    identity = binary_identity(TINYLB)
    built_from = source_tree()
    script = tmp / "pace.lua"
    script.write_text(f"-- Written by benches/soak.py: each connection pauses between requests.\n"
                      f"function delay()\n  return {DELAY_MS}\nend\n")
    plan = schedule(seconds)
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    harness = Harness(procs, tmp)
    harness.start()
    config = dict(harness.config)
    assert harness.master is not None
    run = Run(seconds)  # t=0 is the start of the load
    harness.run = procs.run = run
    log(f"running for {args.minutes:g} min: {sum(1 for p in plan if p[1] == 'kill')} kills,"
        f" {sum(1 for p in plan if p[1] == 'config')} config rewrites,"
        f" {sum(1 for p in plan if p[1] == 'flood')} flood(s)")
    threads = [
        threading.Thread(target=load_loop, args=(run, wrk, harness.port, script), name="load",
                         daemon=True),
        threading.Thread(target=sample_loop, args=(run, harness.master, harness.admin),
                         name="sampler", daemon=True),
    ]
    for thread in threads:
        thread.start()
    threads += bad_clients(run, harness.port)
    next_progress = 30.0
    try:
        for t, action, n in plan:
            while not run.stop.is_set() and run.now() < t:
                if run.now() >= next_progress:
                    progress(run)
                    next_progress += 30
                run.stop.wait(min(t - run.now(), next_progress - run.now(), 1.0))
            if run.stop.is_set() or run.left() <= 0:
                break
            harness.act(action, n)
        while not run.stop.is_set() and run.left() > 0:
            if run.now() >= next_progress:
                progress(run)
                next_progress += 30
            run.stop.wait(min(run.left(), 1.0))
    except (SoakError, BenchError) as err:
        run.fail(str(err))
    run.stop.set()
    for thread in threads + harness.flood_threads:
        thread.join(timeout=15)
    last_tree = tree(harness.master.pid) if harness.master.poll() is None else []
    exit_status, took = (None, 0.0)
    if harness.master.poll() is None:
        log("stopping tinylb with SIGTERM")
        exit_status, took = harness.stop_tinylb()
    else:
        # The master's end is the news, whatever else failed after it (wrk, say).
        code = harness.master.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        died = f"tinylb's master exited ({how}) during the run"
        if run.fatal and "master exited" not in run.fatal:
            died += f"; then {run.fatal}"
        run.fatal = run.fatal if run.fatal and "master exited" in run.fatal else died
    leftover = []
    for pid in last_tree:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            zombie = "zombie" in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"tinylb" in cmdline and not zombie:
            leftover.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    logged = logged_events(tmp / "tinylb.log", run.wall0)
    for e in run.events:
        # The master logs the moment a new server process serves; /status.json, sampled once a
        # second, only brackets it.
        if e.kind == "generation":
            serves = [t for t, m in logged if m.startswith(f"master: {e.label.replace('gen', 'generation')} serves")]
            if serves:
                e.t = serves[0]
            # Until the one it replaced has finished draining: a bad client's connection to
            # that one ends with it (the bystander's failures are judged as before).
            old = int(e.label.split()[-1]) - 1
            finished = [t for t, m in logged if t >= e.t - SLACK and m.startswith(
                f"master: generation {old} (pid") and "finished" in m]
            if finished:
                e.until = finished[0]
    ctx = {
        "run": run, "seconds": seconds, "minutes": args.minutes, "config": config,
        "date": date, "command": exact_command(argv, args.minutes),
        "machine": machine_description(), "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()), "versions": versions,
        "exit": (exit_status, took), "leftover": leftover, "log": log_summary(tmp / "tinylb.log"),
        "svg_name": args.out.with_suffix(".svg").name,
        "binary": (identity, binary_identity(TINYLB) if TINYLB.exists() else ("gone", ""),
                   built_from),
        "logged": logged, "built": built,
    }
    report, summary = build_report(ctx)
    # No path of the build machine in the report (issue 23): the repository's own as relative
    # paths, the temp dir by its role.
    report = report.replace(str(tmp), "$TMPDIR/tinylb-soak-…").replace(f"{ROOT}/", "")
    title = (f"tinylb soak, {args.minutes:g} min{' (short trial)' if args.minutes < FULL_MINUTES else ''},"
             f" {date}")
    if not args.no_write:
        out = args.out if args.out.is_absolute() else Path.cwd() / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        out.with_suffix(".svg").write_text(svg(run, seconds, title))
        log(f"wrote {out} and {out.with_suffix('.svg')}")
    if args.json:
        args.json.write_text(json.dumps(raw_data(run), indent=1) + "\n")
        log(f"wrote {args.json}")
    print("\n".join(summary))
    failed = run.fatal or run.crashes or exit_status != 0 or leftover
    return 1 if failed else 0


def raw_data(run: Run) -> dict:
    """What `--json` saves: the run's own records, for a look of one's own."""
    return {
        "seconds": run.seconds,
        "events": [vars(e) for e in sorted(run.events, key=lambda e: e.t)],
        "slices": [vars(s) for s in run.slices],
        "samples": [vars(s) for s in run.samples],
        "floods": [{**vars(f), "close_after": dict(f.close_after)} for f in run.floods],
        "bad_clients": [{**vars(me), "lasted": dict(me.lasted)} for me in run.bad],
        "fatal": run.fatal,
    }


def progress(run: Run) -> None:
    with run.lock:
        recent = run.slices[-5:]
        sample = run.samples[-1] if run.samples else None
        bad = sum(s.errors + s.non2xx for s in run.slices)
    rps = statistics.mean(s.rps for s in recent) if recent else 0
    what = (f"RSS {sample.rss_kib / 1024:.1f} MiB, {sample.threads} threads, {sample.fds} fds,"
            f" generation {sample.generation}, stuck {sample.stuck}" if sample else "no sample")
    log(f"{clock(run.now())} / {clock(run.seconds)}: {rps:.0f} req/s, {bad} errors+non-2xx so"
        f" far; {what}")
    if run.bad:
        try:
            bad_progress(run)
        except RuntimeError:  # a count changed size under us: the next line will do
            pass


def bad_progress(run: Run) -> None:
    """One progress line on the bad clients (their threads are counting meanwhile)."""
    ended = collections.Counter()
    for me in run.bad:
        if me.kind != "refusal":
            ended.update({k: v for k, v in me.endings.items() if k in TINYLB_ENDED})
    rounds = sum((me.rounds for me in run.bad), collections.Counter())
    log(f"  bad clients: {sum(me.connections for me in run.bad)} connections; tinylb ended"
        f" {sum(ended.values())} ({', '.join(f'{k} {v}' for k, v in ended.items()) or '-'});"
        f" GETs after a refusal: {rounds['GET: 200']} of {rounds['GETs']} got 200")


def main() -> int:
    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    argv = sys.argv[1:]
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    procs = Processes()
    tmp: Path | None = None
    status = 1
    try:
        tmp = Path(tempfile.mkdtemp(prefix="tinylb-soak-"))
        status = soak(args, argv, procs, tmp)
    except Interrupted as err:
        log(f"interrupted ({err}); cleaning up, no report written")
        status = 130
    except (SoakError, BenchError) as err:
        log(f"error: {err}")
    except Exception:  # a bug here must still end everything this run started
        import traceback
        traceback.print_exc()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        procs.stop_all()
        if tmp is not None:
            if args.keep_tmp or status not in (0, 130):
                log(f"kept {tmp} (config, logs)")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
