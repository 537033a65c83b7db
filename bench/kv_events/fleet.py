"""The simulated fleets that publish KV-cache events, and the routers in front of them, for
bench/kv_events: Switchyard gateways (approximate index, event index, oracle) and the
third-party cache-aware routers (vllm-router, smg, sglang-router from PyPI)."""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import BIN, MODEL, start_envoy_for_epp, wait_http  # noqa: E402

# Per fleet: replicas (one at half speed), and the shared-prefix groups that make the workload's
# working set exceed the fleet's cache (see WORKING SET in run.py's docstring).
FLEETS = {
    # compare.py's fleet: H100 profile, 1,500 KV blocks each (12,000 in all), batches of up to
    # 16 sequences (as bench/predict), replica 7 at half speed.
    "h100": ("replicas:\n  - {count: 7, num_gpu_blocks: 1500, max_num_seqs: 16}\n"
             "  - {count: 1, num_gpu_blocks: 1500, max_num_seqs: 16, speed: 0.5}\n", 8 * 1500, 8 * 16),
    # Slower prefill (A100 profile), 800 blocks each (6,400 in all), batches of up to 8.
    "a100-small": ("replicas:\n  - {count: 7, profile: a100, num_gpu_blocks: 800, max_num_seqs: 8}\n"
                   "  - {count: 1, profile: a100, num_gpu_blocks: 800, max_num_seqs: 8, speed: 0.5}\n",
                   8 * 800, 8 * 8),
}
PORTS = [(18590, 18591), (18592, 18593)]
SYSTEM_PROMPT_TOKENS = 1536


def groups_for(fleet, system_share):
    """Groups whose system prompts alone fill `system_share` of the fleet's KV blocks."""
    blocks = FLEETS[fleet][1]
    return max(16, round(blocks * system_share / (SYSTEM_PROMPT_TOKENS / 16)))


def workload(fleet, system_share):
    return ["--workload", "shared-prefix", "--groups", str(groups_for(fleet, system_share)),
            "--users-per-group", "8", "--system-prompt-tokens", str(SYSTEM_PROMPT_TOKENS),
            "--question-tokens", "64", "--turns", "4", "--output-tokens", "64", "--endpoint", "completions"]


