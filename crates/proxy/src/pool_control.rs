//! The protective state of a pool that must outlive config generations: circuit breakers, the
//! concurrency limiter, active health checks and outlier detection. A reload updates these in
//! place (same settings keep their counters; endpoints that remain keep their health and
//! ejection history) instead of starting from scratch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use switchyard_balance::head_latency::LatencyHistogram;
use switchyard_balance::EndpointState;
use switchyard_config::health::OutlierDetection;
use switchyard_config::resilience::{CircuitLimits, Concurrency};
use switchyard_config::{Balancer, KvTokenizer, Pool, Protocol};
use switchyard_health::{
    spawn_head_watch, spawn_ticker, ActiveCheck, HealthChecker, OutlierDetector, OutlierEvent,
    OutlierSettings,
};
use switchyard_inference::{
    spawn_kv_subscriptions, spawn_scraper, EndpointSignals, InferencePicker, KvIndex,
    KvSubscriptions, MetricNames, PickerConfig, PrefixIndex, PromptTokenizer, ScrapeEvent,
    ScrapeSink, Scraper,
};
use switchyard_resilience::{
    CircuitBreaker, ConcurrencyLimiter, ConcurrencyMode, GradientParams, QueueParams,
};
use switchyard_telemetry::metrics::{PoolLabels, PoolReasonLabels, ScrapeErrorLabels};
use switchyard_telemetry::Metrics;
use tokio::task::JoinHandle;

use crate::tls::UpstreamConnector;
use crate::upstream::H2Endpoint;

/// A generation's TLS clients for the pool (none without `tls`), read when it was built.
#[derive(Clone, Copy)]
pub struct PoolTls<'a> {
    pub traffic: Option<&'a Arc<UpstreamConnector>>,
    pub probe: Option<&'a switchyard_health::ProbeTls>,
}

/// Applies an outlier event: endpoint flag, metric, log line.
pub type OutlierSink = Arc<dyn Fn(OutlierEvent) + Send + Sync>;

type ByAddress = Arc<ArcSwap<HashMap<SocketAddr, Arc<EndpointState>>>>;

/// Scraped signals and the prefix index of an `inference` pool. Rebuilt when the pool's
/// endpoints or settings change, since both are indexed by endpoint position.
type KvSockets = Vec<Option<(SocketAddr, Option<SocketAddr>)>>;

struct InferenceState {
    key: (switchyard_config::Balancer, Vec<SocketAddr>, KvSockets),
    signals: Vec<Arc<EndpointSignals>>,
    prefix: Arc<PrefixIndex>,
    _scraper: Scraper,
    /// The KV-event index and the subscriptions feeding it (`kv_events`).
    kv: Option<(Arc<KvIndex>, KvSubscriptions)>,
    /// The latency predictor (`predictor`).
    predictor: Option<Arc<switchyard_inference::LatencyPredictor>>,
}

/// One pool's long-lived controls.
pub struct PoolControl {
    inference: Option<InferenceState>,
    limits: CircuitLimits,
    pub breaker: CircuitBreaker,
    concurrency: Option<Concurrency>,
    pub limiter: Option<ConcurrencyLimiter>,
    outlier: Option<OutlierDetection>,
    pub detector: Option<Arc<Mutex<OutlierDetector>>>,
    ticker: Option<JoinHandle<()>>,
    /// The pool's recent response-head latencies (for adaptive per-try timeouts), refreshed
    /// with latency outlier judgement by `head_watch`.
    pub head_latency: Arc<ArcSwap<LatencyHistogram>>,
    head_watch: Option<JoinHandle<()>>,
    checker: HealthChecker,
    by_address: ByAddress,
    /// HTTP/2 pools: each endpoint's connection (parallel to the pool's endpoints).
    h2: Vec<Arc<H2Endpoint>>,
    /// HTTP/3 pools: each endpoint's QUIC connection.
    h3: Vec<Arc<crate::upstream::H3Endpoint>>,
}

