#!/usr/bin/env python3
"""Control-plane memory per connected node: `switchyard xds` RSS with N simulated ADS nodes
connected and ACKed (crates/xds/examples/ads_clients.rs, one connection and stream per node),
minus its RSS with none, divided by N. Once for state-of-the-world streams, once for delta,
each on a fresh control plane. The config: one listener, 8 routes, 8 pools of 8 endpoints.

Usage: python3 bench/xds/memory.py [--nodes 100]
  SWITCHYARD_BIN (default target/release/switchyard) and ADS_CLIENTS_BIN (default
  target/release/examples/ads_clients) name the binaries.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, ROOT, stop, wait_http  # noqa: E402

CLIENTS = os.environ.get("ADS_CLIENTS_BIN", os.path.join(ROOT, "target", "release", "examples", "ads_clients"))
ADS, ADMIN = 18600, 18601


def config():
    routes = "".join(f"  - {{name: r{i}, match: {{path_prefix: /p{i}}}, pool: p{i}}}\n" for i in range(8))
    pools = "".join(
        f"  - {{name: p{i}, endpoints: [{', '.join(f'127.0.0.1:{20000 + 8 * i + j}' for j in range(8))}]}}\n"
        for i in range(8))
    return ("runtime: {watch_config: false}\nlisteners: [{name: gw, address: 127.0.0.1:18602}]\n"
            f"routes:\n{routes}pools:\n{pools}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    sys.exit("no VmRSS")


def run(api, nodes, d):
    conf = os.path.join(d, "xds.yaml")
    with open(conf, "w") as f:
        f.write(config())
    xds = subprocess.Popen([BIN, "xds", "--config", conf, "--listen", f"127.0.0.1:{ADS}",
                            "--admin", f"127.0.0.1:{ADMIN}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    clients = None
    try:
        wait_http(f"http://127.0.0.1:{ADMIN}/ready")
        before = rss_kib(xds.pid)
        clients = subprocess.Popen([CLIENTS, f"127.0.0.1:{ADS}", str(nodes), api], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = clients.stdout.readline().strip()
        if line != f"acked {nodes}":
            sys.exit(f"clients: {line!r}")
        seen = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/xds/nodes", timeout=5))
        connected = sum(1 for n in seen.values() if n["streams"] == 1)
        time.sleep(1)  # let allocator caches settle before reading RSS; not a correctness wait
        after = rss_kib(xds.pid)
        return {"api": api, "nodes": nodes, "connected": connected, "rss_before_kib": before,
                "rss_after_kib": after, "kib_per_node": round((after - before) / nodes, 1)}
    finally:
        if clients:
            clients.stdin.close()
            stop(clients)
        stop(xds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = [run(api, args.nodes, d) for api in ("sotw", "delta")]
    print("| api | nodes connected | RSS before (KiB) | RSS after (KiB) | per node (KiB) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['api']} | {r['connected']}/{r['nodes']} | {r['rss_before_kib']} | {r['rss_after_kib']} | {r['kib_per_node']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
