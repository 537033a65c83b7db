//! Stage 7, attempts: pick an endpoint this request has not tried, send (racing a hedge when the
//! route hedges), time the attempt, record how it went, and retry what the policy and the retry
//! budget allow, until a response head is to be returned or the request fails.

use std::mem;

use http::Response;
use hyper::body::Incoming;
use switchyard_balance::{InFlight, PickContext};
use switchyard_resilience::{Attempt, BreakerGuard, RetryGuard, TriedSet};
use tokio::time::Instant;

use super::admit::Admitted;
use super::exchange::Routed;
use super::exchange::{Exchange, Reject};
use super::hedge::{self, HedgeCx, Raced};
use super::outcome;
use super::pick_endpoint::{pick_context, pick_untried};
use super::request_rewrite::UpstreamHead;
use super::retry::{retry_decision, sleep_before_retry};
use crate::body::RequestBody;
use crate::error::GatewayError;
use crate::h1_codec::RawHeaders;
use crate::headers::ResponseScan;
use crate::trace::{AttemptKind, AttemptSpan};
use crate::upstream::{Failure, InlineConn, SendError, Sent};

/// The response head to return, with what the response stage needs of it.
pub struct Answer {
    pub resp: Response<Option<Incoming>>,
    pub scan: ResponseScan,
    /// The head as the upstream wrote it, when an inline HTTP/1 exchange kept it raw.
    pub raw: Option<Box<RawHeaders>>,
    /// The inline HTTP/1 connection the body arrives on.
    pub conn: Option<InlineConn>,
    pub index: usize,
    pub in_flight: InFlight,
}

/// The attempt loop's state.
struct Attempts<'g> {
    to: Routed<'g>,
    pick: PickContext<'static>,
    tried: TriedSet,
    tries: u32,
    /// The body: kept for replay when buffered; a streamed body goes out once.
    body: Option<RequestBody>,
    /// When the response head must have arrived: the route timeout or a gRPC deadline.
    headers_by: Instant,
    retry_guards: Vec<(RetryGuard, BreakerGuard)>,
}

/// An attempt about to be sent.
struct Begun {
    body: RequestBody,
    headers: http::HeaderMap,
    span: Option<AttemptSpan>,
    in_flight: InFlight,
    replayable: bool,
}

/// How one attempt ended. Not boxed: it is moved once per attempt, and a box would cost an
/// allocation on every request.
#[allow(clippy::large_enum_variant)]
enum Ended {
    Answer(Answer),
    /// Failed: the attempt and the error to answer with, unless it is retried.
    Failed(Attempt, GatewayError),
    /// Answered with a response the policy retries; already waited for.
    Retried,
}

pub async fn run(
    rx: &mut Exchange<'_>,
    to: Routed<'_>,
    head: &mut UpstreamHead,
    body: RequestBody,
    mut preset: Option<usize>,
    admitted: &mut Admitted,
) -> Result<Answer, Reject> {
    let start = rx.start_time();
    let headers_by = match rx.scan.grpc.then_some(rx.scan.grpc_timeout).flatten() {
        Some(d) => (start + d).min(start + to.route.timeout),
        None => start + to.route.timeout,
    };
    let mut a = Attempts {
        to,
        pick: pick_context(to.pool(), &head.parts.headers, rx.conn.client),
        tried: TriedSet::new(),
        tries: 0,
        body: Some(body),
        headers_by,
        retry_guards: Vec::new(),
    };
    if let Some(h) = &to.route.hedger {
        h.start_request();
    }
    loop {
        a.tries += 1;
        let Some(index) = preset
            .take()
            .or_else(|| pick_untried(to.pool(), &a.tried, &a.pick))
        else {
            return Err(Reject::keep(GatewayError::NoEndpoint));
        };
        a.tried.insert(index);
        let (attempt, error) = match a.attempt(rx, head, index).await? {
            Ended::Answer(answer) => {
                if let Some(p) = admitted.permit.as_mut() {
                    p.record_sample();
                }
                rx.finish
                    .hold_budget(admitted.budget.take(), mem::take(&mut a.retry_guards));
                return Ok(answer);
            }
            Ended::Failed(attempt, error) => (attempt, error),
            Ended::Retried => continue,
        };
        if Instant::now() < a.headers_by && a.retry(&attempt).await {
            continue;
        }
        if let Some(p) = admitted.permit.as_mut() {
            p.discard_sample();
        }
        return Err(Reject::keep(error));
    }
}

