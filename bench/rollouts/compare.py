#!/usr/bin/env python3
"""Canary rollouts (issue 13's floor), side by side: the gateway's own rollout controller and
the Flagger way (a script that reads the gateway's Prometheus metrics every interval, compares
the canary with fixed thresholds, and changes the split's weights by rewriting the config and
sending SIGHUP).

Per run: a fresh baseline fleet (4 simulated replicas), a fresh canary fleet (2 replicas, with
the scenario's fault from the start), a fresh gateway whose route `r` splits between them, and
`switchyard bench` at `--rate` req/s (Poisson, streamed chat). Steps [5, 25, 50, 100] every
`--interval`, `min_requests` 50, failure limit 2; checks: error rate +1 point, latency p99 and
TTFT p99 ×1.2 (the controller's: canary against baseline in the same interval, with its tests;
the Flagger way: the canary's error rate ≤ 1% and its p99 ≤ 1.2 × the baseline p99 measured in
a warm-up before the deploy, over the interval's buckets of `switchyard_request_duration_seconds`).

Scenarios: `slow` (canary engine steps 1.3× longer: +30% TTFT and inter-token latency),
`errors` (5% of canary requests answer 500), `same` (identical arms). A run ends at rollback,
promotion, or after 12 intervals. Reported per mode and scenario: outcome, time to the outcome
(from the deploy, in intervals), and the requests the canary served. The canary's share of the
12 intervals after the deploy is counted as served-by-canary / (rate × 12 × interval): a run
stops at its outcome, and after a rollback the canary gets nothing (tests/rollouts.rs).

`--mirror` also measures the primary's TTFT p99 with no mirror, with 100% mirrored to a pool
10× slower, and to a pool that refuses connections.

Usage: python3 bench/rollouts/compare.py [--rate 200] [--interval 10] [--runs-same 20]
       [--runs-bad 2] [--modes switchyard,flagger] [--mirror] [--out rollouts.json]
The Switchyard binary is $SWITCHYARD_BIN (default target/release/switchyard).
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_fleet, stop, wait_http  # noqa: E402

STEPS = [5, 25, 50, 100]
FAULTS = {
    "slow": "{slow_factor: 1.3}",
    "errors": "{error_rate: 0.05, error_status: 500}",
    "same": "{}",
}


def fleet_yaml(n, faults):
    return f"model: {MODEL}\nreplicas:\n  - count: {n}\n    faults: {faults}\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def gateway_yaml(port, admin, v1, v2, interval, mode, weight=STEPS[0]):
    eps = lambda a: ", ".join(a)  # noqa: E731
    if mode == "switchyard":
        target = (
            "    backends: [{pool: v1}, {pool: v2}]\n"
            f"    rollout: {{baseline: v1, canary: v2, steps: {STEPS}, interval: {interval}s, "
            "min_requests: 50, failure_limit: 2, checks: [{metric: error_rate, max_increase: 0.01}, "
            "{metric: latency_p99, max_ratio: 1.2}, {metric: ttft_p99, max_ratio: 1.2}]}\n"
        )
    elif mode == "flagger":
        target = f"    backends: [{{pool: v1, weight: {100 - weight}}}, {{pool: v2, weight: {weight}}}]\n" if 0 < weight < 100 else (
            "    pool: v1\n" if weight == 0 else "    pool: v2\n")
    else:  # warm-up: baseline only
        target = "    pool: v1\n"
    return (
        f"admin: {{address: 127.0.0.1:{admin}}}\nruntime: {{workers: 1, watch_config: false}}\n"
        f"listeners: [{{name: public, address: 127.0.0.1:{port}}}]\n"
        "routes:\n  - name: r\n    match: {path_prefix: /}\n    timeout: 60s\n" + target +
        f"pools:\n  - {{name: v1, balancer: least_request, endpoints: [{eps(v1)}]}}\n"
        f"  - {{name: v2, balancer: least_request, endpoints: [{eps(v2)}]}}\n"
    )


def get(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


def metrics(admin):
    """(requests, 5xx, histogram buckets {le: count}) per pool of route r."""
    out = {}
    for line in get(f"http://127.0.0.1:{admin}/metrics").splitlines():
        m = re.match(r'(switchyard_requests_total|switchyard_request_duration_seconds_bucket)\{([^}]*)\} (\S+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("route") != "r":
            continue
        d = out.setdefault(labels["pool"], {"n": 0.0, "err": 0.0, "buckets": {}})
        v = float(m.group(3))
        if m.group(1) == "switchyard_requests_total":
            d["n"] += v
            if int(labels["code"]) >= 500:
                d["err"] += v
        else:
            d["buckets"][float(labels["le"].replace("+Inf", "inf"))] = v
    return out


def p99_between(before, after):
    """The p99 of the requests between two bucket snapshots (upper bucket bound)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    for le, c in zip(les, counts):
        if c >= 0.99 * total:
            return le
    return les[-1]


