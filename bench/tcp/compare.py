#!/usr/bin/env python3
"""TCP (L4) proxying side by side: Switchyard's `protocol: tcp` listener, HAProxy `mode tcp`
(as shipped, and with `option splice-auto`) and NGINX `stream`, each one worker pinned to one
core, in one run, rounds interleaved so that machine noise hits all alike.

Two loads, both from this process pinned to another core:
  bulk   CONNS connections each push GIB/CONNS GiB to a sink that discards it (one direction;
         the sender uses sendfile(2) and the sink splice(2), so the load core is not the
         bottleneck); reported: throughput and the proxy's CPU seconds per GB moved
         (utime+stime of the proxy's processes from /proc, before and after).
  rr     one connection, 64-byte request/response ping-pongs to an echo server; reported: round
         trips per second and the proxy's CPU microseconds per round trip.

Usage: bench/tcp/compare.py [--gib 2] [--conns 4] [--rounds 3] [--pings 20000]
       [--bin target/release/switchyard] [--proxy-core 1] [--load-core 0]
Needs: haproxy, nginx with the stream module (Debian: libnginx-mod-stream). Ports 39000-39013
and 39901 on 127.0.0.1.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SINK, ECHO = 39000, 39010
PROXIES = {  # name: (bulk port, rr port)
    "switchyard": (39001, 39011),
    "haproxy": (39002, 39012),
    "haproxy-splice": (39004, 39014),
    "nginx": (39003, 39013),
}
CHUNK = 64 * 1024
SOURCE = 64 << 20  # bytes of the file each sender sends from, over and over
TICK = os.sysconf("SC_CLK_TCK")


def serve(port, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(256)

    def loop():
        while True:
            c, _ = s.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def sink(c):
    # splice(2) socket -> pipe -> /dev/null: the sink costs the load core little.
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        while True:
            n = os.splice(c.fileno(), w, 1 << 20)
            if n == 0:
                break
            while n:
                n -= os.splice(r, null, n)
    finally:
        for fd in (r, w, null):
            os.close(fd)
        c.close()


def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()


def cpu_seconds(pid):
    """utime+stime of pid and its children (NGINX's worker), in seconds."""
    pids = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    total = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def wait_port(port, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} never listened on {port}")


def bulk(port, total, conns, source):
    per = total // conns
    errors = []

    def push():
        try:
            c = socket.create_connection(("127.0.0.1", port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # sendfile(2) from a file in memory: the sender costs the load core little.
            with open(source, "rb") as f:
                sent = 0
                while sent < per:
                    sent += c.sendfile(f, offset=0, count=min(SOURCE, per - sent))
            c.shutdown(socket.SHUT_WR)
            c.settimeout(60)
            while c.recv(4096):
                pass
            c.close()
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=push) for _ in range(conns)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"bulk transfer through port {port} failed: {errors[0]}")
    return time.perf_counter() - start, per * conns


def rr(port, pings):
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"p" * 64
    start = time.perf_counter()
    for _ in range(pings):
        c.sendall(msg)
        got = 0
        while got < len(msg):
            d = c.recv(64 - got)
            if not d:
                sys.exit(f"echo through port {port} closed early")
            got += len(d)
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed


def start_proxies(args, d, procs):
    pin = ["taskset", "-c", str(args.proxy_core)]
    with open(f"{d}/switchyard.yaml", "w") as f:
        f.write(
            f"""admin: {{address: 127.0.0.1:39901}}
runtime: {{workers: 1, watch_config: false}}
listeners:
  - {{name: bulk, address: 127.0.0.1:{PROXIES['switchyard'][0]}, protocol: tcp, pool: sink}}
  - {{name: rr, address: 127.0.0.1:{PROXIES['switchyard'][1]}, protocol: tcp, pool: echo}}
pools:
  - {{name: sink, endpoints: ['127.0.0.1:{SINK}']}}
  - {{name: echo, endpoints: ['127.0.0.1:{ECHO}']}}
"""
        )
    procs["switchyard"] = subprocess.Popen(
        pin + [args.bin, "run", "--config", f"{d}/switchyard.yaml"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for name, extra in [("haproxy", ""), ("haproxy-splice", "  option splice-auto\n")]:
        b, r = PROXIES[name]
        with open(f"{d}/{name}.cfg", "w") as f:
            f.write(
                f"""global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
{extra}  timeout connect 5s
  timeout client 300s
  timeout server 300s
listen bulk
  bind 127.0.0.1:{b}
  server s 127.0.0.1:{SINK}
listen rr
  bind 127.0.0.1:{r}
  server s 127.0.0.1:{ECHO}
"""
            )
        procs[name] = subprocess.Popen(
            pin + ["haproxy", "-db", "-f", f"{d}/{name}.cfg"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    b, r = PROXIES["nginx"]
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(
            f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1; daemon off; user root; pid {d}/nginx.pid; error_log {d}/nginx.log error;
events {{ worker_connections 4096; }}
stream {{
  server {{ listen 127.0.0.1:{b}; proxy_pass 127.0.0.1:{SINK}; }}
  server {{ listen 127.0.0.1:{r}; proxy_pass 127.0.0.1:{ECHO}; }}
}}
"""
        )
    procs["nginx"] = subprocess.Popen(
        pin + ["nginx", "-c", f"{d}/nginx.conf"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for name, (b, r) in PROXIES.items():
        wait_port(b, name)
        wait_port(r, name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pings", type=int, default=20000)
    p.add_argument("--bin", default="target/release/switchyard")
    p.add_argument("--proxy-core", type=int, default=1)
    p.add_argument("--load-core", type=int, default=0)
    p.add_argument("--only", default=",".join(PROXIES), help="comma-separated proxies")
    args = p.parse_args()
    names = [n for n in PROXIES if n in args.only.split(",")]
    os.sched_setaffinity(0, {args.load_core})
    serve(SINK, sink)
    serve(ECHO, echo)
    total = int(args.gib * (1 << 30)) // (CHUNK * args.conns) * CHUNK * args.conns
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        procs = {}
        source = f"{d}/source"
        with open(source, "wb") as f:
            f.write(os.urandom(SOURCE))
        try:
            start_proxies(args, d, procs)
            results = {n: {"gbps": [], "cpu_gb": [], "rtps": [], "cpu_rt": []} for n in names}
            for rnd in range(args.rounds):
                for name in names[rnd % len(names):] + names[: rnd % len(names)]:
                    pid = procs[name].pid
                    bulk_port, rr_port = PROXIES[name]
                    before = cpu_seconds(pid)
                    secs, moved = bulk(bulk_port, total, args.conns, source)
                    cpu = cpu_seconds(pid) - before
                    gb = moved / 1e9
                    results[name]["gbps"].append(gb / secs)
                    results[name]["cpu_gb"].append(cpu / gb)
                    before = cpu_seconds(pid)
                    secs = rr(rr_port, args.pings)
                    cpu = cpu_seconds(pid) - before
                    results[name]["rtps"].append(args.pings / secs)
                    results[name]["cpu_rt"].append(cpu / args.pings * 1e6)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    base = med.get("haproxy")
    print(
        f"bulk: {args.conns} connections, {total / 1e9:.2f} GB a round; rr: {args.pings} "
        f"64-byte round trips on one connection; median of {args.rounds} rounds"
    )
    print(f"{'proxy':<16}{'GB/s':>8}{'CPU s/GB':>10}{'vs haproxy':>11}{'rr/s':>9}{'CPU us/rr':>11}{'vs haproxy':>11}")
    for n in names:
        m = med[n]
        ratio = lambda k: f"{m[k] / base[k]:.2f}x" if base and base[k] else "-"
        print(
            f"{n:<16}{m['gbps']:>8.2f}{m['cpu_gb']:>10.3f}{ratio('cpu_gb'):>11}"
            f"{m['rtps']:>9.0f}{m['cpu_rt']:>11.1f}{ratio('cpu_rt'):>11}"
        )


if __name__ == "__main__":
    main()