impl Drop for PoolControl {
    fn drop(&mut self) {
        for t in [self.ticker.take(), self.head_watch.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        self.checker.shutdown();
    }
}

fn breaker(c: &CircuitLimits) -> CircuitBreaker {
    CircuitBreaker::new(switchyard_resilience::CircuitLimits {
        max_connections: c.max_connections,
        max_pending: c.max_pending,
        max_requests: c.max_requests,
        // Unset: the routes' retry budgets are the bound (Envoy: a budget replaces the breaker).
        max_retries: c.max_retries.unwrap_or(u32::MAX),
    })
}

fn limiter(c: &Concurrency) -> ConcurrencyLimiter {
    match c {
        Concurrency::Fixed(f) => ConcurrencyLimiter::new(
            ConcurrencyMode::Fixed(f.limit),
            QueueParams {
                max_queue: f.max_queue as usize,
                queue_timeout: f.queue_timeout,
                max_per_tenant: usize::MAX,
            },
        ),
        Concurrency::Adaptive(a) => ConcurrencyLimiter::new(
            ConcurrencyMode::Adaptive(GradientParams {
                min_limit: a.min_limit,
                max_limit: a.max_limit,
                sample_window: a.sample_window,
                min_rtt_interval: a.min_rtt_interval,
                ..GradientParams::default()
            }),
            QueueParams {
                max_queue: a.max_queue as usize,
                queue_timeout: a.queue_timeout,
                max_per_tenant: usize::MAX,
            },
        ),
    }
}

/// Turns outlier events into endpoint flags and metrics.
fn outlier_sink(
    by_address: ByAddress,
    ejections: prometheus_client::metrics::family::Family<PoolReasonLabels, Counter>,
    pool: String,
) -> impl Fn(OutlierEvent) + Send + Sync + 'static {
    move |event| match event {
        OutlierEvent::Ejected {
            address, reason, ..
        } => {
            if let Some(s) = by_address.load().get(&address) {
                s.set_ejected(true);
            }
            ejections
                .get_or_create(&PoolReasonLabels {
                    pool: pool.clone(),
                    reason: reason.as_str(),
                })
                .inc();
            tracing::info!(pool = %pool, endpoint = %address, reason = reason.as_str(), "endpoint ejected");
        }
        OutlierEvent::Returned { address } => {
            if let Some(s) = by_address.load().get(&address) {
                s.set_ejected(false);
                s.mark_entered(std::time::Instant::now());
            }
            tracing::info!(pool = %pool, endpoint = %address, "endpoint returned from ejection");
        }
    }
}

/// Turns scrape events into a counter and log lines: a warning the first time an endpoint fails
/// for a cause since it last scraped cleanly, and a line when it recovers.
fn scrape_sink(
    errors: prometheus_client::metrics::family::Family<ScrapeErrorLabels, Counter>,
    pool: String,
) -> ScrapeSink {
    Arc::new(move |event| match event {
        ScrapeEvent::Failed {
            endpoint,
            error,
            first,
        } => {
            errors
                .get_or_create(&ScrapeErrorLabels {
                    pool: pool.clone(),
                    endpoint: endpoint.to_string(),
                    cause: error.cause(),
                })
                .inc();
            if first {
                tracing::warn!(pool = %pool, endpoint = %endpoint, cause = error.cause(), error = %error, "metrics scrape failed");
            }
        }
        ScrapeEvent::Recovered { endpoint } => {
            tracing::info!(pool = %pool, endpoint = %endpoint, "metrics scrape recovered");
        }
    })
}