def start_gateway(d, yaml, admin):
    conf = os.path.join(d, "gw.yaml")
    with open(conf, "w") as f:
        f.write(yaml)
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    wait_http(f"http://127.0.0.1:{admin}/ready", timeout=30)
    return p, conf


def start_load(d, port, rate, seconds, name):
    out = os.path.join(d, f"{name}.json")
    p = subprocess.Popen(["taskset", "-c", "1", BIN, "bench", "--target", f"http://127.0.0.1:{port}",
                          "--model", MODEL, "--rate", str(rate), "--duration", f"{seconds}s",
                          "--prompt-tokens", "64", "--output-tokens", "16", "--quiet", "--out", out],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return p, out


def one_run(mode, scenario, args):
    interval = args.interval
    with tempfile.TemporaryDirectory() as d:
        for sub in ("a", "b"):
            os.makedirs(os.path.join(d, sub))
        f1, v1 = start_fleet(os.path.join(d, "a"), fleet_yaml(4, "{}"), 4)
        f2, v2 = start_fleet(os.path.join(d, "b"), fleet_yaml(2, FAULTS[scenario]), 2)
        port, admin = free_port(), free_port()
        procs = [f1, f2]
        try:
            threshold = None
            if mode == "flagger":
                # Warm-up on the baseline alone: the operator's fixed threshold is 1.2 × its p99.
                gw, conf = start_gateway(d, gateway_yaml(port, admin, v1, v2, interval, "warmup"), admin)
                procs.append(gw)
                before = metrics(admin).get("v1", {"buckets": {}})["buckets"]
                load, _ = start_load(d, port, args.rate, interval, "warmup")
                load.wait()
                after = metrics(admin)["v1"]["buckets"]
                threshold = 1.2 * (p99_between(before, after) or 1.0)
                stop(gw)
                procs.remove(gw)
            gw, conf = start_gateway(d, gateway_yaml(port, admin, v1, v2, interval, mode), admin)
            procs.append(gw)
            deploy = time.time()
            load, _ = start_load(d, port, args.rate, 12 * interval + 5, "load")
            procs.append(load)
            outcome, at = "holding", None
            step, failures = 0, 0
            history = []
            last = metrics(admin)
            next_tick = deploy + interval
            while time.time() < deploy + 12 * interval:
                time.sleep(0.25)
                if mode == "switchyard":
                    r = json.loads(get(f"http://127.0.0.1:{admin}/rollouts"))["rollouts"][0]
                    history = [
                        f'{a["canary_percent"]}% {a["verdict"]} {a["baseline_requests"]}/{a["canary_requests"]} '
                        + " ".join(f'{c["metric"]}={c["value"]:.3g}(z{c["z"]:.1f})' for c in a["checks"])
                        for a in r["analyses"]
                    ]
                    if r["phase"] != "progressing":
                        outcome, at = r["phase"], time.time() - deploy
                        break
                    continue
                if time.time() < next_tick:
                    continue
                next_tick += interval
                now = metrics(admin)
                c, c0 = now.get("v2", {}), last.get("v2", {})
                n = c.get("n", 0) - c0.get("n", 0)
                err = c.get("err", 0) - c0.get("err", 0)
                p99 = p99_between(c0.get("buckets", {}), c.get("buckets", {}))
                last = now
                if n < 50:
                    history.append(f"{STEPS[step]}% inconclusive {n:.0f}")
                    continue  # too few to judge
                ok = err / n <= 0.01 and (p99 is None or p99 <= threshold)
                history.append(f"{STEPS[step]}% {'pass' if ok else 'fail'} {n:.0f} err={err / n:.3f} p99={p99}")
                if ok:
                    failures = 0
                    step += 1
                    weight = STEPS[step]
                else:
                    failures += 1
                    weight = 0 if failures >= 2 else STEPS[step]
                with open(conf, "w") as f:
                    f.write(gateway_yaml(port, admin, v1, v2, interval, "flagger", weight))
                os.kill(gw.pid, signal.SIGHUP)
                if weight == 0:
                    outcome, at = "rolled_back", time.time() - deploy
                    break
                if weight == 100:
                    outcome, at = "promoted", time.time() - deploy
                    break
            served = metrics(admin).get("v2", {}).get("n", 0)
            return {
                "mode": mode,
                "scenario": scenario,
                "outcome": outcome,
                "intervals": None if at is None else round(at / interval, 2),
                "canary_served": served,
                "canary_share_12": served / (args.rate * 12 * interval),
                "flagger_threshold_s": threshold,
                "analyses": history,
            }
        finally:
            for p in procs:
                stop(p)


def mirror_runs(args):
    """Primary TTFT p99 with no mirror, 100% to a 10× slower pool, 100% to a refusing pool."""
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for sub in ("a", "b"):
            os.makedirs(os.path.join(d, sub))
        f1, v1 = start_fleet(os.path.join(d, "a"), fleet_yaml(4, "{}"), 4)
        f2, v2 = start_fleet(os.path.join(d, "b"), fleet_yaml(2, "{slow_factor: 10}"), 2)
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        try:
            for name, mirror in (("none", ""), ("slow_10x", "    mirror: [{pool: v2}]\n"),
                                 ("down", "    mirror: [{pool: dead}]\n")):
                port, admin = free_port(), free_port()
                yaml = gateway_yaml(port, admin, v1, v2, args.interval, "warmup").replace(
                    "    pool: v1\n", "    pool: v1\n" + mirror)
                yaml += f"  - {{name: dead, endpoints: [127.0.0.1:{dead.getsockname()[1]}]}}\n"
                gw, _ = start_gateway(d, yaml, admin)
                load, out = start_load(d, port, args.rate, 30, f"mirror-{name}")
                load.wait()
                stop(gw)
                report = json.load(open(out))
                t = report["targets"][0] if "targets" in report else report
                results[name] = {k: t.get(k) for k in ("completed", "failed", "ttft_ms", "e2e_ms") if k in t}
        finally:
            stop(f1)
            stop(f2)
            dead.close()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--runs-same", type=int, default=20)
    ap.add_argument("--runs-bad", type=int, default=2)
    ap.add_argument("--modes", default="switchyard,flagger")
    ap.add_argument("--scenarios", default="slow,errors,same")
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = []
    for scenario in args.scenarios.split(","):
        n = args.runs_same if scenario == "same" else args.runs_bad
        for i in range(n):
            for mode in args.modes.split(","):
                r = one_run(mode, scenario, args)
                print(json.dumps(r), flush=True)
                runs.append(r)
    mirror = mirror_runs(args) if args.mirror else None
    if mirror:
        print(json.dumps({"mirror": mirror}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": runs, "mirror": mirror}, f, indent=1)


if __name__ == "__main__":
    main()
