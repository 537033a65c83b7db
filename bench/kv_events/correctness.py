"""The `correctness` part of bench/kv_events/run.py: picks made for a cache hit that is not
there, with event loss and replica restarts, and a second gateway's index rebuilt from replay."""

import concurrent.futures
import json
import os
import random
import re
import sys
import threading
import time
import urllib.request

from fleet import PORTS, kv_blocks, start_gateway, start_kv_fleet

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import MODEL, stop  # noqa: E402

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
    gws = [start_gateway(d, 0, addrs, kv, events, owners=False)]
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
        gws.append(start_gateway(d, 1, addrs, kv, True, owners=False))
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
