#!/usr/bin/env python3
"""`make bench`: tinylb side by side with its class of threaded proxies and with the event
loops, in one run, on this machine.

What it measures
----------------
One nginx process is the backend: it listens on five ports of 127.0.0.1 (`--backends N` for
another number) and answers a small body on `/` and a 64 MiB file on `/big`. In front of those
backends it starts the load balancers, each round robin over the same ports with pooled backend
connections, no cache and no access log, from configs written into the temp dir:

- `tinylb` (the release build of this repository) and `tinylb-untimed`, the same with
  `"stageTimers": false`, which shows what timing each request's stages costs;
- tinylb's own class, threaded proxies: `apache` (Apache httpd 2.4, worker MPM, one child of
  300 threads, mod_proxy_balancer), `varnish` (Varnish in pass mode, a round-robin director)
  and `squid` (Squid as a reverse proxy, one origin-server parent per backend);
- the event loops: `nginx1` (nginx with one worker, upstream keep-alive) and `haproxy`
  (HAProxy with one thread, `http-reuse always`); `nginx2` (two workers) on request;
- two yardsticks from examples/bare_shape.rs, the design card's shape with nothing of tinylb
  in it: `shape-proxy` (tiny_http, intake thread, crossbeam channel, 8 workers, a plain ureq
  GET to the next backend) and, on request, `shape-front` (the same, answering a fixed body).
  They show how fast the shape itself can go, so a gap between tinylb and the others can be
  split into what tinylb's code costs and what the shape costs. `--targets` can add a third,
  `shape-direct`, whose workers call tiny_http's `recv()` without the channel;
- `direct`: wrk straight at one backend port, the ceiling no load balancer can reach.

The peers' servers (apache2-bin, varnish, squid, haproxy), wrk and nginx are installed with
apt-get when missing; a service such a package starts on its own is stopped again.

With wrk it measures two workloads: keep-alive at 1, 16, 64 and 256 connections, and
`Connection: close` (a new connection per request) at 16 and 64. For each target, workload and
connection count it reports requests/s, p50 and p99 latency (wrk's `--latency` distribution),
errors (socket errors plus responses with status >= 400), the CPU-seconds the load balancer's
whole process tree used during the runs (utime + stime from /proc/PID/stat), requests per
CPU-second, and peak RSS (VmHWM from /proc/PID/status). Right before and after each run it reads
tinylb's stage timers (`tinylb_request_stage_seconds` on its admin listener's /metrics) and
reports the mean of each stage. Then it downloads the 64 MiB file through each target with curl
(MiB/s, and tinylb's VmHWM before and after: streaming must keep memory flat), and records the
stripped size of the tinylb binary. The report leads with tinylb's class.

Sweeps
------
The same harness runs the sweeps behind the defaults (docs/benchmarks.md, "Sweeps"):

- `--targets tinylb,apache` runs only those targets (of the keys above);
- `--connections` and `--close-connections` choose the connection counts of the two workloads
  (`--close-connections ""` skips the second);
- `--tinylb-config JSON`, given several times, runs one tinylb per config as separate targets,
  interleaved in the same run (`tinylb`, `tinylb#2`, ...), so a sweep's variants share the
  machine's noise just as tinylb and its peers do; the report's ratios are the first's;
- `--candidate PATH`, given once or more, runs another tinylb binary (an earlier build, a
  musl build) with the first config as one more target in the same rounds (`tinylb#2`, ...),
  so two builds are compared side by side;
- `--backends N` puts N backend ports behind every load balancer (nginx's file and connection
  limits and its upstream keep-alive cache grow with N);
- `--only-small` skips the 64 MiB downloads; `--no-write` leaves docs/benchmarks.md alone (or
  `--out` writes elsewhere); `--json FILE` also saves every cell's numbers for tables of its own.

Why ratios measured in one run
------------------------------
The machines this runs on are shared and noisy: two runs of the same thing differ by 15 % or
more. Absolute numbers from different runs cannot be compared, but two targets measured in the
same minute on the same cores suffer the same noise. So the rounds are interleaved (for each
connection count and each round every target runs once, in a rotated order) and the report
gives tinylb's ratios to the others from this run. Those ratios are the numbers to quote.

Everything it starts runs in its own process group and is killed when the bench ends, fails or
is interrupted (Ctrl-C); the temporary directory (configs, logs, the 64 MiB file) is removed.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import grp
import http.client
import json
import os
import platform
import pwd
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINYLB = ROOT / "target" / "release" / "tinylb"
BARE_SHAPE = ROOT / "target" / "release" / "examples" / "bare_shape"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
END_MARKER = "<!-- end of generated report -->"
DEFAULT_BACKENDS = 5
# What `--targets` can name, in the order they are started and reported.
TARGET_KEYS = (
    "direct",
    "tinylb",
    "tinylb-untimed",
    "apache",
    "varnish",
    "squid",
    "nginx1",
    "nginx2",
    "haproxy",
    "shape-proxy",
    "shape-front",
    "shape-direct",
)
# Run unless `--targets` says otherwise: nginx with 2 workers and the yardsticks without a
# backend only answer side questions.
DEFAULT_TARGETS = tuple(
    k for k in TARGET_KEYS if k not in ("nginx2", "shape-front", "shape-direct")
)
# tinylb's own class, threaded proxies (the report leads with them), and the event loops.
THREADED_CLASS = ("tinylb", "apache", "varnish", "squid")
EVENT_LOOPS = ("nginx1", "haproxy")
# The event loops' names in the headers of ratio tables.
EVENT_LOOP_SHORT_NAMES = {"nginx1": "nginx 1w", "nginx2": "nginx 2w", "haproxy": "HAProxy"}
# tinylb-untimed: the first tinylb config with these keys, to show what the stage timers cost.
UNTIMED_KEYS = {"stageTimers": False}
UNTIMED_LABEL = "tinylb, stage timers off"
# The yardsticks (examples/bare_shape.rs): the design card's shape with nothing of tinylb in
# it. Key -> (bare_shape's mode, label).
SHAPES = {
    "shape-proxy": ("proxy", "bare shape, proxying"),
    "shape-front": ("front", "bare shape, no backend"),
    "shape-direct": ("direct", "bare shape, no channel"),
}
# The peers: tinylb's class of threaded proxies and the event loops beside nginx. Key -> the
# label the report gives it.
PEERS = {
    "apache": "Apache worker",
    "varnish": "Varnish pass",
    "squid": "Squid accel",
    "haproxy": "HAProxy 1 thread",
}
# The server binary each peer runs.
PEER_TOOLS = {"apache": "apache2", "varnish": "varnishd", "squid": "squid", "haproxy": "haproxy"}
# The Debian package behind each tool, and the services a package starts on its own when it
# is installed (the bench stops them again: only its own instances may run).
PACKAGES = {
    "wrk": "wrk",
    "nginx": "nginx",
    "curl": "curl",
    "apache2": "apache2-bin",
    "varnishd": "varnish",
    "squid": "squid",
    "haproxy": "haproxy",
}
PACKAGE_SERVICES = {
    "nginx": ("nginx",),
    "varnish": ("varnish", "varnishncsa"),
    "squid": ("squid",),
    "haproxy": ("haproxy",),
}
APACHE_MODULES = "/usr/lib/apache2/modules"
APACHE_THREADS = 300
SMALL_BODY = "hello from backend\n"
BIG_MIB = 64
DOWNLOAD_REPEATS = 3
WARMUP_SECONDS = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
# RSS growth during the 64 MiB downloads below which tinylb's memory counts as flat.
FLAT_RSS_LIMIT_MIB = 2.0
# "Anything odd" flags tinylb's p99 above this many times its p50, and any cell whose rounds
# differ by more than this factor in req/s.
TAIL_FACTOR = 20
NOISY_SPREAD = 1.3
# ... and any run in which the target's processes used less than this share of one core: the
# target was starved of CPU by something else on the machine, or stalled.
STALL_CPU_SHARE = 0.25


class BenchError(Exception):
    """A failure that ends the bench with a one-line message (exit status 1)."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; the bench cleans up and exits 130."""


def log(message: str) -> None:
    """Progress and warnings go to stderr, so stdout carries only the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags; `--quick` overrides rounds and duration."""
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark tinylb against other load balancers, side by side.",
    )
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per connection count (3)")
    parser.add_argument(
        "--connections",
        default="1,16,64,256",
        help="comma-separated connection counts (1,16,64,256)",
    )
    parser.add_argument(
        "--close-connections",
        default="16,64",
        help="connection counts of the `Connection: close` workload, a new connection per"
        " request (16,64); empty to skip it",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="markdown file to write (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the report only; do not write --out (for sweeps)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also save every cell's numbers (medians and each round) as JSON",
    )
    parser.add_argument(
        "--tinylb-config",
        action="append",
        metavar="JSON",
        help="extra tinylb config keys, e.g. '{\"workers\": 16}'; give it several times to run"
        " one tinylb per config, interleaved in the same run",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="another tinylb binary to run beside target/release/tinylb with the first config"
        " (an earlier build, say); give it several times for several",
    )
    parser.add_argument(
        "--backends",
        type=int,
        default=DEFAULT_BACKENDS,
        metavar="N",
        help=f"backend ports behind every load balancer ({DEFAULT_BACKENDS})",
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated targets to run, of {','.join(TARGET_KEYS)}"
        f" ({','.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument(
        "--only-small", action="store_true", help="skip the 64 MiB downloads (for sweeps)"
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for debugging"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    if not 1 <= args.backends <= 1000:
        parser.error("--backends: give a number from 1 to 1000")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGET_KEYS]
    if unknown or not args.targets:
        wanted = ",".join(unknown) or "none"
        parser.error(f"--targets: {wanted}: choose from {','.join(TARGET_KEYS)}")
    args.connections = connection_counts(parser, "--connections", args.connections)
    if not args.connections:
        parser.error("--connections: give at least one count")
    args.close_connections = connection_counts(
        parser, "--close-connections", args.close_connections
    )
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be 1 or more")
    args.tinylb_extras = []
    for text in args.tinylb_config or ["{}"]:
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as err:
            parser.error(f"--tinylb-config: {text!r} is not JSON: {err}")
        if not isinstance(extra, dict):
            parser.error(f"--tinylb-config: {text!r} must be a JSON object")
        args.tinylb_extras.append(extra)
    if len(args.tinylb_extras) > 1 and "tinylb" not in args.targets:
        parser.error("--tinylb-config given several times, but tinylb is not in --targets")
    if args.candidate and "tinylb" not in args.targets:
        parser.error("--candidate needs tinylb in --targets")
    for path in args.candidate:
        if not os.access(path, os.X_OK):
            parser.error(f"--candidate: {path} is not an executable file")
    # One tinylb target per (config, binary): each config with this build, then each candidate
    # with the first config.
    args.tinylb_runs = [(extra, TINYLB) for extra in args.tinylb_extras] + [
        (args.tinylb_extras[0], path.resolve()) for path in args.candidate
    ]
    return args


