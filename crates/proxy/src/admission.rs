//! Admission to a pool with a concurrency limit: who the request is (priority and tenant), the
//! permit, and the per-priority metrics.
//!
//! A request's priority picks its level in the limiter's queue (critical before standard;
//! sheddable never queues). With `fairness` set, its tenant picks its turn within the level: the
//! configured tenant header, else the bearer API key. The identity is only ever kept as a keyed
//! hash (SipHash with a per-process random key), so a raw key is never stored, logged or
//! exported; metrics carry the priority, never the tenant.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_config::{Pool, Priority};
use switchyard_resilience::{ConcurrencyLimiter, Permit, QueueClass, Rejected};
use switchyard_telemetry::metrics::{PoolPriorityLabels, PoolPriorityReasonLabels};
use switchyard_telemetry::Metrics;
use tokio::time::Instant;

use crate::error::GatewayError;

const PRIORITIES: [Priority; 3] = [Priority::Sheddable, Priority::Standard, Priority::Critical];
const REASONS: [&str; 4] = ["shed", "queue_full", "tenant_queue_full", "queue_timeout"];

fn level(p: Priority) -> usize {
    match p {
        Priority::Sheddable => 0,
        Priority::Standard => 1,
        Priority::Critical => 2,
    }
}

fn priority_label(p: Priority) -> &'static str {
    match p {
        Priority::Sheddable => "sheddable",
        Priority::Standard => "standard",
        Priority::Critical => "critical",
    }
}

/// One key for the whole process, so a tenant keeps its identity across config generations.
fn tenant_hasher() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default)
}

/// Where a request's tenant comes from.
#[derive(Debug, Clone)]
pub struct TenantKey {
    header: Option<HeaderName>,
}

impl TenantKey {
    /// The tenant of a request, as an opaque non-zero hash; 0 when it names none.
    pub fn tenant(&self, headers: &HeaderMap) -> u64 {
        let (source, value) = match self.header.as_ref().and_then(|h| headers.get(h)) {
            Some(v) => (0u8, v.as_bytes()),
            None => match headers.get(AUTHORIZATION) {
                Some(v) => (1u8, api_key(v.as_bytes())),
                None => return 0,
            },
        };
        if value.is_empty() {
            return 0;
        }
        let mut h = tenant_hasher().build_hasher();
        // The source is hashed too: a header value never collides with an API key on purpose.
        source.hash(&mut h);
        value.hash(&mut h);
        h.finish().max(1)
    }
}

/// The credential of an `authorization` value: the token after `Bearer `, else the whole value.
fn api_key(v: &[u8]) -> &[u8] {
    let v = v.trim_ascii();
    let scheme_end = v
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(v.len());
    if v[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        v[scheme_end..].trim_ascii()
    } else {
        v
    }
}

/// Admission for one pool with a concurrency limit; built once per config generation, with
/// every metric handle resolved.
pub struct Admission {
    tenants: Option<TenantKey>,
    admitted: [Counter; 3],
    queued: [Counter; 3],
    wait: [Histogram; 3],
    /// `[priority][reason]`, in the order of `REASONS`.
    rejected: [[Counter; 4]; 3],
}

/// Why a request was not admitted: the error to answer and the overflow reason to count.
pub struct Refused {
    pub error: GatewayError,
    pub reason: &'static str,
}

impl Admission {
    pub fn new(spec: &Pool, metrics: &Metrics) -> Self {
        let labels = |p: Priority| PoolPriorityLabels {
            pool: spec.name.clone(),
            priority: priority_label(p),
        };
        Admission {
            tenants: spec.fairness.as_ref().map(|f| TenantKey {
                header: f
                    .tenant_header
                    .as_deref()
                    .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            }),
            admitted: PRIORITIES.map(|p| metrics.admitted.get_or_create(&labels(p)).clone()),
            queued: PRIORITIES.map(|p| metrics.admission_queued.get_or_create(&labels(p)).clone()),
            wait: PRIORITIES.map(|p| metrics.admission_wait.get_or_create(&labels(p)).clone()),
            rejected: PRIORITIES.map(|p| {
                REASONS.map(|reason| {
                    metrics
                        .admission_rejected
                        .get_or_create(&PoolPriorityReasonLabels {
                            pool: spec.name.clone(),
                            priority: priority_label(p),
                            reason,
                        })
                        .clone()
                })
            }),
        }
    }

