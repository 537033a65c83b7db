//! Per-pool resource limits, with Envoy's circuit-breaker semantics.
//!
//! Envoy's "circuit breakers" are not the Hystrix open/half-open/closed state machine; they are
//! hard caps on the resources one upstream pool may hold, checked at the moment a resource is
//! taken: connections, requests waiting for a connection (pending), requests in flight, and
//! retries in flight. When a cap is hit the request fails fast instead of queueing without bound,
//! which keeps a slow upstream from absorbing the whole gateway's memory and file descriptors
//! (Envoy: "Circuit breaking", `cluster.circuit_breakers.thresholds`). Outlier ejection and
//! adaptive concurrency handle the "upstream is sick" case; these limits are the backstop.
//!
//! The proxy answers an overflow with 503 and `x-switchyard-overflow: <limit>`, and counts it
//! under the same label, so an operator sees which limit tripped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

/// The response header that names the limit an overflowed request hit.
pub const OVERFLOW_HEADER: &str = "x-switchyard-overflow";

/// One of a pool's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Upstream connections open.
    Connections = 0,
    /// Requests waiting for a connection.
    Pending = 1,
    /// Requests in flight.
    Requests = 2,
    /// Retries in flight.
    Retries = 3,
}

impl Limit {
    pub const ALL: [Limit; 4] = [
        Limit::Connections,
        Limit::Pending,
        Limit::Requests,
        Limit::Retries,
    ];

    /// The header value and metric label: `connections`, `pending`, `requests`, `retries`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Pending => "pending",
            Limit::Requests => "requests",
            Limit::Retries => "retries",
        }
    }
}

/// A request refused because `limit` is at its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub limit: Limit,
}

impl Overflow {
    /// The value for [`OVERFLOW_HEADER`].
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.limit.as_str())
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream {} limit reached", self.limit.as_str())
    }
}

impl std::error::Error for Overflow {}

/// A pool's limits; Envoy's defaults (1024, 1024, 1024, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        CircuitLimits {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

impl CircuitLimits {
    fn max(&self, limit: Limit) -> u32 {
        match limit {
            Limit::Connections => self.max_connections,
            Limit::Pending => self.max_pending,
            Limit::Requests => self.max_requests,
            Limit::Retries => self.max_retries,
        }
    }
}

/// The limits of one pool and what is held against them; cheap to clone.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: CircuitLimits,
    open: [AtomicU32; 4],
    overflows: [AtomicU64; 4],
}

impl CircuitBreaker {
    pub fn new(limits: CircuitLimits) -> CircuitBreaker {
        CircuitBreaker {
            inner: Arc::new(Inner {
                limits,
                open: Default::default(),
                overflows: Default::default(),
            }),
        }
    }

    pub fn limits(&self) -> CircuitLimits {
        self.inner.limits
    }

    /// Takes one unit of `limit`, released when the guard drops; `Err` (and an overflow count)
    /// if it is already at its maximum.
    pub fn try_acquire(&self, limit: Limit) -> Result<BreakerGuard, Overflow> {
        let i = limit as usize;
        let max = self.inner.limits.max(limit);
        let taken = self.inner.open[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        match taken {
            Ok(_) => Ok(BreakerGuard {
                inner: self.inner.clone(),
                limit,
            }),
            Err(_) => {
                self.inner.overflows[i].fetch_add(1, Ordering::Relaxed);
                Err(Overflow { limit })
            }
        }
    }

    /// Units of `limit` held now.
    pub fn in_use(&self, limit: Limit) -> u32 {
        self.inner.open[limit as usize].load(Ordering::Acquire)
    }

    /// Requests refused by `limit` since start.
    pub fn overflows(&self, limit: Limit) -> u64 {
        self.inner.overflows[limit as usize].load(Ordering::Relaxed)
    }
}

/// One unit of a limit; released on drop.
#[derive(Debug)]
pub struct BreakerGuard {
    inner: Arc<Inner>,
    limit: Limit,
}

impl BreakerGuard {
    pub fn limit(&self) -> Limit {
        self.limit
    }
}

impl Drop for BreakerGuard {
    fn drop(&mut self) {
        self.inner.open[self.limit as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> CircuitBreaker {
        CircuitBreaker::new(CircuitLimits {
            max_connections: 1,
            max_pending: 2,
            max_requests: 3,
            max_retries: 4,
        })
    }

    #[test]
    fn each_limit_overflows_at_its_own_maximum() {
        let b = small();
        for (limit, max) in Limit::ALL.into_iter().zip(1..) {
            let held: Vec<_> = (0..max).map(|_| b.try_acquire(limit).unwrap()).collect();
            let err = b.try_acquire(limit).unwrap_err();
            assert_eq!(err.limit, limit);
            assert_eq!(err.header_value(), limit.as_str());
            assert_eq!(b.in_use(limit), max);
            assert_eq!(b.overflows(limit), 1);
            drop(held);
            assert_eq!(b.in_use(limit), 0);
        }
    }

    #[test]
    fn limits_are_independent() {
        let b = small();
        let _c = b.try_acquire(Limit::Connections).unwrap();
        assert_eq!(
            b.try_acquire(Limit::Connections).unwrap_err().to_string(),
            "upstream connections limit reached"
        );
        let _r = b.try_acquire(Limit::Requests).unwrap();
        assert_eq!(b.overflows(Limit::Requests), 0);
        assert_eq!(b.in_use(Limit::Retries), 0);
    }

    #[test]
    fn guards_release_on_drop_from_clones() {
        let b = small();
        let c = b.clone();
        let g = c.try_acquire(Limit::Connections).unwrap();
        assert_eq!(g.limit(), Limit::Connections);
        assert_eq!(
            b.try_acquire(Limit::Connections).unwrap_err().limit,
            Limit::Connections
        );
        drop(g);
        assert!(b.try_acquire(Limit::Connections).is_ok());
        assert_eq!(b.in_use(Limit::Connections), 0);
    }

    #[test]
    fn zero_limit_refuses_everything() {
        let b = CircuitBreaker::new(CircuitLimits {
            max_retries: 0,
            ..CircuitLimits::default()
        });
        assert_eq!(
            b.try_acquire(Limit::Retries).unwrap_err().limit,
            Limit::Retries
        );
        assert_eq!(b.limits().max_requests, 1024);
    }

    #[test]
    fn concurrent_acquires_respect_the_limit() {
        let b = CircuitBreaker::new(CircuitLimits {
            max_requests: 10,
            ..CircuitLimits::default()
        });
        let granted = AtomicU32::new(0);
        let all_tried = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let held: Vec<_> = (0..50)
                        .filter_map(|_| b.try_acquire(Limit::Requests).ok())
                        .collect();
                    granted.fetch_add(held.len() as u32, Ordering::Relaxed);
                    all_tried.wait();
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 10);
        assert_eq!(b.overflows(Limit::Requests), 190);
    }
}
