//! Building blocks several pickers share: a uniform draw over available endpoints, one pass that
//! sums load and fingerprints an endpoint set, and the bounded-load capacity.

use std::sync::Arc;

use crate::endpoint::Endpoint;

/// A uniformly random available endpoint; scans from the draw when it lands on an unavailable
/// one, so it is O(1) while most endpoints are healthy.
pub(crate) fn random_available(endpoints: &[Endpoint]) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let i = fastrand::usize(..n);
    if endpoints[i].is_available() {
        return Some(i);
    }
    (1..n)
        .map(|k| (i + k) % n)
        .find(|&j| endpoints[j].is_available())
}

/// Two distinct random available endpoints when there are two, else the one there is; the
/// classic power-of-two-choices draw.
pub(crate) fn random_pair(endpoints: &[Endpoint]) -> Option<(usize, usize)> {
    let n = endpoints.len();
    let a = random_available(endpoints)?;
    if n == 1 {
        return Some((a, a));
    }
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    if endpoints[b].is_available() {
        return Some((a, b));
    }
    let b = (1..n)
        .map(|k| (b + k) % n)
        .find(|&j| j != a && endpoints[j].is_available())
        .unwrap_or(a);
    Some((a, b))
}

/// Identifies an endpoint slice in O(1): its address and length, and its first and last
/// members. A picker serves one pool in one config generation, whose slice never changes (the
/// gateway builds them together), so this only has to notice a picker being handed another set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SetKey([usize; 4]);

pub(crate) fn set_key(endpoints: &[Endpoint]) -> SetKey {
    let id = |e: Option<&Endpoint>| e.map_or(0, |e| Arc::as_ptr(&e.state) as usize);
    SetKey([
        endpoints.as_ptr() as usize,
        endpoints.len(),
        id(endpoints.first()),
        id(endpoints.last()),
    ])
}

/// A structure built from an endpoint set (a hash ring, a lookup table) and kept until the picker
/// is handed another set. Reads borrow the cached value, so concurrent picks share no reference
/// count.
#[derive(Debug)]
pub(crate) struct PerSet<T>(arc_swap::ArcSwapOption<(SetKey, T)>);

impl<T> Default for PerSet<T> {
    fn default() -> Self {
        Self(arc_swap::ArcSwapOption::empty())
    }
}

impl<T> PerSet<T> {
    /// Run `f` on the value for `endpoints`, building it with `build` first if needed.
    pub(crate) fn with<R>(
        &self,
        endpoints: &[Endpoint],
        build: impl FnOnce() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let set = set_key(endpoints);
        {
            let cached = self.0.load();
            if let Some(c) = cached.as_ref().filter(|c| c.0 == set) {
                return f(&c.1);
            }
        }
        let built = Arc::new((set, build()));
        self.0.store(Some(built.clone()));
        f(&built.1)
    }
}

/// One pass over a set: what bounded load needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    pub available: usize,
    pub in_flight: u64,
}

pub(crate) fn scan(endpoints: &[Endpoint]) -> Scan {
    let mut s = Scan {
        available: 0,
        in_flight: 0,
    };
    for e in endpoints.iter().filter(|e| e.is_available()) {
        s.available += 1;
        s.in_flight += e.state.in_flight();
    }
    s
}

/// The in-flight count an endpoint may reach with the next request: `ceil(c × (total + 1) /
/// available)`, from Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
/// Loads" (2018). Since `c ≥ 1`, some available endpoint is always below it.
pub(crate) fn load_cap(s: &Scan, load_factor: f64) -> u64 {
    let avg = (s.in_flight + 1) as f64 / s.available.max(1) as f64;
    (load_factor * avg).ceil().max(1.0) as u64
}

/// Walk `candidates` (endpoint indices in ring or table order) to the first available endpoint
/// under the bounded-load cap. An idle owner is taken without summing the set's load (the cap
/// is at least one), so lightly loaded pools pay O(log n) or O(1), not O(n).
pub(crate) fn first_under_cap(
    endpoints: &[Endpoint],
    mut candidates: impl Iterator<Item = usize>,
    load_factor: f64,
) -> Option<usize> {
    let first = candidates.next()?;
    let e = &endpoints[first];
    if e.is_available() && e.state.in_flight() == 0 {
        return Some(first);
    }
    let s = scan(endpoints);
    if s.available == 0 {
        return None;
    }
    let cap = load_cap(&s, load_factor);
    let mut fallback = None;
    for i in std::iter::once(first).chain(candidates) {
        let e = &endpoints[i];
        if e.is_available() {
            if e.state.in_flight() < cap {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
    }
    // Only reachable when concurrent picks raced past the cap.
    fallback
}
