//! The label sets of every metric family, one struct each.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub pool: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub pool: String,
    /// `connect`, `timeout`, `reset`, `idle_timeout`
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerResultLabels {
    pub listener: String,
    /// `success` or `failure`
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub listener: String,
    /// `no_route`, `header_too_large`, `body_too_large`, `bad_request`, `no_endpoint`
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabels {
    pub route: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteNameLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolReasonLabels {
    pub pool: String,
    pub reason: &'static str,
}

/// Admission metrics: no tenant label, so cardinality stays pools × 3 priorities.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolPriorityLabels {
    pub pool: String,
    /// `sheddable`, `standard` or `critical`
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolPriorityReasonLabels {
    pub pool: String,
    pub priority: &'static str,
    /// `shed`, `queue_full`, `tenant_queue_full`, `queue_timeout`
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub route: String,
    pub pool: String,
    /// The model the upstream was asked for; empty when the gateway did not read it (routes
    /// that neither match on the model, rewrite it, nor use an `inference` pool); `other` for a
    /// name the config does not give while the shared label slots are taken (see
    /// `proxy::models`).
    pub model: String,
    /// `prompt` or `completion`
    pub kind: &'static str,
}

/// Streamed inference responses, per model, pool and endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelEndpointLabels {
    pub model: String,
    pub pool: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub pool: String,
    pub endpoint: String,
}

/// Failed metric scrapes of an `inference` pool's endpoints.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeErrorLabels {
    pub pool: String,
    pub endpoint: String,
    /// `connect`, `request`, `timeout`, `http_status`, `body`, `too_large`, `parse`,
    /// `missing_metrics`
    pub cause: &'static str,
}

/// Mirrored copies of a route's requests, by the mirror's pool and how the copy ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub route: String,
    pub pool: String,
    /// `2xx` .. `5xx` by the response status; `error` (no response: connect, reset, protocol);
    /// `timeout`; or, for copies never sent, the reason: `in_flight`, `overflow`,
    /// `no_endpoint`, `body` (a body the gateway did not hold).
    pub outcome: &'static str,
}

/// A rate limit's decisions (`outcome`: allowed, limited, shadow_limited, untracked).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub limit: String,
    pub outcome: &'static str,
}

/// A rollout's analyses (`what`: pass, fail, inconclusive) or transitions (`what`: the phase
/// entered: progressing, paused, promoted, rolled_back, aborted).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub route: String,
    pub what: &'static str,
}

/// A rollout check's last measured value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutCheckLabels {
    pub route: String,
    /// `error_rate`, `latency_p99`, `ttft_p99`
    pub check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`
    pub result: &'static str,
}
