#!/usr/bin/env bash
# Latency a shared (Redis) request limit adds, side by side in one run: the same gateway config
# with no limit, with a local limit, and with a limit in a local Redis (never reached: the
# limit is far above the load, so every request is counted and let through), each at a fixed
# 2,000 req/s (h2load --rps, 10 connections x 200 req/s) for REQUESTS requests.
#
# Usage: bench/rate_limits/latency.sh [REQUESTS]     (default 30000: 15 s per case)
# Needs: nginx (origin), redis-server, h2load, curl; a release build. Ports on 127.0.0.1 are
# ephemeral except the origin's 18000 and the proxy's 18080.
set -euo pipefail
n=${1:-30000}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$root/target/release/switchyard}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/tmp"
cat >"$dir/origin.conf" <<CONF
worker_processes 1; daemon off; user root; pid $dir/origin.pid; error_log $dir/origin-error.log error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp; uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  server { listen 127.0.0.1:18000; location / { return 200 "hello, world!\n"; } } }
CONF
taskset -c 1 nginx -c "$dir/origin.conf" &
pids+=($!)
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 1 redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no >/dev/null &
pids+=($!)

run_case() { # name store-or-empty
    local name=$1 limit=$2
    cat >"$dir/sy.yaml" <<CONF
admin: {address: 127.0.0.1:18901}
runtime: {workers: 1, watch_config: false}
listeners: [{name: public, address: 127.0.0.1:18080}]
redis: {url: 'redis://127.0.0.1:$rport', timeout: 20ms}
rate_limits:
  - {name: local, key: {header: x-tenant}, requests: {limit: 100000000, per: 1s}}
  - {name: shared, key: {header: x-tenant}, requests: {limit: 100000000, per: 1s}, store: redis}
routes: [{name: all, match: {path_prefix: /}, pool: origin, rate_limits: [$limit]}]
pools: [{name: origin, endpoints: [127.0.0.1:18000]}]
CONF
    taskset -c 0 "$bin" run --config "$dir/sy.yaml" 2>/dev/null &
    local pid=$!
    for _ in $(seq 1 150); do
        curl -s -o /dev/null http://127.0.0.1:18080/ && break
        sleep 0.1
    done
    taskset -c 1 h2load --h1 -n 2000 -c 10 -H 'x-tenant: t1' http://127.0.0.1:18080/ >/dev/null
    echo "== $name"
    taskset -c 1 h2load --h1 -n "$n" -c 10 --rps 200 -H 'x-tenant: t1' http://127.0.0.1:18080/ |
        grep -E '^(requests|time for request):'
    taskset -c 1 h2load --h1 -n "$n" -c 10 --rps 200 -H 'x-tenant: t1' --log-file="$dir/$name.log" \
        http://127.0.0.1:18080/ >/dev/null
    python3 - "$dir/$name.log" <<'PY'
import sys
lat = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000
print(f"   p50 {q(0.5):.3f} ms  p99 {q(0.99):.3f} ms  p99.9 {q(0.999):.3f} ms  ({len(lat)} requests)")
PY
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

run_case none "" 
run_case local local
run_case redis shared
