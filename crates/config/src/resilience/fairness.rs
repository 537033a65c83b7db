//! A pool's `fairness`: how tenants share the concurrency queue.

use serde::{Deserialize, Serialize};

use super::{Concurrency, Problems};

/// How tenants share a pool's concurrency queue: within a priority, waiting requests are
/// admitted one tenant at a time in turn, and one tenant may hold at most
/// `max_queued_per_tenant` places in the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fairness {
    /// Header whose value names the tenant (say `x-tenant`, set by an authenticating proxy).
    /// Without it, or when a request lacks it, the tenant is the bearer API key of
    /// `authorization`, hashed; requests with neither share one anonymous turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_header: Option<String>,
    /// Places one tenant may hold in the queue at one priority; default a quarter of the
    /// concurrency `max_queue` (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_per_tenant: Option<u32>,
}

impl Fairness {
    /// The per-tenant share for a queue of `max_queue`.
    pub fn max_queued_per_tenant(&self, max_queue: u32) -> u32 {
        self.max_queued_per_tenant.unwrap_or((max_queue / 4).max(1))
    }

    /// Problems, given the pool's concurrency setting (fairness shares its queue).
    pub fn validate(&self, concurrency: Option<&Concurrency>) -> Problems {
        let mut p = Problems::new();
        if let Some(name) = &self.tenant_header {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                p.push((
                    "tenant_header".into(),
                    format!("`{name}` is not a valid header name"),
                ));
            } else if name.eq_ignore_ascii_case("authorization") {
                p.push((
                    "tenant_header".into(),
                    "leave it unset to take the tenant from `authorization` (the key is hashed)"
                        .into(),
                ));
            }
        }
        let Some(concurrency) = concurrency else {
            p.push((
                String::new(),
                "has no effect without `concurrency`: tenants share the concurrency queue".into(),
            ));
            return p;
        };
        let max_queue = concurrency.max_queue();
        match self.max_queued_per_tenant {
            Some(0) => p.push(("max_queued_per_tenant".into(), "must be at least 1".into())),
            Some(n) if n > max_queue => p.push((
                "max_queued_per_tenant".into(),
                format!(
                    "{n} is above the pool's `concurrency.max_queue` ({max_queue}), so one \
                     tenant could fill the whole queue"
                ),
            )),
            _ => {}
        }
        p
    }
}
