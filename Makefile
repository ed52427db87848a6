# Convenience targets for tinylb. `make run` starts the demo backends
# (examples/backend.rs) and the load balancer in front of them.

CARGO ?= cargo
CONFIG ?= config.json
# The demo backends; keep in sync with the servers listed in $(CONFIG).
BACKEND_PORTS ?= 5001 5002 5003 5004 5005

.PHONY: build run test test-setup check mutants bench soak dist test-dist clean

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

# Installs what the tests need when it is missing (Debian packages, the .venv for httpbin; see
# scripts/test-setup.sh), then runs every test. CI runs exactly this.
test: test-setup
	$(CARGO) test --release --all-targets

test-setup:
	./scripts/test-setup.sh

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items
	./.ci/check-metrics

# Mutation testing: a unit test that passes whatever the code does protects nothing, so every
# change cargo-mutants makes to the pure modules (listed in .cargo/mutants.toml) must fail one.
# Unit tests only, one build at a time; --cargo-arg=--lib also builds only the library's tests
# (`-- --lib` would build every test target for each mutant, about 4 times slower). Fails if a
# mutant is missed or times out; the details are in mutants.out/.
mutants:
	$(CARGO) mutants --version >/dev/null 2>&1 || $(CARGO) install cargo-mutants --locked
	$(CARGO) mutants --jobs 1 --cargo-arg=--lib

# tinylb side by side with its class of threaded proxies (Apache worker, Varnish, Squid) and
# the event loops (nginx, HAProxy), keep-alive and Connection: close, interleaved in one run
# (about 15 minutes); prints a markdown report led by the class table and writes
# docs/benchmarks.md. Installs wrk, nginx, apache2-bin, varnish, squid and haproxy with apt-get
# if they are missing (and stops the services those packages start on their own).
# Options: make bench BENCH_ARGS="--quick" (see benches/bench.py --help).
BENCH_ARGS ?=
bench:
	python3 benches/bench.py $(BENCH_ARGS)

# A bounded soak run, not part of `make test`: steady wrk load on tinylb over 3 demo backends
# for SOAK_MINUTES (30; `make soak SOAK_MINUTES=3` for a short trial) while a backend is killed
# every minute, config.json is rewritten every 90 s and every 5 min a flood of idle, trickling
# and HTTP/2-preface connections is held 30 s. Samples tinylb's RSS, threads and fds each
# second; writes docs/soak.md and docs/soak.svg; fails if tinylb died. Installs wrk if missing.
SOAK_MINUTES ?= 30
SOAK_ARGS ?=
soak:
	python3 benches/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# Static, stripped musl binaries for devices and minimal containers, in dist/ (scripts/dist.sh):
# installs the rustup targets, builds, checks each is static and small, prints their sizes. A
# target rustup cannot install is skipped with one line. Where its rustup component is available,
# DIST_TARGETS="... armv7-unknown-linux-musleabihf" adds 32-bit ARM.
DIST_TARGETS ?= x86_64-unknown-linux-musl aarch64-unknown-linux-musl
# Every target links with rust-lld, which ships with the Rust toolchain: no C cross toolchain.
# Set here, not in .cargo/config.toml, so a plain `cargo build` is untouched.
dist: export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER ?= rust-lld
dist: export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER ?= rust-lld
dist: export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER ?= rust-lld
dist:
	CARGO=$(CARGO) ./scripts/dist.sh $(DIST_TARGETS)

# Runs each binary in dist/ (aarch64 under qemu-user, installed with apt-get if missing): --version,
# --check, round robin over two backends on 127.0.0.1, one stopped and skipped, SIGTERM and exit 0.
# An architecture that could not be built or emulated is reported in one line, not failed.
test-dist: dist
	python3 scripts/smoke_dist.py $(DIST_TARGETS)

clean:
	$(CARGO) clean
	rm -rf dist
