//! One immutable generation of routing state, built from a [`Config`], and the handle that swaps
//! generations atomically on reload. Requests load the current generation once and keep it, so an
//! in-flight request finishes on the config it started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use switchyard_balance::{Endpoint, StateRegistry};
use switchyard_config::{Config, Pool, Protocol};
use switchyard_telemetry::metrics::{PoolLabels, UpstreamErrorLabels};
use switchyard_telemetry::{AccessLog, Metrics};

use crate::models::{ModelLabels, PoolModelMetrics};
use crate::passive_health::PassiveHealth;
pub use crate::pool::PoolEntry;
use crate::pool_control::PoolControl;
pub use crate::route_entry::{HedgeMetrics, RouteEntry, RouteRetry, RouteTarget};
pub use crate::route_metrics::RouteMetrics;
use crate::upstream::upgrade::{build_client, client_key, UpgradeClient};
use crate::upstream::{EndpointConns, Transport, Upstream};
use routes::build_route;

mod routes;

type ConnRegistry = HashMap<(String, std::net::SocketAddr), Arc<EndpointConns>>;

/// One config generation.
pub struct Gateway {
    pub config: Arc<Config>,
    pub routes: Vec<RouteEntry>,
    pub pools: Vec<Arc<PoolEntry>>,
    /// Route metrics for requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
    /// Some route matches on the model, so bodies are read before routing.
    pub needs_model: bool,
    /// How much body is read to find the model: the largest `max_request_body` of any route.
    pub model_body_limit: u64,
    /// How long reading it may take: the longest `body_read_timeout` of any route.
    pub model_body_timeout: std::time::Duration,
    /// Model label values (shared by all generations).
    pub models: Arc<ModelLabels>,
    /// OpenTelemetry tracing; `None` when the config has no `tracing` section.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
    /// The named rate limits; an unchanged one keeps its buckets across reloads.
    pub rate_limits: Vec<Arc<crate::rate_limit::Limiter>>,
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
        self.routes
            .iter()
            .find(|r| r.matcher.matches(req) && r.matcher.client_matches(None))
    }
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
    /// Live numbers, the last requests and the tap, across generations.
    pub observer: Arc<crate::observe::Observer>,
    /// Where the serving config came from (file or etcd revision), for `/config`.
    pub source: Mutex<switchyard_config::SourceStatus>,
}

/// What every generation shares: metric families, model labels, live numbers.
struct Shared<'a> {
    metrics: &'a Metrics,
    models: &'a Arc<ModelLabels>,
    live: &'a crate::observe::LiveRegistry,
}

