//! The OTLP exporter on the gateway's runtime, and rate-limited warnings of failed exports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::EXPORT_WARN_EVERY;

/// The OTLP exporter, run on the gateway's runtime from the batch processor's thread (tonic and
/// hyper need a Tokio runtime; the processor's thread has none).
#[derive(Debug)]
pub(super) struct OnRuntime {
    pub(super) inner: opentelemetry_otlp::SpanExporter,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) warn: WarnLimiter,
    pub(super) endpoint: String,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        let result = self.runtime.block_on(self.inner.export(batch));
        if let Err(e) = &result {
            if let Some(failed_before) = self.warn.allow() {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    error = %e,
                    spans = n,
                    failed_exports_since_last_warning = failed_before,
                    "tracing: span export failed"
                );
            }
        }
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Lets one warning through per [`EXPORT_WARN_EVERY`]; counts the ones it holds back.
#[derive(Debug, Default)]
pub(super) struct WarnLimiter {
    pub(super) last: Mutex<Option<Instant>>,
    pub(super) held_back: AtomicU64,
}

impl WarnLimiter {
    /// `Some(held back since the last warning)` when a warning may be logged now.
    pub(super) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().expect("warn limiter lock");
        if last.is_some_and(|t| now.duration_since(t) < EXPORT_WARN_EVERY) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}
