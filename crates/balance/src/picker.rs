//! The picker seam: a small synchronous trait that looks at endpoints as data and returns one.
//! Pickers hold only their own policy state (a cursor, a ring); live load lives on the endpoints.

use std::marker::PhantomData;

use crate::endpoint::Endpoint;

/// What a picker may know about the request it places. Today that is the request's hash key,
/// already reduced to a `u64` by [`crate::hash_key`] from the header, cookie or source IP that
/// the balancer's `key` setting names.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    hash_key: Option<u64>,
    _request: PhantomData<&'a ()>,
}

impl PickContext<'_> {
    /// A context with no hash key.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context carrying the request's hashed key.
    pub fn with_hash_key(key: u64) -> Self {
        Self {
            hash_key: Some(key),
            _request: PhantomData,
        }
    }

    pub fn hash_key(&self) -> Option<u64> {
        self.hash_key
    }
}

/// Chooses an endpoint for one request.
pub trait Picker: Send + Sync + 'static {
    /// The config name of this policy (`round_robin`), for metrics and `/pools`.
    fn name(&self) -> &'static str;

    /// Index into `endpoints` of the chosen one, or `None` when none is available. Must never
    /// return an endpoint for which [`Endpoint::is_available`] is false.
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize>;

    /// Like [`Picker::pick`], with what is known about the request. Hashing pickers override
    /// this; the rest ignore the context.
    fn pick_with(&self, endpoints: &[Endpoint], ctx: &PickContext<'_>) -> Option<usize> {
        let _ = ctx;
        self.pick(endpoints)
    }

    /// Whether this policy reads ORCA load reports, so the gateway asks upstreams for one on
    /// each response (gRFC A51's `endpoint-load-metrics-format` header).
    fn wants_load_reports(&self) -> bool {
        false
    }
}
