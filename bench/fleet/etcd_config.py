#!/usr/bin/env python3
"""Fleet config in etcd, measured (issue #16's floor):

  * 3 gateway replicas share one listener address (SO_REUSEPORT) and follow one etcd key;
  * `wrk` drives traffic through them to a simulated fleet the whole time;
  * N config writes (`switchyard config push`, each changing a response header of the route):
    time from the write's acknowledgement until every replica's admin `/config` reports that
    revision applied (pollers per replica, 2 ms apart), p50/p99/max;
  * then etcd is killed for --outage seconds: the replicas keep serving on the last config, and
    after etcd restarts one more write must reach all of them;
  * failed requests (non-2xx and socket errors, from wrk) over the whole run.

  .venv/bin/python bench/fleet/etcd_config.py --writes 100 --outage 30
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_fleet, stop  # noqa: E402


def start_etcd(data, client="127.0.0.1:0"):
    p = subprocess.Popen(
        ["etcd", "--data-dir", data,
         f"--listen-client-urls=http://{client}", f"--advertise-client-urls=http://{client}",
         "--listen-peer-urls=http://127.0.0.1:0", "--initial-advertise-peer-urls=http://127.0.0.1:0",
         "--initial-cluster=default=http://127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in p.stderr:
        m = re.search(r"serving insecure client requests on ([\d.]+:\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    sys.exit("etcd did not start")


def config(port, sims, version):
    eps = ", ".join(sims)
    return f"""runtime: {{workers: 1}}
listeners:
  - name: public
    address: 127.0.0.1:{port}
routes:
  - name: r
    match: {{path_prefix: /}}
    pool: sim
    filters:
      - response_headers: {{set: {{x-config-version: "{version}"}}}}
pools:
  - name: sim
    balancer: least_request
    endpoints: [{eps}]
"""


def push(d, url, text):
    f = os.path.join(d, "push.yaml")
    with open(f, "w") as fh:
        fh.write(text)
    out = subprocess.run([BIN, "config", "push", f, "--to", url], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"push failed: {out.stderr}")
    return int(re.search(r"revision (\d+)", out.stdout).group(1)), time.monotonic()


def start_replica(url, core):
    p = subprocess.Popen(
        ["taskset", "-c", core, BIN, "--log-format", "json", "run", "--config-source", url,
         "--admin", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    admin = None
    for line in p.stderr:
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("message") == "admin listening":
            admin = v["address"]
        if v.get("message") == "ready":
            break
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, admin


def revision(admin):
    with urllib.request.urlopen(f"http://{admin}/config", timeout=2) as r:
        return json.loads(r.read())["source"]["revision"]


def wait_all(admins, rev, since, limit=60.0):
    """Seconds from `since` until every replica applied `rev` (polling each every 2 ms)."""
    done = {}

    def poll(a):
        while time.monotonic() - since < limit:
            try:
                if revision(a) >= rev:
                    done[a] = time.monotonic() - since
                    return
            except Exception:
                pass
            time.sleep(0.002)

    threads = [threading.Thread(target=poll, args=(a,)) for a in admins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) < len(admins):
        sys.exit(f"revision {rev} not applied by every replica within {limit}s: {done}")
    return max(done.values())


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--outage", type=float, default=30)
    ap.add_argument("--replicas", type=int, default=3)
    args = ap.parse_args()
    d = tempfile.mkdtemp()
    procs = []
    try:
        etcd, etcd_addr = start_etcd(os.path.join(d, "etcd"))
        procs.append(etcd)
        url = f"etcd://{etcd_addr}/bench/fleet"
        fleet, sims = start_fleet(d, f"model: {MODEL}\nbase_port: 0\nreplicas:\n  - count: 2\n", 2, core="1")
        procs.append(fleet)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        push(d, url, config(port, sims, 0))
        replicas = [start_replica(url, "0") for _ in range(args.replicas)]
        procs += [p for p, _ in replicas]
        admins = [a for _, a in replicas]
        seconds = int(args.writes * 0.1 + args.outage + 30)
        wrk = subprocess.Popen(
            ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{seconds}s",
             f"http://127.0.0.1:{port}/v1/models"],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(wrk)
        time.sleep(1)
        lat = []
        for v in range(1, args.writes + 1):
            rev, at = push(d, url, config(port, sims, v))
            lat.append(wait_all(admins, rev, at))
            time.sleep(0.05)
        print(f"writes: {len(lat)}  propagation to all {len(admins)} replicas (ms): "
              f"p50 {pct(lat, 0.5) * 1000:.1f}  p99 {pct(lat, 0.99) * 1000:.1f}  "
              f"max {max(lat) * 1000:.1f}")
        if args.outage > 0:
            stop(etcd)
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.outage:
                time.sleep(0.5)
                for a in admins:
                    urllib.request.urlopen(f"http://{a}/ready", timeout=2).read()
            etcd, _ = start_etcd(os.path.join(d, "etcd"), etcd_addr)
            procs.append(etcd)
            rev, at = push(d, url, config(port, sims, "after-outage"))
            catch_up = wait_all(admins, rev, at)
            print(f"etcd down {args.outage:.0f}s: replicas kept serving; first write after the "
                  f"restart reached all replicas in {catch_up * 1000:.1f} ms")
        out, _ = wrk.communicate(timeout=seconds + 30)
        total = int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        sock = sum(int(x) for x in m.groups()) if m else 0
        print(f"requests under load: {total}, failed: {non2xx + sock} "
              f"(non-2xx {non2xx}, socket errors {sock})")
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    main()