def connection_counts(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """A comma-separated list of connection counts, each 1 or more (empty is an empty list)."""
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        parser.error(f"{flag}: {text!r} is not a list of numbers")
    if counts and min(counts) < 1:
        parser.error(f"{flag}: each count must be 1 or more")
    return counts


def exact_command(argv: list[str]) -> str:
    """The command line as the user typed it (through make, if that is how it ran)."""
    if os.environ.get("MAKELEVEL"):
        return f"make bench BENCH_ARGS={shlex.quote(shlex.join(argv))}" if argv else "make bench"
    return shlex.join(["python3", "benches/bench.py", *argv])


# --------------------------------------------------------------------------------------------
# Tools: wrk, nginx, curl, cargo
# --------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """`which`, also looking in the sbin directories a non-root PATH often lacks (nginx)."""
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)


def ensure_tools(targets: list[str]) -> dict[str, str]:
    """Paths of wrk, nginx, curl and the servers of the peers in `targets`, installing missing
    ones with apt-get (said on stderr)."""
    wanted = ["wrk", "nginx", "curl", *(PEER_TOOLS[t] for t in targets if t in PEER_TOOLS)]
    missing = [t for t in wanted if find_tool(t) is None]
    if missing:
        status = install_packages(sorted({PACKAGES[t] for t in missing}))
        still = [t for t in wanted if find_tool(t) is None]
        if still:
            raise BenchError(
                f"could not install {' '.join(still)} (apt-get exit status {status});"
                f" install them yourself, then run make bench again"
            )
        if status != 0:
            log(f"apt-get exited with {status}, but the tools are there; going on")
    return {t: find_tool(t) for t in wanted}  # type: ignore[misc]


def root_prefix() -> list[str]:
    """`sudo` before a command that changes the system, when we are not root and sudo is
    there."""
    return ["sudo"] if os.geteuid() != 0 and shutil.which("sudo") else []


def install_packages(packages: list[str]) -> int:
    """`apt-get update && apt-get install -y packages`; returns apt-get's exit status.

    A package's install may start its own service (squid on :3128, varnish on :6081): the
    bench runs its own instances in the foreground, so those are stopped again at once.
    """
    sudo = shlex.join(root_prefix())
    names = " ".join(packages)
    command = f"{sudo} apt-get update && {sudo} apt-get install -y {names}".strip()
    log(f"{names} not installed; installing with: {command}")
    if shutil.which("apt-get") is None:
        raise BenchError(f"apt-get is not available; install {names} yourself")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["sh", "-c", command], env=env, stdout=sys.stderr)
    stop_package_services(packages)
    return result.returncode


def stop_package_services(packages: list[str]) -> None:
    """Stops the services these freshly installed packages may have started, through the
    system's service manager (invoke-rc.d), which stops only the package's own daemon.

    Only packages the bench itself just installed get here, so nobody else's running server
    is touched. Where policy-rc.d forbade the start (containers), it forbids the stop too.
    """
    invoke = find_tool("invoke-rc.d")
    for service in (s for p in packages for s in PACKAGE_SERVICES.get(p, ())):
        if invoke is None:
            log(f"invoke-rc.d not found: if the {service} service started, stop it yourself")
            continue
        log(f"stopping the {service} service the package may have started")
        subprocess.run(
            [*root_prefix(), invoke, service, "stop"], stdout=sys.stderr, stderr=sys.stderr
        )


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    """The versions the report's header lists: first lines of `tinylb --version`, `nginx -v`,
    the peers' (`apache2 -v`, `varnishd -V`, `squid -v`, `haproxy -v`), `wrk -v`, `curl
    --version`."""

    def first_line(argv: list[str]) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else "unknown"

    wrk = first_line([tools["wrk"], "-v"])
    versions = {
        "tinylb": first_line([str(TINYLB), "--version"]),
        "nginx": first_line([tools["nginx"], "-v"]).removeprefix("nginx version: "),
    }
    # The peers' first lines, trimmed of build dates and addresses: `Apache/2.4.71 (Debian)`,
    # `varnish-7.1.1`, `Squid 5.7`, `HAProxy 2.6.12-1+deb12u4`.
    peers = {
        "apache2": ("-v", lambda line: line.removeprefix("Server version: ")),
        "varnishd": ("-V", lambda line: line.split()[1].strip("(")),
        "squid": ("-v", lambda line: line.replace("Cache: Version ", "")),
        "haproxy": ("-v", lambda line: " ".join(line.replace(" version", "").split()[:2])),
    }
    for tool, (flag, trim) in peers.items():
        if tool in tools:
            versions[tool] = trim(first_line([tools[tool], flag]))
    versions["wrk"] = wrk.split(" Copyright")[0]
    versions["curl"] = " ".join(first_line([tools["curl"], "--version"]).split()[:2])
    return versions


def build_tinylb() -> None:
    """Builds tinylb and the bare-shape yardstick; cargo's output goes to stderr."""
    argv = ["cargo", "build", "--release", "--bin", "tinylb", "--example", "bare_shape"]
    log(f"building tinylb: {' '.join(argv)}")
    result = subprocess.run(argv, cwd=ROOT, stdout=sys.stderr)
    if result.returncode != 0 or not TINYLB.exists() or not BARE_SHAPE.exists():
        raise BenchError(f"{' '.join(argv)} failed (see above)")


def stripped_size(tmp: Path) -> int | None:
    """Size in bytes of a stripped copy of target/release/tinylb, or None without `strip`."""
    strip = shutil.which("strip")
    if strip is None:
        return None
    copy = tmp / "tinylb.stripped"
    shutil.copyfile(TINYLB, copy)
    subprocess.run([strip, str(copy)], check=True)
    return copy.stat().st_size


# --------------------------------------------------------------------------------------------
# Processes and /proc
# --------------------------------------------------------------------------------------------


class Processes:
    """Every long-running process the bench starts, each in its own process group."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        """Starts `argv` in a new session (so Ctrl-C reaches only us), output to `log_path`."""
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.started.append((name, proc))
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace` s; returns the exit status."""
        pgid = proc.pid  # start_new_session makes the child its own group leader
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # nginx workers outlive a killed master; wait for the whole group, then force it.
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive(pgid) or proc.poll() is None:
            signal_group(pgid, signal.SIGKILL)
            proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        """Stops everything still running, newest first (load balancers before the backend)."""
        for name, proc in reversed(self.started):
            if proc.poll() is None or group_alive(proc.pid):
                log(f"stopping {name} (pid {proc.pid})")
                self.stop(proc)
        self.started.clear()


