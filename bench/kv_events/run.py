#!/usr/bin/env python3
"""Precise prefix routing from KV-cache events (issue 18) against the approximate `inference`
picker, on simulated fleets that publish their real caches' events (`switchyard sim`, fleet
`kv_events:`), in one run.

Two parts:

* `ttft`: for each fleet and rate, the shared-prefix workload (`switchyard bench --workload
  shared-prefix --endpoint completions`: the gateway keys its event index by tokenizing the
  prompt as the simulator does, which it can do for text completions) through
  - `approximate`: one gateway, `balancer: inference`;
  - `events`: one gateway, `balancer: {kind: inference, kv_events: {}}`;
  - `approximate-x2` / `events-x2`: two gateway replicas, arrivals spread over both (each
    approximate index sees half the picks; the event indexes are the same in both).
  A fresh fleet and gateways start for every row, so caches start cold for all.
* `correctness`: one gateway with events; 1% of event messages dropped on the PUB side (replayed
  or, failing that, the endpoint is stale and scored approximately) and a replica restarted
  every few seconds; each reply names the replica that served it (`x-sim-replica`) and the
  cached prompt tokens it found (`usage.prompt_tokens_details.cached_tokens`, the replica's true
  cache state at admission), and the gateway's explanation (`x-switchyard-pick`) says what prefix
  share it believed that replica held. A pick "for a hit that is not there" is one whose believed
  blocks exceed the true ones. Then a second gateway starts cold and the time until its index
  matches the first one's is measured (a gateway restart rebuilding from replay). The same
  traffic through the approximate picker alone is the baseline.

Usage: python3 bench/kv_events/run.py [--part ttft,correctness] [--rates 60,80] [--seconds 20]
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, stop, wait_http  # noqa: E402

FLEETS = {
    # compare.py's fleet: H100 profile, 1,500 KV blocks each, replica 7 at half speed.
    "h100": "replicas:\n  - {count: 7, num_gpu_blocks: 1500}\n  - {count: 1, num_gpu_blocks: 1500, speed: 0.5}\n",
    # Slower prefill (A100 profile) and a smaller cache: more eviction for an index to follow.
    "a100-small": "replicas:\n  - {count: 7, profile: a100, num_gpu_blocks: 800}\n"
                  "  - {count: 1, profile: a100, num_gpu_blocks: 800, speed: 0.5}\n",
}
PORTS = [(18590, 18591), (18592, 18593)]
WORKLOAD = ["--workload", "shared-prefix", "--groups", "16", "--users-per-group", "8",
            "--system-prompt-tokens", "1536", "--question-tokens", "64", "--turns", "4",
            "--output-tokens", "64", "--endpoint", "completions"]


def start_kv_fleet(d, fleet, loss):
    conf = os.path.join(d, "fleet.yaml")
    with open(conf, "w") as f:
        f.write(f"model: {MODEL}\nbase_port: 0\nkv_events: {{shape: map, loss: {loss}}}\n" + FLEETS[fleet])
    p = subprocess.Popen(["taskset", "-c", "1", BIN, "sim", "--config", conf, "--base-port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    addrs, kv = [], []
    while len(kv) < 8:
        line = p.stdout.readline()
        if not line:
            sys.exit("simulator exited early")
        m = re.search(r"listening on (\S+)", line)
        if m:
            addrs.append(m.group(1))
        m = re.search(r"kv-events on (\S+) replay (\S+)", line)
        if m:
            kv.append((m.group(1), m.group(2)))
    return p, addrs, kv


def start_gateway(d, n, addrs, kv, events):
    port, admin = PORTS[n]
    eps = "\n".join(
        f"      - {{address: {a}, kv_events: \"{e}\", kv_replay: \"{r}\"}}" if events else f"      - {a}"
        for a, (e, r) in zip(addrs, kv))
    balancer = "{kind: inference, kv_events: {}}" if events else "inference"
    conf = os.path.join(d, f"gw{n}.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{admin}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{port}, trusted_headers: [debug]}}]
routes: [{{name: r, match: {{path_prefix: /v1/}}, pool: sim, timeout: 120s}}]
pools:
  - name: sim
    balancer: {balancer}
    endpoints:
{eps}
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{admin}/ready")
    return p


def kv_blocks(n):
    pools = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORTS[n][1]}/pools", timeout=5))
    return [(e["inference"] or {}).get("kv_events") or {} for e in pools["pools"][0]["endpoints"]]


def prefix_hit_rate(addrs):
    hits = queries = 0.0
    for a in addrs:
        for line in urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode().splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits / queries if queries else 0.0


def restarter(addrs, every, stop_event, seed=5):
    """Crashes a replica (back after 300 ms) every `every` seconds until `stop_event`; the same
    seed gives every row the same schedule."""
    rng = random.Random(seed)
    while not stop_event.wait(every):
        victim = addrs[rng.randrange(len(addrs))]
        req = urllib.request.Request(f"http://{victim}/sim/faults", method="POST", data=b'{"crash_for_ms": 300}',
                                     headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except Exception:
            pass


def ttft_row(d, fleet_name, mode, rate, seconds, restart_every=0.0):
    fleet, addrs, kv = start_kv_fleet(d, fleet_name, 0.0)
    gws = []
    stop_restarts = threading.Event()
    try:
        events = mode.startswith("events")
        for n in range(2 if mode.endswith("x2") else 1):
            gws.append(start_gateway(d, n, addrs, kv, events))
        targets = []
        for n in range(len(gws)):
            targets += ["--target", f"gw{n}=http://127.0.0.1:{PORTS[n][0]}"]
        out = os.path.join(d, "bench.json")
        if restart_every:
            threading.Thread(target=restarter, args=(addrs, restart_every, stop_restarts), daemon=True).start()
        subprocess.run(["taskset", "-c", "1", BIN, "bench", "--quiet", *targets, "--model", MODEL, *WORKLOAD,
                        "--rate", str(rate), "--duration", f"{seconds}s", "--seed", "11", "--timeout", "120s",
                        "--slo", "ttft=1s,tpot=50ms", "--out", out], check=True, stdout=subprocess.DEVNULL)
        ts = json.load(open(out))["targets"]
        return {
            "completed": sum(t["completed"] for t in ts), "failed": sum(t["failed"] for t in ts),
            # Over two gateways: the worse of the two.
            "ttft_p50_ms": max(t["ttft_ms"]["p50"] for t in ts),
            "ttft_p99_ms": max(t["ttft_ms"]["p99"] for t in ts),
            "goodput": min((t.get("goodput") or {}).get("share", 0.0) for t in ts),
            "prefix_hit_rate": prefix_hit_rate(addrs),
        }
    finally:
        stop_restarts.set()
        for g in gws:
            stop(g)
        stop(fleet)


PICK = re.compile(r"(\d+)=[0-9.]+\(([^)]*)\)")


def one_request(port, prompt, stats, lock):
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 8}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body, method="POST",
                                 headers={"content-type": "application/json", "x-switchyard-debug": "1"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            served = int(r.headers["x-sim-replica"])
            pick = r.headers.get("x-switchyard-pick", "")
            usage = json.load(r)["usage"]
    except Exception:
        with lock:
            stats["errors"] += 1
        return
    parts = {int(i): dict(p.split("=") for p in ps.split(",")) for i, ps in PICK.findall(pick)}
    prompt_tokens = usage["prompt_tokens"]
    actual = usage["prompt_tokens_details"]["cached_tokens"] // 16
    with lock:
        stats["picks"] += 1
        if served not in parts:
            stats["unexplained"] += 1
            return
        believed = int(float(parts[served].get("prefix", 0)) * (prompt_tokens // 16) + 1e-6)
        believed = min(believed, (prompt_tokens - 1) // 16)
        stats["believed_hits"] += believed > 0
        if believed > actual:
            stats["false_hits"] += 1


def correctness(d, fleet_name, events, rate, seconds, loss, restart_every):
    fleet, addrs, kv = start_kv_fleet(d, fleet_name, loss)
    gws = [start_gateway(d, 0, addrs, kv, events)]
    stats = {"picks": 0, "false_hits": 0, "believed_hits": 0, "unexplained": 0, "errors": 0, "restarts": 0}
    lock = threading.Lock()
    rng = random.Random(7)
    systems = [" ".join(f"w{g}x{rng.randrange(5000)}" for _ in range(700)) for g in range(16)]
    try:
        stop_at = time.time() + seconds
        next_restart = time.time() + restart_every
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            n = 0
            while time.time() < stop_at and n < rate * seconds:
                if time.time() >= next_restart:
                    victim = addrs[rng.randrange(len(addrs))]
                    req = urllib.request.Request(f"http://{victim}/sim/faults", method="POST",
                                                 data=b'{"crash_for_ms": 300}',
                                                 headers={"content-type": "application/json"})
                    urllib.request.urlopen(req, timeout=5).read()
                    stats["restarts"] += 1
                    next_restart += restart_every
                prompt = systems[rng.randrange(16)] + f" question {rng.randrange(10**9)}"
                pool.submit(one_request, PORTS[0][0], prompt, stats, lock)
                n += 1
                time.sleep(rng.expovariate(rate))
        lost = sum(e.get("lost", 0) for e in kv_blocks(0))
        res = {**stats, "lost_ranges": lost, "false_hit_share": stats["false_hits"] / max(stats["picks"], 1)}
        if not events:
            return res
        # A second gateway starts cold: time until its index matches the first one's.
        t0 = time.time()
        gws.append(start_gateway(d, 1, addrs, kv, True))
        ready = time.time() - t0
        want = [e.get("blocks") for e in kv_blocks(0)]
        while [e.get("blocks") for e in kv_blocks(1)] != want:
            if time.time() - t0 > 30:
                break
            time.sleep(0.01)
        rebuilt = time.time() - t0
        return {**res, "second_gateway_ready_s": ready, "second_gateway_index_equal_s": rebuilt,
                "blocks_per_endpoint": want}
    finally:
        for g in gws:
            stop(g)
        stop(fleet)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="ttft,correctness")
    ap.add_argument("--fleets", default="h100,a100-small")
    ap.add_argument("--rates", default="60,80")
    ap.add_argument("--modes", default="approximate,events,approximate-x2,events-x2")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--restart-every", type=float, default=4.0)
    ap.add_argument("--correctness-rate", type=float, default=20)
    ap.add_argument("--ttft-restart-every", type=float, default=0.0,
                    help="also restart a replica every this many seconds in the ttft part")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-kv-")
    parts = args.part.split(",")
    if "ttft" in parts:
        rows = []
        for fleet in args.fleets.split(","):
            for rate in [float(r) for r in args.rates.split(",")]:
                for mode in args.modes.split(","):
                    res = ttft_row(d, fleet, mode, rate, args.seconds, args.ttft_restart_every)
                    rows.append({"fleet": fleet, "rate": rate, "mode": mode, **res})
                    print(f"{fleet} {rate} {mode}: {json.dumps(res)}", file=sys.stderr, flush=True)
        print("| fleet | rate (req/s) | routing | completed / failed | TTFT p50 / p99 (ms) | goodput | prefix hit rate |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['fleet']} | {r['rate']:g} | {r['mode']} | {r['completed']} / {r['failed']} | "
                  f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['goodput']:.1%} | {r['prefix_hit_rate']:.1%} |")
    if "correctness" in parts:
        for fleet in args.fleets.split(","):
            for events in (True, False):
                res = correctness(d, fleet, events, args.correctness_rate, args.seconds, args.loss,
                                  args.restart_every)
                mode = "events" if events else "approximate"
                print(f"correctness {fleet} {mode}: {json.dumps(res)}", flush=True)


if __name__ == "__main__":
    main()
