//! One immutable generation of routing state, built from a [`Config`], and the handle that swaps
//! generations atomically on reload. Requests load the current generation once and keep it, so an
//! in-flight request finishes on the config it started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use switchyard_balance::{Endpoint, Picker, StateRegistry};
use switchyard_config::{Config, Pool, Protocol};
use switchyard_telemetry::metrics::{PoolLabels, UpstreamErrorLabels};
use switchyard_telemetry::{AccessLog, Metrics};

use crate::body::RequestBody;
use crate::models::{ModelLabels, PoolModelMetrics};
use crate::pool_control::{OutlierSink, PoolControl};
pub use crate::route_entry::{HedgeMetrics, RouteEntry, RouteMetrics, RouteRetry, RouteTarget};
use crate::route_match::RouteMatch;
use crate::upstream_h1::EndpointConns;
use switchyard_health::{Outcome, OutlierDetector};
use switchyard_resilience::{CircuitBreaker, ConcurrencyLimiter, HedgeDelay, HedgeParams, Hedger};
use switchyard_telemetry::metrics::PoolReasonLabels;

type ConnRegistry = HashMap<(String, std::net::SocketAddr), Arc<EndpointConns>>;

/// Pooled upstream connections for one pool (HTTP/1.1 keep-alive or multiplexed HTTP/2).
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// A pool, compiled: endpoints with live state, the picker, and the connection pool.
pub struct PoolEntry {
    pub spec: Pool,
    pub endpoints: Vec<Endpoint>,
    /// `ip:port` authority for each endpoint, prebuilt for upstream URIs.
    pub authorities: Vec<Authority>,
    pub picker: Arc<dyn Picker>,
    /// HTTP/1 pools: per-endpoint idle connections, driven inline by requests (parallel to
    /// `endpoints`). Empty for HTTP/2 pools.
    pub h1: Vec<Arc<EndpointConns>>,
    /// HTTP/2 pools: each endpoint's multiplexed connection, under the pool's connection and
    /// pending limits (parallel to `endpoints`). Empty for HTTP/1 pools.
    pub h2: Vec<Arc<crate::upstream_h2::H2Endpoint>>,
    /// Pooled client for HTTP/1 upgrades.
    pub client: UpstreamClient,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub resets: Counter,
    pub breaker: CircuitBreaker,
    pub limiter: Option<ConcurrencyLimiter>,
    /// Priority, tenant and metrics for the limiter; present exactly when `limiter` is.
    pub admission: Option<crate::admission::Admission>,
    detector: Option<Arc<Mutex<OutlierDetector>>>,
    outlier_sink: OutlierSink,
    overflow: prometheus_client::metrics::family::Family<PoolReasonLabels, Counter>,
    /// The `inference` picker, for pools whose balancer is `inference`.
    pub inference: Option<Arc<switchyard_inference::InferencePicker>>,
    /// Attempts per endpoint (parallel to `endpoints`).
    pub picks: Vec<Counter>,
    /// Streamed inference responses per endpoint and model.
    pub model_metrics: PoolModelMetrics,
    /// Health or outlier detection can take endpoints out, so panic mode applies.
    guarded: bool,
    /// Slow start: a newly entered endpoint's share ramps up over the window.
    pub slow_start: Option<switchyard_health::SlowStartSettings>,
    panic_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl PoolEntry {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn http2(&self) -> bool {
        self.spec.protocol == Protocol::Http2
    }

    pub fn count_overflow(&self, reason: &'static str) {
        self.overflow
            .get_or_create(&PoolReasonLabels {
                pool: self.spec.name.clone(),
                reason,
            })
            .inc();
    }

    /// Panic mode (Envoy's healthy panic threshold): when fewer than `panic_threshold` percent
    /// of endpoints are available, health is ignored and any endpoint may be picked, because
    /// piling all traffic on the few survivors would take them down too.
    pub fn in_panic(&self) -> bool {
        if !self.guarded || self.endpoints.is_empty() {
            return false;
        }
        let available = self.endpoints.iter().filter(|e| e.is_available()).count();
        let panic = available * 100 < self.spec.panic_threshold as usize * self.endpoints.len();
        self.panic_gauge.set(i64::from(panic));
        panic
    }

    /// Slow start on the pick path: an endpoint still warming up is kept with probability equal
    /// to its ramped weight fraction; otherwise the caller picks again. Works with any picker.
    pub fn warming_declines(&self, index: usize) -> bool {
        let Some(settings) = &self.slow_start else {
            return false;
        };
        let Some(since) = self.endpoints[index].state.entered_at() else {
            return false;
        };
        let now = std::time::Instant::now();
        let fraction = switchyard_health::effective_weight(
            1.0,
            tokio::time::Instant::from_std(since),
            tokio::time::Instant::from_std(now),
            settings,
        );
        fraction < 1.0 && fastrand::f64() > fraction
    }

    /// Feed passive outlier detection (and the endpoint's failing flag, which steers retries)
    /// with one attempt's outcome.
    pub fn record_outcome(&self, index: usize, outcome: Outcome) {
        if outcome != Outcome::LocalOrigin {
            self.endpoints[index]
                .state
                .set_failing(outcome != Outcome::Success);
        }
        if let Some(d) = &self.detector {
            let address = self.endpoints[index].address();
            let event = d.lock().expect("outlier lock").record(
                address,
                outcome,
                tokio::time::Instant::now(),
            );
            if let Some(e) = event {
                (self.outlier_sink)(e);
            }
        }
    }
}

/// One config generation.
pub struct Gateway {
    pub config: Arc<Config>,
    pub routes: Vec<RouteEntry>,
    pub pools: Vec<Arc<PoolEntry>>,
    /// Route metrics for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Some route matches on the model, so bodies are read before routing.
    pub needs_model: bool,
    /// How much body is read to find the model: the largest `max_request_body` of any route.
    pub model_body_limit: u64,
    /// Model label values (shared by all generations).
    pub models: Arc<ModelLabels>,
    /// OpenTelemetry tracing; `None` when the config has no `tracing` section.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
}

impl Gateway {
    /// Whether every `inference` pool has heard back from its first scrape of each endpoint
    /// (succeeded or failed), and the longest a scrape may take: startup readiness waits on it,
    /// so a gateway says ready once its pickers see something.
    pub fn first_scrapes(&self) -> (bool, std::time::Duration) {
        let mut done = true;
        let mut bound = std::time::Duration::ZERO;
        for picker in self.pools.iter().filter_map(|p| p.inference.as_ref()) {
            done &= picker.scraped_once();
            bound = bound.max(picker.config().stale_after);
        }
        (done, bound)
    }