def signal_group(pgid: int, sig: int) -> None:
    """Sends `sig` to a process group that may already be gone (soak.py uses it too)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (nginx workers can outlive their master)."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass
class ProcStat:
    """The fields of /proc/PID/stat the bench uses."""

    ppid: int
    cpu_seconds: float


def read_stat(pid: int) -> ProcStat:
    """Parses /proc/PID/stat: ppid is field 4, utime and stime are fields 14 and 15 (ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return ProcStat(ppid=int(rest[1]), cpu_seconds=(int(rest[11]) + int(rest[12])) / CLK_TCK)


def descendants(root: int) -> list[int]:
    """Every pid below `root` (nginx's workers, Varnish's child, Apache's child), from one scan
    of /proc: a server's cost is its whole process tree, however deep it forks."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                kids.setdefault(read_stat(int(entry.name)).ppid, []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # the process ended during the scan
    found, waiting = [], list(kids.get(root, []))
    while waiting:
        pid = waiting.pop()
        found.append(pid)
        waiting += kids.get(pid, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (for a process, /proc sums all of its threads)."""
    return sum(read_stat(pid).cpu_seconds for pid in pids)


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status, such as VmHWM (peak RSS) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def reset_peak_rss(pids: list[int]) -> bool:
    """Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`); False if refused."""
    try:
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Ports, configs and start-up
# --------------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` free TCP ports on 127.0.0.1, below the kernel's ephemeral range.

    Below it so that wrk's and the proxies' outgoing connections never take one of them.
    Each candidate is checked by binding it (without SO_REUSEADDR, so TIME_WAIT counts).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    # Only if that range is too small for `count` does it reach into the ephemeral range.
    top = low if low - 20000 >= 4 * count else min(65536, 20000 + 100 * count)
    candidates = list(range(20000, top))
    random.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise BenchError(f"could not find {count} free ports on 127.0.0.1")


def make_big_file(path: Path) -> None:
    """The 64 MiB body: random bytes (a 1 MiB block repeated), so nothing compresses it."""
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        for _ in range(BIG_MIB):
            out.write(block)
    path.chmod(0o644)


def nginx_limits(backends: int) -> tuple[int, int]:
    """worker_connections and worker_rlimit_nofile for `backends` backend ports.

    8192 and 16384 for a few backends. Each backend port adds a listening socket on the backend
    and up to one idle keep-alive connection per tinylb worker, so both grow with the count
    (500 backends: 12,096 and 24,192; as root nginx may raise its own file limit).
    """
    connections = max(8192, 4096 + 16 * backends)
    return connections, 2 * connections


def upstream_keepalive(backends: int) -> int:
    """nginx's upstream `keepalive`: 64, or two idle connections per backend if that is more.

    The cache is per worker and shared by all servers of the upstream: with 64 slots and 500
    servers picked in turn, nearly every request would open a new connection, which would
    measure the cache's size instead of nginx. (tinylb keeps up to `workers` per backend.)
    """
    return max(64, 2 * backends)


def nginx_main(tmp: Path, name: str, workers: int, backends: int) -> str:
    """The main context of an nginx config: workers, limits, and pid and error log in `tmp`."""
    connections, nofile = nginx_limits(backends)
    return f"""# Written by benches/bench.py for one bench run.
worker_processes {workers};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; }}
"""


def nginx_temp_paths(tmp: Path, name: str) -> str:
    """http-context temp paths inside `tmp` (the compiled-in ones are system directories)."""
    return "\n".join(
        f"    {kind}_temp_path {tmp}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def backend_config(tmp: Path, ports: list[int]) -> str:
    """One nginx serving every backend port: a small body on `/`, the 64 MiB file on `/big`."""
    listens = "\n".join(f"        listen 127.0.0.1:{p};" for p in ports)
    return f"""{nginx_main(tmp, "backend", 1, len(ports))}
http {{
    access_log off;
    keepalive_requests 100000;
    sendfile on;
{nginx_temp_paths(tmp, "backend")}
    server {{
{listens}
        location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
        location = /big {{ alias {tmp}/big.bin; }}
    }}
}}
"""


def lb_config(tmp: Path, name: str, workers: int, port: int, backends: list[int]) -> str:
    """nginx as a load balancer in front of `backends`, with upstream keep-alive."""
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backends)
    return f"""{nginx_main(tmp, name, workers, len(backends))}
http {{
    access_log off;
    keepalive_requests 100000;
{nginx_temp_paths(tmp, name)}
    upstream backends {{
{servers}
        keepalive {upstream_keepalive(len(backends))};
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Stream large bodies through memory buffers, as tinylb does; the default spills
            # them to a temp file, which would measure the disk instead of the proxy.
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def tinylb_config(port: int, backends: list[int], extra: dict, admin_port: int) -> dict:
    """tinylb's config.json: the same backends as nginx, the admin listener (for /metrics) on
    `admin_port`, defaults for everything else."""
    config = {
        "port": f"127.0.0.1:{port}",
        "servers": [f"http://127.0.0.1:{p}" for p in backends],
        "shutdownGracePeriod": "2s",
        "adminAddress": f"127.0.0.1:{admin_port}",
    }
    config.update(extra)
    return config


def unprivileged_user() -> tuple[str, str] | None:
    """(user, group) a peer started as root switches to: `nobody` and its group, as nginx's
    workers use. None when we are not root (then nothing switches)."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_name, grp.getgrgid(nobody.pw_gid).gr_name


def apache_config(tmp: Path, port: int, backends: list[int]) -> str:
    """Apache httpd 2.4 as a balancer: the worker MPM with one child of 300 threads (its
    limits leave it no room to fork a second), mod_proxy_balancer by requests over
    `backends`, HTTP keep-alive to clients, no access log.

    mod_proxy reuses backend connections by default (each member pools up to one per
    thread); keepalive=On adds TCP keep-alive probes so idle pooled connections stay open.
    """
    modules = "\n".join(
        f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so"
        for name in (
            "mpm_worker",
            "authz_core",  # without it every request fails with "couldn't check user"
            "slotmem_shm",
            "proxy",
            "proxy_http",
            "proxy_balancer",
            "lbmethod_byrequests",
        )
    )
    user = unprivileged_user()
    members = "\n".join(
        f"    BalancerMember http://127.0.0.1:{p} keepalive=On" for p in backends
    )
    return f"""# Written by benches/bench.py for one bench run; no Debian /etc/apache2 include.
ServerRoot {tmp}/apache
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {tmp}/apache.pid
ErrorLog {tmp}/apache-error.log
LogLevel warn
DefaultRuntimeDir {tmp}/apache
Mutex file:{tmp}/apache default
{f"User {user[0]}{chr(10)}Group {user[1]}" if user else "# not root: no User/Group switch"}
{modules}
# One child process with 300 threads: ServerLimit 1 forbids a second child, and with
# MaxSpareThreads above ThreadsPerChild the child is never stopped for being idle.
ServerLimit 1
StartServers 1
ThreadLimit {APACHE_THREADS}
ThreadsPerChild {APACHE_THREADS}
MaxRequestWorkers {APACHE_THREADS}
MinSpareThreads 25
MaxSpareThreads {APACHE_THREADS + 25}
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
<Proxy balancer://backends>
{members}
    ProxySet lbmethod=byrequests
</Proxy>
ProxyPass / balancer://backends/
"""


def start_apache(procs: Processes, apache: str, tmp: Path, port: int, backends: list[int]):
    """Runs Apache in the foreground (-DFOREGROUND: the parent stays, its child serves)."""
    (tmp / "apache").mkdir()
    conf = tmp / "apache.conf"
    conf.write_text(apache_config(tmp, port, backends))
    argv = [apache, "-DFOREGROUND", "-f", str(conf)]
    return launch(procs, "apache", argv, port, tmp / "apache.out", tmp / "apache.pid")


def varnish_vcl(backends: list[int]) -> str:
    """VCL 4.1: a round-robin director over `backends`, and every request passed (never
    cached), so Varnish works as a plain balancer. Backend connections pool by default."""
    declared = "\n".join(
        f'backend b{i} {{ .host = "127.0.0.1"; .port = "{p}"; }}' for i, p in enumerate(backends)
    )
    added = "\n".join(f"    backends.add_backend(b{i});" for i in range(len(backends)))
    return f"""vcl 4.1;
# Written by benches/bench.py for one bench run.
import directors;
{declared}
sub vcl_init {{
    new backends = directors.round_robin();
{added}
}}
sub vcl_recv {{
    set req.backend_hint = backends.backend();
    return (pass);
}}
"""


def start_varnish(procs: Processes, varnishd: str, tmp: Path, port: int, backends: list[int]):
    """Runs varnishd in the foreground (-F) with its work dir in `tmp`, 32 MiB of malloc
    storage and no management port (-T none); no varnishncsa, so no access log."""
    vcl = tmp / "varnish.vcl"
    vcl.write_text(varnish_vcl(backends))
    argv = [varnishd, "-F", "-n", str(tmp / "varnish"), "-a", f"127.0.0.1:{port}"]
    argv += ["-f", str(vcl), "-s", "malloc,32m", "-T", "none", "-P", str(tmp / "varnish.pid")]
    return launch(procs, "varnish", argv, port, tmp / "varnish.out", tmp / "varnish.pid")


def squid_config(tmp: Path, port: int, backends: list[int]) -> str:
    """Squid as a reverse proxy (accel) with one origin-server parent per backend, picked
    round robin; nothing cached, persistent connections both ways, no access log."""
    peers = "\n".join(
        f"cache_peer 127.0.0.1 parent {p} 0 no-query no-digest originserver round-robin"
        f" name=b{i}"
        for i, p in enumerate(backends)
    )
    user = unprivileged_user()
    return f"""# Written by benches/bench.py for one bench run.
http_port 127.0.0.1:{port} accel defaultsite=backends no-vhost
{peers}
never_direct allow all
http_access allow all
cache deny all
cache_mem 8 MB
server_persistent_connections on
client_persistent_connections on
pid_filename {tmp}/squid/squid.pid
cache_log {tmp}/squid/cache.log
access_log none
cache_store_log none
coredump_dir {tmp}/squid
pinger_enable off
digest_generation off
shutdown_lifetime 0 seconds
{f"cache_effective_user {user[0]}" if user else "# not root: no user switch"}
"""


def start_squid(procs: Processes, squid: str, tmp: Path, port: int, backends: list[int]):
    """Runs squid in the foreground as one process (-N) under a service name of its own (-n),
    since squid names its shared-memory segments after it and another squid may run here.

    As root squid switches to `nobody`, so its directory (pid, cache log) must be nobody's.
    """
    workdir = tmp / "squid"
    workdir.mkdir()
    user = unprivileged_user()
    if user:
        shutil.chown(workdir, *user)
    conf = tmp / "squid.conf"
    conf.write_text(squid_config(tmp, port, backends))
    argv = [squid, "-N", "-n", f"tinylbbench{os.getpid()}", "-f", str(conf)]
    return launch(procs, "squid", argv, port, tmp / "squid.out", workdir / "squid.pid")


def haproxy_maxconn(backends: int) -> int:
    """HAProxy's maxconn: nginx's worker_connections, or less if the file limit is lower.

    HAProxy needs two descriptors per proxied connection and refuses to start when the hard
    limit cannot hold them.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = nginx_limits(backends)[0]
    if hard == resource.RLIM_INFINITY:
        return wanted
    return max(256, min(wanted, (hard - backends - 100) // 2))


def haproxy_config(port: int, backends: list[int]) -> str:
    """HAProxy with one thread, round robin over `backends`, idle server connections shared
    between clients (http-reuse always), keep-alive with clients, no logging."""
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    return f"""# Written by benches/bench.py for one bench run.
global
    nbthread 1
    maxconn {haproxy_maxconn(len(backends))}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 5s
frontend balancer
    bind 127.0.0.1:{port}
    default_backend backends
backend backends
    balance roundrobin
{servers}
"""


def start_haproxy(procs: Processes, haproxy: str, tmp: Path, port: int, backends: list[int]):
    """Runs HAProxy in the foreground (-db); it writes no pid file there."""
    conf = tmp / "haproxy.cfg"
    conf.write_text(haproxy_config(port, backends))
    return launch(procs, "haproxy", [haproxy, "-db", "-f", str(conf)], port, tmp / "haproxy.out")


# How each peer starts: (procs, its server's path, tmp, port, backend ports) -> process.
PEER_STARTERS = {
    "apache": start_apache,
    "varnish": start_varnish,
    "squid": start_squid,
    "haproxy": start_haproxy,
}


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(
    name: str, proc: subprocess.Popen, port: int, log_path: Path, pid_file: Path | None = None
) -> None:
    """Waits until `port` accepts connections; fails at once if the process has exited.

    For nginx, `pid_file` must exist too: nginx writes it only after binding every listen
    port, so a port that someone else took in the meantime is not mistaken for ours.
    """
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} at start:\n{tail(log_path)}"
            )
        if pid_file is None or pid_file.exists():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within 15 s:\n{tail(log_path)}")


def launch(
    procs: Processes,
    name: str,
    argv: list[str],
    port: int,
    log_path: Path,
    pid_file: Path | None = None,
    env: dict | None = None,
) -> subprocess.Popen:
    """Starts a server under the bench's process management and waits until it listens.

    Its output goes to `log_path`, which is also where a failed start is read from.
    """
    proc = procs.start(name, argv, log_path, env)
    wait_ready(name, proc, port, log_path, pid_file)
    return proc


def start_nginx(procs: Processes, nginx: str, tmp: Path, name: str, config: str, port: int):
    """Writes `config` and runs nginx in the foreground with prefix, pid and logs in `tmp`."""
    conf = tmp / f"{name}.conf"
    conf.write_text(config)
    error_log = tmp / f"{name}-error.log"
    argv = [nginx, "-p", f"{tmp}/", "-e", str(error_log), "-c", str(conf)]
    argv += ["-g", "daemon off;"]
    proc = procs.start(name, argv, tmp / f"{name}.out")
    wait_ready(name, proc, port, error_log, tmp / f"{name}.pid")
    return proc


# --------------------------------------------------------------------------------------------
# Targets and measurements
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Something wrk and curl are pointed at, and the process(es) whose cost is counted."""

    key: str
    label: str
    port: int
    proc: subprocess.Popen
    is_nginx: bool
    config: dict | None = None  # tinylb's config.json
    log_path: Path | None = None  # tinylb's log (RUST_LOG=warn)

    def is_tinylb(self) -> bool:
        """Whether this is one of the tinylb targets (`tinylb`, `tinylb#2`, ...)."""
        return self.key.startswith("tinylb")

    def pids(self) -> list[int]:
        """The process started and everything below it: tinylb's master and its server
        process, nginx's master and its workers, Apache's parent and its child."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def check_alive(self) -> None:
        """Fails the bench with a clear message if the process has died."""
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.label} (pid {self.proc.pid}) died: status {self.proc.returncode}"
            )

    def peak_rss_kib(self) -> int:
        """VmHWM summed over the processes: master and server (or workers)."""
        return sum(status_kib(pid, "VmHWM") for pid in self.pids())


@dataclass
class WrkRun:
    """One wrk run against one target."""

    rps: float
    requests: int
    p50: float  # seconds
    p99: float
    socket_errors: int
    bad_status: int
    cpu: float  # CPU-seconds of the target's processes during the run
    # wrk's socket errors by kind: connect, read, write, timeout (a response later than
    # wrk's 2 s timeout is counted here and left out of the latencies).
    socket_kinds: tuple[int, int, int, int] = (0, 0, 0, 0)
    # What the run added to tinylb's stage timers, {stage: (seconds, requests)}; None for
    # other targets, or when tinylb's /metrics has no stage timers.
    stages: dict | None = None
    # TCP sockets in TIME_WAIT on the machine when the run ended (the close workload leaves
    # one per request for a minute).
    timewait: int | None = None


@dataclass
class Cell:
    """All runs of one target at one connection count, and its peak RSS at that count."""

    runs: list[WrkRun] = field(default_factory=list)
    peak_rss_kib: int | None = None

    def median(self, attr: str) -> float:
        """Median of one WrkRun field over the rounds."""
        return statistics.median(getattr(r, attr) for r in self.runs)

    def errors(self) -> int:
        """Socket errors plus bad statuses, summed over the rounds."""
        return sum(r.socket_errors + r.bad_status for r in self.runs)

    def req_per_cpu(self) -> float | None:
        """All requests ÷ all CPU-seconds of the rounds (None if no CPU was counted)."""
        cpu = sum(r.cpu for r in self.runs)
        return sum(r.requests for r in self.runs) / cpu if cpu > 0 else None

    def stage_means(self) -> dict[str, float | None] | None:
        """Mean seconds per request of each of tinylb's stages over the rounds (seconds
        summed ÷ requests counted; None for a stage that counted none), or None when no
        round read any stage timer."""
        deltas = [r.stages for r in self.runs if r.stages]
        if not any(count for d in deltas for _, count in d.values()):
            return None
        means: dict[str, float | None] = {}
        for stage in STAGES:
            seconds = sum(d.get(stage, (0.0, 0))[0] for d in deltas)
            count = sum(d.get(stage, (0.0, 0))[1] for d in deltas)
            means[stage] = seconds / count if count else None
        return means


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# tinylb's stage timers: a Prometheus histogram on its admin listener's /metrics, one series
# per stage, in the order a request meets them.
STAGE_METRIC = "tinylb_request_stage_seconds"
STAGES = ("client", "queue", "connect", "response", "relay", "total")
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
METRIC_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_wrk(output: str) -> tuple[float, int, float, float, int, int, tuple]:
    """req/s, requests, p50, p99 (s), socket errors, non-2xx/3xx and the socket errors by
    kind (connect, read, write, timeout) from wrk's output."""

    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
        if not match:
            raise BenchError(f"no {percent}% latency in wrk's output:\n{output}")
        return float(match.group(1)) * UNITS[match.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    if not rps or not requests:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    kinds = tuple(int(g) for g in sock.groups()) if sock else (0, 0, 0, 0)
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    bad_status = int(status.group(1)) if status else 0
    return (
        float(rps.group(1)),
        int(requests.group(1)),
        latency("50"),
        latency("99"),
        sum(kinds),
        bad_status,
        kinds,
    )


def run_wrk(
    wrk: str, target: Target, connections: int, duration: int, close: bool = False
) -> WrkRun:
    """One `wrk -t2 -cN -dDs --latency` run (with `-H "Connection: close"`: a new connection
    per request), with the target's CPU use during it and what it added to tinylb's stage
    timers (read before the CPU count starts and after it ends)."""
    threads = min(2, connections)
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{target.port}/")
    stages_before = scrape_stages(target)
    pids = target.pids()
    before = cpu_seconds(pids)
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"wrk against {target.label} did not end within {duration + 30} s"
        ) from None
    used = cpu_seconds(pids) - before
    timewait = sockets_in_timewait()
    stages = stage_delta(stages_before, scrape_stages(target))
    if out.returncode != 0:
        raise BenchError(f"wrk failed against {target.label}: {out.stderr.strip()}")
    rps, requests, p50, p99, sock, bad, kinds = parse_wrk(out.stdout)
    return WrkRun(rps, requests, p50, p99, sock, bad, used, kinds, stages, timewait)


