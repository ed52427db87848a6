#!/usr/bin/env python3
"""Peak RSS of tinylb against the number of backends (docs/benchmarks.md, "Memory and the
number of backends").

One nginx answers on `--ports` ports of 127.0.0.1 (5 by default). For each backend count N
the tinylb config lists N backends: every port with N / ports path prefixes
(`http://127.0.0.1:P/p17`), as a site that routes many prefixes to a few servers does. For each
binary and each N it starts `tinylb --no-master` (so one process is measured), runs
`wrk -t2 -c64 -d5s`, and reads the server's VmHWM (peak RSS) and the connections it holds
open to the backend ports afterwards (ESTABLISHED, from /proc/net/tcp and its descriptors).
Rounds are interleaved and the median is reported, as in bench.py.

    python3 benches/backend_memory.py --binary before=/tmp/tinylb-main \\
        --binary after=target/release/tinylb --counts 5,500

Reuses bench.py's helpers (processes, ports, nginx); Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--counts", default="5,500", help="backend counts (default 5,500)")
    parser.add_argument("--ports", type=int, default=5, help="backend ports (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--extra", default="{}", help="JSON merged into every tinylb config")
    return parser.parse_args(argv)


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets `pid` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_to(pid: int, ports: list[int]) -> int:
    """ESTABLISHED TCP connections of `pid` whose remote port is one of `ports`."""
    mine = socket_inodes(pid)
    wanted = {f"{p:04X}" for p in ports}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = fields[2].rsplit(":", 1)[1]
            if fields[3] == "01" and remote_port in wanted and fields[9] in mine:
                count += 1
    return count


def measure(binary: str, count: int, ports: list[int], args, tmp: Path, procs) -> dict:
    """One run: start tinylb with `count` backends, load it, read its peak RSS and sockets."""
    port = bench.free_ports(1)[0]
    per_port = max(1, count // len(ports))
    servers = [f"http://127.0.0.1:{p}/p{i}" for i in range(per_port) for p in ports][:count]
    config = {"port": f"127.0.0.1:{port}", "servers": servers, "shutdownGracePeriod": "1s"}
    config.update(json.loads(args.extra))
    path = tmp / f"tinylb-{port}.json"
    path.write_text(json.dumps(config))
    log_path = tmp / f"tinylb-{port}.log"
    env = dict(os.environ, RUST_LOG="warn")
    proc = procs.start("tinylb", [binary, "--no-master", "--config", str(path)], log_path, env)
    bench.wait_ready("tinylb", proc, port, log_path)
    argv = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
    rps, requests, _, _, socket_errors, bad, _ = bench.parse_wrk(out.stdout)
    time.sleep(0.5)  # let the last answers return their connections
    result = {
        "peak_kib": bench.status_kib(proc.pid, "VmHWM"),
        "rss_kib": bench.status_kib(proc.pid, "VmRSS"),
        "backend_conns": established_to(proc.pid, ports),
        "rps": rps,
        "errors": socket_errors + bad,
    }
    bench.Processes.stop(proc)
    procs.started.remove(("tinylb", proc))
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    binaries = [b.split("=", 1) for b in args.binary]
    counts = [int(c) for c in args.counts.split(",")]
    procs = bench.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="tinylb-memory-"))
    tmp.chmod(0o755)
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        ports = bench.free_ports(args.ports)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        config = bench.backend_config(tmp, ports)
        bench.start_nginx(procs, nginx, tmp, "backend", config, ports[0])
        cells = [(label, path, n) for label, path in binaries for n in counts]
        for round_no in range(args.rounds):
            for label, path, n in bench.rotated(cells, round_no):
                run = measure(path, n, ports, args, tmp, procs)
                results.setdefault((label, n), []).append(run)
                bench.log(f"round {round_no + 1}: {label}, {n} backends: {run}")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| build | backends | peak RSS (MiB) | RSS after (MiB) | backend connections after | req/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for (label, n), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {label} | {n} | {med['peak_kib'] / 1024:.1f} | {med['rss_kib'] / 1024:.1f} "
            f"| {med['backend_conns']:.0f} | {med['rps']:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
