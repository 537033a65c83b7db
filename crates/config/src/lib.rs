//! Switchyard's configuration: the YAML schema ([`model`]), loading with precise errors
//! ([`load`]), and the cross-reference checks that make a config safe to swap in ([`validate`]).

pub mod backends;
pub mod balancer;
mod error;
pub mod filters;
pub mod health;
pub mod inference_policy;
mod kind_map;
pub mod kv_events;
pub mod l4;
pub mod load;
pub mod locality;
pub mod locate;
pub mod model;
pub mod predictor;
pub mod quic;
pub mod rate_limit;
pub mod resilience;
pub mod rollout;
pub mod source;
pub mod tls;
pub mod trace;
pub mod validate;
pub mod xds;
pub mod yaml;

pub use backends::{Backend, Mirror, Rewrite, Sticky, Target};
pub use balancer::*;
pub use error::{nearest, ConfigError, ConfigErrors};
pub use inference_policy::{InferenceWeights, PrefixStickiness, Saturation};
pub use kv_events::{KvEvents, KvTokenizer};
pub use load::{load_file, parse};
pub use locality::{Locality, LocalityMode, PoolLocality};
pub use model::*;
pub use predictor::Predictor;
pub use quic::Quic;
pub use source::{Refused, SourceStatus};
pub use tls::{ClientCertMatch, ForwardClientCert, UpstreamTls};
pub use trace::{OtlpProtocol, Tracing};
