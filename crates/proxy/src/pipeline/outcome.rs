//! What one attempt's end means: a response head is recorded (outlier detection, the span, an
//! ORCA load report) and read for the retry policy; a failure is classified by who is to blame.
//! The upstream's failures feed its endpoint's health and may be retried; the client's own body
//! failing (too large, malformed, cut off) or a local limit never count against the upstream and
//! are answered at once.

use std::time::SystemTime;

use http::StatusCode;
use switchyard_balance::parse_orca;
use switchyard_health::Outcome;
use switchyard_resilience::{parse_retry_after, Attempt};

use crate::body::BodyTooLarge;
use crate::error::{has_source, GatewayError};
use crate::finish::Finish;
use crate::headers::ResponseScan;
use crate::pool::PoolEntry;
use crate::upstream::{Failure, SendError};

use super::exchange::Reject;

/// Tell outlier detection (and the endpoint's failing flag) how a response went. A streamed
/// (`text/event-stream`) 2xx is not a success yet: an inference server sends its headers when it
/// accepts the request, before queueing and generating, so the headers of a stream say as much
/// about a stalled or crawling replica as about a healthy one. Counting them as successes lets
/// a 10× slow replica, whose whole-reply requests all time out, reset its gateway-error streak
/// with every stream it starts and stay in the pool. Its success is recorded when the stream
/// ends cleanly ([`Finish::complete`]); a stream cut mid-body is a gateway error as before, and
/// one the client abandons counts for nothing.
pub fn record_response(
    pool: &PoolEntry,
    index: usize,
    status: StatusCode,
    scan: &ResponseScan,
    finish: &mut Finish,
) {
    let outcome = Outcome::from_status(status.as_u16());
    if outcome == Outcome::Success && scan.event_stream {
        finish.defer_success();
    } else {
        pool.record_outcome(index, outcome);
    }
    if let Some(report) = &scan.load_report {
        if let Ok(r) = parse_orca(report.as_bytes()) {
            if let Some(picker) = &pool.inference {
                picker.apply_load_report(index, &r);
            }
            pool.endpoints[index].state.record_load_report(r);
        }
    }
}

/// A response head as the retry policy sees it.
pub fn response_attempt(status: StatusCode, scan: &ResponseScan) -> Attempt {
    Attempt::Response {
        status,
        grpc_status: scan.grpc_status,
        // The wall clock only matters for an HTTP-date `Retry-After`.
        retry_after: scan
            .retry_after
            .as_ref()
            .and_then(|v| parse_retry_after(v.as_bytes(), SystemTime::now())),
    }
}

/// Classify a failed attempt at endpoint `index`: an upstream failure is recorded against the
/// endpoint and returned for the retry policy; a local limit or the client's body stops the
/// request at once.
pub fn failure(
    pool: &PoolEntry,
    index: usize,
    failure: &Failure,
) -> Result<(Attempt, GatewayError), Reject> {
    let (connect, err): (bool, Option<&(dyn std::error::Error + 'static)>) = match failure {
        Failure::Inline(SendError::Connect(e)) => (true, Some(e)),
        Failure::Inline(SendError::ConnectTimeout) => (true, None),
        Failure::Inline(SendError::Overflow(o)) => {
            pool.count_overflow(o.limit.as_str());
            return Err(Reject::keep(GatewayError::Overflow(o.limit.as_str())));
        }
        Failure::Inline(e) => (false, e.source_error()),
        Failure::Pooled(e) => (e.is_connect(), Some(e)),
    };
    if err.is_some_and(has_source::<BodyTooLarge>) {
        return Err(Reject::close(GatewayError::BodyTooLarge));
    }
    if !failure.is_upstream() {
        // The client's body failed mid-upload (malformed chunking, a reset): its fault, not the
        // upstream's, and nothing to retry.
        return Err(Reject::close(GatewayError::BadRequest(
            "request body aborted",
        )));
    }
    let endpoint = &pool.endpoints[index];
    endpoint.state.record_failure();
    pool.record_outcome(index, failure.outcome());
    if let Some((cause, detail)) = failure.tls_cause() {
        // A certificate problem is a connection the upstream could not have acted on: retried
        // as a connect failure (another endpoint may be configured right).
        pool.count_tls_error(cause);
        if pool.tls_errors.first(endpoint.address(), cause) {
            tracing::warn!(pool = %pool.name(), upstream = %endpoint.address(), cause = cause.as_str(), error = %detail, "upstream TLS failed (logged once per endpoint and cause until the next reload)");
        }
        pool.connect_errors.inc();
        return Ok((Attempt::ConnectFailure, GatewayError::UpstreamTls(cause)));
    }
    if connect {
        pool.connect_errors.inc();
        Ok((Attempt::ConnectFailure, GatewayError::ConnectFailed))
    } else {
        tracing::debug!(error = ?failure, upstream = %endpoint.address(), "upstream request failed");
        pool.resets.inc();
        Ok((Attempt::Reset, GatewayError::UpstreamReset))
    }
}

/// An attempt ran past its deadline.
pub fn timeout(pool: &PoolEntry, index: usize) -> (Attempt, GatewayError) {
    pool.endpoints[index].state.record_failure();
    pool.record_outcome(index, Outcome::GatewayError);
    pool.timeouts.inc();
    (Attempt::Timeout, GatewayError::Timeout)
}
