"""The `ttft` part of bench/kv_events/run.py: capacity calibration and the side-by-side rows."""

import json
import os
import random
import subprocess
import sys
import threading
import urllib.request

from fleet import (FLEETS, PORTS, ROUTERS, gateway_prefix_picks, replica_requests, sim_counters,
                   start_epp_behind_envoy, start_gateway, start_kv_fleet, start_router, start_vllm_router_kv,
                   workload)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, stop  # noqa: E402

SWITCHYARD_MODES = ("approximate", "events", "oracle", "approximate-x2", "events-x2", "approximate-x2-same",
                    "events-x2-same")


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


def row(d, fleet, mode, load_args, seconds, system_share, routers_bin=None, restart_every=0.0, keys=""):
    """One row: a fresh fleet and router(s), `switchyard bench` with `load_args`."""
    proc, addrs, kv = start_kv_fleet(d, fleet, 0.0)
    routers = []
    stop_restarts = threading.Event()
    try:
        if mode in ROUTERS:
            routers.append(start_router(mode, addrs, routers_bin))
        elif mode == "vllm-router-kv":
            routers.append(start_vllm_router_kv(addrs, kv, routers_bin))
        elif mode == "epp":
            routers += start_epp_behind_envoy(d, addrs, kv)
        elif mode in SWITCHYARD_MODES:
            for n in range(2 if "-x2" in mode else 1):
                routers.append(start_gateway(d, n, addrs, kv, not mode.startswith("approximate"),
                                             keys=keys))
        else:
            sys.exit(f"unknown mode {mode}")
        targets = []
        for n in range(1 if mode == "epp" else len(routers)):
            targets += ["--target", f"gw{n}=http://127.0.0.1:{PORTS[n][0]}"]
        mode_args = {
            "oracle": ["--prefix-oracle", f"http://{addrs[0]}/sim/oracle/cached"],
            # It scores only prompts that come as token ids.
            "vllm-router-kv": ["--prompt-token-ids"],
            # Two gateway replicas in front of one fleet: one workload, arrivals spread over them.
            "approximate-x2": ["--spread"],
            "events-x2": ["--spread"],
        }.get(mode, [])
        out = os.path.join(d, "bench.json")
        if restart_every:
            threading.Thread(target=restarter, args=(addrs, restart_every, stop_restarts), daemon=True).start()
        subprocess.run(["taskset", "-c", "1", BIN, "bench", "--quiet", *targets, "--model", MODEL,
                        *workload(fleet, system_share), *load_args, *mode_args, "--duration", f"{seconds}s",
                        "--seed", "11", "--timeout", "120s", "--slo", "ttft=1s,tpot=50ms", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        ts = json.load(open(out))["targets"]
        hit_rate, preempted, evicted = sim_counters(addrs)
        extra = {"replica_requests": replica_requests(addrs)}
        if mode in SWITCHYARD_MODES or mode == "epp":
            picks = {}
            for n in range(1 if mode == "epp" else len(routers)):
                for reason, count in gateway_prefix_picks(PORTS[n][1]).items():
                    picks[reason] = picks.get(reason, 0) + count
            extra["prefix_picks"] = picks
        return {
            **extra,
            "completed": sum(t["completed"] for t in ts), "failed": sum(t["failed"] for t in ts),
            # What the failures were (status, timeout, reset), so a failed request is explained.
            "errors": merge_counts(t.get("errors") or {} for t in ts),
            "throughput": sum(t["request_throughput"] for t in ts),
            # Over two gateways: the worse of the two.
            "ttft_p50_ms": max(t["ttft_ms"]["p50"] for t in ts),
            "ttft_p99_ms": max(t["ttft_ms"]["p99"] for t in ts),
            "goodput": min((t.get("goodput") or {}).get("share", 0.0) for t in ts),
            "prefix_hit_rate": hit_rate, "preempted": preempted, "evicted_blocks": evicted,
        }
    finally:
        stop_restarts.set()
        for r in routers:
            stop(r)
        stop(proc)


def merge_counts(maps):
    out = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out


def capacity(d, fleet, seconds, system_share):
    """Completed requests per second of a closed loop at the fleet's batch limit (the sum of
    `max_num_seqs`) through today's approximate `inference` picker, as bench/predict does."""
    batch = FLEETS[fleet][2]
    r = row(d, fleet, "approximate", ["--concurrency", str(batch)], seconds, system_share)
    return r["throughput"], r


def run(d, args, log):
    results = {}
    for fleet in args.fleets.split(","):
        if args.rates:
            cap, rates = None, [float(r) for r in args.rates.split(",")]
            loads = [None] * len(rates)
        else:
            cap, calib = capacity(d, fleet, args.calib_seconds, args.system_share)
            log(f"{fleet}: capacity {cap:.2f} req/s ({json.dumps(calib)})")
            loads = [float(x) for x in args.loads.split(",")]
            rates = [load * cap for load in loads]
        rows = []
        for load, rate in zip(loads, rates):
            for mode in args.modes.split(","):
                res = row(d, fleet, mode, ["--rate", f"{rate:.2f}"], args.seconds, args.system_share,
                          args.routers_bin, args.ttft_restart_every, args.balancer_keys)
                rows.append({"load": load, "rate": rate, "mode": mode, **res})
                log(f"{fleet} {rate:.2f} {mode}: {json.dumps(res)}")
        results[fleet] = {"capacity_rps": cap, "rows": rows}
    return results


def table(results):
    lines = []
    for fleet, f in results.items():
        cap = f"capacity {f['capacity_rps']:.1f} req/s" if f["capacity_rps"] else "rates given"
        lines.append(f"\n**{fleet}** ({cap})\n")
        lines.append("| load | rate (req/s) | routing | completed / failed | TTFT p50 / p99 (ms) | goodput | prefix hit rate | evicted blocks | preempted |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in f["rows"]:
            load = f"{r['load']:.0%}" if r["load"] is not None else "-"
            lines.append(f"| {load} | {r['rate']:.1f} | {r['mode']} | {r['completed']} / {r['failed']} | "
                         f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['goodput']:.1%} | "
                         f"{r['prefix_hit_rate']:.1%} | {r['evicted_blocks']:.0f} | {r['preempted']:.0f} |")
    return "\n".join(lines)
