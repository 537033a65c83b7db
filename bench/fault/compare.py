#!/usr/bin/env python3
"""Fault scenario, side by side: Switchyard and Envoy in front of the same kind of fleet.

8 simulated replicas (`switchyard sim`, max_num_seqs 8 so the fleet has a real capacity) serve
chat completions at ~70% of fleet capacity (`switchyard bench`, Poisson arrivals): a share of
them (`--whole-share`, default half) ask for whole replies (`stream: false`), the rest stream.
A whole reply's response head only comes with the last token, so those requests stay
replayable until they finish: the crash resets them, and the slow replica trips their per-try
timeout. Five seconds in, replica 0 crashes (listener and connections closed, back after 15 s)
and replica 1 turns 10x slow.

Both proxies are configured the equivalent way, as an Envoy operator would: least_request
(P2C); outlier detection (3 consecutive gateway errors or 5 consecutive 5xx, 30 s base
ejection, at most 50% ejected); retries on connect-failure/reset/gateway-error, up to 3
attempts, a per-try timeout, retries sent to hosts not tried yet (Envoy: the previous_hosts
retry host predicate; Switchyard does this by default), under a 20% retry budget (minimum 3
concurrent). Each proxy gets a fresh fleet; runs alternate.

Reported per proxy: success rate; failures of replayable requests (every failed whole reply,
and every stream that failed before its response head) and streams cut mid-body by the crash
(which no proxy may retry); TTFT p50/p99 of streams and latency p50/p99 of whole replies;
retries sent (Switchyard: switchyard_retries_total; Envoy: cluster.sim.upstream_rq_retry),
per-try timeouts and ejections.

Usage: python3 bench/fault/compare.py [--rounds 3] [--seconds 25] [--rate 90] [--whole-share 0.5]
       [--per-try-timeout 3s] [--proxies switchyard,envoy] [--no-faults] [--no-latency-outliers]
       [--out fault.json]
(`--no-faults`: the same load and configs without the crash and the slow replica, as a baseline.)
Each proxy's counters (Prometheus metrics; Envoy /stats and /clusters) are kept in the work dir.
The Switchyard binary is $SWITCHYARD_BIN (default target/release/switchyard).
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
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import (BIN, MODEL, envoy_operator_cluster, envoy_operator_retry,  # noqa: E402
                    start_envoy, start_fleet, stop, wait_http)
PROXY_PORT = 18480
ADMIN_PORT = 18481


def start_fleet_8(d):
    return start_fleet(d, f"model: {MODEL}\nbase_port: 0\nreplicas:\n  - count: 8\n    max_num_seqs: 8\n", 8)


def start_switchyard(d, addrs, args):
    eps = ", ".join(addrs)
    # Latency outliers are judged by default in a pool of eight; `--no-latency-outliers` is the
    # configuration before issue 20.
    latency = ", latency: false" if args.no_latency_outliers else ""
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
    retry: {{attempts: 3, retry_on: [connect-failure, reset, gateway-error], per_try_timeout: {args.per_try_timeout}, budget: {{ratio: 0.2, min_concurrency: 3}}}}
pools:
  - name: sim
    balancer: least_request
    endpoints: [{eps}]
    outlier: {{consecutive_5xx: 5, consecutive_gateway_errors: 3, base_ejection: 30s, max_ejected_percent: 50, interval: 1s{latency}}}
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN_PORT}/ready")
    return p


def start_envoy_equivalent(d, addrs, args):
    return start_envoy(d, PROXY_PORT, ADMIN_PORT, addrs,
                       envoy_operator_retry(args.per_try_timeout, "60s"), envoy_operator_cluster())


def metric_sum(prefix):
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics").read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def envoy_stat(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats").read().decode()
    m = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def per_try_timeouts(proxy):
    if proxy == "switchyard":
        return metric_sum('switchyard_upstream_errors_total{pool="sim",kind="timeout"}')
    return envoy_stat("cluster.sim.upstream_rq_per_try_timeout")


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


def bench(args, out, rate, seed, stream):
    """One `switchyard bench` process: streamed or whole replies at `rate`."""
    cmd = ["taskset", "-c", "1", BIN, "bench", "--quiet", "--target", f"http://127.0.0.1:{PROXY_PORT}",
           "--model", MODEL, "--rate", str(rate), "--duration", f"{args.seconds}s",
           "--prompt-tokens", "256", "--output-tokens", "64", "--timeout", "60s",
           "--seed", str(seed), "--out", out]
    if not stream:
        cmd.append("--no-stream")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def run(proxy, args, d):
    fleet, addrs = start_fleet_8(d)
    p = None
    try:
        p = start_switchyard(d, addrs, args) if proxy == "switchyard" else start_envoy_equivalent(d, addrs, args)
        t = threading.Timer(5.0, lambda: None if args.no_faults else (
            inject(addrs[0], {"crash_for_ms": 15000}), inject(addrs[1], {"slow_factor": 10.0})))
        t.start()
        # Two Poisson processes (streamed, whole) add up to one at `rate`.
        runs = {}
        whole_rate = args.rate * args.whole_share
        if whole_rate < args.rate:
            runs["stream"] = (os.path.join(d, f"{proxy}-stream.json"), args.rate - whole_rate, 7, True)
        if whole_rate > 0:
            runs["whole"] = (os.path.join(d, f"{proxy}-whole.json"), whole_rate, 8, False)
        procs = {k: bench(args, out, rate, seed, stream) for k, (out, rate, seed, stream) in runs.items()}
        for k, pr in procs.items():
            if pr.wait() != 0:
                sys.exit(f"bench ({k}) failed")
        t.cancel()
        res = {"sent": 0, "ok": 0, "failed": 0, "failed_replayable": 0, "stream_broken": 0, "errors": {}}
        for k, (out, _, _, _) in runs.items():
            r = json.load(open(out))["targets"][0]
            errors = r["errors"]
            # A stream cut mid-body had its head sent downstream: not replayable. A whole reply's
            # head comes last, so each of its failures is a replayable request lost.
            broken = errors.get("stream_broken", 0) if k == "stream" else 0
            res["sent"] += r["sent"]
            res["ok"] += r["completed"]
            res["failed"] += r["failed"]
            res["failed_replayable"] += r["failed"] - broken
            res["stream_broken"] += broken
            res["errors"][k] = errors
            pre = "ttft" if k == "stream" else "whole"
            res[f"{pre}_p50_ms"] = r["ttft_ms"]["p50"]
            res[f"{pre}_p99_ms"] = r["ttft_ms"]["p99"]
            if k == "stream":
                res["e2e_p50_ms"] = r["e2e_ms"]["p50"]
                res["e2e_p99_ms"] = r["e2e_ms"]["p99"]
        # Keep the proxy's own counters of this run for a closer look.
        raw = f"http://127.0.0.1:{ADMIN_PORT}/" + ("metrics" if proxy == "switchyard" else "stats")
        with open(os.path.join(d, f"{proxy}-{time.strftime('%H%M%S')}-counters.txt"), "w") as f:
            f.write(urllib.request.urlopen(raw).read().decode())
            if proxy == "envoy":
                f.write(urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/clusters").read().decode())
        res["success_rate"] = res["ok"] / max(1, res["sent"])
        res["retries"] = retries_sent(proxy)
        res["per_try_timeouts"] = per_try_timeouts(proxy)
        res["ejections"] = ejections(proxy)
        return res
    finally:
        if p:
            stop(p)
        stop(fleet)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=float, default=90.0)
    ap.add_argument("--whole-share", type=float, default=0.5,
                    help="share of requests asking for whole replies (stream: false)")
    ap.add_argument("--per-try-timeout", default="3s", help="both proxies' per-try timeout")
    ap.add_argument("--proxies", default="switchyard,envoy")
    ap.add_argument("--no-faults", action="store_true", help="baseline: the same load, no faults")
    ap.add_argument("--no-latency-outliers", action="store_true",
                    help="Switchyard does not judge latency outliers (outlier.latency: false); "
                         "they are on by default in pools of more than two")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-fault-")
    print(f"work dir (configs, reports, counters): {d}", file=sys.stderr)
    proxies = args.proxies.split(",")
    results = {p: [] for p in proxies}
    for r in range(args.rounds):
        for proxy in proxies:
            res = run(proxy, args, d)
            results[proxy].append(res)
            print(f"round {r + 1} {proxy}: {json.dumps(res)}", file=sys.stderr, flush=True)
    cols = [("success_rate", "success", "{:.2%}"), ("failed_replayable", "failed (replayable)", "{:.0f}"),
            ("stream_broken", "streams cut by the crash", "{:.0f}"), ("ttft_p50_ms", "stream TTFT p50 ms", "{:.0f}"),
            ("ttft_p99_ms", "stream TTFT p99 ms", "{:.0f}"), ("e2e_p99_ms", "stream E2E p99 ms", "{:.0f}"),
            ("whole_p50_ms", "whole reply p50 ms", "{:.0f}"), ("whole_p99_ms", "whole reply p99 ms", "{:.0f}"),
            ("retries", "retries sent", "{:.0f}"), ("per_try_timeouts", "per-try timeouts", "{:.0f}"),
            ("ejections", "ejections", "{:.0f}")]
    print("| proxy | requests | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for p, runs in results.items():
        med = {k: statistics.median(x.get(k, float("nan")) for x in runs) for k, _, _ in cols}
        sent = statistics.median(x["sent"] for x in runs)
        print(f"| {p} | {sent:.0f} | " + " | ".join(f.format(med[k]) for k, _, f in cols) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