impl PoolControl {
    /// Controls for a new pool. Must run inside the runtime (health checks spawn tasks).
    pub fn new(
        spec: &Pool,
        states: &[Arc<EndpointState>],
        metrics: &Metrics,
        tls: PoolTls<'_>,
    ) -> Result<Self, String> {
        let by_address: ByAddress = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let transitions = metrics.health_transitions.clone();
        let pool = spec.name.clone();
        let entered = by_address.clone();
        let checker = HealthChecker::new(
            None,
            states.iter().cloned(),
            Arc::new(move |e: switchyard_health::HealthEvent| {
                let reason = if e.healthy { "healthy" } else { "unhealthy" };
                if e.healthy {
                    if let Some(s) = entered.load().get(&e.address) {
                        s.mark_entered(std::time::Instant::now());
                    }
                }
                transitions
                    .get_or_create(&PoolReasonLabels {
                        pool: pool.clone(),
                        reason,
                    })
                    .inc();
                tracing::info!(pool = %pool, endpoint = %e.address, healthy = e.healthy, reason = %e.reason, "health changed");
            }),
        );
        let mut control = Self {
            inference: None,
            limits: spec.limits.clone(),
            breaker: breaker(&spec.limits),
            concurrency: None,
            limiter: None,
            outlier: None,
            detector: None,
            ticker: None,
            head_latency: Arc::default(),
            head_watch: None,
            checker,
            by_address,
            h2: Vec::new(),
            h3: Vec::new(),
        };
        control.update(spec, states, metrics, tls)?;
        Ok(control)
    }

    /// Apply a new generation's settings for this pool.
    pub fn update(
        &mut self,
        spec: &Pool,
        states: &[Arc<EndpointState>],
        metrics: &Metrics,
        tls: PoolTls<'_>,
    ) -> Result<(), String> {
        // Read first: a tokenizer file that cannot be read fails the reload before anything of
        // the running generation's pool changed.
        let tokenizer = self.kv_tokenizer(spec)?;
        self.by_address.store(Arc::new(
            states.iter().map(|s| (s.address, s.clone())).collect(),
        ));
        self.update_h2(spec, states, tls.traffic);
        self.h3 = match spec.protocol {
            Protocol::Http3 => crate::upstream::reconcile_h3(
                &self.h3,
                states.iter().map(|s| s.address),
                tls.traffic,
                spec.connect_timeout,
            ),
            _ => Vec::new(),
        };
        if spec.limits != self.limits {
            self.limits = spec.limits.clone();
            self.breaker = breaker(&spec.limits);
        }
        if spec.concurrency != self.concurrency {
            self.concurrency = spec.concurrency.clone();
            self.limiter = spec.concurrency.as_ref().map(limiter);
        }
        if let (Some(l), Some(c)) = (&self.limiter, &spec.concurrency) {
            // In place, so a reload that only changes fairness keeps the queue.
            l.set_max_per_tenant(spec.fairness.as_ref().map_or(usize::MAX, |f| {
                f.max_queued_per_tenant(c.max_queue()) as usize
            }));
        }
        self.checker.update(
            spec.health.as_ref().map(|h| ActiveCheck {
                tls: tls.probe.cloned(),
                ..ActiveCheck::from(h)
            }),
            states.iter().cloned(),
        );
        self.update_inference(spec, states, metrics, tokenizer);
        let addrs = states.iter().map(|s| s.address);
        let before = self.detector.as_ref().map(Arc::as_ptr);
        let outlier = spec
            .outlier
            .clone()
            .or_else(|| OutlierDetection::implicit(states.len()));
        match (&outlier, &self.detector) {
            (None, _) => {
                if let Some(t) = self.ticker.take() {
                    t.abort();
                }
                self.detector = None;
                self.outlier = None;
                for s in states {
                    s.set_ejected(false);
                }
            }
            (Some(cfg), Some(detector)) => {
                if Some(cfg) != self.outlier.as_ref() {
                    self.outlier = Some(cfg.clone());
                }
                detector
                    .lock()
                    .expect("outlier lock")
                    .update(Some(OutlierSettings::for_pool(cfg, states.len())), addrs);
            }
            (Some(cfg), None) => {
                let detector = Arc::new(Mutex::new(OutlierDetector::new(
                    OutlierSettings::for_pool(cfg, states.len()),
                    addrs,
                )));
                let sink = outlier_sink(
                    self.by_address.clone(),
                    metrics.ejections.clone(),
                    spec.name.clone(),
                );
                self.ticker = Some(spawn_ticker(&detector, sink));
                self.detector = Some(detector);
                self.outlier = Some(cfg.clone());
            }
        }
        if self.head_watch.is_none() || before != self.detector.as_ref().map(Arc::as_ptr) {
            self.spawn_head_watch(metrics, &spec.name);
        }
        Ok(())
    }

