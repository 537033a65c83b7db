//! Stages 8 and 9, response rewrite and stream back: the upstream's head goes to the client with
//! the gateway's headers added (raw, as it came, when the HTTP/1 fast path writes it; as a map
//! otherwise), and the body streams through [`UpstreamBody`], which measures it as it passes
//! and finishes the request's bookkeeping after its last byte.

use crate::capacity::ENDPOINT_LOAD_METRICS;
use http::header::HeaderValue;
use http::{HeaderName, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::attempts::Answer;
use super::exchange::{Downstream, Exchange, Routed};
use crate::body::{Accounting, ResponseBody, StreamTimer, UpstreamBody};
use crate::gateway::Gateway;
use crate::headers::{self, X_REQUEST_ID};

pub static X_SWITCHYARD_PICK: HeaderName = HeaderName::from_static("x-switchyard-pick");

/// What the response stage adds to the upstream's head.
pub struct Added {
    /// The client side of an HTTP/1 upgrade, spliced to the upstream's on `101`.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The `inference` pick's explanation, for `x-switchyard-debug: 1`.
    pub pick_debug: Option<HeaderValue>,
    /// The upstream request's headers, for response filters that read them.
    pub request_headers: Option<Box<http::HeaderMap>>,
}

pub fn stream_back(
    gateway: &Gateway,
    rx: &mut Exchange<'_>,
    to: Routed<'_>,
    answer: Box<Answer>,
    added: Added,
    downstream: Downstream,
) -> Response<ResponseBody> {
    let Answer {
        mut resp,
        scan,
        raw,
        conn,
        index,
        in_flight,
    } = *answer;
    let pool = to.pool();
    rx.finish.set_upstream(in_flight, &pool.health, index);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = added.upgrade {
            rx.conn.framing.mark_upgraded();
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_side, upstream_side));
        }
    }
    let (mut parts, body) = resp.into_parts();
    // Raw headers go back as they came, with the gateway's added, when the client's connection
    // writes HTTP/1 itself; any other writer gets a map.
    let mut pick_debug = added.pick_debug;
    let filters = to.route.filters.as_deref().filter(|f| f.changes_response());
    let raw = match raw {
        Some(mut raw) if downstream == Downstream::Http1 && !scan.request_id => {
            raw.added
                .push((X_REQUEST_ID.clone(), rx.request_id.clone()));
            if let Some(v) = pick_debug.take() {
                raw.added.push((X_SWITCHYARD_PICK.clone(), v));
            }
            if !rx.response_headers.is_empty() {
                raw.added.append(&mut rx.response_headers);
            }
            if let Some(report) = rx.load_report.take() {
                // This gateway's report replaces its endpoint's: the parent balances over us,
                // not over one of our backends.
                raw.remove_all(&ENDPOINT_LOAD_METRICS);
                if let Some(report) = report {
                    raw.added.push((ENDPOINT_LOAD_METRICS.clone(), report));
                }
            }
            if let Some(f) = filters {
                f.apply_response_raw(
                    &mut raw,
                    &rx.filter_vars(&to.route.name),
                    added.request_headers.as_deref(),
                );
            }
            Some(raw)
        }
        Some(raw) => {
            parts.headers = raw.to_map();
            None
        }
        None => None,
    };
    if raw.is_none() {
        if scan.hop_by_hop && parts.status != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_present_hop_by_hop(&mut parts.headers);
        }
        headers::put(
            &mut parts.headers,
            &X_REQUEST_ID,
            rx.request_id.clone(),
            scan.request_id,
        );
        if let Some(v) = pick_debug {
            parts.headers.insert(X_SWITCHYARD_PICK.clone(), v);
        }
        for (name, value) in rx.response_headers.drain(..) {
            parts.headers.append(name, value);
        }
        if let Some(report) = rx.load_report.take() {
            parts.headers.remove(&ENDPOINT_LOAD_METRICS);
            if let Some(report) = report {
                parts.headers.insert(ENDPOINT_LOAD_METRICS.clone(), report);
            }
        }
        if let Some(f) = filters {
            f.apply_response(
                &mut parts.headers,
                &rx.filter_vars(&to.route.name),
                added.request_headers.as_deref(),
            );
        }
    }
    rx.finish.set_status(parts.status.as_u16());
    let accounting = accounting(gateway, rx, to, &scan, parts.status, index);
    let start = rx.start_time();
    let grpc = rx.scan.grpc;
    let deadline = rx.scan.grpc_timeout.filter(|_| grpc).map(|d| start + d);
    // Boxed before it is filled in: the body is large, and every move copies it.
    let mut body = Box::new(UpstreamBody::new(
        body,
        to.route.idle_timeout,
        deadline,
        grpc,
        rx.finish.take(),
    ));
    if let Some(conn) = conn {
        body.set_connection(conn);
    }
    if let Some(raw) = raw {
        body.set_raw_head(raw);
    }
    if let Some(a) = accounting {
        body.set_accounting(a);
    }
    Response::from_parts(parts, ResponseBody::Upstream(body))
}

/// What to measure as the body passes. Streams are timed per route, and per model when the
/// gateway read the request's model; usage is read from a successful, uncompressed response
/// whose model the gateway read, or from any uncompressed stream (counted per route).
fn accounting(
    gateway: &Gateway,
    rx: &Exchange<'_>,
    to: Routed<'_>,
    scan: &headers::ResponseScan,
    status: StatusCode,
    index: usize,
) -> Option<Accounting> {
    let metrics = &to.target.metrics;
    let model = rx
        .finish
        .model()
        .filter(|_| status.is_success() && !scan.content_encoding)
        .map(|m| gateway.models.intern(&m.model));
    let usage_tokens = match model {
        Some(id) if scan.event_stream || scan.json => {
            Some(metrics.model_tokens(id, &gateway.models))
        }
        None if scan.event_stream && !scan.content_encoding => Some(metrics.tokens.clone()),
        _ => None,
    };
    let stream = scan.event_stream.then(|| {
        let timer = StreamTimer::new(
            rx.start_time(),
            metrics.stream_first_chunk.clone(),
            metrics.stream_chunk_gap.clone(),
            metrics.live.clone(),
        )
        .with_arm(metrics.arm.clone());
        match model {
            Some(id) => {
                let m = to.pool().model_metrics.get(index, id, &gateway.models);
                timer.with_model(m)
            }
            None => timer,
        }
    });
    (usage_tokens.is_some() || stream.is_some())
        .then(|| Accounting::new(usage_tokens, stream, metrics.live.clone()))
}

/// Splice an upgraded connection (WebSocket and friends) once both sides have switched.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    match (client, upstream) {
        (Ok(c), Ok(u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded tunnel closed with error");
            }
        }
        (c, u) => tracing::debug!(client = c.is_ok(), upstream = u.is_ok(), "upgrade failed"),
    }
}
