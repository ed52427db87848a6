#!/usr/bin/env bash
# What `make test` needs beyond a Rust toolchain, installed when missing, so that README's one
# command works on a fresh machine (and CI reaches the tests through that same command):
# - Debian packages: a C compiler for build scripts, curl, the JDK (tests/real_clients.rs runs
#   the JDK's HttpClient with the single-file source launcher, which needs a JDK, not a JRE),
#   Node.js (its fetch), wrk (tests/master.rs drives a SIGHUP swap under wrk), and python3 with
#   venv (Debian ships ensurepip apart, in python3-venv);
# - .venv, a Python virtualenv from PyPI with httpbin and gunicorn, for
#   tests/httpbin_differential.rs.
# Each step is skipped when what it installs is already there, so a second run costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v curl >/dev/null || need_apt+=(curl)
if ! command -v python3 >/dev/null; then
  need_apt+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
command -v javac >/dev/null || need_apt+=(openjdk-17-jdk-headless)
command -v node >/dev/null || need_apt+=(nodejs)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v setcap >/dev/null || need_apt+=(libcap2-bin)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test-setup: installing ${need_apt[*]} with apt-get"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
      sudo="sudo"
    else
      echo "test-setup: the tests need ${need_apt[*]}; install them (as root: apt-get install ${need_apt[*]}) and run make test again" >&2
      exit 1
    fi
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/gunicorn ] || ! .venv/bin/python -c 'import httpbin' 2>/dev/null; then
  echo "test-setup: creating .venv with httpbin and gunicorn (from PyPI)"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/httpbin-requirements.txt
fi