    /// (Re)start the pool's head-latency reader, for the current detector.
    fn spawn_head_watch(&mut self, metrics: &Metrics, pool: &str) {
        if let Some(t) = self.head_watch.take() {
            t.abort();
        }
        let by_address = self.by_address.clone();
        let sink = self.sink(metrics, pool);
        self.head_watch = Some(spawn_head_watch(
            move || by_address.load().values().cloned().collect(),
            &self.head_latency,
            self.detector.as_ref().map(Arc::downgrade),
            move |e| sink(e),
        ));
    }

    /// HTTP/2 pools keep an endpoint's connection while its address and connection settings
    /// stay the same.
    fn update_h2(
        &mut self,
        spec: &Pool,
        states: &[Arc<EndpointState>],
        tls: Option<&Arc<UpstreamConnector>>,
    ) {
        if spec.protocol != Protocol::Http2 {
            self.h2.clear();
            return;
        }
        let old = std::mem::take(&mut self.h2);
        self.h2 = states
            .iter()
            .map(|s| {
                old.iter()
                    .find(|h| {
                        h.address() == s.address
                            && h.same_settings(
                                spec.connect_timeout,
                                spec.idle_timeout,
                                tls.map(|t| &**t),
                            )
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(H2Endpoint::new(
                            s.address,
                            spec.connect_timeout,
                            spec.idle_timeout,
                            tls.cloned(),
                        ))
                    })
            })
            .collect();
    }

    /// This generation's HTTP/2 connections, parallel to the pool's endpoints (empty for
    /// HTTP/1 pools).
    pub fn h2_endpoints(&self) -> Vec<Arc<H2Endpoint>> {
        self.h2.clone()
    }

    /// This generation's HTTP/3 connections, parallel to the pool's endpoints (empty for other
    /// pools).
    pub fn h3_endpoints(&self) -> Vec<Arc<crate::upstream::H3Endpoint>> {
        self.h3.clone()
    }

    /// The tokenizer `kv_events` keys prompts with: the one already loaded when its file is
    /// unchanged (a reload does not read a multi-MB file again), else read now.
    fn kv_tokenizer(&self, spec: &Pool) -> Result<PromptTokenizer, String> {
        let Balancer::Inference {
            kv_events: Some(kv),
            ..
        } = &spec.balancer
        else {
            return Ok(PromptTokenizer::Sim);
        };
        match &kv.tokenizer {
            KvTokenizer::Sim => Ok(PromptTokenizer::Sim),
            KvTokenizer::Huggingface(path) => {
                let loaded = self.inference.as_ref().and_then(|i| i.kv.as_ref());
                match loaded.map(|(index, _)| index.tokenizer()) {
                    Some(t) if t.path() == Some(path.as_path()) => Ok(t.clone()),
                    _ => PromptTokenizer::load(path)
                        .map_err(|e| format!("pool `{}`: kv_events.tokenizer: {e}", spec.name)),
                }
            }
        }
    }

