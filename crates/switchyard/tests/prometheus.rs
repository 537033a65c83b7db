//! The shipped Grafana dashboard and Prometheus rules, against a real gateway and a real
//! Prometheus: `promtool check rules` on `deploy/prometheus/*.yaml`; then a gateway in front of
//! simulated replicas (one failing, one slow, one address refusing connections), under load that
//! retries, ejects, sheds, queues, overflows and rate-limits, scraped every second by Prometheus
//! evaluating both rule files every second. Every panel query of `deploy/grafana/switchyard.json`
//! (template variables filled in) must be valid PromQL, name only metrics the gateway exports,
//! and return data; every rule must load, evaluate cleanly and select series that exist, every
//! recording rule must produce series, and the alerts this load should trip must be pending or
//! firing.

#[path = "prometheus/promql.rs"]
mod promql;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use promql::{finite, loaded_rules, selectors};
use serde_json::Value;
use support::client::{self, send, TestClient};
use support::fleet::{dead_address, failing, fleet, slow, MODEL};
use support::prometheus::{self as prom, Prometheus};
use support::{Gateway, WAIT};

/// What the test puts for Grafana's `$__rate_interval` and `$__interval`: long enough to cover
/// the whole load, which runs after Prometheus' first scrape.
const RATE_INTERVAL: &str = "1m";

/// The gateway: route `chat` (retries, hedging, a per-tenant rate limit) to the `inference` pool
/// `llm` (replica 0 healthy, 1 failing with 503, 2 slow, and an address refusing connections;
/// outlier detection; a fixed concurrency limit with a small queue); route `strict` (a retry
/// budget of zero) to `broken` (a replica failing with 503, a circuit breaker of one request);
/// and route `canary`, a rollout between `stable` and `next`.
fn config(eps: &[SocketAddr], dead: SocketAddr) -> String {
    format!(
        r#"admin: {{address: 127.0.0.1:0}}
runtime: {{workers: 1, watch_config: false}}
listeners:
  - {{name: public, address: 127.0.0.1:0}}
rate_limits:
  - name: per-tenant
    key: {{header: x-tenant}}
    requests: {{limit: 5, per: 1s}}
routes:
  - name: chat
    match: {{path: /v1/chat/completions}}
    pool: llm
    retry: {{attempts: 3, retry_on: [503, connect-failure], budget: {{ratio: 1.0, min_concurrency: 10}}}}
    hedge: {{delay: 150ms}}
    rate_limits: [per-tenant]
  - name: strict
    match: {{path: /v1/completions}}
    pool: broken
    retry: {{attempts: 2, retry_on: [503], budget: {{ratio: 0.0, min_concurrency: 0}}}}
  - name: canary
    match: {{path_prefix: /}}
    backends: [{{pool: stable}}, {{pool: next}}]
    rollout: {{baseline: stable, canary: next, steps: [10, 100], interval: 1h}}
pools:
  - name: llm
    endpoints: [{}, {}, {}, {dead}]
    balancer: {{kind: inference, scrape_interval: 100ms}}
    outlier: {{consecutive_5xx: 3, consecutive_gateway_errors: 2, base_ejection: 5m, max_ejected_percent: 50}}
    concurrency: {{kind: fixed, limit: 3, max_queue: 2, queue_timeout: 2s}}
  - name: broken
    endpoints: [{}]
    limits: {{max_requests: 1}}
  - name: stable
    endpoints: [{}]
  - name: next
    endpoints: [{}]
"#,
        eps[0], eps[1], eps[2], eps[3], eps[4], eps[4]
    )
}

async fn post(
    c: &TestClient,
    gw: &Gateway,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> u16 {
    let mut req = http::Request::post(gw.url(path)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, _, _) = send(c, req.body(Full::new(Bytes::from(body))).unwrap()).await;
    status.as_u16()
}

fn chat(stream: bool, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"{MODEL}","max_tokens":{max_tokens},"stream":{stream},"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"tell me about switchyards"}}]}}"#
    )
}