def sockets_in_timewait() -> int | None:
    """TCP sockets in TIME_WAIT now, from /proc/net/sockstat (`TCP: inuse 5 ... tw 3 ...`)."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def unescape_label(value: str) -> str:
    """A label value of Prometheus's text format with its escapes (\\\\, \\", \\n) undone."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """One sample line of Prometheus's text format, `name{label="value",...} value [time]`,
    as (name, labels, value); labels in any order. None for a line it cannot read."""
    name = METRIC_NAME.match(line)
    if not name:
        return None
    labels, pos = {}, name.end()
    if line.startswith("{", pos):
        pos += 1
        while label := METRIC_LABEL.match(line, pos):
            labels[label.group(1)] = unescape_label(label.group(2))
            pos = label.end()
        if not line.startswith("}", pos):
            return None
        pos += 1
    try:
        return name.group(0), labels, float(line[pos:].split()[0])
    except (IndexError, ValueError):
        return None


def stage_totals(text: str) -> dict[str, tuple[float, float]] | None:
    """{stage: (seconds summed, requests counted)} from tinylb's /metrics text, summed over
    any other labels; None when it has no stage timers (a build before them)."""
    parts = {f"{STAGE_METRIC}_sum": 0, f"{STAGE_METRIC}_count": 1}
    totals: dict[str, list[float]] = {}
    for line in text.splitlines():
        sample = None if line.startswith("#") else parse_sample(line.strip())
        if sample and sample[0] in parts and "stage" in sample[1]:
            name, labels, value = sample
            totals.setdefault(labels["stage"], [0.0, 0.0])[parts[name]] += value
    return {stage: (pair[0], pair[1]) for stage, pair in totals.items()} or None


def scrape_stages(target: Target) -> dict[str, tuple[float, float]] | None:
    """tinylb's stage totals now, from its admin listener's /metrics; None for a target
    without an admin listener or stage timers, or when the listener does not answer."""
    address = (target.config or {}).get("adminAddress")
    if not address:
        return None
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]") or "127.0.0.1", int(port), timeout=2)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except OSError:
        return None
    finally:
        conn.close()
    return stage_totals(text) if response.status == 200 else None


def stage_delta(before: dict | None, after: dict | None) -> dict | None:
    """What one run added to each stage, {stage: (seconds, requests)}; None if a scrape
    failed or a counter went back (tinylb's server process was replaced meanwhile)."""
    if before is None or after is None:
        return None
    delta = {}
    for stage, (seconds, count) in after.items():
        old_seconds, old_count = before.get(stage, (0.0, 0.0))
        if seconds < old_seconds or count < old_count:
            return None
        delta[stage] = (seconds - old_seconds, count - old_count)
    return delta


def check_small_body(target: Target) -> None:
    """One GET / through the target must give 200 and the backend's body (retried for 5 s)."""
    deadline = time.monotonic() + 5
    last = ""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=2)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            if response.status == 200 and body == SMALL_BODY:
                return
            last = f"status {response.status}, body {body[:80]!r}"
        except OSError as err:
            last = str(err)
        finally:
            conn.close()
        time.sleep(0.2)
    raise BenchError(f"{target.label} does not answer GET / correctly: {last}")


def rotated(items: list, by: int) -> list:
    """`items` rotated left by `by`, so each target takes every position in turn."""
    by %= len(items)
    return items[by:] + items[:by]


def warm_up(wrk: str, targets: list[Target]) -> None:
    """One short unmeasured run per target, to fill connection pools and caches."""
    for t in targets:
        run_wrk(wrk, t, 16, WARMUP_SECONDS)


def measure_small(
    wrk: str, targets: list[Target], args, levels: list[int], close: bool = False
) -> tuple[dict, bool]:
    """The interleaved wrk rounds at each connection count of `levels`, with keep-alive or
    (`close`) a new connection per request.

    Returns {(target key, connections): Cell} and whether peak RSS could be reset per level.
    """
    cells: dict[tuple[str, int], Cell] = {}
    total = len(levels) * args.rounds * len(targets)
    done = 0
    per_level = True
    workload = "close" if close else "conns"
    for level, conns in enumerate(levels):
        per_level &= reset_peak_rss([pid for t in targets for pid in t.pids()])
        for rnd in range(args.rounds):
            for t in rotated(targets, level + rnd):
                t.check_alive()
                run = run_wrk(wrk, t, conns, args.duration, close)
                cells.setdefault((t.key, conns), Cell()).runs.append(run)
                done += 1
                log(
                    f"[{done:>2}/{total}] {conns:>3} {workload}, round {rnd + 1}/{args.rounds}, "
                    f"{t.label:<16} {run.rps:>9,.0f} req/s  p99 {fmt_latency(run.p99):>8}  "
                    f"errors {run.socket_errors + run.bad_status}  cpu {run.cpu:.2f} s"
                )
        for t in targets:
            cells[(t.key, conns)].peak_rss_kib = t.peak_rss_kib()
    return cells, per_level


@dataclass
class Download:
    """The 64 MiB downloads through one target."""

    speeds: list[float] = field(default_factory=list)  # MiB/s
    cpu: list[float] = field(default_factory=list)  # CPU-s of the target per download
    failures: list[str] = field(default_factory=list)
    peak_rss_kib: int | None = None


def curl_big(curl: str, target: Target) -> tuple[float | None, float, str]:
    """One download of /big: (MiB/s or None on failure, CPU-s used, failure text)."""
    argv = [curl, "-s", "-o", "/dev/null", "--max-time", "120"]
    argv += ["-w", "%{http_code} %{size_download} %{speed_download}"]
    argv.append(f"http://127.0.0.1:{target.port}/big")
    pids = target.pids()
    before = cpu_seconds(pids)
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=130, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return None, cpu_seconds(pids) - before, "curl did not end within 130 s"
    used = cpu_seconds(pids) - before
    try:
        code, size, speed = out.stdout.split()
    except ValueError:
        return None, used, f"curl exit {out.returncode}"
    if out.returncode != 0 or code != "200" or int(size) != BIG_MIB * MIB:
        return None, used, f"curl exit {out.returncode}, status {code}, {size} bytes"
    return float(speed) / MIB, used, ""


