# Convenience targets for tinylb. `make run` starts the demo backends
# (examples/backend.rs) and the load balancer in front of them.

CARGO ?= cargo
CONFIG ?= config.json
# The demo backends; keep in sync with the servers listed in $(CONFIG).
BACKEND_PORTS ?= 5001 5002 5003 5004 5005

.PHONY: build run test check bench clean

build:
	$(CARGO) build --release --bins --examples

# One backend process per port, so one can be stopped on its own to watch
# tinylb route around it. One shell for the whole recipe, so the trap sees the backends' PIDs and
# stops them whenever tinylb ends (Ctrl-C, a signal, or an error). The short
# pause lets a backend that cannot bind its port fail before tinylb starts.
run:
	$(CARGO) build --release --bin tinylb --example backend
	set -e; pids=""; \
	for port in $(BACKEND_PORTS); do \
		./target/release/examples/backend $$port & pids="$$pids $$!"; \
	done; \
	trap 'kill $$pids 2>/dev/null || true' EXIT INT TERM; \
	sleep 0.5; \
	for pid in $$pids; do kill -0 $$pid; done; \
	./target/release/tinylb --config $(CONFIG)

test:
	$(CARGO) test --release --all-targets

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	./.ci/check-metrics

# tinylb side by side with nginx as a load balancer, interleaved in one run (a few minutes);
# prints a markdown report and writes docs/benchmarks.md. Installs wrk and nginx with apt-get
# if they are missing. Options: make bench BENCH_ARGS="--quick" (see benches/bench.py --help).
BENCH_ARGS ?=
bench:
	python3 benches/bench.py $(BENCH_ARGS)

clean:
	$(CARGO) clean
