//! End-of-request bookkeeping. A [`Finish`] rides along with the response body and records
//! metrics and the access log line when it drops, which for a stream is after its last byte (or
//! when the client goes away), so durations and byte counts cover the whole exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method, Version};
use switchyard_balance::InFlight;
use switchyard_telemetry::{AccessLog, AccessRecord};
use tokio::time::Instant;

pub use crate::models::RequestModel;
use crate::observe::{Observer, RequestMeta, RequestRecord};
use crate::passive_health::PassiveHealth;
use crate::route_metrics::RouteMetrics;
use crate::trace::RequestSpan;
use switchyard_health::Outcome;
use switchyard_resilience::{BreakerGuard, RequestGuard, RetryGuard};

/// Details only kept when the listener writes an access log.
pub struct AccessInfo {
    pub log: AccessLog,
    pub listener: Arc<str>,
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    pub method: Method,
    pub path: String,
    pub version: Version,
    /// The connection's verified client certificate.
    pub client_cert: Option<Arc<crate::tls::ClientIdentity>>,
}

pub struct Finish {
    start: Instant,
    /// The metrics of the matched route's target (or of unrouted requests), once known.
    metrics: Option<Arc<RouteMetrics>>,
    /// The target's clients speak the OpenAI API (an `inference` pool): errors in its shape.
    openai: bool,
    status: u16,
    bytes: u64,
    error: Option<&'static str>,
    upstream: Option<InFlight>,
    /// The upstream endpoint's pool health and index, for outlier detection.
    health: Option<(Arc<PassiveHealth>, usize)>,
    access: Option<Box<AccessInfo>>,
    /// An `inference` pick to release (its in-flight tokens) when the exchange ends, and to
    /// train its latency predictor with.
    inference: Option<Box<InferencePick>>,
    /// A streamed response whose success outlier detection hears of when it ends cleanly.
    success_deferred: bool,
    /// The request's place in its route's retry budget, and the retries it took: held to the
    /// end of the body, as Envoy counts active requests and retries (a stream's headers come
    /// long before its end; counting it only until then shrinks the budget of a streaming route).
    budget: Option<RequestGuard>,
    retries: Vec<(RetryGuard, BreakerGuard)>,
    /// The request's model, when the gateway read it.
    model: Option<Box<RequestModel>>,
    /// The request's SERVER span, when tracing is on; it ends here, after the last byte.
    trace: Option<Box<RequestSpan>>,
    /// Token limits' reservations, settled with `usage` when the exchange ends.
    charges: Vec<crate::rate_limit::TokenCharge>,
    /// Prompt plus completion tokens the response reported.
    usage: Option<u64>,
    /// Where the finished request is reported for `/tap` and `/debug/requests`, and its record,
    /// filled as the request goes (boxed: `Finish` is moved through every await of the
    /// pipeline, and each byte it grows is copied there).
    observed: Option<(Arc<Observer>, Box<RequestRecord>)>,
    /// A hedge was sent.
    hedged: bool,
}

/// An `inference` pick, released when the exchange ends.
struct InferencePick {
    picker: Arc<switchyard_inference::InferencePicker>,
    index: usize,
    est_tokens: u32,
    /// Prompt tokens, counted as prefilling on the endpoint until the first byte (`prefilled`).
    prompt_tokens: u32,
    prefilled: bool,
    /// What the latency predictor learns from, when the pool has one.
    ticket: Option<switchyard_inference::Ticket>,
    /// When the pick was made: what the predictor predicted is measured from here, not from
    /// the request's arrival (a request held in the SLO queue waited before it).
    picked_at: Instant,
    first_chunk: Option<Instant>,
    output_tokens: Option<u64>,
}

impl InferencePick {
    /// Train the predictor on what this exchange measured: TTFT (and TPOT from the output
    /// tokens) for a stream, the whole latency for a response without a first chunk.
    fn observe(&self, start: Instant, elapsed: std::time::Duration) {
        use switchyard_inference::Measured;
        let Some(ticket) = &self.ticket else { return };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let output = self.output_tokens.and_then(|n| u32::try_from(n).ok());
        let measured = match (self.first_chunk, output) {
            (Some(first), n) => {
                let ttft = first.saturating_duration_since(start);
                let tpot = n
                    .filter(|&n| n > 1)
                    .map(|n| ms(elapsed.saturating_sub(ttft)) / f64::from(n - 1));
                Measured::Stream {
                    ttft_ms: ms(ttft),
                    tpot_ms: tpot,
                }
            }
            (None, Some(n)) if n > 0 => Measured::Total {
                latency_ms: ms(elapsed),
                output_tokens: n,
            },
            _ => return,
        };
        self.picker.observe(ticket, measured);
    }
}

