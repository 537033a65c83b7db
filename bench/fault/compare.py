#!/usr/bin/env python3
"""Fault scenario, side by side: Switchyard and Envoy in front of the same kind of fleet.

8 simulated replicas (`switchyard sim`, max_num_seqs 8 so the fleet has a real capacity) serve
streamed chat completions at ~70% of fleet capacity (`switchyard bench`, Poisson arrivals).
Five seconds in, replica 0 crashes (listener and connections closed, back after 15 s) and
replica 1 turns 10x slow. Both proxies are configured the equivalent way: least_request (P2C),
outlier detection (3 consecutive gateway errors or 5 consecutive 5xx, 30 s base ejection, at
most 50% ejected), retries on connect-failure/reset/gateway-error with up to 3 attempts under a
20% retry budget (minimum 3 concurrent). Each proxy gets a fresh fleet; runs alternate.

Reported per proxy: success rate, failures by kind (replayable ones are those that failed before
response headers: connect errors and gateway 5xx; `stream_broken` are streams cut mid-body by
the crash, which no proxy may retry), TTFT and E2E p50/p99, and retries sent (Switchyard:
switchyard_retries_total; Envoy: cluster.sim.upstream_rq_retry).

Usage: python3 bench/fault/compare.py [--rounds 2] [--seconds 30] [--rate 90]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_envoy, start_fleet, stop, wait_http  # noqa: E402
PROXY_PORT = 18480
ADMIN_PORT = 18481


def start_fleet_8(d):
    return start_fleet(d, f"model: {MODEL}\nbase_port: 0\nreplicas:\n  - count: 8\n    max_num_seqs: 8\n", 8)


def start_switchyard(d, addrs):
    eps = ", ".join(addrs)
    conf = os.path.join(d, "switchyard.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{ADMIN_PORT}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{PROXY_PORT}}}]
routes:
  - name: chat
    match: {{path_prefix: /}}
    pool: sim
    timeout: 60s
    retry: {{attempts: 3, retry_on: [connect-failure, reset, gateway-error], budget: {{ratio: 0.2, min_concurrency: 3}}}}
pools:
  - name: sim
    balancer: least_request
    endpoints: [{eps}]
    outlier: {{consecutive_5xx: 5, consecutive_gateway_errors: 3, base_ejection: 30s, max_ejected_percent: 50, interval: 1s}}
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN_PORT}/ready")
    return p


def start_envoy_equivalent(d, addrs):
    route = '                  timeout: 60s\n                  retry_policy: {retry_on: "connect-failure,reset,gateway-error", num_retries: 2}\n'
    cluster = """    lb_policy: LEAST_REQUEST
    least_request_lb_config: {choice_count: 2}
    outlier_detection:
      consecutive_5xx: 5
      consecutive_gateway_failure: 3
      enforcing_consecutive_gateway_failure: 100
      base_ejection_time: 30s
      max_ejection_percent: 50
      interval: 1s
    circuit_breakers:
      thresholds:
      - retry_budget: {budget_percent: {value: 20.0}, min_retry_concurrency: 3}
"""
    return start_envoy(d, PROXY_PORT, ADMIN_PORT, addrs, route, cluster)


def retries_sent(proxy):
    if proxy == "switchyard":
        text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics").read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith("switchyard_retries_total{"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats").read().decode()
    m = re.search(r"^cluster\.sim\.upstream_rq_retry: (\d+)$", text, re.M)
    if m is None:
        sys.exit("envoy stats have no cluster.sim.upstream_rq_retry")
    return float(m.group(1))


def ejections(proxy):
    if proxy == "switchyard":
        text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics").read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith("switchyard_outlier_ejections_total{"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats").read().decode()
    m = re.search(r"^cluster\.sim\.outlier_detection\.ejections_enforced_total: (\d+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def inject(addr, body):
    req = urllib.request.Request(f"http://{addr}/sim/faults", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=2).read()
    except Exception:
        pass  # a crash may close the connection before the reply


def run(proxy, args, d):
    fleet, addrs = start_fleet_8(d)
    p = None
    try:
        p = start_switchyard(d, addrs) if proxy == "switchyard" else start_envoy_equivalent(d, addrs)
        out = os.path.join(d, f"{proxy}.json")
        t = threading.Timer(5.0, lambda: (inject(addrs[0], {"crash_for_ms": 15000}),
                                           inject(addrs[1], {"slow_factor": 10.0})))
        t.start()
        subprocess.run(["taskset", "-c", "1", BIN, "bench", "--quiet", "--target", f"http://127.0.0.1:{PROXY_PORT}",
                        "--model", MODEL, "--rate", str(args.rate), "--duration", f"{args.seconds}s",
                        "--prompt-tokens", "256", "--output-tokens", "64", "--timeout", "60s",
                        "--seed", "7", "--out", out], check=True, stdout=subprocess.DEVNULL)
        t.cancel()
        r = json.load(open(out))["targets"][0]
        errors = r["errors"]
        broken = errors.get("stream_broken", 0)
        return {
            "sent": r["sent"], "ok": r["completed"], "failed": r["failed"],
            "success_rate": r["completed"] / max(1, r["sent"]),
            "failed_replayable": r["failed"] - broken, "stream_broken": broken, "errors": errors,
            "ttft_p50_ms": r["ttft_ms"]["p50"], "ttft_p99_ms": r["ttft_ms"]["p99"],
            "e2e_p50_ms": r["e2e_ms"]["p50"], "e2e_p99_ms": r["e2e_ms"]["p99"],
            "retries": retries_sent(proxy),
            "ejections": ejections(proxy),
        }
    finally:
        if p:
            stop(p)
        stop(fleet)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=float, default=90.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-fault-")
    results = {"switchyard": [], "envoy": []}
    for r in range(args.rounds):
        for proxy in ("switchyard", "envoy"):
            res = run(proxy, args, d)
            results[proxy].append(res)
            print(f"round {r + 1} {proxy}: {json.dumps(res)}", file=sys.stderr, flush=True)
    cols = [("success_rate", "success", "{:.2%}"), ("failed_replayable", "failed (replayable)", "{:.0f}"),
            ("stream_broken", "streams cut by the crash", "{:.0f}"), ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
            ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"), ("e2e_p50_ms", "E2E p50 ms", "{:.0f}"),
            ("e2e_p99_ms", "E2E p99 ms", "{:.0f}"), ("retries", "retries sent", "{:.0f}"),
            ("ejections", "ejections", "{:.0f}")]
    print("| proxy | requests | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for p, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k, _, _ in cols}
        sent = statistics.median(x["sent"] for x in runs)
        print(f"| {p} | {sent:.0f} | " + " | ".join(f.format(med[k]) for k, _, f in cols) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
