#!/usr/bin/env python3
"""Token limits shared by three gateways on one Redis (issue 14).

Starts, on loopback:
- a Redis;
- a fleet of simulated replicas;
- three `switchyard run` gateways. They share one token limit per tenant (`tokens: {limit: N,
  per: WINDOW}`, `store: redis`).

Then `--concurrency` streamed chat requests are kept in flight from `--tenants` tenants, spread
over the three gateways. Each request asks for `--max-tokens` and its usage; a refused one waits
for its `Retry-After`. Every window is recorded per tenant: the tokens the responses reported,
counted in the window their request started in, against N. With `--kill-redis-at S`, Redis is
killed S seconds in and started again `--kill-for` seconds later; the windows it touched are
reported apart. The loop is bounded by `--duration`.

Usage: python3 bench/rate_limits/fleet.py [--limit 6000] [--window 30] [--duration 95]
         [--concurrency 200] [--tenants 20] [--max-tokens 48] [--on-error allow|deny]
         [--kill-redis-at S] [--kill-for 10] [--redis-aof] [--sim-speed 4] [--sim-profile h100] [--out FILE]
Needs: redis-server, a release build (cargo build --release -p switchyard).
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_envoy, stop, wait_http  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port, aof_dir=None):
    persist = (["--appendonly", "yes", "--appendfsync", "everysec", "--dir", aof_dir]
               if aof_dir else ["--appendonly", "no"])
    return subprocess.Popen(
        ["taskset", "-c", "1", "redis-server", "--bind", "127.0.0.1", "--port", str(port),
         "--save", ""] + persist,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_redis(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("redis never answered")


async def chat(port, tenant, max_tokens):
    """One streamed chat request; returns (status, total tokens or None, retry-after)."""
    body = json.dumps({
        "model": MODEL, "max_tokens": max_tokens, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"tenant {tenant} asks about quotas"}],
    }).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\nx-tenant: t{tenant}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    w.write(head + body)
    await w.drain()
    data = await asyncio.wait_for(r.read(), timeout=60)
    w.close()
    text = data.decode(errors="replace")
    status = int(text.split(" ", 2)[1])
    retry = 1.0
    for line in text.split("\r\n\r\n", 1)[0].split("\r\n"):
        if line.lower().startswith("retry-after:"):
            retry = float(line.split(":", 1)[1])
    total = None
    for line in text.splitlines():
        if line.startswith("data: {") and '"usage"' in line:
            u = json.loads(line[6:]).get("usage")
            if u:
                total = u.get("total_tokens")
    return status, total, retry


async def load(args, ports, t0, record):
    end = t0 + args.duration

    async def worker(i):
        tenant, port = i % args.tenants, ports[i % len(ports)]
        while time.time() < end:
            start = time.time()
            try:
                status, total, retry = await chat(port, tenant, args.max_tokens)
            except Exception as e:  # a request the gateway failed: counted, never retried blindly
                record.append((start, tenant, "error", 0, time.time() - start))
                await asyncio.sleep(0.2)
                continue
            record.append((start, tenant, status, total or 0, time.time() - start))
            if status == 429:
                await asyncio.sleep(min(retry, max(0.0, end - time.time())))
            elif status != 200:
                await asyncio.sleep(0.2)

    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=6000, help="tokens per tenant per window")
    ap.add_argument("--window", type=int, default=30, help="window, seconds")
    ap.add_argument("--duration", type=int, default=95)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--sim-speed", default="4", help="simulator speed multiplier")
    ap.add_argument("--sim-profile", default="h100", help="simulator hardware profile")
    ap.add_argument("--on-error", default="allow", choices=["allow", "deny"])
    ap.add_argument("--kill-redis-at", type=float, default=None)
    ap.add_argument("--kill-for", type=float, default=10)
    ap.add_argument("--redis-aof", action="store_true",
                    help="Redis keeps an append-only file (fsync every second), so a restart "
                         "keeps the windows' counts")
    ap.add_argument("--proxy", default="switchyard", choices=["switchyard", "envoy"],
                    help="envoy: three Envoys, each with its own local rate limit per tenant "
                         "(requests: --limit / --tokens-per-request per window); the reference "
                         "global ratelimit service does not install here")
    ap.add_argument("--tokens-per-request", type=int, default=66,
                    help="for --proxy envoy: the tokens one request uses, to turn --limit into "
                         "requests")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    procs = []
    with tempfile.TemporaryDirectory() as d:
        try:
            rport = free_port()
            aof = d if args.redis_aof else None
            redis = start_redis(rport, aof)
            wait_redis(rport)
            sim_port = free_port()
            procs.append(subprocess.Popen(
                ["taskset", "-c", "1", BIN, "sim", "--replicas", str(args.replicas),
                 "--base-port", str(sim_port), "--speed", args.sim_speed,
                 "--profile", args.sim_profile],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            for i in range(args.replicas):
                wait_http(f"http://127.0.0.1:{sim_port + i}/v1/models")
            endpoints = ", ".join(f"127.0.0.1:{sim_port + i}" for i in range(args.replicas))
            ports, admins = [], []
            if args.proxy == "envoy":
                per_window = max(1, args.limit // args.tokens_per_request)
                bucket = (f"{{max_tokens: {per_window}, tokens_per_fill: {per_window}, "
                          f"fill_interval: {args.window}s}}")
                descriptors = "".join(
                    f"              - entries: [{{key: tenant, value: t{t}}}]\n"
                    f"                token_bucket: {bucket}\n" for t in range(args.tenants))
                filters = f"""          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: tenants
              token_bucket: {{max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s}}
              filter_enabled: {{default_value: {{numerator: 100, denominator: HUNDRED}}, runtime_key: rl_enabled}}
              filter_enforced: {{default_value: {{numerator: 100, denominator: HUNDRED}}, runtime_key: rl_enforced}}
              descriptors:
{descriptors}"""
                route_extra = ("                  rate_limits:\n"
                               "                  - actions: [{request_headers: {header_name: x-tenant, "
                               "descriptor_key: tenant}}]\n")
                addrs = [f"127.0.0.1:{sim_port + i}" for i in range(args.replicas)]
                for g in range(3):
                    port, admin = free_port(), free_port()
                    gd = os.path.join(d, f"envoy{g}")
                    os.makedirs(gd)
                    procs.append(start_envoy(gd, port, admin, addrs, route_extra=route_extra,
                                             filters=filters))
                    ports.append(port)
            for g in range(3 if args.proxy == "switchyard" else 0):
                port, admin = free_port(), free_port()
                conf = os.path.join(d, f"gw{g}.yaml")
                with open(conf, "w") as f:
                    f.write(f"""admin: {{address: 127.0.0.1:{admin}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{port}}}]
