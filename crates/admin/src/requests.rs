//! Single requests: `GET /tap` streams a summary of each as it finishes, and
//! `GET /debug/requests[/{id}]` looks back at the last ones the gateway kept.
//!
//! A tap reader is sampled at `max_rps` (default 100 a second, as Linkerd's tap) and queued
//! apart from the others; what its rate or a full queue leaves out is counted and told to it
//! (`{"dropped": N}`), so a slow terminal never holds a request up.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};
use switchyard_proxy::observe::{
    Observer, RequestRecord, StatusFilter, TapFilter, DEFAULT_MAX_RPS,
};

use crate::body::{self, AdminBody};
use crate::stats::unix_ms;

/// How often an idle tap says it is alive (and learns that its reader left).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// Records `/debug/requests` lists unless `limit` says otherwise, and at most.
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 1000;
/// The most summaries a second one tap reader may ask for.
const MAX_RPS: u32 = 100_000;

/// A reader's query: which requests (`route`, `pool`, `status`: `5xx`, `4xx`, `2xx` or a
/// code, `min_latency_ms`), how many to list (`limit`, `/debug/requests`) and how many a second
/// to stream (`max_rps`, `/tap`).
#[derive(Default, Debug, PartialEq)]
pub struct Query {
    filter: TapFilter,
    limit: Option<usize>,
    max_rps: Option<u32>,
}