    pub fn route<B>(&self, req: &http::Request<B>) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

/// The settings that decide whether an existing connection pool can be kept across a reload.
fn client_key(p: &Pool) -> (Protocol, Duration, Duration) {
    (p.protocol, p.connect_timeout, p.idle_timeout)
}

fn build_client(p: &Pool) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(p.connect_timeout));
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(p.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if p.protocol == Protocol::Http2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// Owns the current generation and everything that must survive reloads: endpoint state,
/// connection pools, metrics.
pub struct GatewayHandle {
    current: ArcSwap<Gateway>,
    states: Mutex<StateRegistry>,
    conns: Mutex<ConnRegistry>,
    controls: Mutex<HashMap<String, PoolControl>>,
    pub metrics: Arc<Metrics>,
    models: Arc<ModelLabels>,
    access_log: OnceLock<AccessLog>,
}

impl GatewayHandle {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let mut states = StateRegistry::default();
        let mut conns = ConnRegistry::new();
        let mut controls = HashMap::new();
        let models = Arc::new(ModelLabels::new());
        let gateway = build(
            config,
            None,
            &mut states,
            &mut conns,
            &mut controls,
            &metrics,
            &models,
        )?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(gateway),
            states: Mutex::new(states),
            conns: Mutex::new(conns),
            controls: Mutex::new(controls),
            metrics,
            models,
            access_log: OnceLock::new(),
        }))
    }

    /// The current generation; hold it for the whole request.
    pub fn load(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Build a new generation from `config` and swap it in. On error nothing changes.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let mut states = self.states.lock().expect("state registry lock poisoned");
        let mut conns = self
            .conns
            .lock()
            .expect("connection registry lock poisoned");
        let mut controls = self.controls.lock().expect("pool control lock poisoned");
        let old = self.current.load_full();
        let gateway = build(
            config,
            Some(&old),
            &mut states,
            &mut conns,
            &mut controls,
            &self.metrics,
            &self.models,
        )?;
        controls.retain(|name, _| gateway.pools.iter().any(|p| p.name() == name));
        conns.retain(|(pool, addr), _| {
            gateway
                .pools
                .iter()
                .any(|p| p.name() == pool && p.h1.iter().any(|c| c.address() == *addr))
        });
        states.retain(|pool, addr| {
            gateway
                .pools
                .iter()
                .any(|p| p.name() == pool && p.endpoints.iter().any(|e| e.address() == addr))
        });
        self.current.store(Arc::new(gateway));
        Ok(())
    }

    /// Update gauges read at scrape time (ejected endpoints, concurrency limit and queue).
    pub fn refresh_gauges(&self) {
        let gateway = self.load();
        let controls = self.controls.lock().expect("pool control lock poisoned");
        for p in &gateway.pools {
            if let Some(c) = controls.get(p.name()) {
                let states: Vec<_> = p.endpoints.iter().map(|e| e.state.clone()).collect();
                c.refresh_gauges(&self.metrics, p.name(), &states);
            }
        }
    }

    /// The access log writer, started on first use (inside the runtime).
    pub fn access_log(&self) -> &AccessLog {
        self.access_log
            .get_or_init(|| AccessLog::spawn(self.metrics.access_log_dropped.clone()))
    }
}

