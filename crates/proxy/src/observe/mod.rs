//! What operators watch live: per-route numbers for `/stats` and the dashboard ([`live`]), the
//! last requests for `/debug/requests` ([`recent`]), and `/tap`, a stream of request summaries.
//!
//! One [`Observer`] lives as long as the process (across reloads). Each finished request is
//! handed to it once, from `Finish`'s drop. Watching must never slow traffic: tap readers get a
//! bounded broadcast that drops what a slow reader missed (and tells it how many), the sampler
//! reads atomics, and a request with nobody tapping builds nothing extra.

pub mod live;
pub mod recent;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

pub use live::{LiveRegistry, LiveRoute, RouteSnapshot};
pub use recent::{RecentRequests, RequestMeta, RequestRecord};

/// Summaries a tap reader may fall behind by before it is told it missed some.
pub const TAP_BUFFER: usize = 1024;

/// Without anyone watching, one `inference` pick in this many is explained, so the dashboard's
/// recent picks and `/debug/requests` have some to show.
const EXPLAIN_ONE_IN: u64 = 64;

pub struct Observer {
    pub live: LiveRegistry,
    pub recent: RecentRequests,
    tap: broadcast::Sender<RequestRecord>,
    /// Open `/stats/stream` readers (the dashboard, `switchyard top`).
    watchers: AtomicUsize,
    picks: AtomicU64,
}

impl Observer {
    pub fn new(recent_requests: usize) -> Self {
        Self {
            live: LiveRegistry::default(),
            recent: RecentRequests::new(recent_requests),
            tap: broadcast::channel(TAP_BUFFER).0,
            watchers: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
        }
    }

    /// A finished request: to tap readers, if any, and into the ring.
    pub fn finished(&self, record: RequestRecord) {
        if self.tap.receiver_count() > 0 {
            // A send fails only when every reader left meanwhile.
            let _ = self.tap.send(record.clone());
        }
        self.recent.push(record);
    }

    /// Read every request summary from now on.
    pub fn tap(&self) -> broadcast::Receiver<RequestRecord> {
        self.tap.subscribe()
    }

    /// Someone reads the live numbers until the guard drops.
    pub fn watch(self: &Arc<Self>) -> WatchGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    /// Whether this `inference` pick should explain itself (scores per scorer): always while
    /// someone taps or watches, else a sample.
    pub fn explain_pick(&self) -> bool {
        self.tap.receiver_count() > 0
            || self.watchers.load(Ordering::Relaxed) > 0
            || self
                .picks
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(EXPLAIN_ONE_IN)
    }
}

/// See [`Observer::watch`].
pub struct WatchGuard(Arc<Observer>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}