fn completion() -> String {
    format!(r#"{{"model":"{MODEL}","max_tokens":4,"prompt":"hi"}}"#)
}

/// Sum of the gateway's `/metrics` series whose line starts with `prefix`.
fn metric_sum(gw: &Gateway, prefix: &str) -> f64 {
    let (_, body) = gw.admin_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// A request of a load batch: path, JSON body, extra headers.
type Request = (&'static str, String, Vec<(&'static str, &'static str)>);

/// Send batches of concurrent requests until `done` holds (bounded by [`WAIT`]).
async fn load_until(
    gw: &Arc<Gateway>,
    what: &str,
    batch: impl Fn() -> Vec<Request>,
    done: impl Fn(&Gateway) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(gw) {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        let tasks: Vec<_> = batch()
            .into_iter()
            .map(|(path, body, headers)| {
                let gw = gw.clone();
                tokio::spawn(async move { post(&client::http1(), &gw, path, body, &headers).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_panels_and_rules_query_real_series() {
    let rule_files = prom::rule_files();
    prom::check_rules(&rule_files);

    let fleet = fleet(5).await;
    failing(&fleet, 1, 503);
    slow(&fleet, 2, 300);
    failing(&fleet, 3, 503);
    let (dead, _dead) = dead_address();
    let yaml = config(&fleet.addresses(), dead);
    let gw = Arc::new(Gateway::start(&yaml));
    let prometheus = Prometheus::start(gw.admin, &rule_files);
    until(
        &prometheus,
        "Prometheus to scrape the gateway",
        |p| async move {
            let (_, v) = p.get("/api/v1/targets").await;
            v["data"]["activeTargets"][0]["health"] == "up"
        },
    )
    .await;

    // A rejected reload, then a good one.
    gw.reload("routes: [");
    gw.reload(&yaml);
    assert_eq!(
        gw.metric("switchyard_config_reloads_total{result=\"failure\"}"),
        1.0
    );

    // Saturate `llm`: concurrent streams past its limit and queue, sheddable ones among them.
    let shed =
        r#"switchyard_admission_rejected_total{pool="llm",priority="sheddable",reason="shed"}"#;
    let full = r#"switchyard_admission_rejected_total{pool="llm",priority="standard",reason="queue_full"}"#;
    load_until(
        &gw,
        "queue_full and shed admission refusals",
        || {
            (0..8)
                .map(|i| {
                    let priority = if i < 6 { "standard" } else { "sheddable" };
                    (
                        CHAT,
                        chat(true, 16),
                        vec![("x-switchyard-priority", priority)],
                    )
                })
                .collect()
        },
        |gw| metric_sum(gw, shed) > 0.0 && metric_sum(gw, full) > 0.0,
    )
    .await;
    // The failing replica answers 503s, which are retried until outlier detection ejects it.
    load_until(
        &gw,
        "an outlier ejection in `llm`",
        || vec![(CHAT, chat(false, 4), vec![])],
        |gw| metric_sum(gw, r#"switchyard_outlier_ejections_total{pool="llm""#) > 0.0,
    )
    .await;
    // One tenant's burst past its rate limit.
    load_until(
        &gw,
        "a rate-limited request",
        || {
            (0..10)
                .map(|_| (CHAT, chat(false, 2), vec![("x-tenant", "flood")]))
                .collect()
        },
        |gw| {
            gw.metric(r#"switchyard_rate_limit_total{limit="per-tenant",outcome="limited"}"#) > 0.0
        },
    )
    .await;
    // `broken`'s circuit breaker of one request: concurrent requests overflow it.
    load_until(
        &gw,
        "a circuit breaker overflow in `broken`",
        || {
            (0..4)
                .map(|_| (COMPLETIONS, completion(), vec![]))
                .collect()
        },
        |gw| gw.metric(r#"switchyard_overflow_total{pool="broken",reason="requests"}"#) > 0.0,
    )
    .await;
    assert!(gw.metric(r#"switchyard_retries_refused_total{route="strict",reason="budget"}"#) > 0.0);

    // Steady traffic on every route while Prometheus is asked, so rates are not zero.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let c = client::http1();
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                post(&c, &gw, CHAT, chat(true, 8), &[]).await;
                // Two at once, past `broken`'s breaker of one: the overflow counter keeps
                // rising, so its rate is not zero.
                tokio::join!(
                    post(&c, &gw, COMPLETIONS, completion(), &[]),
                    post(&c, &gw, COMPLETIONS, completion(), &[])
                );
                client::get(&c, &gw.url("/v1/models")).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Every rule of both files loaded, and evaluated without error.
    let rules = until_value(
        &prometheus,
        "every rule evaluated cleanly",
        |p| async move {
            let (_, v) = p.get("/api/v1/rules").await;
            let rules = loaded_rules(&v);
            rules.iter().all(|r| r.health == "ok").then_some(rules)
        },
    )
    .await;
    for file in &rule_files {
        let path = file.canonicalize().unwrap().display().to_string();
        let loaded = rules.iter().filter(|r| r.file == path).count();
        assert_eq!(loaded, prom::declared_rules(file), "rules of {path} loaded");
    }
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.kind == "recording")
        .map(|r| r.name.clone())
        .collect();

    // The metric names the gateway exports, once the load has made every lazy series.
    let (_, exposition) = gw.admin_get("/metrics");
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();

    // (what, query): those checked for validity and series, and those that must return data.
    let mut checks = Vec::new();
    let mut must_have_data = BTreeMap::new();

    // The dashboard.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(prom::deploy_dir().join("grafana/switchyard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["schemaVersion"], 39);
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for (name, want) in [("route", "chat"), ("pool", "llm")] {
        let definition = var(name)["query"]["query"].as_str().unwrap();
        let (metric, label) = definition
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.split_once(", "))
            .unwrap_or_else(|| panic!("{name}: {definition}"));
        assert_eq!(label, name);
        assert!(
            exported.contains(metric),
            "{name} reads {metric}, which the gateway does not export"
        );
        let values = prometheus.label_values(metric, label).await;
        assert!(values.iter().any(|v| v == want), "{definition}: {values:?}");
    }
    let panels = dashboard["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["Overview", "Inference", "Resilience"]);
    let mut ids = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = substitute(t["expr"].as_str().unwrap());
            let what = format!("panel `{title}` {}: {expr}", t["refId"]);
            checks.push((what.clone(), expr.clone()));
            must_have_data.insert(what, expr);
        }
    }

    // The rules: every expression valid, selecting series that exist; every recording rule's
    // series present.
    for r in &rules {
        checks.push((format!("{} rule `{}`", r.kind, r.name), r.query.clone()));
    }
    for name in &recorded {
        must_have_data.insert(format!("recorded series `{name}`"), name.clone());
    }
    // Retried while Prometheus catches up: the last scrape may predate the load's last series.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut problems = Vec::new();
        for (what, expr) in &checks {
            check_query(&prometheus, what, expr, &exported, &recorded, &mut problems).await;
        }
        if problems.is_empty() {
            break;
        }
        // Invalid PromQL and unknown metrics do not come right by waiting.
        let lasting: Vec<_> = problems
            .iter()
            .filter(|p| !p.contains("no series match"))
            .collect();
        assert!(lasting.is_empty(), "{lasting:#?}");
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}:\n{}",
            problems.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Data: each query returns at least one finite value (retried while Prometheus catches up).
    let deadline = Instant::now() + WAIT;
    let mut pending: Vec<(String, String)> = must_have_data.into_iter().collect();
    loop {
        let mut empty = Vec::new();
        let mut shown = Vec::new();
        for (what, expr) in pending {
            let result = prometheus.query(&expr).await.unwrap();
            if !result.iter().any(|s| finite(&s["value"][1])) {
                shown.push(format!("{what} → {}", Value::Array(result)));
                empty.push((what, expr));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no data after {WAIT:?}:\n{}",
            shown.join("\n")
        );
        pending = empty;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The alerts this load trips.
    let want = [
        ("SwitchyardErrorBudgetBurnFast", Some(("route", "strict"))),
        ("SwitchyardConfigReloadFailed", None),
        ("SwitchyardEndpointsEjected", Some(("pool", "llm"))),
        ("SwitchyardScrapeErrors", Some(("pool", "llm"))),
        ("SwitchyardCircuitBreakerOverflow", Some(("pool", "broken"))),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, v) = prometheus.get("/api/v1/alerts").await;
        let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
        let missing: Vec<_> = want
            .iter()
            .filter(|(name, label)| {
                !alerts.iter().any(|a| {
                    a["labels"]["alertname"] == *name
                        && label.is_none_or(|(k, v)| a["labels"][k] == v)
                        && matches!(a["state"].as_str(), Some("pending" | "firing"))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts not pending or firing after {WAIT:?}: {missing:?}; active: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
}

/// A query's checks that need no data: valid PromQL, every metric name one the gateway exports
/// (or a recording rule records), and every selector matching stored series.
async fn check_query(
    prometheus: &Prometheus,
    what: &str,
    expr: &str,
    exported: &BTreeSet<&str>,
    recorded: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    if let Err(e) = prometheus.query(expr).await {
        problems.push(format!("{what}: invalid: {e}: {expr}"));
        return;
    }
    for selector in selectors(expr) {
        let name = selector.split('{').next().unwrap();
        let known = if name.starts_with("switchyard_") {
            exported.contains(name)
        } else {
            recorded.contains(name)
        };
        if !known {
            problems.push(format!(
                "{what}: `{name}` is neither exported nor recorded: {expr}"
            ));
        } else if prometheus.series(&selector).await.is_empty() {
            problems.push(format!("{what}: no series match `{selector}`: {expr}"));
        }
    }
}

/// Grafana's variables as the test fills them in: every route and pool, and [`RATE_INTERVAL`].
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", RATE_INTERVAL)
        .replace("$route", ".*")
        .replace("$pool", ".*");
    assert!(!out.contains('$'), "an unknown variable in {expr}");
    out
}

/// Poll Prometheus until `check` holds; after [`WAIT`], fail saying what never happened.
async fn until<'a, F, Fut>(prometheus: &'a Prometheus, what: &str, check: F)
where
    F: Fn(&'a Prometheus) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_value(prometheus, what, |p| {
        let fut = check(p);
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// Poll Prometheus until `check` gives a value; after [`WAIT`], fail saying what never happened.
async fn until_value<'a, T, F, Fut>(prometheus: &'a Prometheus, what: &str, check: F) -> T
where
    F: Fn(&'a Prometheus) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check(prometheus).await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {what}; prometheus log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