fn build(
    config: Config,
    old: Option<&Gateway>,
    states: &mut StateRegistry,
    conns: &mut ConnRegistry,
    controls: &mut HashMap<String, PoolControl>,
    metrics: &Metrics,
    models: &Arc<ModelLabels>,
) -> Result<Gateway, String> {
    let old_clients: HashMap<&str, (&Pool, &UpstreamClient)> = old
        .map(|g| {
            g.pools
                .iter()
                .map(|p| (p.name(), (&p.spec, &p.client)))
                .collect()
        })
        .unwrap_or_default();

    let mut pools = Vec::with_capacity(config.pools.len());
    for p in &config.pools {
        let endpoints: Vec<Endpoint> = p
            .endpoints
            .iter()
            .map(|e| Endpoint {
                state: states.get_or_create(&p.name, e.address),
                weight: e.weight,
                zone: e.zone.clone(),
                region: e.region.clone(),
            })
            .collect();
        let authorities = p
            .endpoints
            .iter()
            .map(|e| Authority::try_from(e.address.to_string().as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("pool `{}`: {e}", p.name))?;
        let h1 = if p.protocol == Protocol::Http1 {
            p.endpoints
                .iter()
                .map(|e| {
                    let key = (p.name.clone(), e.address);
                    match conns.get(&key) {
                        Some(c) if c.same_settings(p.connect_timeout, p.idle_timeout) => c.clone(),
                        _ => {
                            let c = Arc::new(EndpointConns::new(
                                e.address,
                                p.connect_timeout,
                                p.idle_timeout,
                            ));
                            conns.insert(key, c.clone());
                            c
                        }
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let client = match old_clients.get(p.name.as_str()) {
            Some((spec, client)) if client_key(spec) == client_key(p) => (*client).clone(),
            _ => build_client(p),
        };
        let pool_label = PoolLabels {
            pool: p.name.clone(),
        };
        let error_counter = |kind| {
            metrics
                .upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    pool: p.name.clone(),
                    kind,
                })
                .clone()
        };
        let endpoint_states: Vec<_> = endpoints.iter().map(|e| e.state.clone()).collect();
        if let Some(old_pool) = old.and_then(|g| g.pools.iter().find(|o| o.name() == p.name)) {
            // Endpoints added by this reload start slow (at first start, all are equal).
            for s in &endpoint_states {
                if !old_pool.endpoints.iter().any(|e| Arc::ptr_eq(&e.state, s)) {
                    s.mark_entered(std::time::Instant::now());
                }
            }
        }
        let control = match controls.get_mut(&p.name) {
            Some(c) => {
                c.update(p, &endpoint_states, metrics);
                c
            }
            None => controls
                .entry(p.name.clone())
                .or_insert_with(|| PoolControl::new(p, &endpoint_states, metrics)),
        };
        let breaker = control.breaker.clone();
        let limiter = control.limiter.clone();
        let detector = control.detector.clone();
        let outlier_sink = control.sink(metrics, &p.name);
        let inference = control.inference_picker(p);
        let h2 = control.h2_endpoints();
        pools.push(Arc::new(PoolEntry {
            inference,
            model_metrics: PoolModelMetrics::new(
                metrics,
                &p.name,
                p.endpoints.iter().map(|e| e.address.to_string()).collect(),
            ),
            picks: p
                .endpoints
                .iter()
                .map(|e| {
                    metrics
                        .picks
                        .get_or_create(&switchyard_telemetry::metrics::EndpointLabels {
                            pool: p.name.clone(),
                            endpoint: e.address.to_string(),
                        })
                        .clone()
                })
                .collect(),
            guarded: p.health.is_some() || p.outlier.is_some(),
            slow_start: p
                .slow_start
                .as_ref()
                .map(switchyard_health::SlowStartSettings::from)
                .filter(|s| !s.window.is_zero()),
            panic_gauge: metrics.panic.get_or_create(&pool_label).clone(),
            breaker,
            admission: limiter
                .as_ref()
                .map(|_| crate::admission::Admission::new(p, metrics)),
            limiter,
            detector,
            outlier_sink,
            overflow: metrics.overflow.clone(),
            spec: p.clone(),
            endpoints,
            authorities,
            picker: switchyard_balance::build(&p.balancer),
            h1,
            h2,
            client,
            connect_errors: metrics
                .upstream_connect_errors
                .get_or_create(&pool_label)
                .clone(),
            timeouts: error_counter("timeout"),
            resets: error_counter("reset"),
        }));
    }

    let mut routes = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let mut targets = Vec::new();
        for t in r.targets() {
            let pool = pools
                .iter()
                .find(|p| p.name() == t.pool)
                .ok_or_else(|| format!("route `{}`: no pool named `{}`", r.name, t.pool))?
                .clone();
            if let Some(m) = t.model {
                models.intern(m);
            }
            targets.push(RouteTarget {
                pool,
                weight: t.weight,
                model: t.model.map(Arc::from),
                metrics: RouteMetrics::new(metrics, &r.name, t.pool),
            });
        }
        if targets.is_empty() {
            return Err(format!("route `{}`: no pool or backends", r.name));
        }
        if let Some(m) = r.matcher.model.as_deref().filter(|m| !m.ends_with('*')) {
            models.intern(m);
        }
        let cumulative_weights = targets
            .iter()
            .scan(0u64, |sum, t| {
                *sum += u64::from(t.weight);
                Some(*sum)
            })
            .collect();
        let retry = r.retry.as_ref().map(|c| {
            let kept = old
                .and_then(|g| g.routes.iter().find(|o| o.name == r.name))
                .and_then(|o| o.retry.clone())
                .filter(|o| o.config == *c);
            kept.unwrap_or_else(|| RouteRetry::new(c))
        });
        let old_route = old.and_then(|g| g.routes.iter().find(|o| o.name == r.name));
        let hedger = r.hedge.as_ref().map(|c| {
            old_route
                .filter(|o| o.hedge_config.as_ref() == Some(c))
                .and_then(|o| o.hedger.clone())
                .unwrap_or_else(|| {
                    let delay = match (c.delay, c.percentile) {
                        (Some(d), _) => HedgeDelay::Fixed(d),
                        (None, Some(p)) => HedgeDelay::Percentile(p),
                        (None, None) => HedgeDelay::Percentile(95.0),
                    };
                    let mut params = HedgeParams::new(delay);
                    params.budget_percent = c.budget_percent;
                    Hedger::new(params)
                })
        });
        routes.push(RouteEntry {
            hedge_metrics: hedger.as_ref().map(|_| HedgeMetrics::new(metrics, &r.name)),
            priority: r.priority,
            retry,
            hedger,
            hedge_config: r.hedge.clone(),
            retries: metrics.retries.clone(),
            retries_refused: metrics.retries_refused.clone(),
            name: r.name.clone(),
            matcher: RouteMatch::compile(&r.matcher)
                .map_err(|e| format!("route `{}`: {e}", r.name))?,
            targets: targets.into_boxed_slice(),
            cumulative_weights,
            timeout: r.timeout,
            idle_timeout: r.idle_timeout,
            max_request_body: r.max_request_body,
        });
    }

    let needs_model = routes.iter().any(|r| r.matcher.needs_model());
    let model_body_limit = routes.iter().map(|r| r.max_request_body).max().unwrap_or(0);
    // Tracing applies live: an unchanged section keeps its provider (and queued spans); a changed
    // one starts a new provider, and the old one flushes once the last request using it ends.
    let tracing = match (&config.tracing, old.and_then(|g| g.tracing.as_ref())) {
        (None, _) => None,
        (Some(c), Some(t)) if t.config() == c => Some(t.clone()),
        (Some(c), _) => {
            let t = crate::trace::Tracing::new(c)?;
            tracing::info!(endpoint = %c.otlp.endpoint, protocol = ?c.otlp.protocol, sample_ratio = c.sample_ratio, "tracing on");
            Some(t)
        }
    };
    Ok(Gateway {
        tracing,
        needs_model,
        model_body_limit,
        config: Arc::new(config),
        routes,
        pools,
        unrouted: RouteMetrics::new(metrics, "", ""),
        models: models.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn weighted_targets_split_by_weight_and_keep_their_model() {
        let yaml = "pools: [{name: a, endpoints: [127.0.0.1:1]}, {name: b, endpoints: [127.0.0.1:2]}]\nroutes:\n  - {name: plain, pool: a}\n  - name: split\n    rewrite: {model: m}\n    backends: [{pool: a, weight: 3}, {pool: b, weight: 1, model: m-b}]\n";
        let config = switchyard_config::parse(yaml, std::path::Path::new("t.yaml")).unwrap();
        let handle = GatewayHandle::new(config, Metrics::new()).unwrap();
        let g = handle.load();
        let (plain, split) = (&g.routes[0], &g.routes[1]);
        assert_eq!(plain.targets.len(), 1);
        assert!(plain.targets[0].model.is_none());
        assert!((0..100).all(|_| plain.pick_target() == 0));
        let models: Vec<_> = split.targets.iter().map(|t| t.model.as_deref()).collect();
        assert_eq!(models, [Some("m"), Some("m-b")]);
        assert_eq!(split.targets[1].pool.name(), "b");
        let n = 40_000;
        let to_b = (0..n).filter(|_| split.pick_target() == 1).count();
        let share = to_b as f64 / n as f64;
        // 1 in 4; the standard deviation of the share is 0.002.
        assert!((share - 0.25).abs() < 0.02, "share of b: {share}");
        // Config model names are label values from the start.
        assert!(g.models.get("m-b").is_some());
    }
}