    /// The queue class of a request: its priority level and, with fairness on, its tenant.
    pub fn class(&self, priority: Priority, headers: &HeaderMap) -> QueueClass {
        QueueClass {
            priority: level(priority) as u8,
            tenant: self.tenants.as_ref().map_or(0, |t| t.tenant(headers)),
        }
    }

    /// A permit from `limiter`. Sheddable requests never queue: refused at once (429) when the
    /// pool is at its limit. Others queue in their class.
    pub async fn admit(
        &self,
        limiter: &ConcurrencyLimiter,
        priority: Priority,
        headers: &HeaderMap,
    ) -> Result<Permit, Refused> {
        let l = level(priority);
        if priority == Priority::Sheddable {
            return match limiter.try_acquire() {
                Some(p) => {
                    self.admitted[l].inc();
                    Ok(p)
                }
                None => Err(self.refuse(l, 0, GatewayError::Shed)),
            };
        }
        if let Some(p) = limiter.try_acquire() {
            self.admitted[l].inc();
            return Ok(p);
        }
        let class = self.class(priority, headers);
        let asked = Instant::now();
        let result = limiter.acquire_as(class).await;
        if !matches!(result, Err(Rejected::QueueFull | Rejected::TenantQueueFull)) {
            // It did wait (or was granted just as it arrived).
            self.queued[l].inc();
            self.wait[l].observe(asked.elapsed().as_secs_f64());
        }
        match result {
            Ok(p) => {
                self.admitted[l].inc();
                Ok(p)
            }
            Err(Rejected::QueueFull) => {
                Err(self.refuse(l, 1, GatewayError::Overflow("concurrency")))
            }
            Err(Rejected::TenantQueueFull) => Err(self.refuse(l, 2, GatewayError::TenantQueueFull)),
            Err(Rejected::Timeout) => Err(self.refuse(l, 3, GatewayError::Overflow("concurrency"))),
        }
    }

    fn refuse(&self, level: usize, reason: usize, error: GatewayError) -> Refused {
        self.rejected[level][reason].inc();
        Refused {
            error,
            reason: REASONS[reason],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn tenant_from_header_then_api_key_then_anonymous() {
        let key = TenantKey {
            header: Some(HeaderName::from_static("x-tenant")),
        };
        let by_header = key.tenant(&headers(&[
            ("x-tenant", "acme"),
            ("authorization", "Bearer sk-1"),
        ]));
        assert_eq!(by_header, key.tenant(&headers(&[("x-tenant", "acme")])));
        let by_key = key.tenant(&headers(&[("authorization", "Bearer sk-1")]));
        assert_ne!(by_key, by_header);
        assert_eq!(
            by_key,
            key.tenant(&headers(&[("authorization", "bearer  sk-1 ")]))
        );
        assert_ne!(
            by_key,
            key.tenant(&headers(&[("authorization", "Bearer sk-2")]))
        );
        assert_eq!(key.tenant(&headers(&[])), 0);
        assert_eq!(key.tenant(&headers(&[("authorization", "Bearer ")])), 0);
        assert!(by_key != 0 && by_header != 0);
        // Without a header setting, only the API key identifies.
        let keys_only = TenantKey { header: None };
        assert_eq!(
            keys_only.tenant(&headers(&[
                ("x-tenant", "acme"),
                ("authorization", "Bearer sk-1")
            ])),
            by_key
        );
    }
}
