//! Capacity weights from scraped load, with hysteresis.
//!
//! Each Envoy sees only its own in-flight requests; with several Envoys (gateways, sidecars)
//! sharing a fleet, none sees that a replica is slow until its own share piles up there (the
//! Peak-EWMA discussion in Envoy #20907). The control plane scrapes every replica's queue and
//! running count, so it sees the pile-up whoever sent it, and turns it into
//! `load_balancing_weight`s that Envoy's weighted least-request follows.
//!
//! The weight falls with the replica's smoothed load relative to the pool's mean
//! (`BASE × ((mean + 1) / (load + 1))²`): a replica at half speed holds about twice the
//! requests for the same arrivals, and gets about a quarter of the weight until its queue is
//! back near the mean. Three things keep weights
//! from flapping: the load is smoothed over intervals (an EWMA), a weight changes only when the
//! new one is more than [`HYSTERESIS`] away from the pushed one, and a weight rises at most
//! [`MAX_RISE`]-fold per interval, so a recovered replica comes back through a slow start
//! rather than being flooded at once. A replica whose load is unknown (stale scrape) keeps its
//! weight.

/// The weight of a replica at the pool's mean load.
pub const BASE: u32 = 100;
/// Weights stay within `[1, MAX_WEIGHT]`.
pub const MAX_WEIGHT: u32 = 10 * BASE;
/// Relative change below which a weight is not pushed.
pub const HYSTERESIS: f64 = 0.2;
/// Largest rise of a weight in one interval.
pub const MAX_RISE: f64 = 2.0;
/// How sharply weight falls with load: squared, so that a replica holding more than the mean
/// sheds more than its proportional share. Every request it gets waits longer there, and TTFT's
/// tail is made of those requests (bench/xds/ttft.py measured the linear form too).
pub const EXPONENT: i32 = 2;
/// EWMA weight of the newest load reading.
const ALPHA: f64 = 0.6;

#[derive(Debug, Clone)]
pub struct Weights {
    smoothed: Vec<Option<f64>>,
    current: Vec<u32>,
}

impl Weights {
    /// For `n` replicas, all at [`BASE`] until loads come in.
    pub fn new(n: usize) -> Self {
        Self {
            smoothed: vec![None; n],
            current: vec![BASE; n],
        }
    }

    pub fn current(&self) -> &[u32] {
        &self.current
    }

    /// Fold in one interval's loads (queued plus running requests per replica; `None` when
    /// unknown) and return the weights to push.
    pub fn update(&mut self, loads: &[Option<f64>]) -> &[u32] {
        for (s, l) in self.smoothed.iter_mut().zip(loads) {
            if let Some(l) = l.filter(|l| l.is_finite() && *l >= 0.0) {
                *s = Some(s.map_or(l, |s| ALPHA * l + (1.0 - ALPHA) * s));
            }
        }
        let known: Vec<f64> = self.smoothed.iter().flatten().copied().collect();
        if known.is_empty() {
            return &self.current;
        }
        let mean = known.iter().sum::<f64>() / known.len() as f64;
        for (w, s) in self.current.iter_mut().zip(&self.smoothed) {
            let Some(load) = s else { continue };
            let target = f64::from(BASE) * ((mean + 1.0) / (load + 1.0)).powi(EXPONENT);
            let target = target
                .min(f64::from(*w) * MAX_RISE)
                .clamp(1.0, f64::from(MAX_WEIGHT));
            if (target - f64::from(*w)).abs() > HYSTERESIS * f64::from(*w) {
                *w = target.round() as u32;
            }
        }
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(v: &[f64]) -> Vec<Option<f64>> {
        v.iter().map(|l| Some(*l)).collect()
    }

    #[test]
    fn a_slow_replica_loses_weight_within_two_intervals() {
        let mut w = Weights::new(4);
        // Same arrivals; the slow one holds twice the requests.
        let l = loads(&[4.0, 4.0, 4.0, 8.0]);
        w.update(&l);
        let after = w.update(&l).to_vec();
        assert!(after[3] < BASE * 3 / 4, "{after:?}");
        assert!(after[..3].iter().all(|x| *x >= BASE), "{after:?}");
    }

    #[test]
    fn small_wobbles_push_nothing() {
        let mut w = Weights::new(3);
        w.update(&loads(&[5.0, 5.0, 5.0]));
        let before = w.current().to_vec();
        for i in 0..50 {
            let jitter = if i % 2 == 0 { 0.5 } else { -0.5 };
            w.update(&loads(&[5.0 + jitter, 5.0 - jitter, 5.0]));
        }
        assert_eq!(w.current(), before.as_slice());
    }

    #[test]
    fn a_recovered_replica_ramps_back_up() {
        let mut w = Weights::new(2);
        for _ in 0..10 {
            w.update(&loads(&[1.0, 60.0]));
        }
        let (fast, low) = (w.current()[0], w.current()[1]);
        assert!(low * 10 < fast, "{fast} {low}");
        let mut seen = vec![low];
        for _ in 0..10 {
            seen.push(w.update(&loads(&[1.0, 1.0]))[1]);
        }
        // Never more than doubling per interval, and back near the base in the end.
        assert!(
            seen.windows(2)
                .all(|p| f64::from(p[1]) <= f64::from(p[0]) * MAX_RISE + 0.5),
            "{seen:?}"
        );
        assert!(*seen.last().unwrap() >= BASE * 4 / 5, "{seen:?}");
    }

    #[test]
    fn unknown_loads_keep_their_weight_and_bad_numbers_are_ignored() {
        let mut w = Weights::new(3);
        w.update(&[Some(10.0), None, Some(f64::NAN)]);
        assert_eq!(w.current()[1], BASE);
        assert_eq!(w.current()[2], BASE);
    }
}
