#!/usr/bin/env python3
"""The tail under partial failure (issue 20), side by side: Switchyard and Envoy in front of the
same kind of fleet, configured the way an operator first writes it.

Fleet (`slots_origin.py`): 8 replicas, 4 slots each, 100 ms service time, queueing beyond.
Load: `switchyard bench --no-stream` at 220 req/s, Poisson, for 60 s (~70% of capacity).
Faults (`--scenario fault`): replica 0 crashes at 15 s (back after 15 s); replica 1 turns 10×
slow at 30 s and stays slow. `--scenario brownout`: every replica 2× slow from 20 s to 50 s
(more load than the fleet can serve, so queues grow: the test is that nobody is ejected beyond
`max_ejected_percent` and retries stay within the budget).

Both proxies: one worker on core 0; least_request (P2C); an HTTP health check every 2 s;
outlier detection on 5 consecutive 5xx or 3 consecutive gateway errors (30 s base ejection, at
most 50% ejected); 3 attempts on connect-failure, reset and gateway-error with a 2 s per-try
timeout, to hosts not tried yet, under a 20% retry budget (minimum 3). No hedging. Switchyard
adds nothing to this: latency outlier detection is on by default for pools of more than two.
`--switchyard-retry` replaces its retry line (e.g. to try `per_try_timeout: auto`).

Reported per proxy (medians over rounds, and each round): requests, failed, latency p50 / p99 /
p99.9 / max, retries sent, per-try timeouts, ejections (Switchyard: by reason), the slow
replica's share of arrivals after it slowed (all of it, and from 5 s after), and its ejections
per minute (flapping).

`--recover-at S`: the slow replica recovers at S seconds; `share_last_20s` then shows whether it
came back (its fair share is 12.5%).

Usage: python3 bench/fault/tail.py [--rounds 5] [--scenario fault|brownout] [--seconds 60]
       [--proxies switchyard,envoy] [--switchyard-retry '...'] [--recover-at S] [--out tail.json]
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
from common import (BIN, envoy_operator_cluster, envoy_operator_retry,  # noqa: E402
                    start_envoy, stop, wait_http)

PROXY_PORT = 18490
ADMIN_PORT = 18491
HERE = os.path.dirname(os.path.abspath(__file__))
RETRY = ("retry: {attempts: 3, retry_on: [connect-failure, reset, gateway-error], "
         "per_try_timeout: 2s, budget: {ratio: 0.2, min_concurrency: 3}}")


def start_origin():
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "slots_origin.py")],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    addrs = []
    while len(addrs) < 8:
        line = p.stdout.readline()
        if not line:
            sys.exit("origin exited early")
        m = re.search(r"listening on (\S+)", line)
        if m:
            addrs.append(m.group(1))
    return p, addrs


def start_switchyard(d, addrs, args):
    conf = os.path.join(d, "switchyard.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{ADMIN_PORT}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{PROXY_PORT}}}]
routes:
  - name: api
    match: {{path_prefix: /}}
    pool: fleet
    timeout: 30s
    {args.switchyard_retry}
pools:
  - name: fleet
    balancer: least_request
    endpoints: [{", ".join(addrs)}]
    health: {{http: {{path: /health}}, interval: 2s, timeout: 1s}}
    outlier: {{consecutive_5xx: 5, consecutive_gateway_errors: 3, base_ejection: 30s, max_ejected_percent: 50, interval: 1s}}
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "switchyard.log"), "w"),
                         start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN_PORT}/ready")
    return p


def start_envoy_equivalent(d, addrs):
    health = """    health_checks:
    - timeout: 1s
      interval: 2s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check: {path: /health}
"""
    return start_envoy(d, PROXY_PORT, ADMIN_PORT, addrs,
                       envoy_operator_retry("2s", "30s"), envoy_operator_cluster(health))


def get(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


def post(addr, body):
    req = urllib.request.Request(f"http://{addr}/_fault", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=2).read()
    except Exception:
        pass


def counters(proxy):
    """(retries, retries refused by the budget, per-try timeouts, {reason: ejections}, raw text)
    from the proxy's own counters."""
    if proxy == "switchyard":
        text = get(f"http://127.0.0.1:{ADMIN_PORT}/metrics")

        def total(prefix):
            return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))
        ej = {}
        for l in text.splitlines():
            m = re.match(r'switchyard_outlier_ejections_total\{.*reason="([a-z_]+)".*\} (\S+)', l)
            if m:
                ej[m.group(1)] = ej.get(m.group(1), 0) + float(m.group(2))
        return (total("switchyard_retries_total{"), total("switchyard_retries_refused_total{"),
                total('switchyard_upstream_errors_total{pool="fleet",kind="timeout"}'), ej, text)
    text = get(f"http://127.0.0.1:{ADMIN_PORT}/stats")

    def stat(name):
        m = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    ej = {"all": stat("cluster.sim.outlier_detection.ejections_enforced_total")}
    return (stat("cluster.sim.upstream_rq_retry"), stat("cluster.sim.upstream_rq_retry_overflow"),
            stat("cluster.sim.upstream_rq_per_try_timeout"), ej,
            text + get(f"http://127.0.0.1:{ADMIN_PORT}/clusters"))


