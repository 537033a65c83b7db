//! Local rate limits (`rate_limits:`). A request limit is a token bucket per key, `limit` per
//! `per`, up to `burst`. A token limit counts LLM tokens per key in fixed windows of `per`
//! (aligned to the Unix epoch): a request reserves its estimate (prompt tokens and `max_tokens`)
//! before it goes upstream and fits or is refused whole, and settles when its response ends,
//! the difference to the usage the response reported refunded (or charged) to the window it
//! reserved in. So a window never serves more than its limit, whatever is in flight.
//!
//! Keys are hashed (an API key is never kept). The maps are bounded: a full bucket or a past
//! window is the same as none, so when a map reaches [`MAX_KEYS`] those are dropped, and a key
//! that still finds no room is let through (and counted) rather than refused.

mod shared;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use switchyard_config::rate_limit::{KeySpec, Mode, RateLimit};
use switchyard_telemetry::metrics::RateLimitLabels;
use switchyard_telemetry::Metrics;

use shared::Shared;
pub use shared::SharedStore;

/// Keys tracked per limit at most.
pub const MAX_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One key's tokens in its current window.
struct Window {
    index: u64,
    used: u64,
}

/// A token limit's windows and what it reserves for a request without `max_tokens`.
struct TokenWindows {
    per_secs: u64,
    default_max_tokens: u64,
    windows: Mutex<HashMap<u64, Window>>,
    reserved: Counter,
    settled: Counter,
    refunded: Counter,
}

/// Seconds since the Unix epoch: token windows are aligned to it, as Redis's clock is.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long a shared limit refuses a key Redis refused without asking again.
pub const RECHECK_REFUSED: Duration = Duration::from_secs(1);

/// A key Redis refused, remembered by the gateway that asked.
struct Refusal {
    /// The smallest request refused.
    cost: u64,
    recheck: Instant,
    window_end: Instant,
}

/// Tokens a request holds in one limit's window until its response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub key: u64,
    pub window: u64,
    pub tokens: u64,
}

