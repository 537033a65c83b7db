//! OpenTelemetry distributed tracing, driven straight from the request path: one SERVER span per
//! downstream request and one CLIENT span per upstream attempt (first try, retry or hedge), with
//! the `inference` pick's explanation on the attempt it chose.
//!
//! Why the OpenTelemetry API directly rather than a `tracing` layer (`tracing-opentelemetry`):
//! the request path then pays for exactly what it records. With no `tracing` section there is
//! no [`Tracing`], and every hook below is one `Option` check; a request that is not sampled gets
//! a non-recording span (IDs only, so `traceparent` still propagates) and skips every attribute.
//!
//! Export never blocks a request: finished spans go into the SDK's batch processor, a bounded
//! queue (full → the span is dropped) drained by its own thread, which runs the OTLP export
//! (gRPC or HTTP/protobuf) on the gateway's runtime. Export failures are logged at most once per
//! [`EXPORT_WARN_EVERY`].
//!
//! Propagation is W3C Trace Context: the server span's parent comes from the client's
//! `traceparent`/`tracestate`; each attempt replaces them with its own span's context, as
//! Envoy's router does, so the upstream's spans hang under the attempt that reached it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Version};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use switchyard_config::{OtlpProtocol, Tracing as TracingConfig};

mod export;
mod propagation;

use export::{OnRuntime, WarnLimiter};
use propagation::{
    method_name, traceparent, HeaderExtractor, PairExtractor, TRACEPARENT, TRACESTATE,
};

/// At most one export-failure warning per this interval; the rest are counted into the next.
pub const EXPORT_WARN_EVERY: Duration = Duration::from_secs(10);

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A tracer provider built from one `tracing` section. Config generations with the same section
/// share it; a reload that changes the section builds a new one and flushes the old one.
pub struct Tracing {
    config: TracingConfig,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("endpoint", &self.config.otlp.endpoint)
            .finish()
    }
}

impl Tracing {
    /// Build the exporter, batch processor and tracer. Call inside the runtime: exports run on it.
    pub fn new(config: &TracingConfig) -> Result<Arc<Self>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "tracing must be started inside the runtime".to_string())?;
        let otlp = &config.otlp;
        let url = otlp.export_url();
        let exporter = match otlp.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(otlp.timeout)
                .build(),
            OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(otlp.timeout)
                .build(),
        }
        .map_err(|e| format!("tracing: cannot build the OTLP exporter: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.batch.max_queue_size)
            .with_max_export_batch_size(config.batch.max_export_batch_size)
            .with_scheduled_delay(config.batch.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(OnRuntime {
            inner: exporter,
            runtime,
            warn: WarnLimiter::default(),
            endpoint: otlp.endpoint.clone(),
        })
        .with_batch_config(batch)
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("switchyard");
        Ok(Arc::new(Self {
            config: config.clone(),
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            shut_down: AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> &TracingConfig {
        &self.config
    }

    /// Start the SERVER span of one downstream request, parented on its `traceparent`.
    pub fn start_request(
        &self,
        method: &Method,
        path: &str,
        version: Version,
        headers: &HeaderMap,
        client: SocketAddr,
        request_id: &HeaderValue,
    ) -> RequestSpan {
        // The propagator parses a client's `traceparent`; without one there is nothing to read.
        let parent = if headers.contains_key(&TRACEPARENT) {
            self.propagator.extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        // W3C: a `tracestate` without a valid `traceparent` is discarded; with one, it passes on.
        let keep_tracestate = parent.span().span_context().is_valid();
        let builder = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server);
        let span = self.tracer.build_with_context(builder, &parent);
        let recording = span.is_recording();
        let cx = Context::new().with_span(span);
        if recording {
            cx.span().set_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("network.protocol.version", protocol_version(version)),
                KeyValue::new("client.address", client.ip().to_string()),
                KeyValue::new(
                    "switchyard.request_id",
                    String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                ),
            ]);
        }
        RequestSpan {
            method: method.clone(),
            cx,
            recording,
            keep_tracestate,
            tracer: self.tracer.clone(),
            attempts: AtomicU32::new(0),
            pick: Mutex::new(None),
            upstream: None,
        }
    }

    /// A span for one `switchyard epp` pick, parented on the `traceparent` among the request
    /// headers Envoy sent (lower-case names).
    pub fn start_pick(
        &self,
        headers: &[(String, String)],
        pool: &str,
        balancer: &'static str,
    ) -> PickSpan {
        let parent = self.propagator.extract(&PairExtractor(headers));
        let builder = self
            .tracer
            .span_builder(format!("pick {pool}"))
            .with_kind(SpanKind::Server);
        let mut span = self.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("switchyard.pool", pool.to_owned()),
                KeyValue::new("switchyard.balancer", balancer),
            ]);
        }
        PickSpan { span }
    }

    /// Export what is queued and stop. Runs on the blocking pool: the export itself needs the
    /// runtime's I/O, which a blocked worker (or the only thread of a current-thread runtime)
    /// could not drive.
    pub async fn shutdown(self: &Arc<Self>) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let provider = self.provider.clone();
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "tracing: spans may have been lost at shutdown");
        }
    }
}

