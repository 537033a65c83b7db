//! Slow start, after Envoy's slow start mode: a new or returning endpoint's weight ramps from
//! `min_weight_percent` to its full weight over `window`.
//!
//! Why: an inference server that just came up has cold caches (no prefix/KV cache hits, CUDA
//! graphs still compiling, weights still paging in). A least-request or round-robin picker sees
//! it idle and sends it a full share at once, which shows up as a latency spike on exactly the
//! requests routed there. Ramping the weight lets it warm up on a trickle.
//!
//! The curve is Envoy's: `weight × max(min_weight_percent / 100, (elapsed / window)^(1 /
//! aggression))`; `aggression` 1.0 is linear, larger values ramp faster early on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Slow start settings for one pool; a zero `window` turns it off.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStartSettings {
    pub window: Duration,
    pub aggression: f64,
    pub min_weight_percent: u32,
}

impl Default for SlowStartSettings {
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            aggression: 1.0,
            min_weight_percent: 10,
        }
    }
}

/// The effective weight at `now` of an endpoint with configured `weight` that entered (was
/// added, turned healthy, or returned from ejection) at `since`.
pub fn effective_weight(weight: f64, since: Instant, now: Instant, s: &SlowStartSettings) -> f64 {
    let elapsed = now.saturating_duration_since(since);
    if s.window.is_zero() || elapsed >= s.window {
        return weight;
    }
    // Envoy floors the time factor so the first instants do not give a zero weight.
    let time_factor = (elapsed.as_secs_f64() / s.window.as_secs_f64()).max(0.001);
    let aggression = if s.aggression > 0.0 {
        s.aggression
    } else {
        1.0
    };
    let min = f64::from(s.min_weight_percent.min(100)) / 100.0;
    weight * time_factor.powf(1.0 / aggression).max(min)
}

/// When each endpoint of a pool last entered service, for [`effective_weight`].
#[derive(Debug, Default)]
pub struct Warmups {
    settings: SlowStartSettings,
    since: HashMap<SocketAddr, Instant>,
}

impl Warmups {
    pub fn new(settings: SlowStartSettings) -> Self {
        Self {
            settings,
            since: HashMap::new(),
        }
    }

    pub fn set_settings(&mut self, settings: SlowStartSettings) {
        self.settings = settings;
    }

    /// `addr` entered service at `now`: call on add, on a healthy transition, on return from
    /// ejection. Not called for the endpoints present at startup, so a restarting gateway does
    /// not throttle a warm fleet.
    pub fn begin(&mut self, addr: SocketAddr, now: Instant) {
        if !self.settings.window.is_zero() {
            self.since.insert(addr, now);
        }
    }

    /// `addr`'s effective weight at `now`; forgets endpoints whose window has passed.
    pub fn weight(&mut self, addr: SocketAddr, weight: f64, now: Instant) -> f64 {
        match self.since.get(&addr) {
            Some(&since) if now.saturating_duration_since(since) < self.settings.window => {
                effective_weight(weight, since, now, &self.settings)
            }
            Some(_) => {
                self.since.remove(&addr);
                weight
            }
            None => weight,
        }
    }

    /// Whether any endpoint is still ramping (pickers may skip the lookup otherwise).
    pub fn any_warming(&self, now: Instant) -> bool {
        self.since
            .values()
            .any(|&s| now.saturating_duration_since(s) < self.settings.window)
    }

    /// Forget endpoints no longer in the pool.
    pub fn retain(&mut self, keep: impl Fn(SocketAddr) -> bool) {
        self.since.retain(|&a, _| keep(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(window_s: u64, aggression: f64, min: u32) -> SlowStartSettings {
        SlowStartSettings {
            window: Duration::from_secs(window_s),
            aggression,
            min_weight_percent: min,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn linear_curve_with_floor() {
        let s = settings(30, 1.0, 10);
        let t0 = Instant::now();
        let at = |secs: u64| effective_weight(100.0, t0, t0 + Duration::from_secs(secs), &s);
        assert_eq!(at(0), 10.0, "the floor");
        assert_eq!(at(1), 10.0, "1/30 is below the floor");
        assert!((at(15) - 50.0).abs() < 1e-9);
        assert!((at(27) - 90.0).abs() < 1e-9);
        assert_eq!(at(30), 100.0);
        assert_eq!(at(300), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn aggression_bends_the_curve_and_is_monotonic() {
        let t0 = Instant::now();
        let fast = settings(100, 2.0, 0);
        let linear = settings(100, 1.0, 0);
        let mid = t0 + Duration::from_secs(25);
        // (0.25)^(1/2) = 0.5
        assert!((effective_weight(10.0, t0, mid, &fast) - 5.0).abs() < 1e-9);
        assert!((effective_weight(10.0, t0, mid, &linear) - 2.5).abs() < 1e-9);
        let mut last = 0.0;
        for secs in 0..=100 {
            let w = effective_weight(10.0, t0, t0 + Duration::from_secs(secs), &fast);
            assert!(w >= last, "not monotonic at {secs}s");
            last = w;
        }
        assert_eq!(last, 10.0);
        // The 0.001 floor keeps a just-started endpoint pickable when min_weight_percent is 0.
        assert!(effective_weight(10.0, t0, t0, &linear) > 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn off_by_default() {
        let t0 = Instant::now();
        assert_eq!(
            effective_weight(7.0, t0, t0, &SlowStartSettings::default()),
            7.0
        );
        let mut w = Warmups::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        w.begin(a, t0);
        assert!(!w.any_warming(t0));
        assert_eq!(w.weight(a, 7.0, t0), 7.0);
    }

    #[tokio::test(start_paused = true)]
    async fn warmups_track_entry_time() {
        let mut w = Warmups::new(settings(10, 1.0, 10));
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let t0 = Instant::now();
        w.begin(a, t0);
        assert!(w.any_warming(t0));
        assert!((w.weight(a, 10.0, t0 + Duration::from_secs(5)) - 5.0).abs() < 1e-9);
        assert_eq!(
            w.weight(b, 10.0, t0),
            10.0,
            "present from the start: full weight"
        );
        assert_eq!(w.weight(a, 10.0, t0 + Duration::from_secs(10)), 10.0);
        assert!(!w.any_warming(t0 + Duration::from_secs(10)));
        w.begin(b, t0);
        w.retain(|x| x != b);
        assert_eq!(w.weight(b, 10.0, t0), 10.0);
    }
}