/// One limit, compiled.
pub struct Limiter {
    pub config: RateLimit,
    pub key: KeySpec,
    /// The hash requests without the key count under (`default_key`).
    pub default_key: Option<u64>,
    /// Tokens per second, and the bucket's size.
    rate: f64,
    burst: f64,
    /// The configured `limit` and `per` (whole seconds, at least 1), for the `RateLimit-Policy`
    /// header.
    pub limit: u64,
    pub window_secs: u64,
    buckets: Mutex<HashMap<u64, Bucket>>,
    /// Set for a token limit.
    tokens: Option<TokenWindows>,
    /// Set for a limit kept in Redis (`store: redis`), with its keys' prefix there.
    shared: Option<(Arc<SharedStore>, String)>,
    /// Keys Redis refused lately (shared limits), bounded by [`MAX_KEYS`].
    refused: Mutex<HashMap<u64, Refusal>>,
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
    pub fn new(config: &RateLimit, metrics: &Metrics, store: Option<&Arc<SharedStore>>) -> Self {
        let rate = config
            .requests
            .or(config.tokens)
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
        let token_counter = |kind| {
            metrics
                .rate_limit_tokens
                .get_or_create(&RateLimitLabels {
                    limit: config.name.clone(),
                    outcome: kind,
                })
                .clone()
        };
        let tokens = config.tokens.map(|t| TokenWindows {
            per_secs: t.per.as_secs().max(1),
            default_max_tokens: u64::from(config.default_max_tokens),
            windows: Mutex::new(HashMap::new()),
            reserved: token_counter("reserved"),
            settled: token_counter("settled"),
            refunded: token_counter("refunded"),
        });
        let shared = store
            .filter(|_| config.store == switchyard_config::rate_limit::Store::Redis)
            .map(|s| (Arc::clone(s), format!("switchyard:rl:{}", config.name)));
        Self {
            tokens,
            shared,
            refused: Mutex::new(HashMap::new()),
            key: config.key.clone(),
            default_key: config
                .default_key
                .as_deref()
                .map(|k| switchyard_balance::hash_key(k.as_bytes())),
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

impl Limiter {
    /// Whether this limit is kept in Redis, and so answered by [`Limiter::reserve_shared`].
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The store this limit uses, if shared.
    pub fn store(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref().map(|(s, _)| s)
    }

    /// Reserve `cost` (1 for a request limit) for `key` in Redis, in one round trip.
    pub async fn reserve_shared(&self, key: u64, cost: u64) -> Result<Reservation, Limited> {
        let Some((store, prefix)) = &self.shared else {
            return Ok(Reservation {
                key,
                window: 0,
                tokens: 0,
            });
        };
        let shadow = self.config.mode == Mode::Shadow;
        let now = Instant::now();
        if let Some(retry_after_secs) = self.refused_here(key, cost, now) {
            self.limited.inc();
            return Err(Limited { retry_after_secs });
        }
        let at = format!("{prefix}:{key:016x}");
        match store
            .reserve(&at, self.window_secs, self.limit, cost, shadow)
            .await
        {
            Shared::Granted { window, over } => {
                if over {
                    self.shadow_limited.inc();
                } else {
                    self.allowed.inc();
                }
                if let Some(t) = &self.tokens {
                    t.reserved.inc_by(cost);
                }
                Ok(Reservation {
                    key,
                    window,
                    tokens: cost,
                })
            }
            Shared::Limited { retry_after_secs } => {
                self.limited.inc();
                self.remember_refusal(key, cost, now, retry_after_secs);
                Err(Limited { retry_after_secs })
            }
            // Nothing was taken: nothing to settle.
            Shared::Error if store.fails_open() => Ok(Reservation {
                key,
                window: 0,
                tokens: 0,
            }),
            Shared::Error => {
                self.limited.inc();
                Err(Limited {
                    retry_after_secs: 1,
                })
            }
        }
    }

    /// A key Redis just refused stays refused here, with no round trip, for a request as large
    /// or larger, until its window ends or for [`RECHECK_REFUSED`], whichever is sooner: a
    /// request window stays full to its end, and a token window frees only what refunds give
    /// back, which the next check after the recheck sees.
    fn refused_here(&self, key: u64, cost: u64, now: Instant) -> Option<u64> {
        let refused = self.refused.lock().ok()?;
        let r = refused.get(&key)?;
        // Rounded up, as Redis's own answer is: a client back a moment early is refused again.
        (now < r.recheck && cost >= r.cost).then(|| {
            let left = r.window_end.saturating_duration_since(now);
            left.as_millis().div_ceil(1000).max(1) as u64
        })
    }

    fn remember_refusal(&self, key: u64, cost: u64, now: Instant, retry_after_secs: u64) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        if refused.len() >= MAX_KEYS {
            refused.retain(|_, r| r.recheck > now);
            if refused.len() >= MAX_KEYS {
                return;
            }
        }
        let window_end = now + Duration::from_secs(retry_after_secs);
        let smallest = refused
            .get(&key)
            .filter(|r| r.recheck > now)
            .map_or(cost, |r| r.cost.min(cost));
        refused.insert(
            key,
            Refusal {
                cost: smallest,
                recheck: window_end.min(now + RECHECK_REFUSED),
                window_end,
            },
        );
    }

    /// Whether this limit counts tokens (and so needs the request's parsed body).
    pub fn counts_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// The tokens a request is expected to take: its prompt's estimate, its chat template's
    /// tokens as OpenAI counts them (3 per message and 3 to open the reply), and `max_tokens`,
    /// or the limit's default for requests that give none. Erring high costs a refund; erring
    /// low lets the requests in flight take a window past its limit.
    pub fn estimate(&self, prompt_tokens: u32, messages: u32, max_tokens: Option<u32>) -> u64 {
        let default = self.tokens.as_ref().map_or(0, |t| t.default_max_tokens);
        let template = if messages > 0 {
            3 * u64::from(messages) + 3
        } else {
            0
        };
        u64::from(prompt_tokens) + template + max_tokens.map_or(default, u64::from)
    }

    /// Reserve `tokens` for `key` in the window holding `unix_secs`: `Err` when they do not fit
    /// and the limit enforces (a shadow limit reserves anyway, and counts it).
    pub fn reserve(&self, key: u64, tokens: u64, unix_secs: u64) -> Result<Reservation, Limited> {
        let Some(t) = &self.tokens else {
            return Ok(Reservation {
                key,
                window: 0,
                tokens: 0,
            });
        };
        let index = unix_secs / t.per_secs;
        let granted = Reservation {
            key,
            window: index,
            tokens,
        };
        let Ok(mut windows) = t.windows.lock() else {
            return Ok(granted);
        };
        if windows.len() >= MAX_KEYS && !windows.contains_key(&key) {
            windows.retain(|_, w| w.index >= index);
            if windows.len() >= MAX_KEYS {
                self.untracked.inc();
                return Ok(Reservation {
                    tokens: 0,
                    ..granted
                });
            }
        }
        let w = windows.entry(key).or_insert(Window { index, used: 0 });
        if w.index != index {
            *w = Window { index, used: 0 };
        }
        if w.used + tokens <= self.limit || self.config.mode == Mode::Shadow {
            let over = w.used + tokens > self.limit;
            w.used += tokens;
            drop(windows);
            t.reserved.inc_by(tokens);
            if over {
                self.shadow_limited.inc();
            } else {
                self.allowed.inc();
            }
            return Ok(granted);
        }
        drop(windows);
        self.limited.inc();
        Err(Limited {
            retry_after_secs: ((index + 1) * t.per_secs).saturating_sub(unix_secs).max(1),
        })
    }

    /// The response ended having used `used` tokens (`None`: it reported none, so the
    /// reservation stands): the difference goes back to, or is taken from, the window the
    /// request reserved in, if that is still the key's current one.
    pub fn settle(&self, r: Reservation, used: Option<u64>) {
        let Some(t) = &self.tokens else { return };
        let used = used.unwrap_or(r.tokens);
        t.settled.inc_by(used);
        if used < r.tokens {
            t.refunded.inc_by(r.tokens - used);
        }
        if let Some((store, prefix)) = &self.shared {
            if r.tokens > 0 {
                let delta = used as i64 - r.tokens as i64;
                store.settle(format!("{prefix}:{:016x}:{}", r.key, r.window), delta);
            }
            return;
        }
        let Ok(mut windows) = t.windows.lock() else {
            return;
        };
        if let Some(w) = windows.get_mut(&r.key).filter(|w| w.index == r.window) {
            w.used = (w.used + used).saturating_sub(r.tokens);
        }
    }
}

/// What a request's token reservations settle against when its exchange ends.
pub struct TokenCharge {
    pub limiter: std::sync::Arc<Limiter>,
    pub reservation: Reservation,
}

impl TokenCharge {
    /// Settle with the usage the response reported; a response that failed (`ok` false: an
    /// error status, or none) used nothing it reported, and gets everything back.
    pub fn settle(self, usage: Option<u64>, ok: bool) {
        let used = if ok { usage } else { Some(usage.unwrap_or(0)) };
        self.limiter.settle(self.reservation, used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(yaml: &str) -> Limiter {
        let l: RateLimit = switchyard_config::yaml::from_str(yaml).unwrap();
        Limiter::new(&l, &Metrics::new(), None)
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

    #[test]
    fn token_windows_reserve_whole_requests_and_settle_to_the_usage() {
        let l = limiter(
            "{name: t, key: route, tokens: {limit: 1000, per: 1m}, default_max_tokens: 100}",
        );
        assert_eq!(l.estimate(50, 0, Some(200)), 250);
        assert_eq!(l.estimate(50, 0, None), 150);
        assert_eq!(l.estimate(50, 2, None), 150 + 9);
        let t0 = 60 * 1000 + 5; // 5 s into window 1000
        let a = l.reserve(1, 600, t0).unwrap();
        let b = l.reserve(1, 400, t0).unwrap();
        // Full: the next request does not fit, and is told when the window ends.
        assert_eq!(
            l.reserve(1, 1, t0),
            Err(Limited {
                retry_after_secs: 55
            })
        );
        // Other keys have their own windows.
        assert!(l.reserve(2, 1000, t0).is_ok());
        // `a` used 100 of its 600: 500 come back; `b` reported nothing and keeps its 400.
        l.settle(a, Some(100));
        l.settle(b, None);
        assert!(l.reserve(1, 500, t0 + 1).is_ok());
        assert!(l.reserve(1, 1, t0 + 1).is_err());
        // A new window starts empty; a late settlement of the old one changes nothing in it.
        let c = l.reserve(1, 1000, t0 + 60).unwrap();
        l.settle(
            Reservation {
                key: 1,
                window: 1000,
                tokens: 500,
            },
            Some(0),
        );
        assert!(l.reserve(1, 1, t0 + 60).is_err());
        // A usage above the reservation is charged.
        l.settle(c, Some(1200));
        assert!(l.reserve(1, 1, t0 + 61).is_err());
        let t = l.tokens.as_ref().unwrap();
        assert_eq!(t.reserved.get(), 600 + 400 + 1000 + 500 + 1000);
        assert_eq!(t.refunded.get(), 500 + 500);
    }

    #[test]
    fn a_shadow_token_limit_reserves_past_the_limit_and_counts_it() {
        let l = limiter("{name: t, key: route, tokens: {limit: 10, per: 1s}, mode: shadow}");
        assert!(l.reserve(0, 8, 100).is_ok());
        assert!(l.reserve(0, 8, 100).is_ok());
        assert_eq!((l.allowed.get(), l.shadow_limited.get()), (1, 1));
    }

    #[test]
    fn a_key_redis_refused_is_refused_here_until_the_recheck() {
        let l = limiter("{name: t, key: route, tokens: {limit: 10, per: 1m}}");
        let t0 = Instant::now();
        l.remember_refusal(7, 5, t0, 30);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(l.refused_here(7, 5, at(500)), Some(30));
        assert_eq!(l.refused_here(7, 9, at(500)), Some(30));
        // A smaller request might fit: it asks Redis.
        assert_eq!(l.refused_here(7, 4, at(500)), None);
        // Another key, or after the recheck: Redis again.
        assert_eq!(l.refused_here(8, 5, at(500)), None);
        assert_eq!(l.refused_here(7, 5, at(1001)), None);
        // A window that ends before the recheck bounds it.
        l.remember_refusal(9, 1, t0, 0);
        assert_eq!(l.refused_here(9, 1, at(1)), None);
    }
}