impl Drop for Tracing {
    /// Replaced by a reload: flush on a thread of its own, off the request path.
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::Acquire) {
            let provider = self.provider.clone();
            let _ = std::thread::Builder::new()
                .name("otel-shutdown".into())
                .spawn(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
        }
    }
}

/// Whether the upstream attempt is the first, a retry, or a hedge racing the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    First,
    Retry,
    Hedge,
}

impl AttemptKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Retry => "retry",
            Self::Hedge => "hedge",
        }
    }
}

/// The SERVER span of one request. It rides in `finish::Finish` and ends with it, after the
/// last byte of the response.
pub struct RequestSpan {
    method: Method,
    /// Holds the span, so attempts are created as its (local) children.
    cx: Context,
    recording: bool,
    /// The client's `tracestate` belongs to a valid parent, so it goes upstream as it is.
    keep_tracestate: bool,
    tracer: SdkTracer,
    attempts: AtomicU32,
    /// The `inference` pick's explanation, for the attempt it chose.
    pick: Mutex<Option<Vec<KeyValue>>>,
    /// The attempt whose response is being streamed; ends just before this span.
    upstream: Option<AttemptSpan>,
}

impl RequestSpan {
    /// Sampled: attributes are worth computing.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// The trace ID, for the access log; `None` when not sampled.
    pub fn trace_id(&self) -> Option<String> {
        self.recording
            .then(|| self.cx.span().span_context().trace_id().to_string())
    }

    /// Keep an `inference` decision for the first attempt: `explanation` is the same string as
    /// the `x-switchyard-pick` debug header; the winner's per-scorer scores become attributes.
    pub fn set_pick(&self, explanation: &str, decision: &switchyard_inference::Decision) {
        if !self.recording {
            return;
        }
        *self.pick.lock().expect("pick lock") = Some(pick_attributes(explanation, decision));
    }

    pub fn set_model(&self, model: &str) {
        if self.recording {
            self.cx
                .span()
                .set_attribute(KeyValue::new("gen_ai.request.model", model.to_owned()));
        }
    }

    /// Usage the response reported.
    pub fn set_usage(&self, input: u64, output: u64) {
        if self.recording {
            self.cx.span().set_attributes([
                KeyValue::new("gen_ai.usage.input_tokens", input as i64),
                KeyValue::new("gen_ai.usage.output_tokens", output as i64),
            ]);
        }
    }

    /// The first chunk of a streamed response reached the client side (time to first token).
    pub fn first_token(&self) {
        if self.recording {
            self.cx.span().add_event("first_token", Vec::new());
        }
    }

