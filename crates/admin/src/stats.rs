//! `GET /stats` and `/stats/stream`: live numbers per route, pool and endpoint, for the
//! dashboard and `switchyard top`.
//!
//! A sampler reads the gateway's cumulative counts once a second and turns the last
//! [`WINDOW`] seconds into rates and quantiles: one frame, serialized once and shared by every
//! reader, so serving it costs a copy of a reference, and a hundred dashboards cost the gateway
//! what one does. The last [`HISTORY`] frames are kept so a page opened now draws the last
//! minutes at once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use switchyard_proxy::observe::RouteSnapshot;
use switchyard_proxy::GatewayHandle;
use switchyard_resilience::Limit;
use tokio::sync::watch;

/// Seconds the rates and quantiles of a frame cover.
pub const WINDOW: usize = 5;
/// Frames kept: five minutes at one a second.
pub const HISTORY: usize = 300;
/// And at most this many bytes of them: a frame grows with the endpoints (~300 bytes each), and
/// five minutes of a thousand-endpoint fleet would be 90 MB.
const HISTORY_BYTES: usize = 16 << 20;
const TICK: Duration = Duration::from_secs(1);
/// Recent `inference` picks shown per pool.
const RECENT_PICKS: usize = 5;

/// The latest frame and the ones before it.
pub struct Stats {
    latest: watch::Sender<Bytes>,
    history: Mutex<VecDeque<Bytes>>,
}

impl Stats {
    /// Start sampling `handle` once a second, for as long as the runtime runs.
    pub fn spawn(handle: Arc<GatewayHandle>) -> Arc<Self> {
        let stats = Arc::new(Self {
            latest: watch::channel(Bytes::new()).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        });
        let weak = Arc::downgrade(&stats);
        tokio::spawn(async move {
            let mut sampler = Sampler::default();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(stats) = weak.upgrade() else { return };
                let frame =
                    Bytes::from(serde_json::to_vec(&sampler.frame(&handle)).unwrap_or_default());
                stats.publish(frame);
            }
        });
        stats
    }

    fn publish(&self, frame: Bytes) {
        {
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            history.push_back(frame.clone());
            let mut bytes: usize = history.iter().map(Bytes::len).sum();
            while history.len() > HISTORY || (bytes > HISTORY_BYTES && history.len() > 1) {
                bytes -= history.pop_front().map_or(0, |f| f.len());
            }
        }
        self.latest.send_replace(frame);
    }

    /// The latest frame; empty before the first.
    pub fn latest(&self) -> Bytes {
        self.latest.borrow().clone()
    }

    /// The last `n` frames, oldest first.
    pub fn history(&self, n: usize) -> Vec<Bytes> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .iter()
            .skip(history.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Woken at each new frame.
    pub fn subscribe(&self) -> watch::Receiver<Bytes> {
        self.latest.subscribe()
    }
}

/// Counts seen at each of the last ticks, to difference over the window.
#[derive(Default)]
struct Sampler {
    routes: HashMap<(String, String), Ticks<RouteSnapshot>>,
    /// Per (pool, endpoint): requests, failures and the scraped prefix-cache counters.
    endpoints: HashMap<(String, SocketAddr), Ticks<EndpointCounts>>,
}

#[derive(Clone, Copy)]
struct EndpointCounts {
    requests: u64,
    failures: u64,
    /// (queries, hits), as the endpoint's server reports them.
    prefix_cache: Option<(f64, f64)>,
}

/// Values seen at the last ticks, oldest first.
type Ticks<T> = VecDeque<(Instant, T)>;

/// Push `value` and keep the last `WINDOW + 1`; return the oldest kept and the seconds since.
fn window<T: Clone>(q: &mut VecDeque<(Instant, T)>, now: Instant, value: T) -> (T, f64) {
    q.push_back((now, value));
    while q.len() > WINDOW + 1 {
        q.pop_front();
    }
    let (t0, oldest) = q.front().cloned().expect("just pushed");
    (oldest, now.duration_since(t0).as_secs_f64())
}

