//! Bodies on the request path. Both directions stream frame by frame: nothing here buffers a
//! whole body it was not asked to. [`RequestBody`] enforces the route's size limit;
//! [`UpstreamBody`] enforces the idle timeout between chunks and a gRPC call's deadline, measures
//! the response as it passes ([`Accounting`]: one usage reader, one stream timer), and finishes
//! the request's bookkeeping when the stream ends.

mod accounting;
mod channel;
mod request;
mod response;

pub use accounting::{Accounting, StreamTimer};
pub use channel::ChannelBody;
pub use request::{BodyTooLarge, BoxError, ClientBody, InBody, RequestBody};
pub use response::{IdleTimeout, ResponseBody, UpstreamBody};
