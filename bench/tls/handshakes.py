#!/usr/bin/env python3
"""TLS cost side by side: Switchyard (rustls, aws-lc-rs and ring), NGINX and HAProxy (OpenSSL).

Each proxy runs with ONE worker pinned to core 0, in front of the static origin of
bench/proxies/compare.py (NGINX returning a 14-byte body); the load and the origin share core 1.
Every proxy serves the same certificate and key (ECDSA P-256 or RSA-2048, made here with
`openssl req`), TLS 1.3 with X25519 and TLS_AES_128_GCM_SHA256 (the client's choice; every peer
offers it), session tickets on. Per proxy and key type, interleaved by round:

- full: new TLS 1.3 connections, each a full handshake and one `GET /` with `Connection: close`;
- resumed: the same with the client offering the ticket of its previous connection (PSK with
  (EC)DHE, OpenSSL's default); the share of connections that did resume is reported;
- keep-alive: h2load over TLS, HTTP/1.1 (`--h1 -c50`) and h2 (`-c10 -m10`), closed loop.

The client is Python's `ssl` (OpenSSL), several processes on the load core. It cannot saturate
the proxy core (a client handshake costs more than a server one), so the robust number is the
proxy's CPU time (utime+stime from /proc) per connection; `per core` is 1e6 / that, the
connections per second one core would sustain at 100%. A proxy's CPU per connection depends on
how busy it is (a busier event loop wakes less often per connection), so the client is paced at
the same rate for every proxy (`--rate`, 400 connections per second, which it sustains even on
a loaded machine). The load is bounded by time and count.

Usage: python3 bench/tls/handshakes.py [--rounds 3] [--seconds 3] [--rate 400] [--keys ecdsa,rsa]
       [--proxies switchyard,switchyard-ring,nginx,haproxy] [--out results.json]
Needs: target/release/switchyard (built with `--features aws-lc-rs` for `switchyard`;
`switchyard-ring` runs the same binary with SWITCHYARD_TLS_PROVIDER=ring), nginx, haproxy,
h2load, openssl.
"""

import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "proxies"))
import compare  # noqa: E402
from compare import LOAD_CORE, PROXY_CORE, Proc, cpu_seconds, nginx_conf, rss_mb, write  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(d, kind):
    """Self-signed certificate for 127.0.0.1/localhost; returns (cert, key, combined)."""
    cert, key = f"{d}/{kind}.crt", f"{d}/{kind}.key"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert]
                   + newkey, check=True, capture_output=True)
    # rustls-pemfile reads PKCS#8, SEC1 and PKCS#1 alike; HAProxy wants cert and key in one file.
    combined = write(f"{d}/{kind}.pem", open(cert).read() + open(key).read())
    return cert, key, combined