impl Sampler {
    fn frame(&mut self, handle: &GatewayHandle) -> Value {
        let g = handle.load();
        let now = Instant::now();
        let observer = &handle.observer;
        let mut seen = std::collections::HashSet::new();
        let mut by_pool: HashMap<&str, (RouteSnapshot, f64)> = HashMap::new();
        let mut routes = Vec::new();
        for r in &g.routes {
            for t in &r.targets {
                let key = (r.name.clone(), t.pool.name().to_string());
                let q = self.routes.entry(key.clone()).or_default();
                let current = t.metrics.live.snapshot();
                let (oldest, secs) = window(q, now, current.clone());
                let delta = current.since(&oldest);
                seen.insert(key);
                let pool = by_pool.entry(t.pool.name()).or_default();
                pool.0.add(&delta);
                pool.1 = pool.1.max(secs);
                let mut v = traffic(&delta, secs);
                v["in_flight"] = json!(t.metrics.live.in_flight());
                v["route"] = json!(r.name);
                v["pool"] = json!(t.pool.name());
                routes.push(v);
            }
        }
        self.routes.retain(|k, _| seen.contains(k));

        // The last picks per pool, from one pass over the ring.
        let mut picks: HashMap<String, Vec<Value>> = HashMap::new();
        let pools_with_picks = g.pools.iter().filter(|p| p.inference.is_some()).count();
        let mut full = 0;
        observer.recent.visit(|r| {
            if let (Some(pick), Some(pool)) = (r.pick.as_deref(), r.pool()) {
                let kept = picks.entry(pool.to_string()).or_default();
                if kept.len() < RECENT_PICKS {
                    kept.push(json!({
                        "time_ms": unix_ms(observer.wall_time(r.ended)),
                        "endpoint": r.endpoint.map(|a| a.to_string()),
                        "explanation": pick,
                    }));
                    full += usize::from(kept.len() == RECENT_PICKS);
                }
            }
            full < pools_with_picks
        });
        let mut seen_endpoints = std::collections::HashSet::new();
        let pools: Vec<Value> =
            g.pools
                .iter()
                .map(|p| {
                    let (delta, secs) = by_pool.get(p.name()).cloned().unwrap_or_default();
                    let mut v = traffic(&delta, secs);
                    let endpoints: Vec<Value> = p
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let key = (p.name().to_string(), e.address());
                        let q = self.endpoints.entry(key.clone()).or_default();
                        let view = p.inference.as_ref().and_then(|pk| {
                            pk.endpoint_view(i, std::time::Instant::now())
                        });
                        let counts = EndpointCounts {
                            requests: e.state.requests(),
                            failures: e.state.failures(),
                            prefix_cache: view.as_ref().and_then(|v| v.prefix_cache),
                        };
                        let (old, secs) = window(q, now, counts);
                        // The oldest tick with counters: the first scrape may have come after
                        // the window's start.
                        let prefix_since = q.iter().find_map(|(_, c)| c.prefix_cache);
                        seen_endpoints.insert(key);
                        let dr = counts.requests.saturating_sub(old.requests);
                        let df = counts.failures.saturating_sub(old.failures);
                        let signals = view.as_ref().map(|v| v.signals);
                        json!({
                            "address": e.address().to_string(),
                            "zone": e.zone,
                            "healthy": e.state.is_healthy(),
                            "ejected": e.state.is_ejected(),
                            "available": e.is_available(),
                            "in_flight": e.state.in_flight(),
                            "rps": rate(dr, secs),
                            "error_rate": share(df, dr),
                            "latency_ewma_ms": e.state.latency_at(std::time::Instant::now())
                                .map(|d| d.as_secs_f64() * 1000.0),
                            "waiting": signals.as_ref().map(|s| s.waiting),
                            "running": signals.as_ref().map(|s| s.running),
                            "kv_usage": signals.as_ref().map(|s| s.kv_usage),
                            "prefix_hit_share": prefix_hit_share(prefix_since, counts.prefix_cache),
                        })
                    })
                    .collect();
                    let recent_picks = picks.remove(p.name()).unwrap_or_default();
                    v["pool"] = json!(p.name());
                    v["balancer"] = json!(p.spec.balancer.kind());
                    v["panic"] = json!(p.in_panic());
                    v["in_flight"] =
                        json!(p.endpoints.iter().map(|e| e.state.in_flight()).sum::<u64>());
                    v["concurrency"] = p.limiter.as_ref().map_or(Value::Null, |l| {
                        let s = l.stats();
                        json!({"limit": s.limit, "in_flight": s.in_flight, "queued": s.queued})
                    });
                    v["breaker"] = breaker(&p.breaker);
                    v["endpoints"] = Value::Array(endpoints);
                    v["recent_picks"] = Value::Array(recent_picks);
                    v
                })
                .collect();
        self.endpoints.retain(|k, _| seen_endpoints.contains(k));

        let rollouts: Vec<_> = g
            .routes
            .iter()
            .filter_map(|r| r.rollout.as_ref().map(|ro| ro.view()))
            .collect();
        let rate_limits: Vec<_> = g.rate_limits.iter().map(|l| l.view(5)).collect();
        json!({
            "time_ms": unix_ms(SystemTime::now()),
            "window_s": WINDOW,
            "routes": routes,
            "pools": pools,
            "rollouts": rollouts,
            "rate_limits": rate_limits,
        })
    }
}

