#!/usr/bin/env python3
"""What watching costs: Switchyard with nothing attached vs with the live dashboard open,
`switchyard top` running in a terminal and `switchyard tap` streaming, side by side in one run
(rounds alternate the conditions, medians reported). A third condition, `control`, attaches the
same watchers to a second gateway outside the measured path: what it adds over `alone` is the
watchers' CPU on the shared load core (two cores here), not the measured gateway's.

The dashboard is, to the gateway, one `/stats/stream` connection and a `/debug/requests` GET every
5 s: by default this script makes exactly those requests (a thread of its own), because on two
cores a real browser drawing charts on the load core slows the load generator, not the gateway.
`--chromium` opens the real page in headless Chromium instead.

Setup as bench/proxies/compare.py: Switchyard with one worker pinned to core 0; the NGINX origin,
the load (wrk, h2load) and every watcher pinned to core 1. Per condition:

- closed-loop HTTP/1.1 throughput (wrk -c50) and the gateway's CPU per request,
- p50/p99 at a fixed 10k req/s (h2load --h1 -c50 --rps 200, per-request log),
- `/stats` served: p50/p99 of 200 sequential GETs over one keep-alive connection.

Usage: python3 bench/observe/overhead.py [--rounds 5] [--seconds 5] [--chromium]
Needs: target/release/switchyard, nginx, wrk, h2load, chromium, script (util-linux).
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "proxies"))
import compare  # noqa: E402

ADMIN = "127.0.0.1:18901"
DECOY_ADMIN = "127.0.0.1:18911"


DASHBOARD = r"""
import http.client, sys, threading, time
admin = sys.argv[1]
def errors():
    while True:
        c = http.client.HTTPConnection(*admin.split(":"))
        c.request("GET", "/debug/requests?status=5xx&limit=10")
        c.getresponse().read()
        c.close()
        time.sleep(5)
threading.Thread(target=errors, daemon=True).start()
c = http.client.HTTPConnection(*admin.split(":"))
c.request("GET", "/dashboard")
c.getresponse().read()
c.request("GET", "/stats/stream")
r = c.getresponse()
while r.read1(65536):
    pass
"""


def decoy(d):
    """A second gateway, out of the measured path, on the load core: the control condition's
    watchers watch it, so the load core carries the same watchers while the measured gateway
    carries none."""
    conf = compare.write(f"{d}/decoy.yaml", f"""admin: {{address: {DECOY_ADMIN}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:18180}}]
routes: [{{name: all, match: {{path_prefix: /}}, pool: origin}}]
pools: [{{name: origin, endpoints: [127.0.0.1:{compare.ORIGIN_PORT}]}}]
""")
    binary = os.environ.get("SWITCHYARD_BIN") or os.path.join(ROOT, "target", "release", "switchyard")
    return compare.Proc("decoy", [binary, "run", "--config", conf], 18180, compare.LOAD_CORE)


def watchers(d, chromium, admin=ADMIN):
    """Open the dashboard, start `top` in a pseudo-terminal and `tap`; all on the load core."""
    binary = os.environ.get("SWITCHYARD_BIN") or os.path.join(ROOT, "target", "release", "switchyard")
    pin = ["taskset", "-c", compare.LOAD_CORE]
    if chromium:
        dashboard = pin + [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={d}/chromium", f"http://{admin}/dashboard"]
    else:
        dashboard = pin + [sys.executable, "-c", DASHBOARD, admin]
    procs = [
        subprocess.Popen(
            dashboard, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        # `top` draws only on a terminal: `script` gives it one.
        subprocess.Popen(
            pin + ["script", "-qfc", f"{binary} top --admin {admin}", "/dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "TERM": "xterm", "COLUMNS": "160", "LINES": "50"}),
        subprocess.Popen(
            pin + [binary, "tap", "--admin", admin],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    # Attached: the dashboard holds its stream and `tap` its tap (seen in the gateway's counts
    # only indirectly, so wait for the stream readers a little and check they still run).
    time.sleep(3)
    for p in procs:
        if p.poll() is not None:
            sys.exit(f"a watcher exited early: {p.args}")
    return procs


def stop(procs):
    for p in procs:
        try:
            os.killpg(p.pid, 15)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()


def stats_latency(n=200):
    conn = http.client.HTTPConnection(*ADMIN.split(":"))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/stats")
        r = conn.getresponse()
        body = r.read()
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status == 200 and body, r.status
    conn.close()
    times.sort()
    return times[len(times) // 2], times[int(0.99 * len(times))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--chromium", action="store_true", help="the real page in headless Chromium")
    args = ap.parse_args()
    for tool in ("taskset", "wrk", "h2load", "nginx", "chromium", "script"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool}")
    d = tempfile.mkdtemp(prefix="sy-observe-")
    origin = compare.start_origin(d)
    results = {"alone": [], "watched": [], "control": []}
    try:
        for r in range(args.rounds):
            for cond in ("alone", "watched", "control"):
                proxy, h1, _ = compare.start_proxy("switchyard", d)
                attached = []
                others = []
                try:
                    # The stats sampler needs a few frames before /stats answers.
                    time.sleep(1.5)
                    if cond == "watched":
                        attached = watchers(d, args.chromium)
                    elif cond == "control":
                        others.append(decoy(d))
                        time.sleep(1.5)
                        attached = watchers(d, args.chromium, DECOY_ADMIN)
                    res = compare.measure(proxy, h1, h1, args.seconds, d, quick=True)
                    argv = ["h2load", "--h1", "-c50", "--rps", "200", "-D", str(args.seconds)]
                    log = f"{d}/fixed-{cond}.log"
                    if os.path.exists(log):
                        os.remove(log)
                    compare.run_load(argv + [f"--log-file={log}", f"http://127.0.0.1:{h1}/"])
                    p50, p99, count, failed = compare.percentiles(log)
                    res.update({"fixed_p50_ms": p50, "fixed_p99_ms": p99, "fixed_failed": failed})
                    s50, s99 = stats_latency()
                    res.update({"stats_p50_ms": s50, "stats_p99_ms": s99})
                    results[cond].append(res)
                    print(f"round {r + 1} {cond}: {json.dumps(res)}", file=sys.stderr, flush=True)
                finally:
                    stop(attached)
                    for o in others:
                        o.stop()
                    proxy.stop()
    finally:
        origin.stop()
        shutil.rmtree(d, ignore_errors=True)
    med = {c: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for c, runs in results.items()}
    cols = [("h1_rps", "req/s (wrk -c50)", "{:.0f}"), ("h1_cpu_us", "CPU µs/req", "{:.2f}"),
            ("fixed_p50_ms", "p50 @10k (ms)", "{:.2f}"), ("fixed_p99_ms", "p99 @10k (ms)", "{:.2f}"),
            ("stats_p50_ms", "/stats p50 (ms)", "{:.3f}"), ("stats_p99_ms", "/stats p99 (ms)", "{:.3f}")]
    print("| condition | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for c in ("alone", "watched", "control"):
        print(f"| {c} | " + " | ".join(f.format(med[c][k]) for k, _, f in cols) + " |")
    ratio = med["watched"]["h1_rps"] / med["alone"]["h1_rps"]
    print(f"throughput watched/alone: {ratio:.3f}; p99 watched/alone: "
          f"{med['watched']['fixed_p99_ms'] / med['alone']['fixed_p99_ms']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": results, "median": med}, f, indent=2)


if __name__ == "__main__":
    main()
