//! The picker seam: a small synchronous trait that looks at endpoints as data and returns one.
//! Pickers hold only their own policy state (a cursor, a ring); live load lives on the endpoints.

use crate::endpoint::Endpoint;

/// Chooses an endpoint for one request.
pub trait Picker: Send + Sync + 'static {
    /// The config name of this policy (`round_robin`), for metrics and `/pools`.
    fn name(&self) -> &'static str;

    /// Index into `endpoints` of the chosen one, or `None` when none is available. Must never
    /// return an endpoint for which [`Endpoint::is_available`] is false.
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize>;
}