    fn update_inference(
        &mut self,
        spec: &Pool,
        states: &[Arc<EndpointState>],
        metrics: &Metrics,
        tokenizer: PromptTokenizer,
    ) {
        let Balancer::Inference {
            metrics: flavour,
            scrape_interval,
            stale_after,
            kv_events,
            predictor,
            ..
        } = &spec.balancer
        else {
            self.inference = None;
            return;
        };
        let kv_sockets: KvSockets = match kv_events {
            Some(kv) => states
                .iter()
                .map(|s| {
                    let own = spec.endpoints.iter().find(|e| e.address == s.address);
                    kv.sockets(
                        s.address,
                        own.and_then(|e| e.kv_events),
                        own.and_then(|e| e.kv_replay),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let key = (
            spec.balancer.clone(),
            states.iter().map(|s| s.address).collect::<Vec<_>>(),
            kv_sockets.clone(),
        );
        if self.inference.as_ref().is_some_and(|i| i.key == key) {
            return;
        }
        let signals: Vec<_> = states
            .iter()
            .map(|_| Arc::new(EndpointSignals::new()))
            .collect();
        // The config accepts only preset names.
        let names = MetricNames::preset(flavour).unwrap_or_else(MetricNames::vllm);
        let scraper = spawn_scraper(
            states
                .iter()
                .map(|s| s.address)
                .zip(signals.iter().cloned())
                .collect(),
            names,
            (*scrape_interval, *scrape_interval * 2),
            *stale_after,
            scrape_sink(metrics.scrape_errors.clone(), spec.name.clone()),
        );
        let kv = kv_events.as_ref().map(|kv| {
            let index = Arc::new(
                KvIndex::new(
                    states.len(),
                    PickerConfig::default().block_tokens,
                    kv.stale_for,
                )
                .with_tokenizer(tokenizer),
            );
            let subscriptions = spawn_kv_subscriptions(kv_sockets, index.clone());
            (index, subscriptions)
        });
        self.inference = Some(InferenceState {
            key,
            signals,
            prefix: Arc::new(PrefixIndex::new()),
            _scraper: scraper,
            kv,
            predictor: predictor
                .as_ref()
                .map(|p| crate::predictor::build(p, states.len(), metrics, &spec.name)),
        });
    }

    /// This generation's `inference` picker, sharing the pool's signals and prefix index.
    pub fn inference_picker(&self, spec: &Pool) -> Option<Arc<InferencePicker>> {
        let state = self.inference.as_ref()?;
        let Balancer::Inference {
            stale_after,
            weights,
            stickiness,
            saturation,
            orca,
            ..
        } = &spec.balancer
        else {
            return None;
        };
        let config = PickerConfig {
            weights: *weights,
            stickiness: *stickiness,
            max_waiting: saturation.max_waiting,
            max_kv_usage: saturation.max_kv_usage,
            stale_after: *stale_after,
            orca: *orca,
            ..PickerConfig::default()
        };
        let mut picker = InferencePicker::new(config, state.signals.clone(), state.prefix.clone());
        if let Some((index, _)) = &state.kv {
            picker = picker.with_kv_index(index.clone());
        }
        if let Some(p) = &state.predictor {
            picker = picker.with_predictor(p.clone());
        }
        Some(Arc::new(picker))
    }

    /// Where ejections found on the request path (by `record`) are applied.
    pub fn sink(&self, metrics: &Metrics, pool: &str) -> OutlierSink {
        Arc::new(outlier_sink(
            self.by_address.clone(),
            metrics.ejections.clone(),
            pool.to_string(),
        ))
    }

    /// Refresh gauges that are read rather than counted.
    pub fn refresh_gauges(&self, metrics: &Metrics, pool: &str, states: &[Arc<EndpointState>]) {
        let labels = PoolLabels {
            pool: pool.to_string(),
        };
        if let Some(p) = self.inference.as_ref().and_then(|i| i.predictor.as_ref()) {
            crate::predictor::refresh_gauges(p, metrics, &labels);
        }
        let ejected = states.iter().filter(|s| s.is_ejected()).count();
        metrics.ejected.get_or_create(&labels).set(ejected as i64);
        if let Some(l) = &self.limiter {
            let stats = l.stats();
            metrics
                .concurrency_limit
                .get_or_create(&labels)
                .set(i64::from(stats.limit));
            metrics
                .concurrency_queued
                .get_or_create(&labels)
                .set(stats.queued as i64);
            metrics
                .admission_queued_tenants
                .get_or_create(&labels)
                .set(stats.queued_tenants as i64);
            for (priority, queued) in ["sheddable", "standard", "critical"]
                .into_iter()
                .zip(stats.queued_by_priority)
            {
                metrics
                    .admission_queue_depth
                    .get_or_create(&switchyard_telemetry::metrics::PoolPriorityLabels {
                        pool: pool.to_string(),
                        priority,
                    })
                    .set(queued as i64);
            }
        }
    }
}