impl Attempts<'_> {
    /// Send to endpoint `index` (racing a hedge when due) and say how it ended.
    async fn attempt(
        &mut self,
        rx: &mut Exchange<'_>,
        head: &mut UpstreamHead,
        index: usize,
    ) -> Result<Ended, Reject> {
        let (route, pool) = (self.to.route, self.to.pool());
        let retry = route.retries();
        let attempt_by = retry
            .and_then(|r| r.policy.per_try_timeout)
            .map_or(self.headers_by, |t| self.headers_by.min(Instant::now() + t));
        let endpoint = &pool.endpoints[index];
        let Begun {
            body,
            headers,
            mut span,
            in_flight,
            replayable,
        } = self.begin(rx, head, index)?;
        let upgrade = head.upgrade.is_some();
        let hedge_after = route
            .hedger
            .as_ref()
            .filter(|_| self.tries == 1 && replayable && pool.endpoints.len() > 1)
            .and_then(|h| h.delay());
        // An inline HTTP/1 exchange bounds itself on its connection's timer, which costs no
        // timer registration per request; a hedged race or any other path is timed here.
        let self_timed = hedge_after.is_none() && pool.upstream.self_timed(index, upgrade);
        // Boxed once: the attempt future is large, and the hedging race and the timeout below
        // would otherwise copy it as they wrap it.
        let mut first = Box::pin(pool.upstream.send(
            index,
            &head.parts,
            headers,
            body,
            upgrade,
            self_timed.then_some(attempt_by),
            &pool.breaker,
            &endpoint.state,
        ));
        let attempt_start = Instant::now();
        let raced = async {
            let Some(delay) = hedge_after else {
                return Raced::alone(first.await);
            };
            let cx = HedgeCx {
                to: self.to,
                tried: &self.tried,
                pick: &self.pick,
                parts: &head.parts,
                body: self.body.as_ref().expect("hedged bodies are buffered"),
                trace: rx.finish.trace(),
            };
            hedge::race(first.as_mut(), delay, cx).await
        };
        let raced = if self_timed {
            Some(raced.await)
        } else {
            tokio::time::timeout_at(attempt_by, raced).await.ok()
        };
        let (result, index, in_flight, hedge_span) = match raced {
            None => (None, index, in_flight, None),
            Some(Raced {
                result: Err(Failure::Inline(SendError::Timeout)),
                span: lost,
                ..
            }) => (None, index, in_flight, lost),
            Some(Raced {
                result,
                won: None,
                span: lost,
            }) => (Some(result), index, in_flight, lost),
            Some(Raced {
                result,
                won: Some(won),
                span: winner,
            }) => {
                self.tried.insert(won.index);
                // The hedge won: its span is the one that goes on; the first attempt's is lost.
                let lost = mem::replace(&mut span, winner);
                (Some(result), won.index, won.in_flight, lost)
            }
        };
        if let Some(lost) = hedge_span {
            lost.cancel();
        }
        // One clock read serves every latency record of this attempt.
        let attempt_end = Instant::now();
        let rtt = attempt_end.duration_since(attempt_start);
        pool.endpoints[index]
            .state
            .record_latency_at(rtt, attempt_end.into_std());
        let (attempt, error) = match result {
            Some(Ok(sent)) => {
                if let Some(h) = &route.hedger {
                    h.record_latency(rtt);
                }
                return self.on_response(rx, sent, index, in_flight, span).await;
            }
            Some(Err(failure)) => outcome::failure(pool, index, &failure)?,
            None => outcome::timeout(pool, index),
        };
        if let Some(s) = span {
            s.fail(error.kind());
        }
        Ok(Ended::Failed(attempt, error))
    }

    /// The attempt's body and head (a replay, or the streamed body and head moved once), its
    /// span, and its place among the endpoint's requests in flight.
    fn begin(
        &mut self,
        rx: &Exchange<'_>,
        head: &mut UpstreamHead,
        index: usize,
    ) -> Result<Begun, Reject> {
        let pool = self.to.pool();
        let replayable = self.body.as_ref().is_some_and(RequestBody::is_replayable);
        let body = match &self.body {
            Some(b) if b.is_replayable() => b.replay(),
            // A streamed body that already went out cannot be retried: `retry` refuses first.
            _ => self
                .body
                .take()
                .ok_or(Reject::keep(GatewayError::NoEndpoint))?,
        };
        let endpoint = &pool.endpoints[index];
        let in_flight = endpoint.state.begin();
        pool.picks[index].inc();
        // A streamed body goes out once, so its head can be moved rather than copied.
        let mut headers = if replayable {
            head.parts.headers.clone()
        } else {
            mem::take(&mut head.parts.headers)
        };
        let kind = if self.tries == 1 {
            AttemptKind::First
        } else {
            AttemptKind::Retry
        };
        let span = rx.finish.trace().map(|t| {
            t.attempt(
                kind,
                pool.name(),
                pool.spec.balancer.kind(),
                endpoint.address(),
                &mut headers,
            )
        });
        Ok(Begun {
            body,
            headers,
            span,
            in_flight,
            replayable,
        })
    }

    /// A response head arrived: record it, and return it unless the policy retries it.
    async fn on_response(
        &mut self,
        rx: &mut Exchange<'_>,
        (resp, mut conn): Sent,
        index: usize,
        in_flight: InFlight,
        mut span: Option<AttemptSpan>,
    ) -> Result<Ended, Reject> {
        let pool = self.to.pool();
        // An inline HTTP/1 exchange keeps the headers raw, scanned as they were parsed.
        let mut raw = conn.as_mut().and_then(InlineConn::take_raw_head);
        let scan = match raw.as_mut() {
            Some(raw) => mem::take(&mut raw.scan),
            None => ResponseScan::new(resp.headers()),
        };
        outcome::record_response(pool, index, resp.status(), &scan, &mut rx.finish);
        if let Some(s) = span.as_mut() {
            s.response(resp.status().as_u16());
        }
        if self.to.route.retries().is_some() {
            let attempt = outcome::response_attempt(resp.status(), &scan);
            if self.retry(&attempt).await {
                drop((resp, conn));
                return Ok(Ended::Retried);
            }
        }
        if let (Some(t), Some(s)) = (rx.finish.trace_mut(), span) {
            t.set_upstream(s);
        }
        Ok(Ended::Answer(Answer {
            resp,
            scan,
            raw,
            conn,
            index,
            in_flight,
        }))
    }

    /// Whether `attempt` is retried; if so, after waiting the backoff.
    async fn retry(&mut self, attempt: &Attempt) -> bool {
        let (route, pool) = (self.to.route, self.to.pool());
        let Some((delay, guards)) = retry_decision(
            route,
            pool,
            route.retries(),
            self.tries,
            attempt,
            self.body.is_some(),
        ) else {
            return false;
        };
        self.retry_guards.push(guards);
        sleep_before_retry(delay, self.headers_by).await;
        true
    }
}