redis: {{url: 'redis://127.0.0.1:{rport}', timeout: 20ms, on_error: {args.on_error}}}
rate_limits:
  - {{name: tenant-tokens, key: {{header: x-tenant}}, tokens: {{limit: {args.limit}, per: {args.window}s}}, store: redis}}
routes:
  - {{name: chat, match: {{path_prefix: /}}, pool: fleet, rate_limits: [tenant-tokens]}}
pools:
  - {{name: fleet, endpoints: [{endpoints}], balancer: {{kind: inference, scrape_interval: 100ms}}}}
""")
                procs.append(subprocess.Popen(
                    ["taskset", "-c", "0", BIN, "run", "--config", conf],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
                wait_http(f"http://127.0.0.1:{admin}/ready")
                ports.append(port)
                admins.append(admin)
            # Start on a window boundary, so every window measured is whole.
            now = time.time()
            t0 = (int(now) // args.window + 1) * args.window
            time.sleep(t0 - now)
            record = []
            killed = []

            async def run():
                task = asyncio.create_task(load(args, ports, t0, record))
                if args.kill_redis_at is not None:
                    await asyncio.sleep(args.kill_redis_at)
                    redis.kill()
                    redis.wait()
                    killed.append(time.time())
                    await asyncio.sleep(args.kill_for)
                    nonlocal_redis.append(start_redis(rport, aof))
                    killed.append(time.time())
                await task

            nonlocal_redis = []
            asyncio.run(run())
            for r in nonlocal_redis:
                procs.append(r)
            errors = 0
            for admin in admins:  # Switchyard's only
                text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/metrics"],
                                      capture_output=True, text=True).stdout
                for line in text.splitlines():
                    if line.startswith("switchyard_rate_limit_total") and "store_error" in line:
                        errors += float(line.split()[-1])
        finally:
            for p in procs:
                stop(p)
            try:
                redis.kill()
            except Exception:
                pass

    windows = {}
    for start, tenant, status, total, took in record:
        w = int((start - t0) // args.window)
        if start - t0 >= (args.duration // args.window) * args.window:
            continue  # a last, partial window
        s = windows.setdefault(w, {"tokens": [0] * args.tenants, "ok": 0, "limited": 0,
                                   "other": 0, "max_s": 0.0})
        if status == 200:
            s["tokens"][tenant] += total
            s["ok"] += 1
        elif status == 429:
            s["limited"] += 1
            s["max_limited_s"] = max(s.get("max_limited_s", 0.0), took)
        else:
            s["other"] += 1
        s["max_s"] = max(s["max_s"], took)
    touched = set()
    if killed:
        touched = {int((k - t0) // args.window) for k in killed}
    print(f"limit {args.limit} tokens per tenant per {args.window}s window; "
          f"{args.concurrency} concurrent streams, {args.tenants} tenants, 3 gateways; "
          f"{args.proxy}; on_error {args.on_error}; store errors counted: {errors:.0f}")
    print("window | served/limit per tenant: min / max | 200s | 429s | other | "
          "slowest 429 (s) | redis killed")
    out = []
    for w in sorted(windows):
        s = windows[w]
        ratios = [t / args.limit for t in s["tokens"]]
        row = {"window": w, "min": min(ratios), "max": max(ratios), "ok": s["ok"],
               "limited": s["limited"], "other": s["other"],
               "slowest_429_s": s.get("max_limited_s", 0.0), "redis_killed": w in touched}
        out.append(row)
        print(f"{w} | {row['min']:.3f} / {row['max']:.3f} | {row['ok']} | {row['limited']} | "
              f"{row['other']} | {row['slowest_429_s']:.3f} | {'yes' if w in touched else ''}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "windows": out, "store_errors": errors}, f, indent=1)


if __name__ == "__main__":
    main()