def measure_downloads(curl: str, targets: list[Target]) -> tuple[dict, tuple | None]:
    """Interleaved 64 MiB downloads; also tinylb's VmHWM before and after them, summed over
    its process tree, since the master is off the request path (hwm is None when tinylb is
    not among the targets)."""
    results = {t.key: Download() for t in targets}
    all_pids = [pid for t in targets for pid in t.pids()]
    reset_ok = reset_peak_rss(all_pids)
    tinylb = next((t for t in targets if t.key == "tinylb"), None)
    before = tinylb.peak_rss_kib() if tinylb else 0
    for rep in range(DOWNLOAD_REPEATS):
        for t in rotated(targets, rep):
            t.check_alive()
            speed, used, failure = curl_big(curl, t)
            result = results[t.key]
            result.cpu.append(used)
            if speed is None:
                result.failures.append(failure)
            else:
                result.speeds.append(speed)
            log(f"64 MiB via {t.label:<16} " + (f"{speed:,.0f} MiB/s" if speed else failure))
    for t in targets:
        results[t.key].peak_rss_kib = t.peak_rss_kib()
    if tinylb is None:
        return results, None
    after = tinylb.peak_rss_kib()
    return results, (before, after, reset_ok)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def plural(count: int, word: str) -> str:
    """`1 connection`, `16 connections`."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def fmt_latency(seconds: float) -> str:
    """A latency in µs, ms or s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_mib(kib: int | None) -> str:
    """KiB from /proc as MiB."""
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt_ratio(value: float | None) -> str:
    """A ratio such as `0.72×`."""
    return "n/a" if value is None else f"{value:.2f}×"


