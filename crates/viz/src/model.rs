//! The JSON documents the admin API serves: a stats frame (`/stats`, `/stats/stream`) and a
//! request summary (`/tap`).
//!
//! The gateway owns these shapes and may grow them, so reading is lenient on purpose: unknown
//! fields are ignored, a missing field reads as absent, and any number may be `null` ("no data in
//! the window"), which the views render as `-`. Only a wrong type (a string where a number
//! belongs) refuses the document, because then the two sides disagree about what a field means.

use serde::{Deserialize, Deserializer};

/// `null` or missing reads as the type's default: an empty string, list or `false`.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One second of the gateway's live stats, over the trailing `window_s` seconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Frame {
    pub time_ms: Option<u64>,
    pub window_s: Option<f64>,
    #[serde(deserialize_with = "nullable")]
    pub routes: Vec<RouteStats>,
    #[serde(deserialize_with = "nullable")]
    pub pools: Vec<PoolStats>,
}

/// Per-route traffic. Rates are per second; `error_rate` is a fraction (0.05 = 5 %).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RouteStats {
    #[serde(deserialize_with = "nullable")]
    pub route: String,
    #[serde(deserialize_with = "nullable")]
    pub pool: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub in_flight: Option<f64>,
}

/// The numbers a route and a pool both report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Traffic {
    pub rps: Option<f64>,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub retries_per_s: Option<f64>,
    pub hedges_per_s: Option<f64>,
    pub shed_per_s: Option<f64>,
    pub limited_per_s: Option<f64>,
    pub overflow_per_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PoolStats {
    #[serde(deserialize_with = "nullable")]
    pub pool: String,
    #[serde(deserialize_with = "nullable")]
    pub balancer: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    #[serde(deserialize_with = "nullable")]
    pub panic: bool,
    /// `None` when the pool has no concurrency limit.
    pub concurrency: Option<Concurrency>,
    #[serde(deserialize_with = "nullable")]
    pub endpoints: Vec<EndpointStats>,
    #[serde(deserialize_with = "nullable")]
    pub recent_picks: Vec<Pick>,
}

