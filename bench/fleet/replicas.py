#!/usr/bin/env python3
"""Several active gateway replicas, one routing view (issue #16): 3 replicas sharing the
arrivals (one workload spread over the three, `switchyard bench --spread`, as an L4 balancer in
front would) against 1 replica, on bench/kv_events' shared-prefix workload (system prompts
filling half the fleet's KV cache) over a simulated fleet of 8 with one replica at half speed, for the
approximate `inference` picker (each replica learns prefixes only from its own picks) and for
precise prefix routing from KV-cache events (every replica subscribes to the same engines, so
all hold the same index). Reported: the fleet's prefix-cache hit rate (the simulators' own
counters) and TTFT p99 (the worst replica's), and 3 vs 1 for each.

Reuses bench/kv_events/fleet.py's fleet and gateway starters.

  .venv/bin/python bench/fleet/replicas.py --fleets h100,a100-small --seconds 20
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
# After bench/ on the path, so that `fleet` is bench/kv_events/fleet.py, not this directory.
sys.path.insert(0, os.path.join(HERE, "..", "kv_events"))
import fleet as kv  # noqa: E402
from common import BIN, MODEL, stop  # noqa: E402

kv.PORTS.append((18594, 18595))


def row(d, fleet_name, events, replicas, rate, seconds):
    fleet, addrs, sockets = kv.start_kv_fleet(d, fleet_name, 0.0)
    gws = []
    try:
        for n in range(replicas):
            gws.append(kv.start_gateway(d, n, addrs, sockets, events))
        targets = []
        for n in range(replicas):
            targets += ["--target", f"gw{n}=http://127.0.0.1:{kv.PORTS[n][0]}"]
        out = os.path.join(d, "bench.json")
        # `--spread`: the replicas share one workload, as behind an L4 balancer.
        subprocess.run(["taskset", "-c", "1", BIN, "bench", "--quiet", *targets, "--spread", "--model", MODEL,
                        *kv.workload(fleet_name, 0.5), "--rate", str(rate), "--duration", f"{seconds}s",
                        "--seed", "11", "--timeout", "120s", "--out", out], check=True, stdout=subprocess.DEVNULL)
        ts = json.load(open(out))["targets"]
        return (kv.sim_counters(addrs)[0], max(t["ttft_ms"]["p99"] for t in ts),
                sum(t["failed"] for t in ts))
    finally:
        for g in gws:
            stop(g)
        stop(fleet)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleets", default="h100,a100-small")
    ap.add_argument("--rates", default="70,20", help="one per fleet, in req/s")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    d = tempfile.mkdtemp()
    print("fleet       rate  picker       1 replica: hit  p99 ms   3 replicas: hit  p99 ms   "
          "hit Δ (pts)  p99 3/1")
    for fleet, rate in zip(args.fleets.split(","), args.rates.split(",")):
        for events in (False, True):
            one = row(d, fleet, events, 1, rate, args.seconds)
            three = row(d, fleet, events, 3, rate, args.seconds)
            name = "events" if events else "approximate"
            print(f"{fleet:<11} {rate:>4}  {name:<12} {one[0] * 100:13.1f}  {one[1]:6.0f}   "
                  f"{three[0] * 100:15.1f}  {three[1]:6.0f}   {(three[0] - one[0]) * 100:+10.1f}  "
                  f"{three[1] / one[1]:7.2f}   (failed {one[2]}/{three[2]})")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
