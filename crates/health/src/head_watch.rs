//! The once-an-interval reader of every endpoint's response-head latencies
//! ([`switchyard_balance::head_latency`]): it folds the finished attempts into the pool's
//! histogram, which adaptive per-try timeouts read, and hands each endpoint's window to latency
//! outlier detection. One task per pool, whatever its traffic: the request path only adds to
//! atomics.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use switchyard_balance::head_latency::LatencyHistogram;
use switchyard_balance::EndpointState;
use tokio::task::JoinHandle;

use crate::outlier::{OutlierDetector, OutlierEvent};

/// How often the pool's histogram is refreshed when no latency detector sets the interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Every interval (the detector's `latency.interval`, re-read each time, or
/// [`DEFAULT_INTERVAL`]): take each endpoint's window, fold it into `histogram`, and let the
/// detector judge. Ends when `histogram` is dropped.
pub fn spawn_head_watch(
    endpoints: impl Fn() -> Vec<Arc<EndpointState>> + Send + 'static,
    histogram: &Arc<ArcSwap<LatencyHistogram>>,
    detector: Option<Weak<Mutex<OutlierDetector>>>,
    on_event: impl Fn(OutlierEvent) + Send + 'static,
) -> JoinHandle<()> {
    let histogram = Arc::downgrade(histogram);
    tokio::spawn(async move {
        let mut folded = LatencyHistogram::default();
        loop {
            let interval = detector
                .as_ref()
                .and_then(Weak::upgrade)
                .and_then(|d| {
                    let d = d.lock().unwrap_or_else(|e| e.into_inner());
                    d.settings().latency.as_ref().map(|l| l.interval)
                })
                .unwrap_or(DEFAULT_INTERVAL);
            tokio::time::sleep(interval).await;
            let Some(published) = histogram.upgrade() else {
                return;
            };
            let now = std::time::Instant::now();
            let windows: Vec<_> = endpoints()
                .iter()
                .map(|s| (s.address, s.take_head_window(now)))
                .collect();
            folded.decay_and_add(interval, windows.iter().map(|(_, w)| w));
            published.store(Arc::new(folded.clone()));
            let Some(d) = detector.as_ref().and_then(Weak::upgrade) else {
                continue;
            };
            let events = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .judge_latency(&windows, tokio::time::Instant::now());
            drop(d);
            events.into_iter().for_each(&on_event);
        }
    })
}