impl Query {
    /// Read a query string; an unknown key or a bad value is an error naming it.
    pub fn parse(query: Option<&str>) -> Result<Query, String> {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "route" => q.filter.route = Some(v.into_owned()),
                "pool" => q.filter.pool = Some(v.into_owned()),
                "status" => {
                    q.filter.status = Some(StatusFilter::parse(&v).ok_or_else(|| {
                        format!("status `{v}`: use 2xx, 3xx, 4xx, 5xx or a code")
                    })?);
                }
                "min_latency_ms" => {
                    let ms: f64 = v
                        .parse()
                        .ok()
                        .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                        .ok_or_else(|| format!("min_latency_ms `{v}`: not a number of ms"))?;
                    q.filter.min_latency = Some(Duration::from_secs_f64(ms.min(1e9) / 1000.0));
                }
                "limit" => {
                    let n: usize = v.parse().map_err(|_| format!("limit `{v}`: not a count"))?;
                    q.limit = Some(n.min(LIST_MAX));
                }
                "max_rps" => {
                    let n = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_RPS).contains(n))
                        .ok_or_else(|| format!("max_rps `{v}`: a count from 1 to {MAX_RPS}"))?;
                    q.max_rps = Some(n);
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`; use route, pool, status, min_latency_ms, \
                         limit, max_rps"
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// One request as `/tap` and `/debug/requests` show it.
pub fn record_json(observer: &Observer, r: &RequestRecord) -> Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "time_ms": unix_ms(observer.wall_time(r.ended)),
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

/// `GET /tap`: an event stream of request summaries, filtered and sampled.
pub fn tap(observer: &Arc<Observer>, query: Option<&str>) -> Response<AdminBody> {
    let q = match Query::parse(query) {
        Ok(q) => q,
        Err(e) => return bad_request(&e),
    };
    let mut reader = observer.tap(q.filter, q.max_rps.unwrap_or(DEFAULT_MAX_RPS));
    let (tx, response) = body::event_stream();
    let observer = observer.clone();
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
        keepalive.tick().await;
        loop {
            let record = tokio::select! {
                r = reader.recv() => match r {
                    Some(record) => Some(record),
                    None => return,
                },
                _ = keepalive.tick() => None,
                // The client went away: stop tapping now, not at the next summary.
                () = tx.closed() => return,
            };
            let dropped = reader.take_dropped();
            if dropped > 0 {
                let event = body::event(format!("{{\"dropped\":{dropped}}}").as_bytes());
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            let event = match record {
                Some(r) => body::event(
                    &serde_json::to_vec(&record_json(&observer, &r)).unwrap_or_default(),
                ),
                None => body::keepalive(),
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
            Some(r) => body::json(&record_json(observer, &r)),
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
    let q = match Query::parse(query) {
        Ok(q) => q,
        Err(e) => return bad_request(&e),
    };
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    let requests: Vec<Value> = observer
        .recent
        .latest(limit, |r| q.filter.accepts(r))
        .iter()
        .map(|r| record_json(observer, r))
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
    use http_body_util::BodyExt;
    use switchyard_proxy::observe::recent::{RequestId, RequestPath};
    use switchyard_proxy::observe::{RequestMeta, TAP_BUFFER};

    fn record(i: usize) -> RequestRecord {
        RequestRecord {
            meta: RequestMeta {
                id: RequestId::new(format!("r{i}").as_bytes()),
                method: http::Method::POST,
                path: RequestPath::new(b"/v1/completions"),
            },
            status: 200,
            duration: Duration::from_millis(2),
            ..RequestRecord::default()
        }
    }

    /// The events a tap's body yields until `n` have come.
    async fn events(body: &mut AdminBody, n: usize) -> Vec<Value> {
        let mut text = String::new();
        while text.matches("\n\n").count() < n {
            let frame = body.frame().await.expect("open").expect("frame");
            text.push_str(std::str::from_utf8(frame.data_ref().expect("data")).unwrap());
        }
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_slow_tap_reader_is_told_what_it_missed_and_traffic_never_waits() {
        let observer = Arc::new(Observer::new(8));
        let mut body = tap(&observer, Some("max_rps=100000")).into_body();
        // Nobody reads: three times what the tap holds finish anyway, none of them waiting.
        for i in 0..3 * TAP_BUFFER {
            observer.finished(Box::new(record(i)));
        }
        let events = events(&mut body, 3).await;
        // What the queue could not hold is said once, then the reader goes on with what it has.
        assert_eq!(events[0], json!({"dropped": 2 * TAP_BUFFER}));
        assert_eq!(events[1]["id"], "r0");
        assert_eq!(events[2]["id"], "r1");
    }

    #[tokio::test]
    async fn a_tap_is_sampled_at_its_rate_and_filtered_before_anything_is_copied() {
        let observer = Arc::new(Observer::new(8));
        let mut body = tap(&observer, Some("max_rps=10&status=5xx")).into_body();
        for i in 0..1000 {
            let mut r = record(i);
            r.status = if i % 2 == 0 { 503 } else { 200 };
            observer.finished(Box::new(r));
        }
        // Only 5xx, a second's burst at 10 a second, the other 5xx counted as dropped.
        let first = events(&mut body, 2).await;
        assert!(
            first[0]["dropped"]
                .as_u64()
                .is_some_and(|n| (485..=490).contains(&n)),
            "{first:?}"
        );
        assert_eq!(first[1]["status"], 503);
        // The tap is gone once its client is: nothing is offered to it any more.
        assert_eq!(observer.tap_readers(), 1);
        drop(body);
        for _ in 0..100 {
            if observer.tap_readers() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(observer.tap_readers(), 0);
    }

    #[test]
    fn queries_parse_and_refuse_what_they_do_not_know() {
        let q = Query::parse(Some("route=chat&status=5xx&min_latency_ms=250&max_rps=5")).unwrap();
        assert_eq!(q.filter.route.as_deref(), Some("chat"));
        assert_eq!(q.filter.status, Some(StatusFilter::Class(5)));
        assert_eq!(q.filter.min_latency, Some(Duration::from_millis(250)));
        assert_eq!(q.max_rps, Some(5));
        assert_eq!(
            Query::parse(Some("status=429")).unwrap().filter.status,
            Some(StatusFilter::Code(429))
        );
        for bad in [
            "status=9xx",
            "status=600",
            "min_latency_ms=-1",
            "min_latency_ms=NaN",
            "max_rps=0",
            "max_rps=1000001",
            "limit=x",
        ] {
            assert!(Query::parse(Some(bad)).is_err(), "{bad}");
        }
        let e = Query::parse(Some("rout=chat")).unwrap_err();
        assert!(e.contains("`rout`"), "{e}");
        assert_eq!(
            Query::parse(Some("limit=99999")).unwrap().limit,
            Some(LIST_MAX)
        );
        assert_eq!(Query::parse(None).unwrap(), Query::default());
    }
}
