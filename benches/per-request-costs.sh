#!/usr/bin/env bash
# What one request costs a server, counted rather than timed: CPU, context switches, system
# calls and allocations per request, for the process listening on a port of 127.0.0.1.
#
#   benches/per-request-costs.sh PORT [CONNECTIONS] [SECONDS]
#
# It runs wrk against the port twice: once to count CPU-seconds (/proc/PID/stat) and voluntary
# context switches (/proc/PID/task/*/status) per request, once under `perf stat` to count
# system calls (raw_syscalls:sys_enter), context switches and glibc's malloc, realloc and
# calloc (uprobes) per request. Counts are stable on a noisy machine where times are not.
# A warm-up run first lets a thread-per-connection server (tinylb, tiny_http) start its
# connection threads: `perf stat -p` follows only the threads that exist when it starts.
#
# Needs root (uprobes), wrk, and perf from Debian's linux-perf. For nginx, give the load
# balancer's port: the worker process is measured. docs/benchmarks.md quotes its output.
set -euo pipefail

port=${1:?usage: per-request-costs.sh PORT [CONNECTIONS] [SECONDS]}
conns=${2:-64}
seconds=${3:-4}
threads=$(( conns < 2 ? conns : 2 ))  # wrk needs a connection per thread
libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/{print $NF; exit}')
[ -n "$libc" ] || libc=/lib/x86_64-linux-gnu/libc.so.6

for tool in wrk perf ss; do
    command -v "$tool" >/dev/null || { echo "per-request-costs: $tool is not installed" >&2; exit 1; }
done

# The listening process; for nginx its worker, which does the work.
pid=""
for candidate in $(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    if tr '\0' ' ' <"/proc/$candidate/cmdline" | grep -q 'nginx: master'; then continue; fi
    pid=$candidate
done
[ -n "$pid" ] || { echo "per-request-costs: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
name=$(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-60)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
switches() { cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/{s += $2} END {print s}'; }
requests_of() { awk '/requests in/{print $1}'; }

for probe in malloc realloc calloc; do
    perf probe -q -x "$libc" --add "$probe" 2>/dev/null || true
done

wrk -t"$threads" -c"$conns" -d1s "http://127.0.0.1:$port/" >/dev/null

# Pass 1: CPU and voluntary context switches from /proc, without perf's own overhead.
ticks_before=$(cpu_ticks); switches_before=$(switches)
output=$(wrk -t"$threads" -c"$conns" -d"${seconds}s" "http://127.0.0.1:$port/")
ticks_after=$(cpu_ticks); switches_after=$(switches)
requests=$(requests_of <<<"$output")
rps=$(awk '/Requests\/sec/{print $2}' <<<"$output")
hz=$(getconf CLK_TCK)

# Pass 2: counts under perf (uprobes slow the process down; only the counts are used).
stat_file=$(mktemp)
trap 'rm -f "$stat_file"' EXIT
wrk -t"$threads" -c"$conns" -d1s "http://127.0.0.1:$port/" >/dev/null
perf stat -x, -o "$stat_file" -p "$pid" \
    -e raw_syscalls:sys_enter,context-switches,probe_libc:malloc,probe_libc:realloc,probe_libc:calloc \
    -- sleep "$seconds" &
perf_pid=$!
sleep 0.3
output2=$(wrk -t"$threads" -c"$conns" -d"$((seconds + 1))s" "http://127.0.0.1:$port/")
wait "$perf_pid"
# perf counted for `seconds` of the run's `seconds + 1`.
counted=$(awk -v n="$(requests_of <<<"$output2")" -v s="$seconds" 'BEGIN {print n * s / (s + 1)}')

awk -F, -v requests="$requests" -v rps="$rps" -v hz="$hz" -v t0="$ticks_before" -v t1="$ticks_after" \
    -v c0="$switches_before" -v c1="$switches_after" -v counted="$counted" \
    -v name="$name" -v pid="$pid" -v conns="$conns" '
    BEGIN {
        printf "%s (pid %s), %s connections: %s req/s\n", name, pid, conns, rps
        printf "  CPU per request:                    %6.1f us\n", (t1 - t0) / hz / requests * 1e6
        printf "  voluntary context switches/request: %6.2f\n", (c1 - c0) / requests
    }
    /^[0-9]/ { count[$3] = $1 }
    END {
        printf "  context switches/request (perf):    %6.2f\n", count["context-switches"] / counted
        printf "  system calls/request:               %6.2f\n", count["raw_syscalls:sys_enter"] / counted
        allocs = count["probe_libc:malloc"] + count["probe_libc:realloc"] + count["probe_libc:calloc"]
        printf "  malloc+realloc+calloc/request:      %6.2f\n", allocs / counted
    }' "$stat_file"