def ratio(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def machine_description() -> str:
    """nproc, the CPU model and the kernel."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))
    return f"{os.cpu_count()} cores (nproc {nproc}), {model}, Linux {platform.release()}"


def fmt_count(value: float | None) -> str:
    """A count such as req/CPU-s, `12,345`, or n/a."""
    return "n/a" if value is None else f"{value:,.0f}"


def workloads(ctx: dict) -> list[tuple[str, dict, list[int]]]:
    """The workloads this run measured, as (name, cells, connection counts): keep-alive, then
    Connection: close unless --close-connections was empty."""
    args = ctx["args"]
    found = [("keep-alive", ctx["cells"], args.connections)]
    if args.close_connections:
        found.append(("Connection: close", ctx["close_cells"], args.close_connections))
    return found


def small_tables(ctx: dict) -> list[str]:
    """One table per workload and connection count: every target's numbers side by side."""
    rss_note = "peak RSS" if ctx["rss_per_level"] else "peak RSS since start"
    lines = []
    for name, cells, levels in workloads(ctx):
        for conns in levels:
            suffix = "" if name == "keep-alive" else f", {name}"
            lines += [
                f"### {plural(conns, 'connection')}{suffix}",
                "",
                f"| target | req/s | p50 | p99 | errors | CPU-s per run | req/CPU-s | {rss_note} |",
                "|---|--:|--:|--:|--:|--:|--:|--:|",
            ]
            for t in ctx["targets"]:
                cell = cells[(t.key, conns)]
                lines.append(
                    f"| {t.label} | {cell.median('rps'):,.0f} | {fmt_latency(cell.median('p50'))}"
                    f" | {fmt_latency(cell.median('p99'))} | {cell.errors()}"
                    f" | {cell.median('cpu'):.2f} | {fmt_count(cell.req_per_cpu())}"
                    f" | {fmt_mib(cell.peak_rss_kib)} |"
                )
            lines.append("")
    return lines


def median_of(cells: dict, key: str, conns: int, attr: str) -> float | None:
    """A cell's median of one WrkRun field (or its req/CPU-s); None if the target did not run."""
    cell = cells.get((key, conns))
    if cell is None:
        return None
    return cell.req_per_cpu() if attr == "req_per_cpu" else cell.median(attr)


def class_table(ctx: dict, keys: tuple[str, ...]) -> list[str]:
    """One row per target of `keys` that ran: req/s (p99) and req/CPU-s at each connection
    count with keep-alive, then req/s at each count of the Connection: close workload."""
    args = ctx["args"]
    header = ["target"]
    for conns in args.connections:
        header += [f"{conns}: req/s (p99)", f"{conns}: req/CPU-s"]
    header += [f"close {conns}: req/s" for conns in args.close_connections]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "--:|" * (len(header) - 1)]
    for t in (t for t in ctx["targets"] if t.key in keys):
        row = [t.label]
        for conns in args.connections:
            cell = ctx["cells"][(t.key, conns)]
            p99 = fmt_latency(cell.median("p99"))
            row += [f"{cell.median('rps'):,.0f} ({p99})", fmt_count(cell.req_per_cpu())]
        for conns in args.close_connections:
            row.append(f"{ctx['close_cells'][(t.key, conns)].median('rps'):,.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def fmt_p99_pair(cells: dict, mine: str, theirs: str, conns: int) -> str:
    """Two targets' p99 side by side in ms, `1.20 vs 3.40 ms` (n/a if either did not run)."""
    a, b = median_of(cells, mine, conns, "p99"), median_of(cells, theirs, conns, "p99")
    return "n/a" if a is None or b is None else f"{a * 1e3:.2f} vs {b * 1e3:.2f} ms"


def versus_table(ctx: dict, mine: str, theirs: str, with_p99: bool = True) -> list[str]:
    """`mine` ÷ `theirs` for each workload and connection count: req/s and req/CPU-s, and
    (with_p99) both p99s side by side; n/a where either did not run."""
    labels = {t.key: t.label for t in ctx["targets"]}
    them = labels.get(theirs, theirs)
    header = f"| workload | connections | req/s ÷ {them} | req/CPU-s ÷ {them} |"
    rule = "|---|--:|--:|--:|"
    if with_p99:
        header += f" p99: {labels.get(mine, mine)} vs {them} |"
        rule += "--:|"
    lines = [header, rule]
    for name, cells, levels in workloads(ctx):
        for conns in levels:
            r = [
                fmt_ratio(ratio_of(cells, mine, theirs, conns, attr))
                for attr in ("rps", "req_per_cpu")
            ]
            p99 = f" {fmt_p99_pair(cells, mine, theirs, conns)} |" if with_p99 else ""
            lines.append(f"| {name} | {conns} | {r[0]} | {r[1]} |{p99}")
    return lines + [""]


def ratio_of(cells: dict, mine: str, theirs: str, conns: int, attr: str) -> float | None:
    """`mine` ÷ `theirs` of one attribute at one connection count (None if either is missing)."""
    return ratio(median_of(cells, mine, conns, attr), median_of(cells, theirs, conns, attr))


def event_loop_ratios(ctx: dict) -> list[str]:
    """tinylb divided by each event loop that ran (nginx 1 worker, nginx 2 workers, HAProxy)
    and by the backend itself, per connection count with keep-alive."""
    cells, keys = ctx["cells"], {t.key for t in ctx["targets"]}
    loops = [(k, name) for k, name in EVENT_LOOP_SHORT_NAMES.items() if k in keys]
    measures = (("req/s", "rps"), ("req/CPU-s", "req_per_cpu"), ("p99", "p99"))
    columns = [(f"{what} ÷ {name}", key, attr) for key, name in loops for what, attr in measures]
    if "direct" in keys:
        columns.append(("req/s ÷ backend direct", "direct", "rps"))
    lines = [
        "| connections | " + " | ".join(title for title, _, _ in columns) + " |",
        "|--:|" + "--:|" * len(columns),
    ]
    for conns in ctx["args"].connections:
        shown = [fmt_ratio(ratio_of(cells, "tinylb", o, conns, a)) for _, o, a in columns]
        lines.append(f"| {conns} | " + " | ".join(shown) + " |")
    return lines + [""]


def shape_table(cells: dict, args) -> list[str]:
    """The yardsticks against nginx and tinylb against the yardstick, per connection count."""

    def r(mine: str, theirs: str, conns: int, attr: str = "rps") -> str:
        return fmt_ratio(ratio_of(cells, mine, theirs, conns, attr))

    direct = any(key == "shape-direct" for key, _ in cells)
    lines = [
        "| connections | no backend ÷ nginx 1w | proxying ÷ nginx 1w "
        "| tinylb ÷ proxying: req/s | tinylb ÷ proxying: req/CPU-s |"
        + (" no channel ÷ no backend |" if direct else ""),
        "|--:|--:|--:|--:|--:|" + ("--:|" if direct else ""),
    ]
    for conns in args.connections:
        lines.append(
            f"| {conns} | {r('shape-front', 'nginx1', conns)} | {r('shape-proxy', 'nginx1', conns)}"
            f" | {r('tinylb', 'shape-proxy', conns)}"
            f" | {r('tinylb', 'shape-proxy', conns, 'req_per_cpu')} |"
            + (f" {r('shape-direct', 'shape-front', conns)} |" if direct else "")
        )
    return lines + [""]


def download_table(downloads: dict, targets: list[Target], hwm: tuple) -> list[str]:
    """MiB/s per target, and tinylb's VmHWM around the downloads."""
    lines = [
        f"| target | MiB/s (median of {DOWNLOAD_REPEATS}) | CPU-s per download "
        "| peak RSS during downloads | failures |",
        "|---|--:|--:|--:|--:|",
    ]
    for t in (t for t in targets if t.key in downloads):
        d = downloads[t.key]
        speed = f"{statistics.median(d.speeds):,.0f}" if d.speeds else "n/a"
        lines.append(
            f"| {t.label} | {speed} | {statistics.median(d.cpu):.2f} "
            f"| {fmt_mib(d.peak_rss_kib)} | {'; '.join([str(len(d.failures)), *d.failures])} |"
        )
    if hwm is None:
        return lines + [""]
    before, after, reset_ok = hwm
    what = "reset to the current RSS just before" if reset_ok else "since start (reset refused)"
    lines += [
        "",
        f"tinylb VmHWM {what} the downloads: {fmt_mib(before)}; after "
        f"{DOWNLOAD_REPEATS} × {BIG_MIB} MiB through it: {fmt_mib(after)} "
        f"(growth {(after - before) / 1024:.1f} MiB).",
        "",
    ]
    return lines


def median_speed(downloads: dict | None, key: str) -> float | None:
    """Median MiB/s of a target's successful downloads (None if not measured)."""
    if downloads is None or key not in downloads:
        return None
    speeds = downloads[key].speeds
    return statistics.median(speeds) if speeds else None


def targets_table(
    cells: dict, downloads: dict | None, hwm: tuple | None, size: int | None
) -> list[str]:
    """Issue 4's targets (against nginx), each with this run's value and whether it is met
    ("not measured" for what this run skipped: a target, a connection count, the downloads)."""
    rows: list[str] = []

    def row(what: str, goal: str, value: float | None, ok, shown: str | None = None) -> None:
        rows.append(goal_row(what, goal, value, ok, shown))

    def cell_ratio(conns: int, attr: str) -> float | None:
        return ratio_of(cells, "tinylb", "nginx1", conns, attr)

    for conns, goal in ((16, 0.6), (64, 1.0), (256, 1.0)):
        row(
            f"req/s at {conns} connections",
            f"≥ {goal}× nginx 1w",
            cell_ratio(conns, "rps"),
            lambda v, g=goal: v >= g,
        )
    row("req/CPU-s at 64", "≥ 0.5× nginx 1w", cell_ratio(64, "req_per_cpu"), lambda v: v >= 0.5)
    row("p99 at 64", "≤ 2× nginx 1w", cell_ratio(64, "p99"), lambda v: v <= 2.0)
    row(
        "64 MiB MiB/s",
        "≥ 0.8× nginx 1w",
        ratio(median_speed(downloads, "tinylb"), median_speed(downloads, "nginx1")),
        lambda v: v >= 0.8,
    )
    growth = (hwm[1] - hwm[0]) / 1024 if hwm else None
    row(
        "RSS growth over the downloads",
        f"flat (< {FLAT_RSS_LIMIT_MIB:g} MiB)",
        growth,
        lambda v: v < FLAT_RSS_LIMIT_MIB,
        "n/a" if growth is None else f"{growth:.1f} MiB",
    )
    peak = cells.get(("tinylb", 256))
    peak_mib = peak.peak_rss_kib / 1024 if peak and peak.peak_rss_kib else None
    row(
        "peak RSS at 256 connections",
        "< 32 MiB",
        peak_mib,
        lambda v: v < 32,
        "n/a" if peak_mib is None else f"{peak_mib:.1f} MiB",
    )
    size_mib = size / MIB if size else None
    row(
        "stripped binary",
        "< 1.5 MiB",
        size_mib,
        lambda v: v < 1.5,
        "n/a" if size is None else f"{size:,} bytes ({size_mib:.2f} MiB)",
    )
    return goal_table(rows)


def goal_row(what: str, goal: str, value: float | None, ok, shown: str | None = None) -> str:
    """One row of a table of targets: this run's value (a ratio unless `shown` says
    otherwise) and met, **not met** or not measured."""
    text = shown if shown is not None else fmt_ratio(value)
    verdict = "not measured" if value is None else ("met" if ok(value) else "**not met**")
    return f"| {what} | {goal} | {text} | {verdict} |"


def goal_table(rows: list[str]) -> list[str]:
    """A table of targets under the warning every verdict needs on a shared machine."""
    return [
        "A verdict that rests on a run listed under *Anything odd* as starved or noisy is not to"
        " be trusted: run the bench again on a quieter machine.",
        "",
        "| target | goal | this run | |",
        "|---|---|--:|---|",
        *rows,
        "",
    ]


def issue12_table(ctx: dict) -> list[str]:
    """Issue 12's targets: tinylb against Apache worker (the reference of its class) and
    against the bare shape, at every connection count."""
    cells, close_cells, args = ctx["cells"], ctx["close_cells"], ctx["args"]
    rows = []
    for conns in args.connections:
        value = ratio_of(cells, "tinylb", "apache", conns, "req_per_cpu")
        stretch = " (stretch met)" if value is not None and value >= 1.2 else ""
        rows.append(
            goal_row(
                f"req/CPU-s at {conns}",
                "≥ 1.0× Apache worker (stretch 1.2×)",
                value,
                lambda v: v >= 1.0,
                fmt_ratio(value) + stretch,
            )
        )
    for conns in args.connections:
        rows.append(
            goal_row(
                f"p99 at {conns}",
                "≤ Apache worker's",
                ratio_of(cells, "tinylb", "apache", conns, "p99"),
                lambda v: v <= 1.0,
                fmt_p99_pair(cells, "tinylb", "apache", conns),
            )
        )
    for conns in args.close_connections:
        rows.append(
            goal_row(
                f"Connection: close req/s at {conns}",
                "≥ 1.0× Apache worker",
                ratio_of(close_cells, "tinylb", "apache", conns, "rps"),
                lambda v: v >= 1.0,
            )
        )
    for what, attr in (("req/s", "rps"), ("req/CPU-s", "req_per_cpu")):
        for conns in args.connections:
            rows.append(
                goal_row(
                    f"{what} at {conns}, against the bare shape",
                    "≥ 0.9× bare shape, proxying",
                    ratio_of(cells, "tinylb", "shape-proxy", conns, attr),
                    lambda v: v >= 0.9,
                )
            )
    return goal_table(rows)


def fmt_stage(mean: float | None, total: float | None) -> str:
    """A stage's mean in µs with its share of `total`'s mean: `12.3 µs (8 %)`."""
    if mean is None:
        return "n/a"
    share = f" ({100 * mean / total:.0f} %)" if total else ""
    return f"{mean * 1e6:,.1f} µs{share}"


def stage_table(ctx: dict) -> list[str]:
    """Where each timed tinylb's time goes: the mean of each stage per workload and
    connection count, and its share of `total`; a note instead when no stage was read."""
    timed = [t for t in ctx["targets"] if t.is_tinylb() and stages_read(ctx, t)]
    if not timed:
        return [
            f"Not measured: no tinylb's /metrics had `{STAGE_METRIC}` (a build before the stage"
            " timers, or one with them off).",
            "",
        ]
    lines = []
    for t in timed:
        if len(timed) > 1:
            lines += [f"**{t.label}**", ""]
        lines += [
            "| workload | connections | " + " | ".join(STAGES) + " |",
            "|---|--:|" + "--:|" * len(STAGES),
        ]
        for name, cells, levels in workloads(ctx):
            for conns in levels:
                means = cells[(t.key, conns)].stage_means() or {}
                shown = [
                    fmt_stage(means.get(stage), None if stage == "total" else means.get("total"))
                    for stage in STAGES
                ]
                lines.append(f"| {name} | {conns} | " + " | ".join(shown) + " |")
        lines.append("")
    return lines


def stages_read(ctx: dict, target: Target) -> bool:
    """Whether any run of `target` read its stage timers (tinylb-untimed's count nothing)."""
    return any(
        cells[(target.key, conns)].stage_means()
        for _, cells, levels in workloads(ctx)
        for conns in levels
    )


def oddities(ctx: dict) -> list[str]:
    """What looked wrong: errors, stalled or noisy runs, tinylb's long tails and warnings, and
    how tinylb shut down."""
    lines = []
    for name, cells, _ in workloads(ctx):
        lines += cell_oddities(ctx, name, cells)
    for t in ctx["targets"]:
        if t.is_tinylb() and t.log_path is not None:
            lines += log_warnings(t.label, t.log_path)
    lines += [f"- {line}" for line in ctx["shutdown"]]
    return lines


def cell_oddities(ctx: dict, workload: str, cells: dict) -> list[str]:
    """The oddities of one workload's cells: errors (with what connect errors mean under
    Connection: close), stalled runs, long tails, noisy rounds."""
    lines = []
    duration = ctx["args"].duration
    labels = {t.key: t.label for t in ctx["targets"]}
    suffix = "" if workload == "keep-alive" else f", {workload}"
    for (key, conns), cell in sorted(cells.items()):
        where = f"{labels.get(key, key)} at {plural(conns, 'connection')}{suffix}"
        sock = sum(r.socket_errors for r in cell.runs)
        bad = sum(r.bad_status for r in cell.runs)
        if sock or bad:
            kinds = [sum(r.socket_kinds[i] for r in cell.runs) for i in range(4)]
            detail = ", ".join(
                f"{name} {n}" for name, n in zip(("connect", "read", "write", "timeout"), kinds)
            )
            hint = (
                " (connect errors under Connection: close usually mean wrk ran out of local"
                " ports, held in TIME_WAIT: the load generator's limit, not the target's)"
                if kinds[0] and suffix
                else ""
            )
            lines.append(
                f"- {where}: {sock} socket errors ({detail}), {bad} responses with status ≥ 400"
                + hint
            )
        for i, r in enumerate(cell.runs):
            if r.cpu < STALL_CPU_SHARE * duration:
                lines.append(
                    f"- {where}, round {i + 1}: only {r.cpu:.2f} CPU-s in {duration} s"
                    f" ({r.rps:,.0f} req/s): starved by other load on the machine, or stalled;"
                    " its ratios are not to be trusted"
                )
        if key.startswith("tinylb") and cell.median("p99") > TAIL_FACTOR * cell.median("p50"):
            lines.append(
                f"- {where}: p99 {fmt_latency(cell.median('p99'))} is more than"
                f" {TAIL_FACTOR}× its p50 {fmt_latency(cell.median('p50'))} (a long tail)"
            )
        rates = [r.rps for r in cell.runs]
        if len(rates) > 1 and max(rates) > NOISY_SPREAD * min(rates):
            lines.append(
                f"- {where}: rounds ranged from {min(rates):,.0f} to {max(rates):,.0f} req/s"
                " (noisy: was the machine busy?)"
            )
    return lines


def log_warnings(label: str, log_path: Path) -> list[str]:
    """The WARN and ERROR lines of one tinylb's log, counted, the five most common shown."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    warnings = [line for line in text.splitlines() if " WARN " in line or " ERROR " in line]
    if not warnings:
        return [f"- {label} logged no warnings or errors (RUST_LOG=warn)."]
    distinct: dict[str, int] = {}
    for line in warnings:
        message = re.sub(r"^\S+\s+", "", line)  # drop the timestamp
        distinct[message] = distinct.get(message, 0) + 1
    lines = [f"- {label} logged {len(warnings)} warnings/errors (RUST_LOG=warn); the most common:"]
    for message, count in sorted(distinct.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  - {count} × `{message[:160]}`")
    return lines


def how_to_read(ctx: dict) -> list[str]:
    """The short guide under the header of the report."""
    args = ctx["args"]
    return [
        "## How to read this",
        "",
        "- Every target ran in the same run, interleaved: for each workload, connection count and"
        " round, each target ran once, in a rotated order. Compare **ratios within this report**;"
        " an absolute number from another run (or another machine) differs by 15 % or more.",
        f"- Each cell is the median over {args.rounds} run(s) of `wrk -t2 -cN -d{args.duration}s"
        " --latency` (1 thread at 1 connection) against `/`, a 19-byte body."
        " p50/p99 come from wrk's latency distribution.",
        "- *keep-alive*: wrk's connections stay open. *Connection: close*: the same with"
        ' `-H "Connection: close"`, so every request opens a new TCP connection to the load'
        " balancer and pays its accept and set-up (the balancers' backend connections stay"
        f" pooled). {close_ports_note(ctx)}",
        "- wrk, the backend nginx and the load balancer share the same cores, so a load balancer"
        " that uses less CPU leaves more for the others: *req/CPU-s* (requests ÷ CPU-seconds the"
        " load balancer used during the runs, summed over its whole process tree from"
        " /proc/PID/stat) is the efficiency number, req/s the speed.",
        "- *errors* = wrk's socket errors (connect, read, write, timeout) + responses with status"
        " ≥ 400, summed over the rounds.",
        "- *peak RSS* is VmHWM, reset (clear_refs) at the start of each connection count, summed"
        " over the process tree: for nginx, Apache and Varnish the **sum** over parent and"
        " children (shared pages counted in each), which overstates them a little.",
        "- *backend direct* is wrk straight at one backend port (the ceiling); in that row CPU and"
        " RSS are the backend nginx's own. The backend is one nginx process with"
        f" **worker_processes 1** serving all {args.backends} ports.",
        "- Ratios are tinylb ÷ the other: above 1 is better for req/s and req/CPU-s, below 1 is"
        " better for p99.",
        "- tinylb's stage timers are read from its admin listener's `/metrics`"
        f" (`{STAGE_METRIC}`) right before and after each wrk run: a stage's mean is the"
        " growth of its `_sum` ÷ the growth of its `_count` over the rounds. *client* is the wait"
        " from the end of the previous answer on a connection until intake took the next"
        " request (not counted on a connection's first request, so nothing under Connection:"
        " close), *queue* the wait for a worker, *connect* getting a backend connection (pooled"
        " or new), *response* sending the request and waiting for the response head, *relay*"
        " the body to the client, *total* intake to last byte. Shares are of *total*'s mean"
        " (*client* lies outside it).",
        "",
    ]


def close_ports_note(ctx: dict) -> str:
    """What the close workload did to the load generator's ports: the kernel's port range and
    TIME_WAIT reuse, and the most sockets in TIME_WAIT after a run."""
    if not ctx["args"].close_connections:
        return "(Not run: --close-connections was empty.)"
    try:
        reuse = Path("/proc/sys/net/ipv4/tcp_tw_reuse").read_text().strip()
        ports = " to ".join(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except OSError:
        reuse, ports = "unknown", "unknown"
    counts = [r.timewait for c in ctx["close_cells"].values() for r in c.runs if r.timewait]
    peak = f"{max(counts):,}" if counts else "unknown"
    return (
        f"Each closed connection sits in TIME_WAIT for a minute: at most {peak} sockets were"
        f" in TIME_WAIT after a run (local ports {ports}, tcp_tw_reuse={reuse}; with reuse off,"
        " wrk runs out of local ports and shows connect errors, listed under *Anything odd*)."
    )


def peer_config_lines(ctx: dict) -> list[str]:
    """One header line per other load balancer that ran, with its exact configuration."""
    args, keys = ctx["args"], {t.key for t in ctx["targets"]}
    n = args.backends
    user = "; as root it switches to user nobody" if unprivileged_user() else ""
    lines = {
        "apache": "- **Apache worker:** `apache2 -DFOREGROUND` with its own config (no Debian"
        " /etc/apache2): **worker MPM, one child process of 300 threads** (ServerLimit 1,"
        " StartServers 1, ThreadsPerChild 300, MaxRequestWorkers 300, MaxSpareThreads 325),"
        f" mod_proxy_balancer `lbmethod=byrequests` over {n} `BalancerMember ... keepalive=On`"
        " (TCP keep-alive probes on idle backend connections; reusing them is mod_proxy's"
        " default: each member pools up to 300 backend connections, one per thread at most),"
        " `ProxyPass / balancer://backends/`, KeepAlive On, MaxKeepAliveRequests 0"
        f" (unlimited), KeepAliveTimeout 5, no access log{user}",
        "varnish": "- **Varnish pass:** `varnishd -F -s malloc,32m -T none`, VCL 4.1 with a"
        f" `directors.round_robin()` over {n} backends and `vcl_recv {{ return (pass); }}`"
        " (nothing cached); backend connections pooled (Varnish's default), default thread"
        " pools (2 pools of 100 to 5000 threads: a worker thread per request in progress, idle"
        " client connections wait in its waiter), manager and child process, no varnishncsa",
        "squid": "- **Squid accel:** `squid -N` (one process), `http_port ... accel"
        f" defaultsite=backends no-vhost`, {n} `cache_peer ... parent ... originserver"
        " round-robin`, `never_direct allow all`, `cache deny all` (nothing cached, no"
        " cache_dir, cache_mem 8 MB), server and client persistent connections on, access_log"
        f" none{user}",
        "nginx1": "- **nginx load balancers:** `worker_processes 1` (and 2 for nginx2), upstream"
        f" of the same {n} backends with `keepalive {upstream_keepalive(n)}`,"
        ' `proxy_http_version 1.1`, `proxy_set_header Connection ""`,'
        " `keepalive_requests 100000`, `proxy_max_temp_file_size 0` (large bodies stream"
        " through memory, no temp file), no access log",
        "haproxy": f"- **HAProxy 1 thread:** `haproxy -db`, `nbthread 1`, `mode http`,"
        f" `balance roundrobin` over {n} servers, `http-reuse always` (idle backend connections"
        " shared between clients), `option http-keep-alive`, maxconn"
        f" {haproxy_maxconn(n)}, no logging",
    }
    if "nginx2" in keys:
        keys.add("nginx1")
    return [line for key, line in lines.items() if key in keys]


def tinylb_config_lines(targets: list[Target]) -> list[str]:
    """One header line per tinylb with its config.json (beyond 10 servers, only their count)."""
    lines = []
    for t in (t for t in targets if t.is_tinylb()):
        config = dict(t.config or {})
        if len(config.get("servers", [])) > 10:
            config["servers"] = f"{len(config['servers'])} servers on the backend ports"
        lines.append(f"- **{t.label} config:** `{json.dumps(config)}`, RUST_LOG=warn")
    return lines


def build_report(ctx: dict) -> str:
    """The generated part of docs/benchmarks.md: the threaded class first, then tinylb
    against Apache worker, issue 12's targets, the stage timers, the event loops and the
    details (sections for what this run measured)."""
    lines = [*report_header(ctx), *how_to_read(ctx)]
    keys = {t.key for t in ctx["targets"]}
    if keys & set(THREADED_CLASS):
        lines += [
            "## tinylb's class: threaded proxies",
            "",
            "req/s (p99) and req/CPU-s with keep-alive, then req/s with Connection: close, per"
            " connection count.",
            "",
            *class_table(ctx, THREADED_CLASS),
        ]
    if {"tinylb", "apache"} <= keys:
        lines += [
            "## tinylb ÷ Apache worker (same run)",
            "",
            *versus_table(ctx, "tinylb", "apache"),
            "## Issue 12's targets",
            "",
            *issue12_table(ctx),
        ]
    if {"tinylb", "tinylb-untimed"} <= keys:
        lines += [
            "## What measuring costs",
            "",
            "tinylb ÷ the same tinylb with `\"stageTimers\": false`: what timing every request's"
            " stages costs.",
            "",
            *versus_table(ctx, "tinylb", "tinylb-untimed", with_p99=False),
        ]
    if any(t.is_tinylb() for t in ctx["targets"]):
        lines += ["## Where tinylb's time goes", "", *stage_table(ctx)]
    lines += event_loop_sections(ctx, keys)
    lines += detail_sections(ctx)
    return "\n".join(lines)


def report_header(ctx: dict) -> list[str]:
    """The title, the run's circumstances, versions and every target's configuration."""
    args, targets, v = ctx["args"], ctx["targets"], ctx["versions"]
    size = ctx["stripped_size"]
    return [
        "# Benchmarks",
        "",
        "<!-- Generated by benches/bench.py (`make bench`). Everything above the end marker is"
        " replaced on each run; write notes below it. -->",
        "",
        f"- **Date:** {ctx['date']}",
        f"- **Machine:** {ctx['machine']}; load average {ctx['load_start']} at the start,"
        f" {ctx['load_end']} at the end",
        f"- **Command:** `{ctx['command']}` ({args.rounds} round(s) × {args.duration} s per wrk"
        f" run, {ctx['elapsed']:.0f} s in all)",
        f"- **Versions:** {'; '.join(v.values())}",
        f"- **Targets:** {', '.join(t.label for t in targets)}; {args.backends} backend ports",
        *tinylb_config_lines(targets),
        *peer_config_lines(ctx),
        f"- **tinylb binary:** {size:,} bytes stripped"
        if size
        else "- **tinylb binary:** strip not found",
        "",
    ]


def event_loop_sections(ctx: dict, keys: set[str]) -> list[str]:
    """The event loops (nginx 1 worker, HAProxy 1 thread), tinylb against them, and the bare
    shape's yardsticks."""
    lines = []
    if keys & set(EVENT_LOOPS):
        lines += ["## The event loops", "", *class_table(ctx, EVENT_LOOPS)]
    if "tinylb" in keys and keys & {"nginx1", "nginx2", "haproxy", "direct"}:
        lines += [
            "## tinylb ÷ the event loops (same run, keep-alive)",
            "",
            *event_loop_ratios(ctx),
        ]
    if {"shape-front", "shape-proxy"} & keys:
        lines += [
            "## What the design card's shape allows",
            "",
            "The bare shape (examples/bare_shape.rs) is tiny_http, an intake thread, a crossbeam"
            " channel and 8 workers, with none of tinylb's code: *no backend* answers a fixed"
            " 19-byte body from the worker, *proxying* adds a plain ureq GET to the next backend"
            + (", *no channel* lets the workers call tiny_http's `recv()` themselves"
               if "shape-direct" in keys else "")
            + ". What the bare shape cannot reach, tinylb cannot either.",
            "",
            *shape_table(ctx["cells"], ctx["args"]),
        ]
    return lines


def detail_sections(ctx: dict) -> list[str]:
    """Every target's numbers per workload and connection count, the downloads, issue 4's
    targets and anything odd."""
    lines = ["## Every target, per connection count", "", *small_tables(ctx)]
    if ctx["downloads"] is not None:
        lines += [
            f"## One {BIG_MIB} MiB download through each",
            "",
            f"`curl -s -o /dev/null` of `/big`, {DOWNLOAD_REPEATS} times per target, interleaved.",
            "",
            *download_table(ctx["downloads"], ctx["targets"], ctx["hwm"]),
        ]
    if "tinylb" in {t.key for t in ctx["targets"]}:
        lines += [
            "## Issue 4's targets (against nginx)",
            "",
            *targets_table(ctx["cells"], ctx["downloads"], ctx["hwm"], ctx["stripped_size"]),
        ]
    return lines + ["## Anything odd", "", *oddities(ctx), ""]


def cells_json(ctx: dict) -> dict:
    """What `--json` saves: the run's context and every cell of each workload, medians, each
    round and the mean of each of tinylb's stages."""
    args = ctx["args"]
    labels = {t.key: t.label for t in ctx["targets"]}
    return {
        "date": ctx["date"],
        "command": ctx["command"],
        "load_start": ctx["load_start"],
        "load_end": ctx["load_end"],
        "backends": args.backends,
        "rounds": args.rounds,
        "duration": args.duration,
        "targets": [
            {"key": t.key, "label": t.label, "port": t.port,
             "config": {k: v for k, v in (t.config or {}).items() if k != "servers"}}
            for t in ctx["targets"]
        ],
        "cells": [
            {
                "target": key,
                "label": labels[key],
                "workload": workload,
                "connections": conns,
                "rps": cell.median("rps"),
                "p50": cell.median("p50"),
                "p99": cell.median("p99"),
                "socket_errors": sum(r.socket_errors for r in cell.runs),
                "bad_status": sum(r.bad_status for r in cell.runs),
                "requests": sum(r.requests for r in cell.runs),
                "req_per_cpu": cell.req_per_cpu(),
                "peak_rss_kib": cell.peak_rss_kib,
                "stage_means": cell.stage_means(),
                "runs": [vars(r) for r in cell.runs],
            }
            for workload, cells, _ in workloads(ctx)
            for (key, conns), cell in cells.items()
        ],
        "downloads": None
        if ctx["downloads"] is None
        else {k: vars(d) for k, d in ctx["downloads"].items()},
    }


def write_report(out: Path, report: str) -> None:
    """Replaces the generated part of `out`, keeping everything below the end marker.

    A file without the marker is kept whole below it, so nothing hand-written is lost.
    """
    kept = "\n## Notes\n\nHand-written notes (profiles, sweeps) go here; `make bench` keeps them.\n"
    if out.exists():
        old = out.read_text()
        if END_MARKER in old:
            kept = old.split(END_MARKER, 1)[1]
        else:
            log(f"{out} has no end marker; keeping its old text below the new report")
            kept = "\n" + old
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.rstrip("\n") + "\n\n" + END_MARKER + kept)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def target_count(args) -> int:
    """How many targets this run measures (each tinylb config and candidate is one)."""
    others = [t for t in args.targets if not t.startswith("tinylb")]
    return len(others) + len(tinylb_specs(args))


