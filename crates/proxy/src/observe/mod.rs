//! What operators watch live: per-route numbers for `/stats` and the dashboard ([`live`]), the
//! last requests for `/debug/requests` ([`recent`]), and `/tap`, a stream of request summaries.
//!
//! One [`Observer`] lives as long as the process (across reloads). Each finished request is
//! handed to it once, from `Finish`'s drop. Watching must never slow traffic: tap readers have
//! their own filters, rates and bounded queues ([`tap`]), the sampler reads atomics, and a
//! request with nobody tapping builds nothing extra.

pub mod live;
pub mod recent;
pub mod tap;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

pub use live::{LiveRegistry, LiveRoute, RouteSnapshot};
pub use recent::{RecentRequests, RequestMeta, RequestRecord};
pub use tap::{StatusFilter, TapFilter, TapReader, DEFAULT_MAX_RPS, TAP_BUFFER};

thread_local! {
    /// One record the ring evicted on this thread, for the thread's next request.
    static SPARE: Cell<Option<Box<RequestRecord>>> = const { Cell::new(None) };
}

/// Without anyone watching, one `inference` pick in this many is explained, so the dashboard's
/// recent picks and `/debug/requests` have some to show.
const EXPLAIN_ONE_IN: u64 = 64;

pub struct Observer {
    pub live: LiveRegistry,
    pub recent: RecentRequests,
    /// The open tap readers; `tapping` counts them so the request path reads one atomic.
    taps: ArcSwap<Vec<Arc<tap::Tap>>>,
    tapping: AtomicUsize,
    /// Open `/stats/stream` readers (the dashboard, `switchyard top`).
    watchers: AtomicUsize,
    picks: AtomicU64,
    /// The same moment on both clocks: records carry a monotonic time, shown as time of day.
    anchor: (Instant, SystemTime),
}

impl Observer {
    pub fn new(recent_requests: usize) -> Self {
        Self {
            live: LiveRegistry::default(),
            recent: RecentRequests::new(recent_requests),
            taps: ArcSwap::default(),
            tapping: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
            anchor: (Instant::now(), SystemTime::now()),
        }
    }

    /// The time of day at `t`.
    pub fn wall_time(&self, t: Instant) -> SystemTime {
        let (mono, wall) = self.anchor;
        match t.checked_duration_since(mono) {
            Some(after) => wall + after,
            None => wall - mono.duration_since(t),
        }
    }

    /// A record for a request starting now: a spare one left by the ring, else a new one.
    pub fn record(&self, meta: RequestMeta) -> Box<RequestRecord> {
        // Its end time is set when it ends; until then any instant will do but a clock read.
        let fresh = RequestRecord::starting(meta, self.anchor.0);
        match SPARE.with(Cell::take) {
            Some(mut r) => {
                // Overwritten whole: what the evicted request held is let go here.
                *r = fresh;
                r
            }
            None => Box::new(fresh),
        }
    }

    /// A finished request: to the tap readers that want it, then into the ring by its pointer.
    pub fn finished(&self, record: Box<RequestRecord>) {
        if self.tapping.load(Ordering::Relaxed) > 0 {
            for tap in self.taps.load().iter() {
                tap.offer(&record);
            }
        }
        if let Some(evicted) = self.recent.push(record) {
            // The next request on this thread reuses the allocation.
            SPARE.with(|spare| spare.set(Some(evicted)));
        }
    }

    /// Whether a request starting now has anyone to report to: the ring, or a tap reader.
    pub fn wants_requests(&self) -> bool {
        self.recent.capacity() > 0 || self.tapping.load(Ordering::Relaxed) > 0
    }

    /// Read the summaries `filter` accepts from now on, at most `max_rps` a second.
    pub fn tap(self: &Arc<Self>, filter: TapFilter, max_rps: u32) -> TapReader {
        let (tap, rx) = tap::Tap::new(filter, max_rps);
        self.taps.rcu(|taps| {
            let mut taps = Vec::clone(taps);
            taps.push(tap.clone());
            taps
        });
        self.tapping.fetch_add(1, Ordering::Relaxed);
        TapReader {
            tap,
            rx,
            observer: self.clone(),
        }
    }

    /// Open tap readers.
    pub fn tap_readers(&self) -> usize {
        self.tapping.load(Ordering::Relaxed)
    }

    fn untap(&self, gone: &Arc<tap::Tap>) {
        self.taps.rcu(|taps| {
            taps.iter()
                .filter(|t| !Arc::ptr_eq(t, gone))
                .cloned()
                .collect::<Vec<_>>()
        });
        self.tapping.fetch_sub(1, Ordering::Relaxed);
    }

    /// Someone reads the live numbers until the guard drops.
    pub fn watch(self: &Arc<Self>) -> WatchGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    /// Whether this `inference` pick should explain itself (scores per scorer): always while
    /// someone taps or watches, else a sample.
    pub fn explain_pick(&self) -> bool {
        self.tapping.load(Ordering::Relaxed) > 0
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
