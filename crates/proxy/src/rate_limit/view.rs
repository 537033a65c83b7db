//! `GET /rate_limits`: a limit and its busiest keys, as the admin API shows them.

use std::time::Instant;

use switchyard_config::rate_limit::Mode;

use super::{unix_secs, Limiter};

impl Limiter {
    /// The limit and its busiest keys now, for `GET /rate_limits`. Keys are shown as their
    /// hashes (an API key is never kept). A shared limit's counts live in Redis, and are not
    /// read from here.
    pub fn view(&self, top: usize) -> serde_json::Value {
        let unix = unix_secs();
        let now = Instant::now();
        let mut used: Vec<(u64, u64)> = match (&self.tokens, &self.shared) {
            (_, Some(_)) => Vec::new(),
            (Some(t), None) => {
                let index = unix / t.per_secs;
                t.windows.lock().map_or_else(
                    |_| Vec::new(),
                    |w| {
                        w.iter()
                            .filter(|(_, w)| w.index == index)
                            .map(|(k, w)| (*k, w.used))
                            .collect()
                    },
                )
            }
            (None, None) => self.buckets.lock().map_or_else(
                |_| Vec::new(),
                |b| {
                    b.iter()
                        .map(|(k, b)| {
                            let refill =
                                now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
                            let left = (b.tokens + refill).min(self.burst);
                            (*k, (self.burst - left).max(0.0).round() as u64)
                        })
                        .filter(|(_, used)| *used > 0)
                        .collect()
                },
            ),
        };
        let tracked = used.len();
        used.sort_unstable_by_key(|b| std::cmp::Reverse(b.1));
        used.truncate(top);
        let capacity = if self.tokens.is_some() || self.shared.is_some() {
            self.limit
        } else {
            self.burst as u64
        };
        serde_json::json!({
            "name": self.config.name,
            "counts": if self.tokens.is_some() { "tokens" } else { "requests" },
            "store": if self.shared.is_some() { "redis" } else { "local" },
            "mode": if self.config.mode == Mode::Shadow { "shadow" } else { "enforce" },
            "limit": self.limit,
            "window_secs": self.window_secs,
            "keys_in_use": tracked,
            "top": used.iter().map(|(k, u)| serde_json::json!({
                "key_hash": format!("{k:016x}"),
                "used": u,
                "remaining": capacity.saturating_sub(*u),
            })).collect::<Vec<_>>(),
        })
    }
}
