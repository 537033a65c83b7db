//! How long to wait before a retry: exponential backoff with full jitter, or the upstream's own
//! `Retry-After`.
//!
//! Full jitter follows Envoy's retry back-off (`base_interval`, `max_interval`): retry `N` waits
//! a uniformly random time in `[0, (2^N - 1) × base]`, capped at `max`. Randomising the whole
//! interval, not only a small fraction of it, is what de-synchronises clients that failed
//! together (AWS Architecture Blog, "Exponential Backoff and Jitter"): without it, every client
//! of a briefly failing upstream comes back in the same instant and knocks it over again.
//!
//! When the upstream says how long to wait (`Retry-After` on a 429 or 503), that wins over the
//! computed backoff: the server knows its own recovery time better than our guess. A value above
//! the configured cap means "not soon"; holding a client's request open that long is worse than
//! returning the upstream's answer, so the policy does not retry at all (see
//! [`crate::RetryPolicy::should_retry`]).

use std::time::{Duration, SystemTime};

/// Envoy's default `base_interval`.
pub const DEFAULT_BASE: Duration = Duration::from_millis(25);
/// Envoy's default `max_interval` (10 × base).
pub const DEFAULT_MAX: Duration = Duration::from_millis(250);

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BASE,
            max: DEFAULT_MAX,
        }
    }
}

impl Backoff {
    /// The upper bound of the jitter window before retry `retry` (1 for the first retry):
    /// `min((2^retry - 1) × base, max)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX) - 1;
        self.base.saturating_mul(factor.max(1)).min(self.max)
    }

    /// A random delay in `[0, ceiling(retry)]`, drawn from `rng` (seed it in tests).
    pub fn delay_with(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos() as u64;
        Duration::from_nanos(rng.u64(0..=ceiling))
    }

    /// A random delay in `[0, ceiling(retry)]` from the thread-local generator.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos() as u64;
        Duration::from_nanos(fastrand::u64(0..=ceiling))
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): either delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. A date in the past means "now" (zero).
/// Anything else is `None`: an unparseable hint is ignored, never trusted.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurdly long values instead of rejecting them: they are over any cap anyway.
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_exponentially_then_caps() {
        let b = Backoff::default();
        let ms = |r| b.ceiling(r).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5)], [25, 75, 175, 250, 250]);
        assert_eq!(b.ceiling(0), DEFAULT_BASE);
        assert_eq!(b.ceiling(u32::MAX), DEFAULT_MAX);
    }

    #[test]
    fn jittered_delays_stay_within_bounds_and_spread() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..8 {
            let delays: Vec<Duration> = (0..500).map(|_| b.delay_with(retry, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= b.ceiling(retry)));
            let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
            // Full jitter: the mean sits near half the ceiling, not at the ceiling.
            let half = b.ceiling(retry) / 2;
            assert!(
                mean > half * 8 / 10 && mean < half * 12 / 10,
                "{retry}: {mean:?}"
            );
        }
        assert!(b.delay(3) <= b.ceiling(3));
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(b"0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [&b""[..], b"-1", b"1.5", b"soon", b"\xff"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let later = b"Wed, 21 Oct 2015 07:28:30 GMT";
        assert_eq!(parse_retry_after(later, now), Some(Duration::from_secs(30)));
        let earlier = b"Wed, 21 Oct 2015 07:27:00 GMT";
        assert_eq!(parse_retry_after(earlier, now), Some(Duration::ZERO));
        // The obsolete RFC 850 form is accepted too, as RFC 9110 requires of recipients.
        let rfc850 = b"Wednesday, 21-Oct-15 07:28:10 GMT";
        assert_eq!(
            parse_retry_after(rfc850, now),
            Some(Duration::from_secs(10))
        );
    }
}