impl Finish {
    pub fn new(
        start: Instant,
        access: Option<Box<AccessInfo>>,
        trace: Option<Box<RequestSpan>>,
    ) -> Self {
        Self {
            trace,
            start,
            metrics: None,
            openai: false,
            status: 0,
            bytes: 0,
            error: None,
            upstream: None,
            health: None,
            access,
            inference: None,
            success_deferred: false,
            budget: None,
            retries: Vec::new(),
            model: None,
            charges: Vec::new(),
            usage: None,
            observed: None,
            hedged: false,
        }
    }

    /// Report the finished request to `observer` (`/tap`, `/debug/requests`).
    pub fn observe(&mut self, observer: Arc<Observer>, meta: RequestMeta) {
        let record = observer.record(meta);
        self.observed = Some((observer, record));
    }

    /// Whether an `inference` pick should explain itself for this request (someone is
    /// watching, or a sample).
    pub fn explains_pick(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|(observer, _)| observer.explain_pick())
    }

    /// The `inference` pick's explanation (the `x-switchyard-pick` text).
    pub fn set_pick(&mut self, explanation: &str) {
        if let Some((_, r)) = self.observed.as_mut() {
            r.pick = Some(explanation.into());
        }
    }

    /// A hedge was sent for this request.
    pub fn hedged(&mut self) {
        self.hedged = true;
    }

    /// An attempt to `endpoint` ended (answered, failed or timed out).
    pub fn tried(&mut self, endpoint: SocketAddr) {
        if let Some((_, r)) = self.observed.as_mut() {
            r.endpoint = Some(endpoint);
        }
    }

    /// A token limit's reservation, to settle when the exchange ends.
    pub fn charge(&mut self, charge: crate::rate_limit::TokenCharge) {
        self.charges.push(charge);
    }

    /// Hand the bookkeeping over (to the response body, which finishes it after the last
    /// byte), leaving a spent one that records nothing.
    pub fn take(&mut self) -> Finish {
        let start = self.start;
        std::mem::replace(self, Finish::new(start, None, None))
    }

    /// When the request arrived.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Routing picked a target: its metrics, and whether its clients speak the OpenAI API.
    pub fn set_route(&mut self, metrics: Arc<RouteMetrics>, openai: bool) {
        metrics.live.started();
        if let Some(old) = self.metrics.replace(metrics) {
            old.live.left();
        }
        self.openai = openai;
    }

    /// Whether the request was routed to an `inference` pool, whose clients expect errors in
    /// the OpenAI shape.
    pub fn openai(&self) -> bool {
        self.openai
    }

    /// Where a request that never matched a route is counted.
    pub fn set_unrouted(&mut self, metrics: &Arc<RouteMetrics>) {
        if self.metrics.is_none() {
            metrics.live.started();
            self.metrics = Some(metrics.clone());
        }
    }

    pub fn set_model(&mut self, model: RequestModel) {
        if let Some(t) = &self.trace {
            t.set_model(&model.model);
        }
        self.model = Some(Box::new(model));
    }

    pub fn model(&self) -> Option<&RequestModel> {
        self.model.as_deref()
    }

    pub fn set_upstream(&mut self, in_flight: InFlight, health: &Arc<PassiveHealth>, index: usize) {
        self.upstream = Some(in_flight);
        self.health = Some((health.clone(), index));
    }

    pub fn set_inference(
        &mut self,
        picker: Arc<switchyard_inference::InferencePicker>,
        index: usize,
        (est_tokens, prompt_tokens): (u32, u32),
        ticket: Option<switchyard_inference::Ticket>,
    ) {
        self.inference = Some(Box::new(InferencePick {
            picker,
            index,
            est_tokens,
            prompt_tokens,
            prefilled: false,
            ticket,
            picked_at: Instant::now(),
            first_chunk: None,
            output_tokens: None,
        }));
    }

    /// The request's span, when tracing is on.
    pub fn trace(&self) -> Option<&RequestSpan> {
        self.trace.as_deref()
    }

    pub fn trace_mut(&mut self) -> Option<&mut RequestSpan> {
        self.trace.as_deref_mut()
    }

    /// Usage (prompt, completion tokens) the response reported.
    pub fn set_usage(&mut self, input: u64, output: u64) {
        self.usage = Some(input + output);
        if let Some(i) = self.inference.as_mut() {
            i.output_tokens = Some(output);
        }
        if let Some(t) = &self.trace {
            t.set_usage(input, output);
        }
    }

    /// The first chunk of a streamed response went out.
    pub fn first_chunk(&mut self) {
        if let Some(i) = self.inference.as_mut() {
            i.first_chunk.get_or_insert_with(Instant::now);
            if !std::mem::replace(&mut i.prefilled, true) {
                i.picker.prefilled(i.index, i.prompt_tokens);
            }
        }
        if let Some((_, r)) = self.observed.as_mut() {
            r.ttft.get_or_insert_with(|| self.start.elapsed());
        }
        if let Some(t) = &self.trace {
            t.first_token();
        }
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Keep the request's retry-budget guards until the exchange ends.
    pub fn hold_budget(
        &mut self,
        budget: Option<RequestGuard>,
        retries: Vec<(RetryGuard, BreakerGuard)>,
    ) {
        self.budget = budget;
        self.retries = retries;
    }

    /// Tell outlier detection of this response's success when the stream ends cleanly rather
    /// than now (see `attempt::record_response`).
    pub fn defer_success(&mut self) {
        self.success_deferred = true;
    }

    /// The stream ended cleanly.
    pub fn complete(&mut self) {
        if std::mem::take(&mut self.success_deferred) {
            if let Some((health, index)) = &self.health {
                health.record(*index, Outcome::Success);
            }
        }
    }

    /// The stream ended early for `reason`.
    pub fn fail(&mut self, reason: &'static str) {
        self.error.get_or_insert(reason);
        if let Some(up) = &self.upstream {
            up.endpoint().record_failure();
            // A stream cut mid-body is a gateway error for outlier detection too (as in
            // Envoy): a crashed replica is ejected by the streams it broke, before new
            // requests have to fail over.
            if reason == "upstream_reset" {
                if let Some((health, index)) = &self.health {
                    health.record(*index, Outcome::GatewayError);
                }
            }
        }
    }

    pub fn error(&mut self, reason: &'static str) {
        self.error.get_or_insert(reason);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(i) = self.inference.take() {
            i.picker.finish(i.index, i.est_tokens, i.ticket.as_ref());
            if !i.prefilled {
                i.picker.prefilled(i.index, i.prompt_tokens);
            }
            if (200..300).contains(&self.status) && self.error.is_none() {
                i.observe(i.picked_at, i.picked_at.elapsed());
            }
        }
        if !self.charges.is_empty() {
            let ok = (200..300).contains(&self.status);
            for c in self.charges.drain(..) {
                c.settle(self.usage, ok);
            }
        }
        if self.metrics.is_none()
            && self.access.is_none()
            && self.trace.is_none()
            && self.observed.is_none()
        {
            // Spent (handed over with `take`), or nothing to report to.
            return;
        }
        let elapsed = self.start.elapsed();
        let metrics = self.metrics.take();
        if let Some(m) = &metrics {
            m.count(self.status);
            m.duration.observe(elapsed.as_secs_f64());
            m.live.finished(
                self.status,
                elapsed,
                self.error,
                self.retries.len(),
                self.hedged,
            );
            if let Some(arm) = &m.arm {
                arm.record(self.status, elapsed);
            }
        }
        let (route, pool) = metrics
            .as_deref()
            .map_or(("", ""), |m| (m.route(), m.pool()));
        let trace_id = self
            .trace
            .as_ref()
            .filter(|_| self.access.is_some() || self.observed.is_some())
            .and_then(|t| t.trace_id());
        if let Some(t) = self.trace.take() {
            let routed = !route.is_empty();
            t.end(
                routed.then_some(route),
                routed.then_some(pool),
                self.status,
                self.error,
            );
        }
        if let Some(a) = self.access.take() {
            a.log.log(&AccessRecord {
                trace_id: trace_id.as_deref(),
                time: SystemTime::now(),
                listener: &a.listener,
                request_id: a.request_id.to_str().unwrap_or(""),
                client: a.client.to_string(),
                method: a.method.as_str(),
                path: &a.path,
                protocol: match a.version {
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_3 => "HTTP/3",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                route,
                pool,
                upstream: self
                    .upstream
                    .as_ref()
                    .map(|u| u.endpoint().address.to_string()),
                model: self.model.as_ref().map(|m| &*m.model),
                original_model: self.model.as_ref().and_then(|m| m.original.as_deref()),
                status: self.status,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                response_bytes: self.bytes,
                error: self.error,
                client_subject: a.client_cert.as_ref().map(|c| c.subject.as_str()),
                client_san: a
                    .client_cert
                    .as_ref()
                    .map(|c| c.sans().map(|s| s.into_owned()).collect())
                    .unwrap_or_default(),
            });
        }
        if let Some((observer, mut r)) = self.observed.take() {
            if let Some(up) = &self.upstream {
                r.endpoint = Some(up.endpoint().address);
            }
            r.ended = (self.start + elapsed).into_std();
            r.target = metrics;
            r.status = self.status;
            r.duration = elapsed;
            r.model = self.model.take().map(|m| m.model);
            r.retries = u8::try_from(self.retries.len()).unwrap_or(u8::MAX);
            r.hedged = self.hedged;
            r.error = self.error;
            r.bytes = self.bytes;
            r.trace_id = trace_id;
            observer.finished(r);
        }
    }
}
