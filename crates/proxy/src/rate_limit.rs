//! Local rate limits (`rate_limits:`): a token bucket per key, `limit` per `per`, up to
//! `burst`. Keys are hashed (an API key is never kept). The map of buckets is bounded: a full
//! bucket is the same as none, so when the map reaches [`MAX_KEYS`] the full ones are dropped,
//! and a key that still finds no room is let through (and counted) rather than refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use switchyard_config::rate_limit::{LimitKey, Mode, RateLimit};
use switchyard_telemetry::metrics::RateLimitLabels;
use switchyard_telemetry::Metrics;

/// Keys tracked per limit at most.
pub const MAX_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One limit, compiled.
pub struct Limiter {
    pub config: RateLimit,
    pub key: LimitKey,
    /// Tokens per second, and the bucket's size.
    rate: f64,
    burst: f64,
    /// The configured `limit` and `per` (whole seconds, at least 1), for the `RateLimit-Policy`
    /// header.
    pub limit: u64,
    pub window_secs: u64,
    buckets: Mutex<HashMap<u64, Bucket>>,
    allowed: Counter,
    limited: Counter,
    shadow_limited: Counter,
    untracked: Counter,
}

/// A request over the limit: when to retry, in whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

impl Limiter {
    pub fn new(config: &RateLimit, metrics: &Metrics) -> Self {
        let rate = config
            .requests
            .map_or((1, Duration::from_secs(1)), |r| (r.limit, r.per));
        let per_second = rate.0 as f64 / rate.1.as_secs_f64().max(1e-9);
        let counter = |outcome| {
            metrics
                .rate_limited
                .get_or_create(&RateLimitLabels {
                    limit: config.name.clone(),
                    outcome,
                })
                .clone()
        };
        Self {
            key: config.key.clone(),
            rate: per_second,
            burst: config.burst.unwrap_or(rate.0).max(1) as f64,
            limit: rate.0,
            window_secs: rate.1.as_secs().max(1),
            buckets: Mutex::new(HashMap::new()),
            allowed: counter("allowed"),
            limited: counter("limited"),
            shadow_limited: counter("shadow_limited"),
            untracked: counter("untracked"),
            config: config.clone(),
        }
    }

    /// Take one request for `key` at `now`: `Err` when the bucket is empty and the limit
    /// enforces (a shadow limit counts it and lets it through).
    pub fn check(&self, key: u64, now: Instant) -> Result<(), Limited> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_KEYS {
                self.untracked.inc();
                return Ok(());
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            self.allowed.inc();
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / self.rate;
        drop(buckets);
        if self.config.mode == Mode::Shadow {
            self.shadow_limited.inc();
            return Ok(());
        }
        self.limited.inc();
        Err(Limited {
            retry_after_secs: (wait.ceil() as u64).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(yaml: &str) -> Limiter {
        let l: RateLimit = switchyard_config::yaml::from_str(yaml).unwrap();
        Limiter::new(&l, &Metrics::new())
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = limiter("{name: l, key: source_ip, requests: {limit: 2, per: 1s}, burst: 3}");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(7, t0), Ok(()));
        }
        assert_eq!(
            l.check(7, t0),
            Err(Limited {
                retry_after_secs: 1
            })
        );
        // Another key has its own bucket.
        assert_eq!(l.check(8, t0), Ok(()));
        // Half a second refills one request at 2/s.
        assert_eq!(l.check(7, t0 + Duration::from_millis(500)), Ok(()));
        assert!(l.check(7, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_shadow_limit_counts_and_lets_through() {
        let l = limiter("{name: l, key: route, requests: {limit: 1, per: 1m}, mode: shadow}");
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check(0, t0), Ok(()));
        }
        assert_eq!(l.shadow_limited.get(), 4);
    }

    #[test]
    fn the_key_map_stays_bounded() {
        let l = limiter("{name: l, key: source_ip, requests: {limit: 1, per: 1h}}");
        let t0 = Instant::now();
        for k in 0..(MAX_KEYS as u64 + 10) {
            assert_eq!(l.check(k, t0), Ok(()));
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_KEYS);
        assert_eq!(l.untracked.get(), 10);
    }
}
