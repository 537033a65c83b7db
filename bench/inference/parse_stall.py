#!/usr/bin/env python3
"""Do large OpenAI bodies stall other requests on the gateway's worker? (issue 12, item 1)

A gateway with one worker (pinned to core 0) in front of two simulated replicas routes small chat
requests, sent one after another, and we record their latency: first alone, then while another
client sends adversarial 16 MiB bodies, which the gateway parses whole and refuses, (hundreds of thousands of small content parts, the shape
that used to cost ~690 MiB and a second of parsing) back to back. The gateway parses such bodies
on the blocking pool, so the small requests' p99 should barely move.

Usage: python3 bench/inference/parse_stall.py [--requests 300] [--large 20]
Needs: target/release/switchyard (or SWITCHYARD_BIN), taskset.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_fleet, stop, wait_http  # noqa: E402

GATEWAY = 18480
ADMIN = 18481


def small_latencies(n, stop_event=None):
    conn = http.client.HTTPConnection("127.0.0.1", GATEWAY, timeout=30)
    body = json.dumps({"model": MODEL, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "hi"}]})
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            sys.exit(f"small request failed: {resp.status}")
    conn.close()
    return out


def large_body():
    part = {"type": "text", "text": "x"}
    # About 32 bytes a part: 500,000 of them make a body just under 16 MiB. One stray byte at
    # the end: the gateway parses all of it, then answers 400 itself, so no replica ever spends
    # time on it (a replica parsing 16 MiB would stall the small requests routed to it, which is
    # the simulator's cost, not the gateway's).
    parts = [part] * 500_000
    return json.dumps({"model": MODEL, "max_tokens": 1,
                       "messages": [{"role": "user", "content": parts}]}).encode() + b"x"


def send_large(count, done, stats):
    body = large_body()
    stats["bytes"] = len(body)
    for _ in range(count):
        if done.is_set():
            return
        conn = http.client.HTTPConnection("127.0.0.1", GATEWAY, timeout=120)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            stats.setdefault("answer", text[:300].decode(errors="replace"))
        stats.setdefault("ms", []).append((time.perf_counter() - t0) * 1000)
        stats.setdefault("status", set()).add(resp.status)
        conn.close()


def summary(xs):
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 2), "p99": round(xs[int(len(xs) * 0.99) - 1], 2),
            "max": round(xs[-1], 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--large", type=int, default=20)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-stall-")
    fleet, addrs = start_fleet(d, "replicas:\n  - {count: 2, speed: 50}\n", 2)
    conf = os.path.join(d, "gw.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{ADMIN}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{GATEWAY}}}]
routes: [{{name: chat, pool: llm, max_request_body: 33554432}}]
pools: [{{name: llm, endpoints: [{", ".join(addrs)}], balancer: inference}}]
""")
    gw = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{ADMIN}/ready")
        small_latencies(20)  # warm up
        alone = small_latencies(args.requests)
        done = threading.Event()
        stats = {}
        t = threading.Thread(target=send_large, args=(args.large, done, stats))
        t.start()
        loaded = small_latencies(args.requests)
        done.set()
        t.join()
        print(json.dumps({
            "large_body_bytes": stats.get("bytes"),
            "large_requests": len(stats.get("ms", [])),
            "large_statuses": sorted(stats.get("status", [])),
            "large_answer": stats.get("answer"),
            "large_ms": summary(stats["ms"]) if stats.get("ms") else None,
            "small_alone_ms": summary(alone),
            "small_during_large_ms": summary(loaded),
        }, indent=1))
    finally:
        stop(gw)
        stop(fleet)


if __name__ == "__main__":
    main()
