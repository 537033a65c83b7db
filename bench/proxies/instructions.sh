#!/usr/bin/env bash
# User-space instructions per proxied HTTP/1.1 request, counted by callgrind: a deterministic
# measure (unlike CPU time on a shared machine) for comparing changes to the request path, and
# for comparing with NGINX on the same setup.
#
# Usage: bench/proxies/instructions.sh switchyard|nginx|haproxy [REQUESTS]
#        SWITCHYARD_BIN=path  to measure another build (default target/release/switchyard)
#        CG_KEEP=dir          keep the callgrind profiles there (for callgrind_annotate)
#        HEADER_OPS=1         the route makes three header changes: sets `x-env: prod` and
#                             removes `x-internal` on the request, adds `x-served-by: sy` to the
#                             response (switchyard `filters`; NGINX proxy_set_header/add_header)
#        RECENT_REQUESTS=N    switchyard keeps the last N requests for /debug/requests (default
#                             1024; 0 turns the ring off)
#        PROTO=h2c            h2c requests (h2load -c10 -m10) instead of HTTP/1.1 keep-alive
#        PORT_BASE=N          origin on N, proxy on N+80, admin on N+901 (default 18000)
# Needs: valgrind, nginx, h2load, curl (haproxy for `haproxy`). Ports 18000 (origin), 18080
# (proxy) and 18901 (admin) on 127.0.0.1 unless PORT_BASE moves them.
#
# The proxy runs under callgrind with one worker; an NGINX origin returns a 14-byte body.
# After 2,000 warm-up requests the counters are zeroed, REQUESTS more are sent over 10 keep-alive
# connections (h2load --h1), and the counters are dumped.
set -euo pipefail

who=${1:?usage: instructions.sh switchyard|nginx|haproxy [REQUESTS]}
n=${2:-20000}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$root/target/release/switchyard}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "$dir/" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
base=${PORT_BASE:-18000}
op=$base
pp=$((base + 80))
ap=$((base + 901))
load=(--h1 -c 10)
[ "${PROTO:-h1}" = h2c ] && load=(-c 10 -m 10)

. "$root/bench/proxies/configs.sh"

nginx_conf origin 'server { listen 127.0.0.1:'$op'; location / { return 200 "hello, world!\n"; } }'
taskset -c 1 nginx -c "$dir/origin.conf" &
pids+=($!)

sy_filters=""
nginx_ops=""
if [ -n "${HEADER_OPS:-}" ]; then
    sy_filters=", filters: [{request_headers: {set: {x-env: prod}, remove: [x-internal]}}, {response_headers: {add: {x-served-by: sy}}}]"
    nginx_ops='proxy_set_header X-Env prod; proxy_set_header X-Internal ""; add_header X-Served-By sy always;'
fi

case "$who" in
switchyard)
    cat >"$dir/switchyard.yaml" <<EOF
admin: {address: 127.0.0.1:$ap, recent_requests: ${RECENT_REQUESTS:-1024}}
runtime: {workers: 1, watch_config: false}
listeners: [{name: public, address: 127.0.0.1:$pp}]
routes: [{name: all, match: {path_prefix: /}, pool: origin$sy_filters}]
pools: [{name: origin, endpoints: [127.0.0.1:$op]}]
EOF
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" \
        "$bin" run --config "$dir/switchyard.yaml" 2>/dev/null &
    pids+=($!)
    ;;
nginx)
    nginx_conf proxy 'upstream origin { server 127.0.0.1:'$op'; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:'$pp'; listen 127.0.0.1:'$((pp + 1))' http2; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; '"$nginx_ops"' } }'
    taskset -c 0 valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$dir/cg.%p" \
        nginx -c "$dir/proxy.conf" 2>/dev/null &
    pids+=($!)
    ;;
haproxy)
    haproxy_conf "$dir/haproxy.cfg" "127.0.0.1:$pp" "127.0.0.1:$op"
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" \
        haproxy -f "$dir/haproxy.cfg" -db 2>/dev/null &
    pids+=($!)
    ;;
*)
    echo "unknown proxy: $who" >&2
    exit 2
    ;;
esac

for _ in $(seq 1 150); do
    curl -s -o /dev/null http://127.0.0.1:$pp/ && break
    sleep 0.2
done
url=http://127.0.0.1:$pp/
# NGINX serves h2c on a port of its own.
if [ "$who" = nginx ] && [ "${PROTO:-h1}" = h2c ]; then url=http://127.0.0.1:$((pp + 1))/; fi
taskset -c 1 h2load "${load[@]}" -n 2000 "$url" >/dev/null
callgrind_control -z >/dev/null
taskset -c 1 h2load "${load[@]}" -n "$n" "$url" | grep -E '^requests:'
callgrind_control -d >/dev/null
sleep 1

total=0
for f in "$dir"/cg.*.1; do
    [ -e "$f" ] || continue
    v=$(grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}')
    total=$((total + ${v:-0}))
done
echo "$who: $((total / n)) instructions per ${PROTO:-h1} request (user space, callgrind)"
if [ -n "${CG_KEEP:-}" ]; then
    mkdir -p "$CG_KEEP" && cp "$dir"/cg.*.1 "$CG_KEEP"/
fi
