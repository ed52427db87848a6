#!/usr/bin/env bash
# `make dist`: one static, stripped tinylb binary per musl target, in dist/.
#
# Why: tinylb is meant for routers, boards and minimal containers (BusyBox, Alpine, no package
# manager). A musl build links its C library in, so the one file runs on any Linux kernel of its
# architecture with nothing else installed.
#
# For each target given (the Makefile passes DIST_TARGETS):
# - installs its standard library with `rustup target add` if it is missing; where rustup cannot
#   (armv7-unknown-linux-musleabihf answers 404 on some machines), it prints one plain line and
#   goes on with the other targets: that is not a failure of `make dist`;
# - builds the release profile (stripped, LTO) and copies it to dist/tinylb-ARCH-linux-musl;
# - checks with `file` that it is statically linked and with `stat` that it is under 2 MiB.
# Then it prints a table of the sizes. A build that fails, a binary that is not static or is too
# big fails `make dist` (exit 1).
#
# Linking: the Makefile sets CARGO_TARGET_<TARGET>_LINKER=rust-lld, the linker that ships with
# the Rust toolchain, so no C cross toolchain is needed (musl's C library and start files come
# with the target's rustup component). A plain `cargo build` is left untouched.
set -uo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
# 2 MiB: above it `make dist` fails. It was 1.75 MiB until the master process (std's process
# spawning, about 120 KB) and the head deadline and backend pools (about 45 KB) came in.
LIMIT_BYTES=$((2048 * 1024))
GOAL_BYTES=$((1536 * 1024))  # 1.5 MiB: the goal where it costs the request path nothing
LOGS=target/dist-logs

if [ $# -eq 0 ]; then
  echo "usage: scripts/dist.sh TARGET..." >&2
  exit 2
fi
mkdir -p dist "$LOGS"

# dist/tinylb-x86_64-linux-musl for x86_64-unknown-linux-musl, and so on.
dist_name() { echo "tinylb-${1/-unknown-/-}"; }

# Whether the active toolchain has the target's standard library.
have_std() { [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]; }

# Why rustup failed, in a few words, without its backtrace.
rustup_reason() {
  local code error
  code=$(grep -m1 -o 'unsuccessful status code: [0-9]*' "$1" | grep -o '[0-9]*$')
  error=$(grep -m1 '^error:' "$1")
  if [ -n "$code" ]; then
    echo "its download answered $code"
  elif [ -n "$error" ]; then
    echo "${error#error: }"
  else
    tail -n1 "$1"
  fi
}

if ! command -v file >/dev/null; then
  echo "dist: installing file with apt-get (to check the binaries are static)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq file >"$LOGS/apt-file.log" 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq file; } >>"$LOGS/apt-file.log" 2>&1 ||
    { echo "dist: cannot install file (see $LOGS/apt-file.log)"; exit 1; }
fi

# Where cargo puts its output: CARGO_TARGET_DIR or a cargo config may move it from ./target.
target_dir=$("$CARGO" metadata --format-version 1 --no-deps |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)

built=()
failed=0
for target in "$@"; do
  out="dist/$(dist_name "$target")"
  rm -f "$out" # never leave an older build where a skipped target's binary would be
  if ! have_std "$target"; then
    log="$LOGS/rustup-$target.log"
    if ! command -v rustup >/dev/null; then
      echo "dist: $target: skipped: its standard library is not installed and there is no rustup"
      continue
    fi
    if ! timeout 900 rustup target add "$target" >"$log" 2>&1 || ! have_std "$target"; then
      echo "dist: $target: skipped: rustup target add failed ($(rustup_reason "$log"))"
      continue
    fi
  fi
  echo "dist: building $target"
  if ! "$CARGO" build --release --locked --bin tinylb --target "$target"; then
    echo "dist: $target: the build failed (see above)"
    failed=1
    continue
  fi
  cp "$target_dir/$target/release/tinylb" "$out"
  kind=$(file -b "$out")
  case "$kind" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *)
      echo "dist: $out is not statically linked: $kind"
      failed=1
      ;;
  esac
  case "$kind" in
    *", stripped"*) ;;
    *)
      echo "dist: $out is not stripped: $kind"
      failed=1
      ;;
  esac
  if [ "$(stat -c %s "$out")" -gt "$LIMIT_BYTES" ]; then
    echo "dist: $out is over 2 MiB"
    failed=1
  fi
  built+=("$out")
done

if [ ${#built[@]} -gt 0 ]; then
  echo
  printf '%-30s %11s %9s  %-9s %s\n' file bytes MiB "< 1.5 MiB" linking
  for out in "${built[@]}"; do
    bytes=$(stat -c %s "$out")
    goal=no
    [ "$bytes" -le "$GOAL_BYTES" ] && goal=yes
    kind=$(file -b "$out")
    linking=$(grep -o -E 'static-pie linked|statically linked' <<<"$kind")
    arch=$(cut -d, -f2 <<<"$kind" | sed 's/^ *//')
    printf '%-30s %11s %9s  %-9s %s\n' "$out" "$(sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$bytes")" \
      "$(awk -v b="$bytes" 'BEGIN { printf "%.3f", b / 1048576 }')" "$goal" "$linking, $arch"
  done
fi
exit $failed
