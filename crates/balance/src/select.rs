//! Building blocks several pickers share: a uniform draw over available endpoints, one pass that
//! sums load and fingerprints an endpoint set, and the bounded-load capacity.

use std::sync::Arc;

use crate::endpoint::Endpoint;
use crate::hash::mix;

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

/// One pass over a set: what bounded load and cache checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    pub available: usize,
    pub in_flight: u64,
    /// Identifies the set's members, order and weights; a picker's cached ring or table is
    /// reused while this matches.
    pub fingerprint: u64,
}

pub(crate) fn scan(endpoints: &[Endpoint]) -> Scan {
    let mut s = Scan {
        available: 0,
        in_flight: 0,
        fingerprint: endpoints.len() as u64,
    };
    for e in endpoints {
        if e.is_available() {
            s.available += 1;
            s.in_flight += e.state.in_flight();
        }
        let id = Arc::as_ptr(&e.state) as usize as u64;
        s.fingerprint = mix(s.fingerprint ^ id, u64::from(e.weight));
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

/// Whether endpoint `i` may take the next request under `cap`.
#[inline]
pub(crate) fn fits(e: &Endpoint, cap: u64) -> bool {
    e.is_available() && e.state.in_flight() < cap
}
