//! Every metric Switchyard exports, named in one place. Names follow Prometheus conventions
//! (`_total` counters, `_seconds` units); label sets are small and bounded by config (route,
//! pool, listener names) or by fixed enums (status code, reason).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod config_source;
mod labels;
mod predictor;
mod tcp;
mod xds;

pub use config_source::{ConfigSourceMetrics, SourceReasonLabels};
pub use labels::*;
pub use predictor::{PoolObjectiveLabels, PoolOutcomeLabels, PredictorMetrics, SLO_OUTCOMES};
pub use tcp::{EndpointDirectionLabels, ListenerDirectionLabels, TcpMetrics};
pub use xds::{NodeLabels, NodeTypeLabels, NodeVersionLabels, ReloadLabels, XdsMetrics};

/// Handles to all gateway metrics plus the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_connect_errors: Family<PoolLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub downstream_connections: Family<ListenerLabels, Gauge>,
    pub downstream_connections_total: Family<ListenerLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub tls_certificate_reloads: Family<ListenerResultLabels, Counter>,
    pub access_log_dropped: Counter,
    pub retries: Family<RouteReasonLabels, Counter>,
    pub retries_refused: Family<RouteReasonLabels, Counter>,
    pub hedges: Family<RouteNameLabels, Counter>,
    pub hedges_won: Family<RouteNameLabels, Counter>,
    pub hedges_refused: Family<RouteReasonLabels, Counter>,
    pub overflow: Family<PoolReasonLabels, Counter>,
    pub inference_prefix_picks: Family<PoolReasonLabels, Counter>,
    pub ejections: Family<PoolReasonLabels, Counter>,
    pub ejected: Family<PoolLabels, Gauge>,
    pub health_transitions: Family<PoolReasonLabels, Counter>,
    pub upstream_tls_errors: Family<PoolReasonLabels, Counter>,
    pub panic: Family<PoolLabels, Gauge>,
    pub concurrency_limit: Family<PoolLabels, Gauge>,
    pub concurrency_queued: Family<PoolLabels, Gauge>,
    pub admitted: Family<PoolPriorityLabels, Counter>,
    pub admission_queued: Family<PoolPriorityLabels, Counter>,
    pub admission_rejected: Family<PoolPriorityReasonLabels, Counter>,
    pub admission_wait: Family<PoolPriorityLabels, Histogram, fn() -> Histogram>,
    pub admission_queue_depth: Family<PoolPriorityLabels, Gauge>,
    pub admission_queued_tenants: Family<PoolLabels, Gauge>,
    pub picks: Family<EndpointLabels, Counter>,
    pub scrape_errors: Family<ScrapeErrorLabels, Counter>,
    pub stream_ttft: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub stream_gap: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    pub inference_ttft: Family<ModelEndpointLabels, Histogram, fn() -> Histogram>,
    pub inference_itl: Family<ModelEndpointLabels, Histogram, fn() -> Histogram>,
    pub inference_output_tokens: Family<ModelEndpointLabels, Histogram, fn() -> Histogram>,
    pub inference_tokens_per_second: Family<ModelEndpointLabels, Histogram, fn() -> Histogram>,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_dropped: Family<MirrorLabels, Counter>,
    pub mirror_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub rate_limited: Family<RateLimitLabels, Counter>,
    pub rate_limit_tokens: Family<RateLimitLabels, Counter>,
    pub rollout_canary_percent: Family<RouteNameLabels, Gauge>,
    pub rollout_analyses: Family<RolloutLabels, Counter>,
    pub rollout_transitions: Family<RolloutLabels, Counter>,
    pub rollout_check_value: Family<RolloutCheckLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `protocol: tcp` listeners.
    pub tcp: TcpMetrics,
    /// The config source (etcd) when the config is not a local file.
    pub config_source: ConfigSourceMetrics,
    /// `inference` pools' latency predictors.
    pub predictor: PredictorMetrics,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~75 s: covers proxied API calls and long LLM streams.
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

