//! One config for a fleet of gateways, kept in etcd.
//!
//! APISIX keeps its fleet's config in etcd too, and its users report the two ways that goes
//! wrong: watch storms (a key per route, a watch per key: apache/apisix#7867) and nodes left on
//! stale config after a dropped watch (#11390). So a gateway here holds **one** watch on **one**
//! key range, and treats an event only as news that the range changed: it then reads the whole
//! range at one revision and applies it as one config ([`layout`]), so a config split over several
//! keys can never be seen half-written, and no event can be missed or applied twice. The
//! revision it applied is the only state it keeps: a reconnect resumes the watch just after it,
//! and a compacted history is answered by reading the range afresh ([`watch`]).
//!
//! When etcd cannot be reached at start, the last good config written to a local cache
//! ([`cache`]) is served until etcd answers. `switchyard config push` ([`push`]) validates a file
//! with the same checks as `switchyard check` before a compare-and-swap write, so an invalid
//! config rarely reaches etcd; one that does is refused by every replica, which keep their last
//! good revision.

pub mod cache;
pub mod layout;
pub mod push;
mod url;
pub mod watch;

pub use url::{EtcdUrl, UrlError};