impl GatewayHandle {
    /// Returns once every `inference` pool has heard back from its first scrape of each
    /// endpoint (a failure counts), or after the longest a scrape may take plus 100 ms: what
    /// startup readiness waits on, so that a load balancer waiting on `/ready` never sends the
    /// first requests to a picker that scores blind. Traffic that comes earlier is served.
    pub async fn first_scrapes_done(&self) {
        let (mut done, bound) = self.load().first_scrapes();
        let until = tokio::time::Instant::now() + bound + std::time::Duration::from_millis(100);
        while !done && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            done = self.load().first_scrapes().0;
        }
    }

    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let mut states = StateRegistry::default();
        let mut conns = ConnRegistry::new();
        let mut controls = HashMap::new();
        let models = Arc::new(ModelLabels::new());
        let observer = Arc::new(crate::observe::Observer::new(config.admin.recent_requests));
        let shared = Shared {
            metrics: &metrics,
            models: &models,
            live: &observer.live,
        };
        let gateway = build(
            config,
            None,
            &mut states,
            &mut conns,
            &mut controls,
            &shared,
        )?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(gateway),
            states: Mutex::new(states),
            conns: Mutex::new(conns),
            controls: Mutex::new(controls),
            metrics,
            models,
            access_log: OnceLock::new(),
            observer,
            source: Mutex::new(switchyard_config::SourceStatus::default()),
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
        let shared = Shared {
            metrics: &self.metrics,
            models: &self.models,
            live: &self.observer.live,
        };
        let gateway = build(
            config,
            Some(&old),
            &mut states,
            &mut conns,
            &mut controls,
            &shared,
        )?;
        self.observer.live.retain(|route, pool| {
            gateway.routes.iter().any(|r| {
                r.name == route
                    && (pool.is_empty() || r.targets.iter().any(|t| t.metrics.pool() == pool))
            }) || route.is_empty()
        });
        controls.retain(|name, _| gateway.pools.iter().any(|p| p.name() == name));
        conns.retain(|(pool, addr), _| {
            gateway
                .pools
                .iter()
                .any(|p| p.name() == pool && p.upstream.has_h1(*addr))
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
    shared: &Shared<'_>,
) -> Result<Gateway, String> {
    let (metrics, models, live) = (shared.metrics, shared.models, shared.live);
    let old_clients: HashMap<&str, (&Pool, &UpgradeClient)> = old
        .map(|g| {
            g.pools
                .iter()
                .map(|p| (p.name(), (&p.spec, &p.upstream.upgrades)))
                .collect()
        })
        .unwrap_or_default();
    // Config-named models are label values before any metric cell of this generation exists.
    for r in &config.routes {
        let matched = r.matcher.model.as_deref().filter(|m| !m.ends_with('*'));
        for m in r.targets().iter().filter_map(|t| t.model).chain(matched) {
            models.pin(m);
        }
    }
    let mut pools = Vec::with_capacity(config.pools.len());
    for p in &config.pools {
        let old_client = old_clients.get(p.name.as_str()).copied();
        let mut entry = build_pool(p, old, old_client, states, conns, controls, metrics)?;
        if let Some(pool) = Arc::get_mut(&mut entry) {
            pool.rate = crate::pool::RateMeter::new(crate::capacity::attempts(pool));
            pool.locality =
                crate::pool::locality_tiers(p, config.runtime.locality.as_ref(), &pool.endpoints);
        }
        pools.push(entry);
    }
    // One Redis connection for the generation's shared limits, kept while its config is.
    let store = match &config.redis {
        None => None,
        Some(r) => match old
            .and_then(|g| g.rate_limits.iter().find_map(|l| l.store()))
            .filter(|s| s.config == *r)
        {
            Some(s) => Some(Arc::clone(s)),
            None => Some(Arc::new(crate::rate_limit::SharedStore::new(
                r,
                metrics
                    .rate_limited
                    .get_or_create(&switchyard_telemetry::metrics::RateLimitLabels {
                        limit: "redis".into(),
                        outcome: "store_error",
                    })
                    .clone(),
            )?)),
        },
    };
    let rate_limits: Vec<Arc<crate::rate_limit::Limiter>> = config
        .rate_limits
        .iter()
        .map(|l| {
            old.and_then(|g| {
                g.rate_limits
                    .iter()
                    .find(|o| {
                        o.config == *l
                            && o.store().map(Arc::as_ptr) == store.as_ref().map(Arc::as_ptr)
                    })
                    .cloned()
            })
            .unwrap_or_else(|| {
                Arc::new(crate::rate_limit::Limiter::new(l, metrics, store.as_ref()))
            })
        })
        .collect();
    let routes = config
        .routes
        .iter()
        .map(|r| {
            let mut route =
                build_route(r, old, &pools, shared, config.runtime.state_dir.as_deref())?;
            route.rate_limits = r
                .rate_limits
                .iter()
                .map(|name| {
                    rate_limits
                        .iter()
                        .find(|l| l.config.name == *name)
                        .cloned()
                        .ok_or_else(|| format!("route `{}`: no rate limit named `{name}`", r.name))
                })
                .collect::<Result<_, String>>()?;
            Ok::<_, String>(route)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let needs_model = routes.iter().any(|r| r.matcher.needs_model());
    let model_body_limit = routes.iter().map(|r| r.max_request_body).max().unwrap_or(0);
    let model_body_timeout = routes
        .iter()
        .map(|r| r.body_read_timeout)
        .max()
        .unwrap_or_default();
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
        model_body_timeout,
        config: Arc::new(config),
        routes,
        pools,
        unrouted: Arc::new(RouteMetrics::new(metrics, live, "", "")),
        models: models.clone(),
        rate_limits,
    })
}

/// One pool of a new generation, keeping what survives reloads: endpoint state, connections,
/// controls, and the upgrade client when its settings are unchanged.
fn build_pool(
    p: &Pool,
    old: Option<&Gateway>,
    old_client: Option<(&Pool, &UpgradeClient)>,
    states: &mut StateRegistry,
    conns: &mut ConnRegistry,
    controls: &mut HashMap<String, PoolControl>,
    metrics: &Metrics,
) -> Result<Arc<PoolEntry>, String> {
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
    // Read here, so a reload re-reads rotated files; one that cannot be read refuses the reload.
    let (tls, probe_tls) =
        match crate::tls::pool_connectors(p).map_err(|e| format!("pool `{}`: tls: {e}", p.name))? {
            Some(clients) => (Some(clients.traffic), clients.probe),
            None => (None, None),
        };
    let transport = if p.protocol == Protocol::Http1 {
        p.endpoints
            .iter()
            .map(|e| {
                let key = (p.name.clone(), e.address);
                match conns.get(&key) {
                    Some(c)
                        if c.same_settings(p.connect_timeout, p.idle_timeout, tls.as_deref()) =>
                    {
                        c.clone()
                    }
                    _ => {
                        let c = Arc::new(EndpointConns::new(
                            e.address,
                            p.connect_timeout,
                            p.idle_timeout,
                            tls.clone(),
                        ));
                        conns.insert(key, c.clone());
                        c
                    }
                }
            })
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    let client = match old_client {
        Some((spec, client)) if p.tls.is_none() && client_key(spec) == client_key(p) => {
            client.clone()
        }
        _ => build_client(p, tls.clone()),
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
    let pool_tls = crate::pool_control::PoolTls {
        traffic: tls.as_ref(),
        probe: probe_tls.as_ref(),
    };
    let control = match controls.get_mut(&p.name) {
        Some(c) => {
            c.update(p, &endpoint_states, metrics, pool_tls)?;
            c
        }
        None => {
            let control = PoolControl::new(p, &endpoint_states, metrics, pool_tls)?;
            controls.entry(p.name.clone()).or_insert(control)
        }
    };
    let breaker = control.breaker.clone();
    let limiter = control.limiter.clone();
    let detector = control.detector.clone();
    let outlier_sink = control.sink(metrics, &p.name);
    let inference = control.inference_picker(p);
    let transport = match p.protocol {
        Protocol::Http1 => Transport::Http1(transport.into_boxed_slice()),
        Protocol::Http2 => Transport::Http2(control.h2_endpoints().into_boxed_slice()),
        Protocol::Http3 => Transport::Http3(control.h3_endpoints().into_boxed_slice()),
    };
    let addresses: Vec<_> = p.endpoints.iter().map(|e| e.address).collect();
    Ok(Arc::new(PoolEntry {
        locality: None,
        rate: crate::pool::RateMeter::new(0),
        prefix_picks: inference.as_ref().map(|_| {
            switchyard_inference::PrefixOutcome::ALL.map(|o| {
                metrics
                    .inference_prefix_picks
                    .get_or_create(&switchyard_telemetry::metrics::PoolReasonLabels {
                        pool: p.name.clone(),
                        reason: o.as_str(),
                    })
                    .clone()
            })
        }),
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
        guarded: p.health.is_some()
            || p.outlier.is_some()
            || crate::pool::implicit_detection_may_panic(p),
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
        health: Arc::new(PassiveHealth::new(
            endpoint_states.into_boxed_slice(),
            detector,
            outlier_sink,
            control.head_latency.clone(),
        )),
        overflow: metrics.overflow.clone(),
        tls_errors: crate::tls::TlsErrorLog::default(),
        tls_error_counts: metrics.upstream_tls_errors.clone(),
        spec: p.clone(),
        endpoints,
        picker: switchyard_balance::build(&p.balancer),
        upstream: Upstream::new(transport, client, &addresses),
        connect_errors: metrics
            .upstream_connect_errors
            .get_or_create(&pool_label)
            .clone(),
        timeouts: error_counter("timeout"),
        resets: error_counter("reset"),
    }))
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