impl PoolStats {
    /// Requests in flight: the limiter's count when there is one, else the endpoints' sum
    /// (`None` when no endpoint reports one).
    pub fn in_flight(&self) -> Option<f64> {
        if let Some(n) = self.concurrency.as_ref().and_then(|c| c.in_flight) {
            return Some(n);
        }
        self.endpoints
            .iter()
            .filter_map(|e| e.in_flight)
            .fold(None, |sum, n| Some(sum.unwrap_or(0.0) + n))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Concurrency {
    pub limit: Option<f64>,
    pub in_flight: Option<f64>,
    pub queued: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EndpointStats {
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    pub zone: Option<String>,
    pub healthy: Option<bool>,
    pub ejected: Option<bool>,
    pub available: Option<bool>,
    pub in_flight: Option<f64>,
    pub rps: Option<f64>,
    pub error_rate: Option<f64>,
    pub latency_ewma_ms: Option<f64>,
    /// Requests queued on the model server (its own `waiting` gauge).
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    /// KV-cache use as a fraction (0.8 = 80 %).
    pub kv_usage: Option<f64>,
    /// Prefix-cache hits over lookups in the window, as a fraction.
    pub prefix_hit_share: Option<f64>,
}

impl EndpointStats {
    /// One word for the endpoint's state; ejection and ill health outrank "not available".
    pub fn state(&self) -> &'static str {
        if self.ejected == Some(true) {
            "ejected"
        } else if self.healthy == Some(false) {
            "unhealthy"
        } else if self.available == Some(false) {
            "unavail"
        } else if self.healthy == Some(true) {
            "ok"
        } else {
            "-"
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pick {
    pub time_ms: Option<u64>,
    pub endpoint: Option<String>,
    pub explanation: Option<String>,
}

/// One event of `/tap`.
#[derive(Debug, Clone)]
pub enum TapEvent {
    Request(Box<RequestSummary>),
    /// The gateway skipped this many summaries because the reader fell behind.
    Dropped(u64),
}

impl TapEvent {
    pub fn parse(data: &str) -> Result<TapEvent, serde_json::Error> {
        #[derive(Deserialize)]
        struct Dropped {
            dropped: u64,
        }
        let value: serde_json::Value = serde_json::from_str(data)?;
        if value.get("dropped").is_some() {
            let Dropped { dropped } = serde_json::from_value(value)?;
            return Ok(TapEvent::Dropped(dropped));
        }
        Ok(TapEvent::Request(Box::new(serde_json::from_value(value)?)))
    }
}

/// What the gateway knows about one finished request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RequestSummary {
    pub time_ms: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub method: String,
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    pub route: Option<String>,
    pub pool: Option<String>,
    pub endpoint: Option<String>,
    pub status: Option<u16>,
    pub duration_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub model: Option<String>,
    pub retries: Option<u64>,
    pub hedged: Option<bool>,
    pub error: Option<String>,
    /// Why the picker chose the endpoint: usually a sentence, rendered as compact JSON if the
    /// gateway sends a structure.
    pub pick: Option<serde_json::Value>,
    pub bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_missing_fields_read_as_absent() {
        let frame: Frame = serde_json::from_str(
            r#"{"time_ms": 1700000000000, "window_s": 5, "future_field": {"x": 1},
                "routes": [{"route": "chat", "pool": null, "rps": null, "p99_ms": 12.5}],
                "pools": [{"pool": "gpu", "panic": null, "concurrency": null,
                           "endpoints": [{"address": "10.0.0.1:8000", "kv_usage": null,
                                          "healthy": true, "new": [1, 2]}],
                           "recent_picks": null}],
                "rollouts": [], "rate_limits": [{"anything": true}]}"#,
        )
        .unwrap();
        assert_eq!(frame.time_ms, Some(1_700_000_000_000));
        let route = &frame.routes[0];
        assert_eq!(route.route, "chat");
        assert_eq!(route.pool, "");
        assert_eq!(route.traffic.rps, None);
        assert_eq!(route.traffic.p99_ms, Some(12.5));
        assert_eq!(route.traffic.ttft_p50_ms, None, "missing reads as null");
        let pool = &frame.pools[0];
        assert!(!pool.panic);
        assert!(pool.concurrency.is_none());
        assert!(pool.recent_picks.is_empty());
        assert_eq!(pool.endpoints[0].state(), "ok");
        assert_eq!(pool.endpoints[0].kv_usage, None);
        assert_eq!(pool.in_flight(), None);
    }

    #[test]
    fn an_empty_document_is_an_empty_frame() {
        let frame: Frame = serde_json::from_str("{}").unwrap();
        assert!(frame.routes.is_empty() && frame.pools.is_empty());
        assert_eq!(frame.time_ms, None);
    }

    #[test]
    fn a_wrong_type_is_refused() {
        assert!(serde_json::from_str::<Frame>(r#"{"routes": [{"rps": "fast"}]}"#).is_err());
    }

    #[test]
    fn pool_in_flight_prefers_the_limiter() {
        let pool: PoolStats = serde_json::from_str(
            r#"{"concurrency": {"limit": 64, "in_flight": 7, "queued": 2},
                "endpoints": [{"in_flight": 3}, {"in_flight": 1}]}"#,
        )
        .unwrap();
        assert_eq!(pool.in_flight(), Some(7.0));
        let pool: PoolStats =
            serde_json::from_str(r#"{"endpoints": [{"in_flight": 3}, {"in_flight": null}]}"#)
                .unwrap();
        assert_eq!(pool.in_flight(), Some(3.0));
    }

    #[test]
    fn tap_events() {
        match TapEvent::parse(r#"{"dropped": 17}"#).unwrap() {
            TapEvent::Dropped(n) => assert_eq!(n, 17),
            other => panic!("{other:?}"),
        }
        let event = TapEvent::parse(
            r#"{"time_ms": 1, "id": "abc", "method": "POST", "path": "/v1/chat/completions",
                "route": null, "pool": "gpu", "endpoint": null, "status": 503,
                "duration_ms": 12.5, "ttft_ms": null, "model": null, "retries": 1,
                "hedged": false, "error": "no endpoint", "pick": null, "bytes": 120}"#,
        )
        .unwrap();
        let TapEvent::Request(summary) = event else {
            panic!("not a request");
        };
        assert_eq!(summary.status, Some(503));
        assert_eq!(summary.route, None);
        assert_eq!(summary.error.as_deref(), Some("no endpoint"));
        assert!(TapEvent::parse(r#"{"dropped": "many"}"#).is_err());
    }
}