def start_kv_fleet(d, fleet, loss):
    conf = os.path.join(d, "fleet.yaml")
    with open(conf, "w") as f:
        f.write(f"model: {MODEL}\nbase_port: 0\nkv_events: {{shape: map, loss: {loss}}}\n" + FLEETS[fleet][0])
    p = subprocess.Popen(["taskset", "-c", "1", BIN, "sim", "--config", conf, "--base-port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    addrs, kv = [], []
    while len(kv) < 8:
        line = p.stdout.readline()
        if not line:
            sys.exit("simulator exited early")
        m = re.search(r"listening on (\S+)", line)
        if m:
            addrs.append(m.group(1))
        m = re.search(r"kv-events on (\S+) replay (\S+)", line)
        if m:
            kv.append((m.group(1), m.group(2)))
    return p, addrs, kv


def pool_endpoints(addrs, kv, events):
    """The pool's `endpoints:` lines: each replica with its KV-event sockets when `events`."""
    return "\n".join(
        f"      - {{address: {a}, kv_events: \"{e}\", kv_replay: \"{r}\"}}" if events else f"      - {a}"
        for a, (e, r) in zip(addrs, kv))


def start_gateway(d, n, addrs, kv, events, owners=True, keys=""):
    """Switchyard `inference` on core 0, with the KV-event index when `events`. Its listener
    trusts debug headers: the correctness part reads its explanations, the oracle mode sends
    `x-switchyard-oracle-cached`. `owners=False` turns rendezvous owners off (as in the correctness
    runs before session 17, when an owner's credit read as a prefix share in the explanation). `keys`
    are more settings of the balancer map, as YAML (`stickiness: {enabled: true}`)."""
    port, admin = PORTS[n]
    eps = pool_endpoints(addrs, kv, events)
    weights = "" if owners else ", weights: {prefix_owner: 0}"
    extra = f", {keys}" if keys else ""
    balancer = f"{{kind: inference{', kv_events: {}' if events else ''}{weights}{extra}}}"
    conf = os.path.join(d, f"gw{n}.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: 127.0.0.1:{admin}}}
runtime: {{workers: 1, watch_config: false}}
listeners: [{{name: public, address: 127.0.0.1:{port}, trusted_headers: [debug]}}]
routes: [{{name: r, match: {{path_prefix: /v1/}}, pool: sim, timeout: 120s}}]
pools:
  - name: sim
    balancer: {balancer}
    endpoints:
{eps}
""")
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{admin}/ready")
    return p


# The `epp` mode's Envoy admin and picker ports (the listener is PORTS[0][0], its admin API the
# picker's, PORTS[0][1], so the rows read their counters alike).
ENVOY_ADMIN, EPP_GRPC = 18594, 18595


def start_epp_behind_envoy(d, addrs, kv):
    """`switchyard epp` with the KV-event index (the `events` gateway's pool), behind Envoy 1.40
    (one worker, ext_proc with the request body buffered, an ORIGINAL_DST cluster), both on
    core 0: the picker behind an existing Envoy, as llm-d deploys its EPP."""
    eps = pool_endpoints(addrs, kv, True)
    conf = os.path.join(d, "epp.yaml")
    with open(conf, "w") as f:
        f.write(f"pools:\n  - name: sim\n    balancer: {{kind: inference, kv_events: {{}}}}\n    endpoints:\n{eps}\n")
    epp = subprocess.Popen(["taskset", "-c", "0", BIN, "epp", "--config", conf, "--listen", f"127.0.0.1:{EPP_GRPC}",
                            "--admin", f"127.0.0.1:{PORTS[0][1]}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{PORTS[0][1]}/ready")
    # The routers' limits raised, as for the other routers (Envoy's default is 1,024 requests).
    limits = "    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}\n"
    envoy = start_envoy_for_epp(d, PORTS[0][0], ENVOY_ADMIN, EPP_GRPC, original_dst_extra=limits)
    return [envoy, epp]


ROUTERS = {
    # name: command before the common flags
    "vllm-router": ["vllm-router"],
    "smg": ["smg", "launch"],
    "sglang-router": ["sglang-router", "launch"],
}


def router_bin(name, bindir):
    exe = os.path.join(bindir, name) if bindir else shutil.which(name)
    if not exe or not os.path.exists(exe):
        sys.exit(f"{name} not found (pip install it, or pass --routers-bin DIR)")
    return exe


def start_router(name, addrs, bindir):
    """A PyPI router with its `cache_aware` policy (defaults otherwise), pinned to core 0."""
    cmd = ROUTERS[name]
    cmd = [router_bin(cmd[0], bindir), *cmd[1:]]
    p = subprocess.Popen(["taskset", "-c", "0", *cmd, "--host", "127.0.0.1", "--port", str(PORTS[0][0]),
                          "--policy", "cache_aware", "--worker-urls", *[f"http://{a}" for a in addrs]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{PORTS[0][0]}/v1/models", timeout=60)
    return p


def start_vllm_router_kv(addrs, kv, bindir):
    """vllm-router with its `kv_aware` policy fed by every replica's KV-event and replay sockets
    (blocks of 16 tokens, as the simulator's), pinned to core 0. It scores only requests that
    carry token ids: its rows send completions prompts as ids (`--prompt-token-ids`)."""
    sources = []
    for a, (events, replay) in zip(addrs, kv):
        sources += ["--kv-event-source", f"http://{a}={events}", "--kv-event-replay-source", f"http://{a}={replay}"]
    p = subprocess.Popen(["taskset", "-c", "0", router_bin("vllm-router", bindir), "--host", "127.0.0.1",
                          "--port", str(PORTS[0][0]), "--policy", "kv_aware", "--kv-event-block-size", "16",
                          "--kv-event-model", MODEL, *sources, "--worker-urls", *[f"http://{a}" for a in addrs]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{PORTS[0][0]}/v1/models", timeout=60)
    return p


def kv_blocks(n):
    pools = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORTS[n][1]}/pools", timeout=5))
    return [(e["inference"] or {}).get("kv_events") or {} for e in pools["pools"][0]["endpoints"]]


def gateway_prefix_picks(admin_port):
    """A gateway's `switchyard_inference_prefix_picks_total`, by reason (holder, moved,
    holder_saturated, unheld)."""
    picks = {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("switchyard_inference_prefix_picks_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            picks[reason] = picks.get(reason, 0) + float(line.rsplit(" ", 1)[1])
    return picks


def replica_requests(addrs):
    """Requests each replica completed, in `addrs` order: how a router spread the fleet's work."""
    counts = []
    for a in addrs:
        n = 0.0
        for line in urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode().splitlines():
            if line.startswith("vllm:request_success_total{"):
                n += float(line.rsplit(" ", 1)[1])
        counts.append(int(n))
    return counts


def sim_counters(addrs):
    """Summed over replicas: prefix-cache hit rate, preempted requests, evicted blocks."""
    hits = queries = preempted = evicted = 0.0
    for a in addrs:
        for line in urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode().splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:num_preemptions_total"):
                preempted += float(line.rsplit(" ", 1)[1])
            elif line.startswith("switchyard_sim_kv_evicted_blocks_total"):
                evicted += float(line.rsplit(" ", 1)[1])
    return (hits / queries if queries else 0.0), preempted, evicted
