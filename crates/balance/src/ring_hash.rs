//! Consistent hashing on a ring (Karger et al. 1997, as in libketama and Envoy's `RING_HASH`):
//! each endpoint owns many points ("virtual nodes") on a 64-bit ring and a key goes to the first
//! point at or after its hash, so an endpoint joining or leaving moves only about 1/N of keys.
//! Points per endpoint scale with weight.
//!
//! Plain consistent hashing lets one hot key overload its endpoint. With bounded loads (Mirrokni,
//! Thorup and Zadimoghaddam 2018; used by Vimeo and HAProxy) an endpoint at `ceil(c × average
//! in-flight)` is passed over and the walk continues to the next point, so a hot key spills to
//! the same few neighbours each time and keeps most of its cache locality. Requests without a key
//! go to a random endpoint.
//!
//! The ring is built on the first pick for an endpoint set and cached (keyed by the set's
//! identity) because a picker lives for one config generation, whose endpoints do not change.

use crate::endpoint::Endpoint;
use crate::hash::hash_key;
use crate::picker::{PickContext, Picker};
use crate::select::{first_under_cap, random_available, PerSet};

/// Default minimum number of points on the ring.
pub const DEFAULT_MIN_RING_SIZE: u32 = 1024;
/// Default bound `c` on load relative to the average.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;
/// Points per unit of weight when the minimum ring size does not ask for more, as in ketama
/// (160 per server). Keeping it fixed is what keeps moves near 1/N when the set changes.
const POINTS_PER_UNIT: u64 = 160;
/// Envoy's cap on ring size.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct RingHash {
    min_ring_size: u32,
    load_factor: f64,
    ring: PerSet<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// Sorted point hashes, and the endpoint index owning each.
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    fn build(endpoints: &[Endpoint], min_ring_size: u32) -> Self {
        let min_w = endpoints.iter().map(|e| e.weight.max(1)).min().unwrap_or(1);
        let units: f64 = endpoints
            .iter()
            .map(|e| f64::from(e.weight.max(1)) / f64::from(min_w))
            .sum();
        let mut per_unit = (f64::from(min_ring_size) / units.max(1.0)).ceil() as u64;
        per_unit = per_unit.max(POINTS_PER_UNIT);
        if per_unit as f64 * units > MAX_RING_SIZE as f64 {
            per_unit = ((MAX_RING_SIZE as f64 / units) as u64).max(1);
        }
        let mut entries: Vec<(u64, u32)> = Vec::new();
        let mut buf = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let share = f64::from(e.weight.max(1)) / f64::from(min_w);
            let count = ((per_unit as f64 * share).round() as u64).max(1);
            let name = e.address().to_string();
            for j in 0..count {
                buf.clear();
                buf.extend_from_slice(name.as_bytes());
                buf.push(b'_');
                buf.extend_from_slice(&j.to_le_bytes());
                entries.push((hash_key(&buf), i as u32));
            }
        }
        entries.sort_unstable();
        let (points, owners) = entries.into_iter().unzip();
        Ring { points, owners }
    }
}

impl RingHash {
    pub fn new(min_ring_size: u32, load_factor: f64) -> Self {
        Self {
            min_ring_size: min_ring_size.max(1),
            load_factor: load_factor.max(1.0),
            ring: PerSet::default(),
        }
    }

    /// Run `f` on the cached ring for this endpoint set, building it first if needed. The
    /// cached one is borrowed, not cloned, so concurrent picks share no reference count.
    fn with_ring<R>(&self, endpoints: &[Endpoint], f: impl FnOnce(&Ring) -> R) -> R {
        self.ring
            .with(endpoints, || Ring::build(endpoints, self.min_ring_size), f)
    }

    /// The endpoint that owns `key` when load is ignored; for tests of key movement.
    #[cfg(test)]
    fn owner(&self, endpoints: &[Endpoint], key: u64) -> usize {
        self.with_ring(endpoints, |r| {
            r.owners[r.points.partition_point(|&p| p < key) % r.points.len()] as usize
        })
    }
}

impl Default for RingHash {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_RING_SIZE, DEFAULT_LOAD_FACTOR)
    }
}