fn gap_histogram() -> Histogram {
    // 0.1 ms .. ~3 s: inter-token gaps.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

fn output_tokens_histogram() -> Histogram {
    // 1 .. 32768 tokens per response.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

fn tokens_per_second_histogram() -> Histogram {
    // 1 .. 8192 tokens/s per stream.
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let tcp = TcpMetrics::register(&mut registry);
        let predictor = PredictorMetrics::register(&mut registry);
        let config_source = ConfigSourceMetrics::register(&mut registry);
        let requests = Family::default();
        registry.register(
            "switchyard_requests",
            "Requests completed, by route, pool and response status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "switchyard_request_duration_seconds",
            "Time from request headers to the last response byte",
            request_duration.clone(),
        );
        let upstream_connect_errors = Family::default();
        registry.register(
            "switchyard_upstream_connect_errors",
            "Failed connection attempts to upstream endpoints",
            upstream_connect_errors.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "switchyard_upstream_errors",
            "Upstream failures by kind (timeout, reset); failed connections are \
             switchyard_upstream_connect_errors",
            upstream_errors.clone(),
        );
        let downstream_connections = Family::default();
        registry.register(
            "switchyard_downstream_connections",
            "Open client connections",
            downstream_connections.clone(),
        );
        let downstream_connections_total = Family::default();
        registry.register(
            "switchyard_downstream_connections_accepted",
            "Client connections accepted",
            downstream_connections_total.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "switchyard_requests_rejected",
            "Requests answered by the gateway itself, by reason",
            rejected.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "switchyard_config_reloads",
            "Configuration reload attempts by result",
            config_reloads.clone(),
        );
        // Both series exist from the start, so `increase()` sees the first failure (a counter
        // born at 1 has no increase to show).
        for result in ["success", "failure"] {
            drop(config_reloads.get_or_create(&ResultLabels { result }));
        }
        let tls_certificate_reloads = Family::default();
        registry.register(
            "switchyard_tls_certificate_reloads",
            "Re-reads of a TLS listener's certificate and key by result; on failure the previous \
             certificate keeps serving",
            tls_certificate_reloads.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "switchyard_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let mut family = |name: &str, help: &str| {
            let f = Family::<RouteReasonLabels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let retries = family(
            "switchyard_retries",
            "Retries sent (hedges not included), by route and reason (connect-failure, reset, \
             5xx, timeout, unavailable, ...)",
        );
        let retries_refused = family(
            "switchyard_retries_refused",
            "Retries the policy wanted but the retry budget or breaker refused, by reason",
        );
        let hedges_refused = family(
            "switchyard_hedges_refused",
            "Hedges due (first attempt slower than the hedge delay) but not sent, by reason \
             (budget: the hedge budget was spent; no_endpoint: no untried endpoint)",
        );
        let mut route_counter = |name: &str, help: &str| {
            let f = Family::<RouteNameLabels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let hedges = route_counter(
            "switchyard_hedges",
            "Hedges sent: second attempts raced against a slow first one",
        );
        let hedges_won = route_counter(
            "switchyard_hedges_won",
            "Hedges whose response headers came before the first attempt's, so the hedge's \
             response was used",
        );
        let mut pool_family = |name: &str, help: &str| {
            let f = Family::<PoolReasonLabels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let overflow = pool_family(
            "switchyard_overflow",
            "Requests refused by a circuit breaker or the concurrency limit, by which",
        );
        let inference_prefix_picks = pool_family(
            "switchyard_inference_prefix_picks",
            "`inference` pool picks by where they went relative to the endpoint holding most of \
             the prompt's prefix (holder, moved: its load outweighed the hit, holder_saturated: \
             the saturation filter left it out, unheld: nobody holds it)",
        );
        let ejections = pool_family(
            "switchyard_outlier_ejections",
            "Endpoints ejected by outlier detection, by detector",
        );
        let health_transitions = pool_family(
            "switchyard_health_transitions",
            "Active health check transitions, by new state (healthy, unhealthy)",
        );
        let upstream_tls_errors = pool_family(
            "switchyard_upstream_tls_errors",
            "Attempts that failed on TLS with an upstream, by cause (certificate_untrusted, \
             certificate_name_mismatch, certificate_expired, client_certificate_required, ...)",
        );
        let mut pool_gauge = |name: &str, help: &str| {
            let f = Family::<PoolLabels, Gauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        let ejected = pool_gauge(
            "switchyard_endpoints_ejected",
            "Endpoints ejected right now",
        );
        let panic = pool_gauge(
            "switchyard_panic_mode",
            "1 while too few endpoints are available and the pool routes to all of them",
        );
        let concurrency_limit = pool_gauge(
            "switchyard_concurrency_limit",
            "Current concurrency limit of the pool (adaptive or fixed)",
        );
        let concurrency_queued = pool_gauge(
            "switchyard_concurrency_queued",
            "Requests waiting for a concurrency permit",
        );
        let admission_queued_tenants = pool_gauge(
            "switchyard_admission_queued_tenants",
            "Tenants with a request waiting for a concurrency permit",
        );
        let admitted = Family::<PoolPriorityLabels, Counter>::default();
        registry.register(
            "switchyard_admission_admitted",
            "Requests given a concurrency permit (at once or after queueing), by priority",
            admitted.clone(),
        );
        let admission_queued = Family::<PoolPriorityLabels, Counter>::default();
        registry.register(
            "switchyard_admission_queued",
            "Requests that waited in the concurrency queue, by priority",
            admission_queued.clone(),
        );
        let admission_rejected = Family::<PoolPriorityReasonLabels, Counter>::default();
        registry.register(
            "switchyard_admission_rejected",
            "Requests refused a concurrency permit, by priority and reason (shed, queue_full, \
             tenant_queue_full, queue_timeout)",
            admission_rejected.clone(),
        );
        let admission_wait =
            Family::<PoolPriorityLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "switchyard_admission_wait_seconds",
            "Time queued requests waited for a concurrency permit (admitted or not), by priority",
            admission_wait.clone(),
        );
        let admission_queue_depth = Family::<PoolPriorityLabels, Gauge>::default();
        registry.register(
            "switchyard_admission_queue_depth",
            "Requests waiting for a concurrency permit, by priority",
            admission_queue_depth.clone(),
        );
        let picks = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "switchyard_upstream_picks",
            "Attempts sent to each endpoint (first tries, retries and hedges)",
            picks.clone(),
        );
        let scrape_errors = Family::<ScrapeErrorLabels, Counter>::default();
        registry.register(
            "switchyard_scrape_errors",
            "Failed metric scrapes of `inference` pool endpoints, by cause (connect, request, \
             timeout, http_status, body, too_large, parse, missing_metrics)",
            scrape_errors.clone(),
        );
        let stream_ttft = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "switchyard_stream_first_chunk_seconds",
            "Streamed (SSE) responses: request start to the first body chunk (time to first token)",
            stream_ttft.clone(),
        );
        let stream_gap = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            gap_histogram,
        );
        registry.register(
            "switchyard_stream_chunk_gap_seconds",
            "Streamed (SSE) responses: time between consecutive body chunks (inter-token latency)",
            stream_gap.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "switchyard_tokens",
            "Tokens reported by upstreams in responses' `usage` (streamed, and JSON responses of \
             requests whose model the gateway read), by route, pool, model and kind",
            tokens.clone(),
        );
        let mut model_histogram = |name: &str, help: &str, buckets: fn() -> Histogram| {
            let f =
                Family::<ModelEndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    buckets,
                );
            registry.register(name, help, f.clone());
            f
        };
        let inference_ttft = model_histogram(
            "switchyard_inference_time_to_first_token_seconds",
            "Streamed inference responses: request start to the first body chunk, by model, pool \
             and endpoint",
            duration_histogram,
        );
        let inference_itl = model_histogram(
            "switchyard_inference_inter_token_latency_seconds",
            "Streamed inference responses: time between consecutive chunks carrying generated \
             text, by model, pool and endpoint",
            gap_histogram,
        );
        let inference_output_tokens = model_histogram(
            "switchyard_inference_output_tokens",
            "Streamed inference responses: output tokens per response (`usage`, else counted \
             text events), by model, pool and endpoint",
            output_tokens_histogram,
        );
        let inference_tokens_per_second = model_histogram(
            "switchyard_inference_output_tokens_per_second",
            "Streamed inference responses: decode rate, (output tokens - 1) / (last chunk - first \
             chunk), by model, pool and endpoint",
            tokens_per_second_histogram,
        );
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "switchyard_mirror_requests",
            "Copies of requests sent to a mirror pool, by route, mirror pool and outcome (2xx, \
             3xx, 4xx, 5xx, error, timeout); their responses are drained and discarded",
            mirror_requests.clone(),
        );
        let mirror_dropped = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "switchyard_mirror_dropped",
            "Copies due to a mirror pool but not sent, by reason (in_flight: the mirror's \
             max_in_flight was reached; overflow: its pool's circuit breaker; no_endpoint; body)",
            mirror_dropped.clone(),
        );
        let mirror_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "switchyard_mirror_duration_seconds",
            "Mirrored copies that got a response: send to the response's last byte, by route and \
             mirror pool (compare with switchyard_request_duration_seconds of the primary)",
            mirror_duration.clone(),
        );
        let rollout_canary_percent = Family::<RouteNameLabels, Gauge>::default();
        registry.register(
            "switchyard_rollout_canary_percent",
            "A rollout's canary share of its route's requests, in percent",
            rollout_canary_percent.clone(),
        );
        let rollout_analyses = Family::<RolloutLabels, Counter>::default();
        registry.register(
            "switchyard_rollout_analyses",
            "Rollout analyses by verdict (what: pass, fail, inconclusive)",
            rollout_analyses.clone(),
        );
        let rollout_transitions = Family::<RolloutLabels, Counter>::default();
        registry.register(
            "switchyard_rollout_transitions",
            "Rollout state changes, by the phase entered (what: progressing, paused, promoted, \
             rolled_back, aborted)",
            rollout_transitions.clone(),
        );
        let rollout_check_value =
            Family::<RolloutCheckLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "switchyard_rollout_check_value",
            "A rollout check's value at the last conclusive analysis: canary minus baseline \
             error rate, or canary over baseline p99",
            rollout_check_value.clone(),
        );
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "switchyard_rate_limit",
            "Rate limit decisions, by limit and outcome (allowed, limited: refused with 429, \
             shadow_limited: over a shadow limit and let through, untracked: no room for the key)",
            rate_limited.clone(),
        );
        let rate_limit_tokens = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "switchyard_rate_limit_tokens",
            "LLM tokens of token limits, by limit and outcome (reserved: taken up front for \
             requests; settled: what their responses used, the reservation where they reported \
             none; refunded: reserved and given back)",
            rate_limit_tokens.clone(),
        );
        Arc::new(Self {
            rate_limit_tokens,
            rate_limited,
            rollout_canary_percent,
            rollout_analyses,
            rollout_transitions,
            rollout_check_value,
            mirror_requests,
            mirror_dropped,
            mirror_duration,
            tokens,
            inference_ttft,
            inference_itl,
            inference_output_tokens,
            inference_tokens_per_second,
            stream_ttft,
            stream_gap,
            picks,
            scrape_errors,
            registry,
            retries,
            retries_refused,
            hedges,
            hedges_won,
            hedges_refused,
            overflow,
            inference_prefix_picks,
            ejections,
            ejected,
            health_transitions,
            upstream_tls_errors,
            panic,
            concurrency_limit,
            concurrency_queued,
            admitted,
            admission_queued,
            admission_rejected,
            admission_wait,
            admission_queue_depth,
            admission_queued_tenants,
            requests,
            request_duration,
            upstream_connect_errors,
            upstream_errors,
            downstream_connections,
            downstream_connections_total,
            rejected,
            config_reloads,
            tls_certificate_reloads,
            access_log_dropped,
            tcp,
            config_source,
            predictor,
        })
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
