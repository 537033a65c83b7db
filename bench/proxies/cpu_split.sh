#!/usr/bin/env bash
# User and system CPU per proxied HTTP/1.1 request, read from /proc/PID/stat around a 5 s
# closed-loop `wrk -t1 -c50` run: where the CPU goes (the kernel's loopback TCP path, or the
# proxy's own code), which compare.py's single total cannot say.
#
# Usage: bench/proxies/cpu_split.sh switchyard|nginx [ROUNDS]
#        SWITCHYARD_BIN=path  to measure another build (default target/release/switchyard)
# Needs: nginx, wrk, curl. Ports 38000 (origin) and 38080 (proxy) on 127.0.0.1. The proxy is
# pinned to core 0, the origin and wrk to core 1.
set -euo pipefail

who=${1:?usage: cpu_split.sh switchyard|nginx [ROUNDS]}
rounds=${2:-1}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$root/target/release/switchyard}
dir=$(mktemp -d)
cleanup() {
    pkill -f "$dir/" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

nginx_conf() { # name body
    mkdir -p "$dir/$1-tmp"
    cat >"$dir/$1.conf" <<EOC
worker_processes 1; daemon off; user root; pid $dir/$1.pid; error_log $dir/$1-error.log error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $dir/$1-tmp; proxy_temp_path $dir/$1-tmp; fastcgi_temp_path $dir/$1-tmp;
  uwsgi_temp_path $dir/$1-tmp; scgi_temp_path $dir/$1-tmp;
  $2 }
EOC
}

nginx_conf origin 'server { listen 127.0.0.1:38000; location / { return 200 "hello, world!\n"; } }'
taskset -c 1 nginx -c "$dir/origin.conf" &
case "$who" in
switchyard)
    cat >"$dir/switchyard.yaml" <<EOC
admin: {address: 127.0.0.1:38901}
runtime: {workers: 1, watch_config: false}
listeners: [{name: public, address: 127.0.0.1:38080}]
routes: [{name: all, match: {path_prefix: /}, pool: origin}]
pools: [{name: origin, endpoints: [127.0.0.1:38000]}]
EOC
    taskset -c 0 "$bin" run --config "$dir/switchyard.yaml" 2>/dev/null &
    proxy=$!
    ;;
nginx)
    nginx_conf proxy 'upstream origin { server 127.0.0.1:38000; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:38080; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }'
    taskset -c 0 nginx -c "$dir/proxy.conf" &
    ;;
*)
    echo "unknown proxy: $who" >&2
    exit 2
    ;;
esac

for _ in $(seq 1 100); do
    curl -s -o /dev/null http://127.0.0.1:38080/ && break
    sleep 0.1
done
if [ "$who" = nginx ]; then
    proxy=$(pgrep -P "$(cat "$dir/proxy.pid")" | head -1)
fi
tck=$(getconf CLK_TCK)
taskset -c 1 wrk -t1 -c50 -d1s http://127.0.0.1:38080/ >/dev/null
for _ in $(seq 1 "$rounds"); do
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$proxy/stat")
    out=$(taskset -c 1 wrk -t1 -c50 -d5s http://127.0.0.1:38080/)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$proxy/stat")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v who="$who" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$tck" 'BEGIN {
        printf "%s: %d requests, user %.2f us/req, system %.2f us/req, total %.2f\n",
            who, n, u / t * 1e6 / n, s / t * 1e6 / n, (u + s) / t * 1e6 / n }'
done