def start_proxy(name, d, kind, origin_port):
    cert, key, combined = f"{d}/{kind}.crt", f"{d}/{kind}.key", f"{d}/{kind}.pem"
    port = free_port()
    if name.startswith("switchyard"):
        conf = write(f"{d}/switchyard.yaml", f"""admin: {{address: 127.0.0.1:{free_port()}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{port}, tls: {{cert: {cert}, key: {key}}}}}]
routes: [{{name: all, match: {{path_prefix: /}}, pool: origin}}]
pools: [{{name: origin, endpoints: [127.0.0.1:{origin_port}]}}]
""")
        binary = os.environ.get("SWITCHYARD_BIN") or os.path.join(compare.ROOT, "target", "release", "switchyard")
        # Proc inherits this environment: the same binary, ring or its default provider.
        os.environ.pop("SWITCHYARD_TLS_PROVIDER", None)
        if name == "switchyard-ring":
            os.environ["SWITCHYARD_TLS_PROVIDER"] = "ring"
        return Proc(name, [binary, "run", "--config", conf], port, PROXY_CORE), port
    if name == "nginx":
        body = f"""
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; keepalive_requests 10000000; }}
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}"""
        conf = write(f"{d}/nginx-tls.conf", nginx_conf(d, "tlsproxy", body))
        return Proc(name, ["nginx", "-c", conf], port, PROXY_CORE), port
    if name == "haproxy":
        conf = write(f"{d}/haproxy-tls.cfg", f"""global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port} ssl crt {combined} alpn h2,http/1.1
  default_backend b
backend b
  server o 127.0.0.1:{origin_port}
""")
        return Proc(name, ["haproxy", "-f", conf, "-db"], port, PROXY_CORE), port
    raise ValueError(name)


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # every proxy has the same certificate: verifying costs all alike
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def one_connection(ctx, port, session):
    """Connect, handshake, one request, read to EOF. Returns (session for the next, resumed, ok)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(REQUEST)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return s.session, s.session_reused, data.startswith(b"HTTP/1.1 200")


def client_worker(args):
    port, seconds, max_conns, resume, interval = args
    ctx = client_context()
    session = None
    if resume:  # a first, full handshake to get a ticket
        session, _, _ = one_connection(ctx, port, None)
    done = resumed = failed = 0
    start = time.time()
    deadline = start + seconds
    while time.time() < deadline and done < max_conns:
        # Paced: the k-th connection of this worker starts at start + k * interval (or at once
        # when behind), so every proxy sees the same connection rate.
        wait = start + (done + failed) * interval - time.time()
        if wait > 0:
            time.sleep(wait)
        try:
            s, r, ok = one_connection(ctx, port, session if resume else None)
        except (OSError, ssl.SSLError):
            failed += 1
            continue
        if resume and s is not None:
            session = s
        done += 1
        resumed += int(r)
        failed += int(not ok)
    return done, resumed, failed


def client_main(port, seconds, procs, resume, max_conns, rate):
    """Runs on the load core: `procs` processes each opening connections one after another,
    `rate` per second in all (0: as fast as they can)."""
    interval = procs / rate if rate else 0.0
    with multiprocessing.Pool(procs) as pool:
        res = pool.map(client_worker, [(port, seconds, max_conns, resume, interval)] * procs)
    print(json.dumps({"done": sum(r[0] for r in res), "resumed": sum(r[1] for r in res),
                      "failed": sum(r[2] for r in res)}))


def handshakes(proxy, port, seconds, procs, resume, rate):
    argv = ["taskset", "-c", LOAD_CORE, sys.executable, __file__, "--client", str(port), "--seconds", str(seconds),
            "--procs", str(procs), "--rate", str(rate)] + (["--resume"] if resume else [])
    c0, t0 = cpu_seconds(proxy.p.pid), time.time()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    c1, t1 = cpu_seconds(proxy.p.pid), time.time()
    r = json.loads(out.stdout.strip().splitlines()[-1])
    n = r["done"]
    cpu_us = (c1 - c0) * 1e6 / n if n else float("nan")
    return {"per_s": n / (t1 - t0), "cpu_us": cpu_us, "per_core": 1e6 / cpu_us if n else 0.0,
            "resumed_share": r["resumed"] / n if n else 0.0, "failed": r["failed"], "conns": n}


def keepalive(proxy, port, seconds, proto):
    argv = ["h2load", "-D", str(seconds), f"https://127.0.0.1:{port}/"]
    argv[1:1] = ["--h1", "-c50"] if proto == "h1" else ["-c10", "-m10"]
    c0 = cpu_seconds(proxy.p.pid)
    out = compare.run_load(argv)
    c1 = cpu_seconds(proxy.p.pid)
    done, ok = compare.h2load_done(out)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    return {"rps": float(m.group(1)) if m else 0.0, "cpu_us": (c1 - c0) * 1e6 / done if done else float("nan"),
            "errors": done - ok}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=4, help="client processes on the load core")
    ap.add_argument("--rate", type=float, default=400,
                    help="connections per second, the same for every proxy (0: unpaced)")
    ap.add_argument("--keys", default="ecdsa,rsa")
    ap.add_argument("--proxies", default="switchyard,switchyard-ring,nginx,haproxy")
    ap.add_argument("--out", default=None)
    ap.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        return client_main(args.client, args.seconds, args.procs, args.resume, 100_000, args.rate)
    for tool in ("taskset", "h2load", "nginx", "haproxy", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool}")
    d = tempfile.mkdtemp(prefix="sy-tls-")
    origin_port = free_port()
    origin = Proc("origin", ["nginx", "-c", write(f"{d}/origin.conf", nginx_conf(
        d, "origin", f'server {{ listen 127.0.0.1:{origin_port}; location / {{ return 200 "hello, world!\\n"; }} }}'))],
        origin_port, LOAD_CORE)
    keys = args.keys.split(",")
    for k in keys:
        make_cert(d, k)
    proxies = args.proxies.split(",")
    results = {(p, k): [] for p in proxies for k in keys}
    try:
        for r in range(args.rounds):
            for k in keys:
                for name in proxies:
                    proxy, port = start_proxy(name, d, k, origin_port)
                    try:
                        res = {"rss_idle_mb": rss_mb(proxy.p.pid)}
                        handshakes(proxy, port, 1, args.procs, False, args.rate)  # warm-up: pooled upstream
                        for label, resume in (("full", False), ("resumed", True)):
                            for key, v in handshakes(proxy, port, args.seconds, args.procs, resume, args.rate).items():
                                res[f"{label}_{key}"] = v
                        for proto in ("h1", "h2"):
                            for key, v in keepalive(proxy, port, args.seconds, proto).items():
                                res[f"ka_{proto}_{key}"] = v
                        res["rss_after_mb"] = rss_mb(proxy.p.pid)
                        results[(name, k)].append(res)
                        print(f"round {r + 1} {name} {k}: {json.dumps(res)}", file=sys.stderr, flush=True)
                    finally:
                        proxy.stop()
    finally:
        origin.stop()
    cols = [
        ("full_cpu_us", "full: CPU µs/conn", "{:.0f}"),
        ("full_per_core", "full: conns/s per core", "{:.0f}"),
        ("full_per_s", "full: conns/s seen", "{:.0f}"),
        ("resumed_cpu_us", "resumed: CPU µs/conn", "{:.0f}"),
        ("resumed_per_core", "resumed: conns/s per core", "{:.0f}"),
        ("resumed_per_s", "resumed: conns/s seen", "{:.0f}"),
        ("resumed_resumed_share", "resumed share", "{:.2f}"),
        ("ka_h1_cpu_us", "TLS HTTP/1.1 keep-alive CPU µs/req", "{:.1f}"),
        ("ka_h2_cpu_us", "TLS h2 CPU µs/req", "{:.1f}"),
        ("rss_after_mb", "RSS after (MB)", "{:.1f}"),
    ]
    summary = {}
    for (p, k), runs in results.items():
        summary[f"{p} {k}"] = {c: statistics.median(x[c] for x in runs) for c in runs[0]}
    print("| proxy | key | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for k in keys:
        for p in proxies:
            s = summary[f"{p} {k}"]
            print(f"| {p} | {k} | " + " | ".join(c[2].format(s[c[0]]) for c in cols) + " |")
    fails = {n: {c: v for c, v in s.items() if ("failed" in c or "errors" in c) and v} for n, s in summary.items()}
    print("failures (median per run):", json.dumps(fails))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": {f"{p} {k}": v for (p, k), v in results.items()},
                       "median": summary}, f, indent=2)


if __name__ == "__main__":
    main()
