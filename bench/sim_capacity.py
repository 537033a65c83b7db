#!/usr/bin/env python3
"""Simulator capacity: one `switchyard sim` process pinned to core 0 serving 16 replicas while
`switchyard bench` on core 1 keeps 64 streams open per replica (closed loop, 1,024 in all).

Reports the simulator's CPU use, the token rate it sustained, and its CPU per 1,000 tokens/s.
If the simulator is not the bottleneck, its CPU stays below one core and the bench sees the
token rate the H100 profile's cost model predicts for a 64-sequence batch.

Usage: python3 bench/sim_capacity.py [--seconds 20] [--replicas 16] [--streams 64]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("SWITCHYARD_BIN", os.path.join(ROOT, "target", "release", "switchyard"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    args = ap.parse_args()

    sim = subprocess.Popen(
        ["taskset", "-c", "0", BIN, "sim", "--replicas", str(args.replicas), "--base-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        urls = []
        while len(urls) < args.replicas:
            line = sim.stdout.readline()
            if not line:
                sys.exit("simulator exited early")
            m = re.search(r"listening on (\S+)", line)
            if m:
                urls.append("http://" + m.group(1))
        out = os.path.join(tempfile.mkdtemp(), "bench.json")
        cmd = ["taskset", "-c", "1", BIN, "bench", "--quiet"]
        for i, u in enumerate(urls):
            cmd += ["--target", f"r{i}={u}"]
        cmd += [
            "--concurrency", str(args.replicas * args.streams),
            "--duration", f"{args.seconds}s",
            "--prompt-tokens", str(args.prompt_tokens),
            "--output-tokens", str(args.output_tokens),
            "--out", out,
        ]
        c0 = cpu_seconds(sim.pid)
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(sim.pid) - c0
        report = json.load(open(out))
        tokens = sum(t["output_tokens"] for t in report["targets"])
        completed = sum(t["completed"] for t in report["targets"])
        failed = sum(t["failed"] for t in report["targets"])
        tok_s = tokens / report["elapsed_s"]
        core = cpu / wall
        print(f"replicas={args.replicas} streams/replica={args.streams} wall={wall:.1f}s")
        print(f"completed={completed} failed={failed} output tokens/s={tok_s:.0f}")
        print(f"simulator CPU: {core * 100:.0f}% of one core; {core / (tok_s / 1000) * 1000:.1f} ms CPU per second per 1,000 tokens/s")
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    main()
