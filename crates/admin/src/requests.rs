//! Single requests: `GET /tap` streams a summary of each as it finishes, and
//! `GET /debug/requests[/{id}]` looks back at the last ones the gateway kept.
//!
//! Tap readers share one bounded broadcast: one that reads slower than traffic finishes is
//! told how many summaries it missed (`{"dropped": N}`) and carries on from the newest, so a
//! slow terminal never holds a request up.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};
use switchyard_proxy::observe::{Observer, RequestRecord};
use tokio::sync::broadcast::error::RecvError;

use crate::body::{self, AdminBody};
use crate::stats::unix_ms;

/// How often an idle tap says it is alive (and learns that its reader left).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// Records `/debug/requests` lists unless `limit` says otherwise, and at most.
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 1000;

/// Which requests a reader wants: `route`, `pool`, `status` (`5xx`, `4xx`, `2xx` or a code),
/// `min_latency_ms`, `errors` (only requests with an error type).
#[derive(Default, Debug, PartialEq)]
pub struct Filter {
    route: Option<String>,
    pool: Option<String>,
    status: Option<StatusFilter>,
    min_latency: Option<Duration>,
    limit: Option<usize>,
}

#[derive(Debug, PartialEq)]
enum StatusFilter {
    Class(u16),
    Code(u16),
}

impl Filter {
    /// Read a query string; an unknown key or a bad value is an error naming it.
    pub fn parse(query: Option<&str>) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "route" => f.route = Some(v.into_owned()),
                "pool" => f.pool = Some(v.into_owned()),
                "status" => {
                    let bad = || format!("status `{v}`: use 2xx, 3xx, 4xx, 5xx or a code");
                    f.status = Some(match v.as_bytes() {
                        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                            StatusFilter::Class(u16::from(c - b'0'))
                        }
                        _ => StatusFilter::Code(
                            v.parse()
                                .ok()
                                .filter(|c| (100..600).contains(c))
                                .ok_or_else(bad)?,
                        ),
                    });
                }
                "min_latency_ms" => {
                    let ms: f64 = v
                        .parse()
                        .ok()
                        .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                        .ok_or_else(|| format!("min_latency_ms `{v}`: not a number of ms"))?;
                    f.min_latency = Some(Duration::from_secs_f64(ms.min(1e9) / 1000.0));
                }
                "limit" => {
                    let n: usize = v.parse().map_err(|_| format!("limit `{v}`: not a count"))?;
                    f.limit = Some(n.min(LIST_MAX));
                }
                other => {
                    return Err(format!(
                    "unknown parameter `{other}`; use route, pool, status, min_latency_ms, limit"
                ))
                }
            }
        }
        Ok(f)
    }

    pub fn accepts(&self, r: &RequestRecord) -> bool {
        let status = match self.status {
            None => true,
            Some(StatusFilter::Class(c)) => r.status / 100 == c,
            Some(StatusFilter::Code(c)) => r.status == c,
        };
        status
            && self
                .route
                .as_deref()
                .is_none_or(|want| r.route() == Some(want))
            && self
                .pool
                .as_deref()
                .is_none_or(|want| r.pool() == Some(want))
            && self.min_latency.is_none_or(|min| r.duration >= min)
    }
}

/// One request as `/tap` and `/debug/requests` show it.
pub fn record_json(r: &RequestRecord) -> Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "time_ms": unix_ms(r.ended),
        "id": r.meta.id.to_str_lossy(),
        "method": r.meta.method.as_str(),
        "path": r.meta.path.to_str_lossy(),
        "route": r.route(),
        "pool": r.pool(),
        "endpoint": r.endpoint.map(|a| a.to_string()),
        "status": r.status,
        "duration_ms": ms(r.duration),
        "ttft_ms": r.ttft.map(ms),
        "model": r.model.as_deref(),
        "retries": r.retries,
        "hedged": r.hedged,
        "error": r.error,
        "pick": r.pick.as_deref(),
        "bytes": r.bytes,
        "trace_id": r.trace_id,
    })
}

/// `GET /tap`: an event stream of request summaries, filtered.
pub fn tap(observer: &Observer, query: Option<&str>) -> Response<AdminBody> {
    let filter = match Filter::parse(query) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let mut rx = observer.tap();
    let (tx, response) = body::event_stream();
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
        keepalive.tick().await;
        loop {
            let event = tokio::select! {
                r = rx.recv() => match r {
                    Ok(record) if filter.accepts(&record) => {
                        body::event(&serde_json::to_vec(&record_json(&record)).unwrap_or_default())
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        body::event(format!("{{\"dropped\":{n}}}").as_bytes())
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = keepalive.tick() => body::KEEPALIVE,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    response
}

/// `GET /debug/requests` (the last ones, newest first, filtered) and
/// `GET /debug/requests/{id}`.
pub fn debug(observer: &Observer, id: Option<&str>, query: Option<&str>) -> Response<AdminBody> {
    let kept = observer.recent.capacity();
    if let Some(id) = id.filter(|id| !id.is_empty()) {
        let id = percent_decoded(id);
        return match observer.recent.find(id.as_bytes()) {
            Some(r) => body::json(&record_json(&r)),
            None => {
                let mut r = body::json(&json!({
                    "error": format!(
                        "no request `{id}` among the last {kept} (admin.recent_requests)"
                    ),
                }));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
    }
    let filter = match Filter::parse(query) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let limit = filter.limit.unwrap_or(LIST_DEFAULT);
    let requests: Vec<Value> = observer
        .recent
        .latest(limit, |r| filter.accepts(r))
        .iter()
        .map(record_json)
        .collect();
    body::json(&json!({ "kept": kept, "requests": requests }))
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn bad_request(e: &str) -> Response<AdminBody> {
    let mut r = body::json(&json!({ "error": e }));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_what_they_do_not_know() {
        let f = Filter::parse(Some("route=chat&status=5xx&min_latency_ms=250")).unwrap();
        assert_eq!(f.route.as_deref(), Some("chat"));
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert_eq!(f.min_latency, Some(Duration::from_millis(250)));
        assert_eq!(
            Filter::parse(Some("status=429")).unwrap().status,
            Some(StatusFilter::Code(429))
        );
        assert!(Filter::parse(Some("status=9xx")).is_err());
        assert!(Filter::parse(Some("status=600")).is_err());
        assert!(Filter::parse(Some("min_latency_ms=-1")).is_err());
        assert!(Filter::parse(Some("min_latency_ms=NaN")).is_err());
        let e = Filter::parse(Some("rout=chat")).unwrap_err();
        assert!(e.contains("`rout`"), "{e}");
        assert_eq!(
            Filter::parse(Some("limit=99999")).unwrap().limit,
            Some(LIST_MAX)
        );
        assert_eq!(Filter::parse(None).unwrap(), Filter::default());
    }
}