def ejection_log(proxy, d, slow_addr):
    """From Switchyard's log: (ejections of the slow replica, most endpoints ejected at once).
    Envoy's counters say neither: None."""
    if proxy != "switchyard":
        return None, None
    slow, out, most = 0, set(), 0
    with open(os.path.join(d, "switchyard.log")) as f:
        for line in f:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if "switchyard_proxy::pool_control" not in line:
                continue
            m = re.search(r"endpoint=(\S+)", line)
            if not m:
                continue
            if "endpoint ejected" in line:
                out.add(m.group(1))
                slow += m.group(1) == slow_addr
            elif "returned from ejection" in line:
                out.discard(m.group(1))
            most = max(most, len(out))
    return slow, most


def run(proxy, args, d, rnd):
    origin, addrs = start_origin()
    p = None
    try:
        p = start_switchyard(d, addrs, args) if proxy == "switchyard" else start_envoy_equivalent(d, addrs)
        clock0 = float(get(f"http://{addrs[0]}/_clock"))
        timers = []
        if args.scenario == "fault":
            timers.append(threading.Timer(15.0, post, (addrs[0], {"crash_for_ms": 15000})))
            timers.append(threading.Timer(30.0, post, (addrs[1], {"slow_factor": 10.0})))
            if args.recover_at:
                timers.append(threading.Timer(args.recover_at, post, (addrs[1], {"slow_factor": 1.0})))
            slow_at = 30.0
        else:
            for a in addrs:
                timers.append(threading.Timer(20.0, post, (a, {"slow_factor": 2.0})))
                timers.append(threading.Timer(50.0, post, (a, {"slow_factor": 1.0})))
            slow_at = None
        out = os.path.join(d, f"{proxy}-{rnd}.json")
        cmd = ["taskset", "-c", "1", BIN, "bench", "--quiet", "--target", f"http://127.0.0.1:{PROXY_PORT}",
               "--model", "m", "--rate", str(args.rate), "--duration", f"{args.seconds}s",
               "--prompt-tokens", "16", "--output-tokens", "1", "--no-stream", "--timeout", "30s",
               "--seed", str(11 + rnd), "--out", out]
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        for t in timers:
            t.start()
        if load.wait() != 0:
            sys.exit("bench failed")
        for t in timers:
            t.cancel()
        r = json.load(open(out))["targets"][0]
        retries, refused, timeouts, ej, raw = counters(proxy)
        with open(os.path.join(d, f"{proxy}-{rnd}-counters.txt"), "w") as f:
            f.write(raw)
        arrivals = json.loads(get(f"http://{addrs[2]}/_stats"))
        res = {"sent": r["sent"], "failed": r["failed"], "errors": r["errors"],
               "p50_ms": r["e2e_ms"]["p50"], "p99_ms": r["e2e_ms"]["p99"],
               "p999_ms": r["e2e_ms"]["p999"], "max_ms": r["e2e_ms"]["max"],
               "retries": retries, "retries_refused": refused, "per_try_timeouts": timeouts,
               "ejections": ej}
        if slow_at is not None:
            until = args.recover_at or 1e9
            for key, since, end in (("slow_share", slow_at, until),
                                    ("slow_share_after_5s", slow_at + 5, until),
                                    ("share_last_20s", args.seconds - 20, 1e9)):
                after = [i for i, t in arrivals if since <= t - clock0 < end]
                res[key] = sum(1 for i in after if i == 1) / max(1, len(after))
        res["slow_ejections"], res["most_ejected_at_once"] = ejection_log(proxy, d, addrs[1])
        return res
    finally:
        if p:
            stop(p)
        stop(origin)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scenario", choices=["fault", "brownout"], default="fault")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=float, default=220.0)
    ap.add_argument("--proxies", default="switchyard,envoy")
    ap.add_argument("--switchyard-retry", default=RETRY)
    ap.add_argument("--recover-at", type=float, default=None,
                    help="the slow replica recovers at this second (its shares count until then)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-tail-")
    print(f"work dir (configs, reports, counters): {d}", file=sys.stderr)
    proxies = args.proxies.split(",")
    results = {p: [] for p in proxies}
    for rnd in range(args.rounds):
        for proxy in proxies:
            res = run(proxy, args, d, rnd)
            results[proxy].append(res)
            print(f"round {rnd + 1} {proxy}: {json.dumps(res)}", file=sys.stderr, flush=True)
    cols = [("sent", "{:.0f}"), ("failed", "{:.0f}"), ("p50_ms", "{:.0f}"), ("p99_ms", "{:.0f}"),
            ("p999_ms", "{:.0f}"), ("max_ms", "{:.0f}"), ("retries", "{:.0f}"),
            ("retries_refused", "{:.0f}"),
            ("per_try_timeouts", "{:.0f}")]
    if args.scenario == "fault":
        cols += [("slow_share", "{:.2%}"), ("slow_share_after_5s", "{:.2%}"),
                 ("share_last_20s", "{:.2%}")]
    print("| proxy | " + " | ".join(c for c, _ in cols) + " | ejections |")
    print("|---|" + "---|" * (len(cols) + 1))
    for p, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k, _ in cols}
        ej = [x["ejections"] for x in runs]
        print(f"| {p} | " + " | ".join(f.format(med[k]) for k, f in cols) + f" | {ej} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
