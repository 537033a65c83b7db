//! `/tap` readers: each gets the finished requests its filter accepts, at most `max_rps` a
//! second (Linkerd's tap samples the same way, 100 a second by default), through its own
//! bounded queue.
//!
//! The filter and the rate are applied where the request finishes, before anything is copied:
//! a tap watching for 5xx on a route costs the other requests a few comparisons, and a tap at
//! its rate costs them one clock read. A reader that falls behind loses what its queue cannot
//! hold (counted and told to it), never holding traffic up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::RequestRecord;

/// Summaries a tap reader's queue holds.
pub const TAP_BUFFER: usize = 1024;
/// A reader's rate when it names none.
pub const DEFAULT_MAX_RPS: u32 = 100;
/// How far a reader may run ahead of its rate in a burst.
const BURST: Duration = Duration::from_secs(1);

/// Which requests a tap reader wants.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TapFilter {
    pub route: Option<String>,
    pub pool: Option<String>,
    pub status: Option<StatusFilter>,
    /// Only requests that took at least this long.
    pub min_latency: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatusFilter {
    /// `5xx`: 5.
    Class(u16),
    Code(u16),
}

impl StatusFilter {
    /// `2xx`..`5xx` or a status code.
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s.as_bytes() {
            [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                Some(StatusFilter::Class(u16::from(c - b'0')))
            }
            _ => s
                .parse()
                .ok()
                .filter(|c| (100..600).contains(c))
                .map(StatusFilter::Code),
        }
    }
}

impl TapFilter {
    pub fn accepts(&self, r: &RequestRecord) -> bool {
        let status = match self.status {
            None => true,
            Some(StatusFilter::Class(c)) => r.status / 100 == c,
            Some(StatusFilter::Code(c)) => r.status == c,
        };
        status
            && self.min_latency.is_none_or(|min| r.duration >= min)
            && self
                .route
                .as_deref()
                .is_none_or(|want| r.route() == Some(want))
            && self
                .pool
                .as_deref()
                .is_none_or(|want| r.pool() == Some(want))
    }
}

/// One reader's end on the request path.
pub(super) struct Tap {
    filter: TapFilter,
    /// Nanoseconds between summaries at the reader's rate.
    interval: u64,
    /// The theoretical arrival time of the next summary (GCRA), in ns since `epoch`.
    next: AtomicU64,
    epoch: Instant,
    tx: mpsc::Sender<RequestRecord>,
    /// Summaries the filter accepted but the rate or a full queue left out.
    dropped: AtomicU64,
}

impl Tap {
    pub(super) fn new(
        filter: TapFilter,
        max_rps: u32,
    ) -> (Arc<Tap>, mpsc::Receiver<RequestRecord>) {
        let (tx, rx) = mpsc::channel(TAP_BUFFER);
        let tap = Arc::new(Tap {
            filter,
            interval: 1_000_000_000 / u64::from(max_rps.max(1)),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
            tx,
            dropped: AtomicU64::new(0),
        });
        (tap, rx)
    }

    /// A finished request: to the reader, if it wants it and its rate allows.
    pub(super) fn offer(&self, r: &RequestRecord) {
        if !self.filter.accepts(r) {
            return;
        }
        // The record's end time is the clock: the request path reads no other.
        if !self.within_rate(r.ended) || self.tx.try_send(r.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn within_rate(&self, at: Instant) -> bool {
        let now =
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let burst = BURST.as_nanos() as u64;
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            if next > now.saturating_add(burst) {
                return false;
            }
            let after = next.max(now) + self.interval;
            match self
                .next
                .compare_exchange_weak(next, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => next = seen,
            }
        }
    }
}

/// What a tap reader reads; dropping it ends the tap.
pub struct TapReader {
    pub(super) tap: Arc<Tap>,
    pub(super) rx: mpsc::Receiver<RequestRecord>,
    pub(super) observer: Arc<super::Observer>,
}

impl TapReader {
    /// The next summary; `None` never comes while the gateway runs.
    pub async fn recv(&mut self) -> Option<RequestRecord> {
        self.rx.recv().await
    }

    /// Summaries left out since the last call (rate, or a full queue).
    pub fn take_dropped(&self) -> u64 {
        self.tap.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Drop for TapReader {
    fn drop(&mut self) {
        self.observer.untap(&self.tap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_as_classes_or_codes() {
        assert_eq!(StatusFilter::parse("5xx"), Some(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse("429"), Some(StatusFilter::Code(429)));
        for bad in ["9xx", "600", "99", "", "5x"] {
            assert_eq!(StatusFilter::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_rate_allows_a_second_of_burst_then_its_pace() {
        let (tap, _rx) = Tap::new(TapFilter::default(), 10);
        let now = Instant::now();
        let allowed = (0..1000).filter(|_| tap.within_rate(now)).count();
        // One second of burst at 10 a second, plus the one due now.
        assert!((10..=12).contains(&allowed), "{allowed}");
    }
}