def estimate_seconds(args, targets: int = 4) -> float:
    """Roughly how long the load takes: wrk runs, warm-up, downloads, start-up."""
    wrk_runs = (len(args.connections) + len(args.close_connections)) * args.rounds * targets
    return wrk_runs * (args.duration + 0.3) + targets * (WARMUP_SECONDS + 0.3) + 15


def tinylb_key(index: int) -> str:
    """`tinylb` for the first (or only) tinylb, `tinylb#2`, `tinylb#3` ... for the others."""
    return "tinylb" if index == 0 else f"tinylb#{index + 1}"


def tinylb_label(index: int, extra: dict, count: int, binary: Path = TINYLB) -> str:
    """`tinylb` alone; with several, the extra keys or the binary that tell them apart."""
    if binary != TINYLB:
        return f"tinylb {binary}"
    if count == 1:
        return "tinylb"
    return f"tinylb {json.dumps(extra, separators=(',', ':'))}" if extra else tinylb_key(index)


def tinylb_specs(args) -> list[tuple[str, str, dict, Path]]:
    """Every tinylb this run starts, as (key, label, extra config keys, binary).

    With tinylb in --targets, one per --tinylb-config and --candidate; with tinylb-untimed,
    the first config again with the stage timers off.
    """
    specs = []
    if "tinylb" in args.targets:
        count = len(args.tinylb_runs)
        specs += [
            (tinylb_key(i), tinylb_label(i, extra, count, binary), extra, binary)
            for i, (extra, binary) in enumerate(args.tinylb_runs)
        ]
    if "tinylb-untimed" in args.targets:
        untimed = {**args.tinylb_extras[0], **UNTIMED_KEYS}
        specs.append(("tinylb-untimed", UNTIMED_LABEL, untimed, TINYLB))
    return specs


