#!/usr/bin/env bash
# CPU time per request of Switchyard and HAProxy, alternating on one origin: a cross-check of
# compare.py's CPU column that keeps both proxies up for the whole run, so each round measures
# them back to back under the same machine load.
#
# Usage: bench/proxies/alternate_cpu.sh [h2c|h1] [ROUNDS] [REQUESTS]
#        SWITCHYARD_BIN=path  (default target/release/switchyard), PORT_BASE=N (default 24000:
#        origin N, Switchyard N+80, HAProxy N+81)
# Each proxy runs one worker pinned to core 0, h2load runs on core 1 (h2c: -c10 -m10; h1:
# --h1 -c10). Per round and proxy: 5,000 warm-up requests, then REQUESTS (default 50,000), with
# the proxy's utime and stime read from /proc/PID/stat (clock ticks) around them.
# Needs: nginx (the origin), haproxy, h2load.
set -euo pipefail
proto=${1:-h2c}
rounds=${2:-4}
n=${3:-50000}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$root/target/release/switchyard}
base=${PORT_BASE:-24000}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
load=(-c 10 -m 10)
bind_proto="proto h2"
if [ "$proto" = h1 ]; then
    load=(--h1 -c 10)
    bind_proto=""
fi

. "$root/bench/proxies/configs.sh"
nginx_conf origin 'server { listen 127.0.0.1:'$base'; location / { return 200 "hello, world!\n"; } }'
cat >"$dir/sy.yaml" <<CONF
admin: {address: 127.0.0.1:$((base + 901))}
runtime: {workers: 1, watch_config: false}
listeners: [{name: public, address: 127.0.0.1:$((base + 80))}]
routes: [{name: all, match: {path_prefix: /}, pool: origin}]
pools: [{name: origin, endpoints: [127.0.0.1:$base]}]
CONF
haproxy_conf "$dir/ha.cfg" "127.0.0.1:$((base + 81)) $bind_proto" "127.0.0.1:$base"

taskset -c 1 nginx -c "$dir/origin.conf" &
pids+=($!)
taskset -c 0 "$bin" run --config "$dir/sy.yaml" >"$dir/sy.log" 2>&1 &
sy=$!
pids+=($sy)
taskset -c 0 haproxy -f "$dir/ha.cfg" -db >"$dir/ha.log" 2>&1 &
ha=$!
pids+=($ha)
for port in $((base + 80)) $((base + 81)); do
    for _ in $(seq 1 150); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
done

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
declare -A user sys
for r in $(seq 1 "$rounds"); do
    for who in switchyard haproxy; do
        if [ $who = switchyard ]; then p=$sy; port=$((base + 80)); else p=$ha; port=$((base + 81)); fi
        url=http://127.0.0.1:$port/
        taskset -c 1 h2load "${load[@]}" -n 5000 "$url" >/dev/null
        read -r u0 s0 <<<"$(ticks $p)"
        taskset -c 1 h2load "${load[@]}" -n "$n" "$url" | grep -q "$n succeeded" || echo "$who: requests failed" >&2
        read -r u1 s1 <<<"$(ticks $p)"
        user[$who]=$(( ${user[$who]:-0} + u1 - u0 ))
        sys[$who]=$(( ${sys[$who]:-0} + s1 - s0 ))
        echo "round $r $who: user $((u1 - u0)) sys $((s1 - s0)) ticks"
    done
done
hz=$(getconf CLK_TCK)
for who in switchyard haproxy; do
    total=$(( user[$who] + sys[$who] ))
    echo "$who: user ${user[$who]} + sys ${sys[$who]} = $total ticks; $(( total * 1000000 / hz / (n * rounds) )) us per $proto request"
done