    /// Start the CLIENT span of one upstream attempt to `address` in `pool` and put its context
    /// in `headers` (replacing the client's `traceparent`/`tracestate`).
    pub fn attempt(
        &self,
        kind: AttemptKind,
        pool: &str,
        balancer: &'static str,
        address: SocketAddr,
        headers: &mut HeaderMap,
    ) -> AttemptSpan {
        let n = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        // OTel HTTP client spans are named after the method.
        let builder = self
            .tracer
            .span_builder(method_name(&self.method))
            .with_kind(SpanKind::Client);
        let mut span = self.tracer.build_with_context(builder, &self.cx);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("switchyard.attempt", i64::from(n)),
                KeyValue::new("switchyard.attempt.kind", kind.as_str()),
                KeyValue::new("switchyard.pool", pool.to_owned()),
                KeyValue::new("switchyard.balancer", balancer),
                KeyValue::new("server.address", address.ip().to_string()),
                KeyValue::new("server.port", i64::from(address.port())),
            ]);
            if kind == AttemptKind::First {
                if let Some(pick) = self.pick.lock().expect("pick lock").take() {
                    span.set_attributes(pick);
                }
            }
        }
        headers.insert(TRACEPARENT.clone(), traceparent(span.span_context()));
        if !self.keep_tracestate {
            headers.remove(&TRACESTATE);
        }
        AttemptSpan {
            span: Box::new(span),
        }
    }

    /// The attempt whose response is returned; it ends when the body does.
    pub fn set_upstream(&mut self, attempt: AttemptSpan) {
        self.upstream = Some(attempt);
    }

    /// End the request: status, route and error, after the last byte.
    pub fn end(
        mut self,
        route: Option<&str>,
        pool: Option<&str>,
        status: u16,
        error: Option<&'static str>,
    ) {
        // Spans that are not recording are only dropped: ending one still reads the clock.
        if !self.recording {
            return;
        }
        if let Some(mut up) = self.upstream.take() {
            if let Some(e) = error {
                up.span
                    .set_attribute(KeyValue::new("switchyard.error.type", e));
            }
            up.span.end();
        }
        let span = self.cx.span();
        if let Some(route) = route {
            span.update_name(format!("{} {route}", self.method));
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
        if let Some(pool) = pool {
            span.set_attribute(KeyValue::new("switchyard.pool", pool.to_owned()));
        }
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(e) = error {
            span.set_attributes([
                KeyValue::new("switchyard.error.type", e),
                KeyValue::new("error.type", e),
            ]);
        } else if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
        }
        // OTel HTTP conventions: a SERVER span is an error for 5xx only (4xx is the client's).
        if status >= 500 || (status == 0 && error.is_some()) {
            span.set_status(Status::error(error.unwrap_or("")));
        }
        span.end();
    }
}

/// The CLIENT span of one upstream attempt. Dropped without an outcome (a hedge that lost the
/// race, a request abandoned by its client), it ends as cancelled.
pub struct AttemptSpan {
    /// Boxed: the request future holds two of these (an attempt and its hedge) across awaits,
    /// and an SDK span is hundreds of bytes that every request would copy, traced or not.
    span: Box<opentelemetry_sdk::trace::Span>,
}

impl AttemptSpan {
    /// Response headers arrived with `status`.
    pub fn response(&mut self, status: u16) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                self.span
                    .set_attribute(KeyValue::new("error.type", status.to_string()));
                self.span.set_status(Status::error(""));
            }
        }
    }

    /// The attempt got no response: `error` is the gateway error type it became.
    pub fn fail(mut self, error: &'static str) {
        if self.span.is_recording() {
            self.span.set_attributes([
                KeyValue::new("switchyard.error.type", error),
                KeyValue::new("error.type", error),
            ]);
            self.span.set_status(Status::error(error));
            self.span.end();
        }
    }

    /// Another attempt's answer was used (the losing side of a hedge race).
    pub fn cancel(mut self) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("switchyard.attempt.outcome", "cancelled"));
            self.span.end();
        }
    }
}

/// The span of one `switchyard epp` pick; it ends with [`PickSpan::end`] (or when dropped).
pub struct PickSpan {
    span: opentelemetry_sdk::trace::Span,
}

impl PickSpan {
    /// Sampled: the pick's explanation is worth computing.
    pub fn recording(&self) -> bool {
        self.span.is_recording()
    }

    /// Record an `inference` decision (see [`RequestSpan::set_pick`]).
    pub fn explain(&mut self, explanation: &str, decision: &switchyard_inference::Decision) {
        if self.span.is_recording() {
            self.span
                .set_attributes(pick_attributes(explanation, decision));
        }
    }

    /// The pick went to `endpoint`, or failed with gateway error type `error`.
    pub fn end(mut self, endpoint: Option<SocketAddr>, error: Option<&'static str>) {
        if self.span.is_recording() {
            if let Some(a) = endpoint {
                self.span.set_attributes([
                    KeyValue::new("server.address", a.ip().to_string()),
                    KeyValue::new("server.port", i64::from(a.port())),
                ]);
            }
            if let Some(e) = error {
                self.span.set_attributes([
                    KeyValue::new("switchyard.error.type", e),
                    KeyValue::new("error.type", e),
                ]);
                self.span.set_status(Status::error(e));
            }
        }
        self.span.end();
    }
}

/// The explanation (the `x-switchyard-pick` text) and the winner's scores, as attributes.
fn pick_attributes(explanation: &str, decision: &switchyard_inference::Decision) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("switchyard.pick.explanation", explanation.to_owned()),
        KeyValue::new("switchyard.pick.saturated", decision.saturated),
    ];
    if let Some(best) = decision.top.first() {
        attrs.push(KeyValue::new("switchyard.pick.score", best.score));
        for (name, v) in &best.parts {
            attrs.push(KeyValue::new(format!("switchyard.pick.score.{name}"), *v));
        }
    }
    attrs
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests;
