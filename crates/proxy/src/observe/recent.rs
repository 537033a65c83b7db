//! What happened to each of the last requests, so a request id from an error body (or a log
//! line) leads to its route, endpoint, retries and pick: `/debug/requests/{id}`.
//!
//! Always on, so it is built to cost little: a fixed ring of slots allocated once, each
//! record fixed-size (ids and paths copied inline, truncated), written under its own slot's
//! lock; nothing is allocated per request unless the request brought its own text (a model
//! name, a pick explanation), which is moved in, not copied.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;

use crate::route_metrics::RouteMetrics;

/// Bytes of text kept inline, truncated past `N`.
#[derive(Clone, Copy)]
pub struct InlineText<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineText<N> {
    pub fn new(text: &[u8]) -> Self {
        let len = text.len().min(N).min(usize::from(u8::MAX));
        let mut bytes = [0; N];
        bytes[..len].copy_from_slice(&text[..len]);
        Self {
            len: len as u8,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether the text was cut at `N` bytes.
    pub fn truncated_at_cap(&self) -> bool {
        usize::from(self.len) == N
    }

    pub fn to_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

/// Request ids up to this long match exactly; longer ones by their first 64 bytes.
pub type RequestId = InlineText<64>;
pub type RequestPath = InlineText<96>;

/// What the request was, known when it arrived.
#[derive(Clone)]
pub struct RequestMeta {
    pub id: RequestId,
    pub method: Method,
    pub path: RequestPath,
}

/// One finished request, as the ring, `/debug/requests` and `/tap` show it.
#[derive(Clone)]
pub struct RequestRecord {
    /// When it ended (its last byte, or the client going away); [`super::Observer::wall_time`]
    /// tells the time of day, so the request path reads no second clock.
    pub ended: Instant,
    pub meta: RequestMeta,
    /// The route target: its names, without copying them.
    pub target: Option<Arc<RouteMetrics>>,
    pub endpoint: Option<SocketAddr>,
    pub status: u16,
    pub duration: Duration,
    /// Request start to the first chunk of a streamed response.
    pub ttft: Option<Duration>,
    pub model: Option<Arc<str>>,
    pub retries: u8,
    pub hedged: bool,
    pub error: Option<&'static str>,
    /// The `inference` pick's explanation, when one was made (see `Observer::explain_pick`).
    pub pick: Option<Box<str>>,
    pub bytes: u64,
    pub trace_id: Option<String>,
}

impl RequestRecord {
    pub fn route(&self) -> Option<&str> {
        self.target
            .as_deref()
            .map(RouteMetrics::route)
            .filter(|r| !r.is_empty())
    }

    pub fn pool(&self) -> Option<&str> {
        self.target
            .as_deref()
            .map(RouteMetrics::pool)
            .filter(|p| !p.is_empty())
    }
}

/// The last `capacity` records, oldest overwritten. A record is ~300 bytes: each request's
/// is allocated once when it starts, filled in place, and moved into the ring by its pointer.
pub struct RecentRequests {
    slots: Box<[Mutex<Option<Box<RequestRecord>>>]>,
    next: AtomicUsize,
}

impl RequestRecord {
    /// A record of a request that has just started: `meta`, nothing else yet.
    pub fn starting(meta: RequestMeta, now: Instant) -> Self {
        RequestRecord {
            ended: now,
            meta,
            target: None,
            endpoint: None,
            status: 0,
            duration: Duration::ZERO,
            ttft: None,
            model: None,
            retries: 0,
            hedged: false,
            error: None,
            pick: None,
            bytes: 0,
            trace_id: None,
        }
    }
}

impl Default for RequestRecord {
    fn default() -> Self {
        let meta = RequestMeta {
            id: RequestId::new(b""),
            method: Method::GET,
            path: RequestPath::new(b""),
        };
        RequestRecord::starting(meta, Instant::now())
    }
}

impl RecentRequests {
    /// A ring of `capacity` slots; 0 keeps nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keep `record` in the oldest slot; returns the record it replaced (or `record` itself
    /// when the ring keeps nothing), for reuse.
    pub fn push(&self, record: Box<RequestRecord>) -> Option<Box<RequestRecord>> {
        if self.slots.is_empty() {
            return Some(record);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slot(i).replace(record)
    }

    fn slot(&self, i: usize) -> std::sync::MutexGuard<'_, Option<Box<RequestRecord>>> {
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Visit records newest first, while `visit` says to go on.
    pub fn visit(&self, mut visit: impl FnMut(&RequestRecord) -> bool) {
        let n = self.slots.len();
        let next = self.next.load(Ordering::Relaxed);
        for back in 1..=n.min(next) {
            let slot = self.slot((next - back) % n);
            if let Some(r) = slot.as_deref() {
                if !visit(r) {
                    return;
                }
            }
        }
    }

    /// Records newest first, at most `limit`, that `keep` accepts.
    pub fn latest(
        &self,
        limit: usize,
        keep: impl Fn(&RequestRecord) -> bool,
    ) -> Vec<RequestRecord> {
        let mut out = Vec::new();
        self.visit(|r| {
            if out.len() < limit && keep(r) {
                out.push(r.clone());
            }
            out.len() < limit
        });
        out
    }

    /// The newest record with this request id.
    pub fn find(&self, id: &[u8]) -> Option<RequestRecord> {
        let want = RequestId::new(id);
        self.latest(1, |r| r.meta.id.as_bytes() == want.as_bytes())
            .into_iter()
            .next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: u16) -> RequestRecord {
        RequestRecord {
            meta: RequestMeta {
                id: RequestId::new(id.as_bytes()),
                method: Method::GET,
                path: RequestPath::new(b"/v1/models"),
            },
            status,
            duration: Duration::from_millis(3),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_last_n_newest_first() {
        let ring = RecentRequests::new(3);
        for i in 0..5 {
            ring.push(Box::new(record(&format!("r{i}"), 200)));
        }
        let ids: Vec<_> = ring
            .latest(10, |_| true)
            .iter()
            .map(|r| r.meta.id.to_str_lossy().into_owned())
            .collect();
        assert_eq!(ids, ["r4", "r3", "r2"]);
        assert!(ring.find(b"r1").is_none(), "evicted");
        assert_eq!(ring.find(b"r3").unwrap().status, 200);
        let errors = ring.latest(10, |r| r.status >= 500);
        assert!(errors.is_empty());
    }

    #[test]
    fn an_empty_ring_keeps_nothing() {
        let ring = RecentRequests::new(0);
        ring.push(Box::new(record("a", 200)));
        assert!(ring.latest(10, |_| true).is_empty());
        assert!(ring.find(b"a").is_none());
    }

    #[test]
    fn long_text_is_cut_and_long_ids_match_by_prefix() {
        let long = "x".repeat(200);
        let t = RequestPath::new(long.as_bytes());
        assert_eq!(t.as_bytes().len(), 96);
        assert!(t.truncated_at_cap());
        let ring = RecentRequests::new(2);
        ring.push(Box::new(record(&long, 502)));
        assert_eq!(ring.find(long.as_bytes()).unwrap().status, 502);
    }
}