def start_tinylb(procs: Processes, tmp: Path, key: str, config: dict, binary: Path = TINYLB):
    """Writes tinylb's config and starts it with RUST_LOG=warn; returns (process, log path)."""
    name = key.replace("#", "-")
    (tmp / f"{name}.json").write_text(json.dumps(config, indent=2))
    env = dict(os.environ, RUST_LOG="warn")
    log_path = tmp / f"{name}.log"
    argv = [str(binary), "--config", str(tmp / f"{name}.json")]
    port = int(config["port"].rsplit(":", 1)[1])
    return launch(procs, name, argv, port, log_path, env=env), log_path


def start_backend(procs: Processes, nginx: str, tmp: Path, ports: list[int]) -> Target:
    """The one nginx behind every load balancer, serving all backend ports; as a target it is
    `direct` (wrk straight at its first port)."""
    shown = ports if len(ports) <= 10 else f"{ports[:3]} ... ({len(ports)} ports)"
    log(f"backend: one nginx (1 worker) on 127.0.0.1 ports {shown}")
    backend = start_nginx(procs, nginx, tmp, "backend", backend_config(tmp, ports), ports[0])
    for port in ports[1:]:
        wait_ready("backend", backend, port, tmp / "backend-error.log")
    return Target("direct", "backend direct", ports[0], backend, True)


def start_balancers(procs, tools: dict, tmp: Path, args, backends: list[int]) -> list[Target]:
    """Every load balancer and yardstick `--targets` asks for, each on free ports of its own
    (tinylb also on one for its admin listener), in front of `backends`."""
    specs = tinylb_specs(args)
    nginxes = [(k, w) for k, w in (("nginx1", 1), ("nginx2", 2)) if k in args.targets]
    peers = [key for key in PEER_STARTERS if key in args.targets]
    shapes = [key for key in SHAPES if key in args.targets]
    ports = iter(free_ports(2 * len(specs) + len(nginxes) + len(peers) + len(shapes)))
    targets = []
    for key, label, extra, binary in specs:
        config = tinylb_config(next(ports), backends, extra, next(ports))
        proc, log_path = start_tinylb(procs, tmp, key, config, binary)
        port = int(config["port"].rsplit(":", 1)[1])
        targets.append(Target(key, label, port, proc, False, config, log_path))
    for key, workers in nginxes:
        port = next(ports)
        config = lb_config(tmp, key, workers, port, backends)
        proc = start_nginx(procs, tools["nginx"], tmp, key, config, port)
        label = "nginx 1 worker" if workers == 1 else f"nginx {workers} workers"
        targets.append(Target(key, label, port, proc, True))
    for key in peers:
        port = next(ports)
        proc = PEER_STARTERS[key](procs, tools[PEER_TOOLS[key]], tmp, port, backends)
        targets.append(Target(key, PEERS[key], port, proc, False))
    for key in shapes:
        port, (mode, label) = next(ports), SHAPES[key]
        argv = [str(BARE_SHAPE), mode, str(port), *map(str, backends)]
        proc = launch(procs, key, argv, port, tmp / f"{key}.log")
        targets.append(Target(key, label, port, proc, False))
    return targets


def start_everything(procs: Processes, tools: dict, tmp: Path, args) -> list[Target]:
    """The backend, then the load balancers `--targets` asks for; returns the targets in the
    report's order, each checked to answer GET / correctly.

    The backend always runs (every load balancer needs it); `direct` only decides whether wrk
    is also pointed at it.
    """
    backend_ports = free_ports(args.backends)
    if not args.only_small:
        make_big_file(tmp / "big.bin")
    direct = start_backend(procs, tools["nginx"], tmp, backend_ports)
    targets = ([direct] if "direct" in args.targets else []) + start_balancers(
        procs, tools, tmp, args, backend_ports
    )
    targets.sort(key=lambda t: TARGET_KEYS.index(t.key.split("#")[0]))
    log(", ".join(f"{t.label} on {t.port}" for t in targets))
    for t in targets:
        check_small_body(t)
    return targets


def stop_tinylb(procs: Processes, tinylb: Target) -> str:
    """SIGTERM tinylb and describe how it went (it should exit 0 at once)."""
    started = time.monotonic()
    status = procs.stop(tinylb.proc, grace=5.0)
    took = time.monotonic() - started
    verdict = "as expected" if status == 0 else "**expected 0**"
    return f"{tinylb.label} exited with status {status} {took:.1f} s after SIGTERM ({verdict})."


def run(args: argparse.Namespace, argv: list[str], procs: Processes, tmp: Path) -> None:
    """The whole bench; raises BenchError or Interrupted on failure."""
    started = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    count = target_count(args)
    log(
        f"estimated time: about {estimate_seconds(args, count) / 60:.1f} min after the build "
        f"({len(args.connections)} connection counts × {args.rounds} rounds × {count} targets"
        f" × {args.duration} s{'' if args.only_small else ', plus downloads'})"
    )
    tools = ensure_tools(args.targets)
    build_tinylb()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    targets = start_everything(procs, tools, tmp, args)
    warm_up(tools["wrk"], targets)
    cells, rss_per_level = measure_small(tools["wrk"], targets, args, args.connections)
    close_cells, _ = measure_small(tools["wrk"], targets, args, args.close_connections, True)
    downloads, hwm = None, None
    if not args.only_small:
        # The yardsticks read a body whole and cannot stream 64 MiB; they are for small requests.
        streaming = [t for t in targets if t.key not in SHAPES]
        downloads, hwm = measure_downloads(tools["curl"], streaming)
    shutdown = [stop_tinylb(procs, t) for t in targets if t.is_tinylb()]
    ctx = {
        "args": args,
        "targets": targets,
        "cells": cells,
        "close_cells": close_cells,
        "downloads": downloads,
        "hwm": hwm,
        "rss_per_level": rss_per_level,
        "versions": tool_versions(tools),
        "stripped_size": stripped_size(tmp),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": exact_command(argv),
        "elapsed": time.monotonic() - started,
        "shutdown": shutdown,
    }
    report = build_report(ctx)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(cells_json(ctx), indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.no_write:
        log("--no-write: left the markdown file alone")
        return
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    write_report(out, report)
    log(f"wrote {out}")


def main() -> int:
    """Runs the bench with cleanup on every path: normal end, error, Ctrl-C, SIGTERM."""

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    argv = sys.argv[1:]
    args = parse_args(argv)  # exits with status 2 on bad flags, before anything starts
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    procs = Processes()
    tmp: Path | None = None
    status = 1
    try:
        tmp = Path(tempfile.mkdtemp(prefix="tinylb-bench-"))
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user when we are root
        run(args, argv, procs, tmp)
        status = 0
    except Interrupted as err:
        log(f"interrupted ({err}); cleaning up")
        status = 130
    except BenchError as err:
        log(f"error: {err}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        procs.stop_all()
        if tmp is not None:
            if args.keep_tmp:
                log(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