/// Rates and quantiles of `d`, counted over `secs`; `null` where there is nothing to say.
fn traffic(d: &RouteSnapshot, secs: f64) -> Value {
    let ms = |h: &switchyard_proxy::observe::live::HistogramSnapshot, q| {
        h.quantile(q).map(|s| (s * 1000.0 * 100.0).round() / 100.0)
    };
    json!({
        "rps": rate(d.requests, secs),
        "error_rate": share(d.errors, d.requests),
        "p50_ms": ms(&d.duration, 0.5),
        "p99_ms": ms(&d.duration, 0.99),
        "ttft_p50_ms": ms(&d.ttft, 0.5),
        "ttft_p99_ms": ms(&d.ttft, 0.99),
        "itl_p50_ms": ms(&d.itl, 0.5),
        "itl_p99_ms": ms(&d.itl, 0.99),
        "tokens_per_s": rate(d.output_tokens, secs),
        "retries_per_s": rate(d.retries, secs),
        "hedges_per_s": rate(d.hedges, secs),
        "shed_per_s": rate(d.shed, secs),
        "limited_per_s": rate(d.limited, secs),
        "overflow_per_s": rate(d.overflow, secs),
    })
}

/// Prefix-cache hits over queries between two scrapes' counters; `None` without lookups in
/// between, or when a counter went back (a restarted server).
fn prefix_hit_share(old: Option<(f64, f64)>, new: Option<(f64, f64)>) -> Option<f64> {
    let ((q0, h0), (q1, h1)) = (old?, new?);
    let (queries, hits) = (q1 - q0, h1 - h0);
    (queries > 0.0 && hits >= 0.0).then(|| (hits / queries).min(1.0))
}

/// Per second, or `null` before a window has passed.
fn rate(n: u64, secs: f64) -> Option<f64> {
    (secs > 0.0).then(|| (n as f64 / secs * 100.0).round() / 100.0)
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The circuit breaker's limits in use: what is close to tripping.
fn breaker(b: &switchyard_resilience::CircuitBreaker) -> Value {
    let limits = b.limits();
    let mut out = serde_json::Map::new();
    for (limit, name, max) in [
        (Limit::Connections, "connections", limits.max_connections),
        (Limit::Pending, "pending", limits.max_pending),
        (Limit::Requests, "requests", limits.max_requests),
        (Limit::Retries, "retries", limits.max_retries),
    ] {
        out.insert(
            name.into(),
            json!({"in_use": b.in_use(limit), "max": max, "overflows": b.overflows(limit)}),
        );
    }
    out.into()
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_ticks() {
        let mut q = VecDeque::new();
        let t0 = Instant::now();
        let (first, secs) = window(&mut q, t0, 10u64);
        assert_eq!((first, secs), (10, 0.0));
        for i in 1..=10u64 {
            let (oldest, secs) = window(&mut q, t0 + Duration::from_secs(i), 10 + i);
            let back = i.min(WINDOW as u64);
            assert_eq!(oldest, 10 + i - back);
            assert!((secs - back as f64).abs() < 1e-9);
        }
        assert_eq!(q.len(), WINDOW + 1);
    }

    #[test]
    fn prefix_hit_share_is_over_the_window_and_survives_restarts() {
        assert_eq!(
            prefix_hit_share(Some((100.0, 50.0)), Some((300.0, 200.0))),
            Some(0.75)
        );
        assert_eq!(
            prefix_hit_share(Some((100.0, 50.0)), Some((100.0, 50.0))),
            None
        );
        assert_eq!(prefix_hit_share(Some((1e6, 9e5)), Some((10.0, 5.0))), None);
        assert_eq!(prefix_hit_share(None, Some((10.0, 5.0))), None);
    }

    #[tokio::test]
    async fn history_is_bounded_in_frames_and_bytes() {
        let stats = Stats {
            latest: watch::channel(Bytes::new()).0,
            history: Mutex::new(VecDeque::new()),
        };
        for i in 0..HISTORY + 10 {
            stats.publish(Bytes::from(i.to_string()));
        }
        let kept = stats.history(usize::MAX);
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept[0], Bytes::from(10.to_string()));
        assert_eq!(stats.latest(), Bytes::from((HISTORY + 9).to_string()));
        let big = Bytes::from(vec![b'x'; HISTORY_BYTES / 4]);
        for _ in 0..10 {
            stats.publish(big.clone());
        }
        let bytes: usize = stats.history(usize::MAX).iter().map(Bytes::len).sum();
        assert!(bytes <= HISTORY_BYTES, "{bytes}");
        assert_eq!(stats.history(usize::MAX).len(), 4);
    }

    #[test]
    fn no_window_yet_means_no_rate() {
        assert_eq!(rate(5, 0.0), None);
        assert_eq!(rate(5, 2.0), Some(2.5));
        assert_eq!(share(1, 0), None);
        assert_eq!(share(1, 4), Some(0.25));
    }
}
