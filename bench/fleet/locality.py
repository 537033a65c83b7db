#!/usr/bin/env python3
"""Locality with capacity spillover, side by side with Envoy's zone-aware routing (issue #16):

Two simulated zones of 4 replicas each (the gateway runs in zone a). The local zone's capacity
is measured first (closed loop at 4 x max_num_seqs straight at zone a's replicas), then load is
ramped from 50% to 150% of it through each proxy, one run per level, open loop (Poisson):

  * cross-zone share: requests served by zone b's replicas / all (each replica's own
    vllm:request_success_total, so both proxies are counted the same way);
  * TTFT p50/p99 from `switchyard bench`.

Switchyard: `locality: {spill_at: 0.8}` with `capacity: max_num_seqs` per endpoint,
`least_request` within the tier. Envoy: LEAST_REQUEST with zone-aware routing (node zone a, a
local cluster with one Envoy per zone so each zone's share of Envoys matches its share of
endpoints, the case where Envoy keeps everything local); Envoy spills on health only.

  .venv/bin/python bench/fleet/locality.py --seconds 20
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, envoy_bin, start_fleet, stop, wait_http  # noqa: E402

PROXY, ADMIN = 18180, 18181
LEVELS = [0.5, 0.8, 1.0, 1.2, 1.5]
WORK = []
SEQS = 8


def fleet_yaml(speed):
    return (f"model: {MODEL}\nbase_port: 0\nreplicas:\n"
            f"  - {{count: 4, zone: a, speed: {speed}, max_num_seqs: {SEQS}}}\n"
            f"  - {{count: 4, zone: b, speed: {speed}, max_num_seqs: {SEQS}}}\n")


def served(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("vllm:request_success_total"))


def bench(target, extra, seconds, out):
    cmd = ["taskset", "-c", "1", BIN, "bench", "--quiet", "--target", target, "--model", MODEL,
           "--duration", f"{seconds}s", "--seed", "7", "--out", out] + WORK + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def summary(report):
    """(requests per second completed, TTFT p50 ms, TTFT p99 ms) from a bench report."""
    r = report["targets"][0] if "targets" in report else report
    ttft = r["ttft_ms"]
    return r["request_throughput"], ttft["p50"], ttft["p99"]


def start_switchyard(d, addrs):
    eps = "\n".join(f"      - {{address: {a}, zone: {'a' if i < 4 else 'b'}, capacity: {SEQS}}}"
                    for i, a in enumerate(addrs))
    conf = os.path.join(d, "switchyard.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{ADMIN}}}
runtime: {{workers: 1, watch_config: false, locality: {{zone: a}}}}
listeners: [{{name: public, address: 127.0.0.1:{PROXY}}}]
routes:
  - {{name: chat, match: {{path_prefix: /}}, pool: sim, timeout: 120s}}
pools:
  - name: sim
    balancer: least_request
    locality: {{spill_at: 0.8}}
    endpoints:
{eps}
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN}/ready")
    return p


def start_envoy_zone_aware(d, addrs):
    def group(zone, part):
        eps = "\n".join(
            f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a.split(':')[1]}}}}}}}"
            for a in part)
        return f"      - locality: {{zone: {zone}}}\n        lb_endpoints:\n{eps}\n"
    conf = os.path.join(d, "envoy.yaml")
    with open(conf, "w") as f:
        f.write(f"""node: {{id: gw-a, cluster: local, locality: {{zone: a}}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN}}}}}}}
cluster_manager: {{local_cluster_name: local}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {PROXY}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: sim, timeout: 120s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: local
    type: STATIC
    load_assignment:
      cluster_name: local
      endpoints:
      - locality: {{zone: a}}
        lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]
      - locality: {{zone: b}}
        lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 2}}}}}}}}]
  - name: sim
    connect_timeout: 1s
    type: STATIC
    lb_policy: LEAST_REQUEST
    common_lb_config: {{zone_aware_lb_config: {{min_cluster_size: 2}}}}
    circuit_breakers: {{thresholds: [{{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}}]}}
    load_assignment:
      cluster_name: sim
      endpoints:
{group("a", addrs[:4])}{group("b", addrs[4:])}""")
    p = subprocess.Popen(["taskset", "-c", "0", envoy_bin(), "-c", conf, "--concurrency", "1",
                          "--disable-hot-restart", "-l", "error"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN}/ready")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--speed", type=float, default=4.0)
    ap.add_argument("--proxies", default="switchyard,envoy")
    ap.add_argument("--seqs", type=int, default=8, help="max_num_seqs per replica")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--output-tokens", type=int, default=64)
    args = ap.parse_args()
    global SEQS
    SEQS = args.seqs
    WORK[:] = ["--prompt-tokens", str(args.prompt_tokens), "--output-tokens", str(args.output_tokens)]
    d = tempfile.mkdtemp()
    fleet, addrs = start_fleet(d, fleet_yaml(args.speed), 8)
    try:
        # The local zone's capacity: closed loop at its batch limit, straight at zone a.
        caps = []
        for a in addrs[:4]:
            r = bench(f"http://{a}", ["--concurrency", str(SEQS)], max(5, args.seconds // 3),
                      os.path.join(d, "cap.json"))
            caps.append(summary(r)[0])
        # (sequential per replica: each alone; the zone's capacity is their sum)
        capacity = sum(caps)
        base_ttft = None
        print(f"local zone capacity: {capacity:.1f} req/s ({SEQS} seqs x 4 replicas)")
        print("proxy       load  rate   cross-zone  TTFT p50  TTFT p99  p99/unloaded")
        for proxy in args.proxies.split(","):
            p = start_switchyard(d, addrs) if proxy == "switchyard" else start_envoy_zone_aware(d, addrs)
            try:
                unloaded = bench(f"http://127.0.0.1:{PROXY}", ["--concurrency", "1"],
                                 max(5, args.seconds // 3), os.path.join(d, "base.json"))
                base_ttft = summary(unloaded)[2]
                for level in LEVELS:
                    rate = level * capacity
                    before = [served(a) for a in addrs]
                    r = bench(f"http://127.0.0.1:{PROXY}", ["--rate", f"{rate:.2f}"], args.seconds,
                              os.path.join(d, f"{proxy}-{level}.json"))
                    after = [served(a) for a in addrs]
                    delta = [x - y for x, y in zip(after, before)]
                    cross = sum(delta[4:]) / max(1.0, sum(delta))
                    _, p50, p99 = summary(r)
                    print(f"{proxy:<11} {level * 100:4.0f}% {rate:5.1f}  {cross * 100:9.1f}%  "
                          f"{p50:8.0f}  {p99:8.0f}  {p99 / base_ttft:6.2f}x")
            finally:
                stop(p)
    finally:
        stop(fleet)


if __name__ == "__main__":
    main()