impl Picker for RingHash {
    fn name(&self) -> &'static str {
        "ring_hash"
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        random_available(endpoints)
    }

    fn pick_with(&self, endpoints: &[Endpoint], ctx: &PickContext<'_>) -> Option<usize> {
        let Some(key) = ctx.hash_key() else {
            return random_available(endpoints);
        };
        if endpoints.is_empty() {
            return None;
        }
        self.with_ring(endpoints, |ring| {
            let len = ring.points.len();
            let start = ring.points.partition_point(|&p| p < key);
            let walk = (0..len).map(|k| ring.owners[(start + k) % len] as usize);
            first_under_cap(endpoints, walk, self.load_factor)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{endpoints, moved_fraction, shares, test_keys, weighted};
    use proptest::prelude::*;

    fn ctx(key: u64) -> PickContext<'static> {
        PickContext::with_hash_key(key)
    }

    #[test]
    fn same_key_same_endpoint() {
        let eps = endpoints(&[true; 8]);
        let rh = RingHash::default();
        for k in 0..100u64 {
            let key = hash_key(&k.to_le_bytes());
            let first = rh.pick_with(&eps, &ctx(key));
            assert!((0..5).all(|_| rh.pick_with(&eps, &ctx(key)) == first));
        }
    }

    #[test]
    fn unhealthy_owner_moves_only_its_keys() {
        let eps = endpoints(&[true; 5]);
        let rh = RingHash::default();
        let keys: Vec<u64> = (0..2000u64).map(|k| hash_key(&k.to_le_bytes())).collect();
        let before: Vec<_> = keys.iter().map(|&k| rh.pick_with(&eps, &ctx(k))).collect();
        eps[2].state.set_healthy(false);
        for (k, b) in keys.iter().zip(before) {
            let after = rh.pick_with(&eps, &ctx(*k));
            assert!(after != Some(2) && (b == Some(2) || after == b));
        }
    }

    #[test]
    fn hot_key_spills_under_bounded_load() {
        let eps = endpoints(&[true; 4]);
        let rh = RingHash::default();
        let guards: Vec<_> = (0..100)
            .map(|_| eps[rh.pick_with(&eps, &ctx(42)).unwrap()].state.begin())
            .collect();
        let max = eps.iter().map(|e| e.state.in_flight()).max().unwrap();
        assert!(max <= (1.25f64 * 25.0).ceil() as u64 + 1, "max {max}");
        drop(guards);
    }

    #[test]
    fn weights_scale_key_share() {
        let eps = weighted(&[1, 3]);
        let rh = RingHash::default();
        let picks: Vec<_> = (0..20_000u64)
            .map(|k| rh.owner(&eps, hash_key(&k.to_le_bytes())))
            .collect();
        let s = shares(&picks, 2);
        assert!((s[1] - 0.75).abs() < 0.05, "{s:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20), keys in prop::collection::vec(any::<u64>(), 1..30)) {
            let eps = endpoints(&health);
            let rh = RingHash::default();
            for k in keys {
                match rh.pick_with(&eps, &ctx(k)) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }

        #[test]
        fn one_join_or_leave_moves_about_one_nth(n in 7usize..40, leave in any::<prop::sample::Index>()) {
            // From 7 endpoints up, each has a fixed 160 points, so only the joiner's or
            // leaver's keys move; below that the ring is stretched to min_ring_size.
            let all = endpoints(&vec![true; n + 1]);
            let (small, big) = (&all[..n], &all[..]);
            let gone = leave.index(n);
            let fewer: Vec<_> = small.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, e)| e.clone()).collect();
            let keys = test_keys();
            let owners = |eps: &[Endpoint]| {
                let rh = RingHash::default();
                keys.iter().map(|&k| rh.owner(eps, k)).collect::<Vec<_>>()
            };
            let base = owners(small);
            let join = moved_fraction(small, &base, big, &owners(big));
            let leave = moved_fraction(small, &base, &fewer, &owners(&fewer));
            let (ideal_join, ideal_leave) = (1.0 / (n + 1) as f64, 1.0 / n as f64);
            prop_assert!(join < ideal_join * 1.6, "join moved {} ideal {}", join, ideal_join);
            prop_assert!(join > ideal_join * 0.4, "join moved {} ideal {}", join, ideal_join);
            prop_assert!(leave < ideal_leave * 1.6, "leave moved {} ideal {}", leave, ideal_leave);
            prop_assert!(leave > ideal_leave * 0.4, "leave moved {} ideal {}", leave, ideal_leave);
        }

        #[test]
        fn bounded_load_holds(n in 2usize..20, hot in 1u64..4, picks in 10usize..400) {
            let eps = endpoints(&vec![true; n]);
            let rh = RingHash::new(1024, 1.25);
            let mut guards = Vec::new();
            for p in 0..picks {
                // Mostly a few hot keys, the rest spread.
                let key = if p % 4 == 0 { hash_key(&(p as u64).to_le_bytes()) } else { hot * 7919 };
                let i = rh.pick_with(&eps, &ctx(key)).unwrap();
                guards.push(eps[i].state.begin());
                let avg = guards.len() as f64 / n as f64;
                let max = eps.iter().map(|e| e.state.in_flight()).max().unwrap();
                prop_assert!(max <= (1.25 * avg).ceil() as u64 + 1, "max {} avg {}", max, avg);
            }
        }
    }
}
