//! Stage 7, attempts: pick an endpoint this request has not tried, send (racing a hedge when the
//! route hedges), time the attempt, record how it went, and retry what the policy and the retry
//! budget allow, until a response head is to be returned or the request fails.

use std::mem;

use http::Response;
use switchyard_balance::head_latency::HeadClass;
use switchyard_balance::{InFlight, PickContext};
use switchyard_config::resilience::{AutoTimeout, PerTryTimeout};
use switchyard_resilience::{Attempt, BreakerGuard, RetryGuard, TriedSet};
use tokio::time::Instant;

use super::admit::Admitted;
use super::exchange::{Exchange, Reject, Routed};
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
    pub resp: Response<Option<crate::upstream::UpstreamIncoming>>,
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
    /// How this request's time to head is measured, and its size in that unit.
    head_class: (HeadClass, u32),
}

/// How one attempt ended.
enum Ended {
    /// Boxed: the answer crosses several returns on its way to the response stage, and a
    /// 344-byte value is copied by `memcpy` at each (measured: one allocation costs less).
    Answer(Box<Answer>),
    /// Failed: the attempt as the retry policy sees it, and the error to answer with unless it
    /// is retried.
    Failed(Attempt, GatewayError),
    /// Retried (its budget taken), after this wait: a response the policy retries, or an
    /// attempt abandoned at its adaptive per-try timeout.
    Retry(std::time::Duration),
}

/// The one async function of the attempt stage: everything around the awaits (the send, the
/// hedging race, the wait before a retry) is synchronous, so no nested future is built and
/// moved per request (a nested attempt future was ~1.8 KB copied on every request).
pub async fn run(
    rx: &mut Exchange<'_>,
    to: Routed<'_>,
    head: &mut UpstreamHead,
    body: RequestBody,
    mut preset: Option<usize>,
    admitted: &mut Admitted,
    head_class: (HeadClass, u32),
) -> Result<Box<Answer>, Reject> {
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
        head_class,
    };
    if let Some(h) = &to.route.hedger {
        h.start_request();
    }
    let pool = to.pool();
    loop {
        a.tries += 1;
        let Some(index) = preset
            .take()
            .or_else(|| pick_untried(pool, &a.tried, &a.pick))
        else {
            return Err(Reject::keep(GatewayError::NoEndpoint));
        };
        a.tried.insert(index);
        let mut sending = a.begin(rx, head, index)?;
        let endpoint = &pool.endpoints[index];
        // Boxed once: the attempt future is large, and the hedging race and the timeout below
        // would otherwise copy it as they wrap it.
        let mut first = Box::pin(pool.upstream.send(
            index,
            &head.parts,
            sending.headers,
            sending.body,
            sending.upgrade,
            sending.self_timed.then_some(sending.attempt_by),
            &pool.breaker,
            &endpoint.state,
        ));
        let attempt_start = Instant::now();
        let (class, size) = a.head_class;
        sending
            .in_flight
            .wait_head(class, size, attempt_start.into_std());
        // A retry already decided (and its budget taken) when an adaptive timeout fired.
        let mut decided = None;
        let raced = match (sending.hedge_after, sending.soft_by) {
            (Some(delay), _) => {
                let cx = HedgeCx {
                    to,
                    tried: &a.tried,
                    pick: &a.pick,
                    parts: &head.parts,
                    body: a
                        .body
                        .as_ref()
                        .ok_or(Reject::keep(GatewayError::NoEndpoint))?,
                    trace: rx.finish.trace(),
                };
                // Boxed: only hedged attempts pay for the race's future.
                let race = Box::pin(hedge::race(first.as_mut(), delay, cx));
                tokio::time::timeout_at(sending.attempt_by, race).await.ok()
            }
            (None, Some(soft_by)) => match tokio::time::timeout_at(soft_by, first.as_mut()).await {
                Ok(r) => Some(Raced::alone(r)),
                // Abandoned only for a retry that may go now; otherwise it waits on.
                Err(_) => match a.retry(&Attempt::Timeout) {
                    Some(delay) => {
                        decided = Some(delay);
                        None
                    }
                    None => tokio::time::timeout_at(sending.attempt_by, first.as_mut())
                        .await
                        .ok()
                        .map(Raced::alone),
                },
            },
            (None, None) if sending.self_timed => Some(Raced::alone(first.as_mut().await)),
            (None, None) => tokio::time::timeout_at(sending.attempt_by, first.as_mut())
                .await
                .ok()
                .map(Raced::alone),
        };
        drop(first);
        let ended = a.ended(
            rx,
            raced,
            index,
            sending.in_flight,
            sending.span,
            attempt_start,
        )?;
        // An attempt abandoned at its adaptive timeout was retried when it was abandoned.
        let ended = match (ended, decided) {
            (Ended::Failed(..), Some(delay)) => Ended::Retry(delay),
            (ended, _) => ended,
        };
        let (attempt, error) = match ended {
            Ended::Answer(answer) => {
                if let Some(p) = admitted.permit.as_mut() {
                    p.record_sample();
                }
                rx.finish
                    .hold_budget(admitted.budget.take(), mem::take(&mut a.retry_guards));
                return Ok(answer);
            }
            Ended::Failed(attempt, error) => (attempt, error),
            Ended::Retry(delay) => {
                sleep_before_retry(delay, a.headers_by).await;
                continue;
            }
        };
        if Instant::now() < a.headers_by {
            if let Some(delay) = a.retry(&attempt) {
                sleep_before_retry(delay, a.headers_by).await;
                continue;
            }
        }
        if let Some(p) = admitted.permit.as_mut() {
            p.discard_sample();
        }
        return Err(Reject::keep(error));
    }
}

/// An attempt about to be sent.
struct Sending {
    body: RequestBody,
    headers: http::HeaderMap,
    span: Option<AttemptSpan>,
    in_flight: InFlight,
    upgrade: bool,
    /// When this attempt's response head must have arrived.
    attempt_by: Instant,
    /// Race a hedge after this long (first attempts of hedging routes with a replayable body).
    hedge_after: Option<std::time::Duration>,
    /// An adaptive per-try timeout (`per_try_timeout: auto`): past it, a retry replaces the
    /// attempt if one may be sent.
    soft_by: Option<Instant>,
    /// An inline HTTP/1 exchange bounds itself on its connection's timer, which costs no timer
    /// registration per request; a hedged race or any other path is timed by the loop.
    self_timed: bool,
}

impl Attempts<'_> {
    /// The attempt's body and head (a replay, or the streamed body and head moved once), its
    /// span, its deadline, and its place among the endpoint's requests in flight.
    fn begin(
        &mut self,
        rx: &Exchange<'_>,
        head: &mut UpstreamHead,
        index: usize,
    ) -> Result<Sending, Reject> {
        let (route, pool) = (self.to.route, self.to.pool());
        let attempt_by = route
            .retries()
            .and_then(|r| r.policy.per_try_timeout)
            .map_or(self.headers_by, |t| self.headers_by.min(Instant::now() + t));
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
        let upgrade = head.upgrade.is_some();
        let hedge_after = route
            .hedger
            .as_ref()
            .filter(|_| self.tries == 1 && replayable && pool.endpoints.len() > 1)
            .and_then(|h| h.delay());
        let soft_by = route
            .retries()
            .filter(|r| replayable && hedge_after.is_none() && self.tries < r.policy.attempts)
            .and_then(|r| match &r.config.per_try_timeout {
                Some(PerTryTimeout::Auto(auto)) => self.auto_timeout(auto),
                _ => None,
            })
            .map(|t| Instant::now() + t)
            .filter(|&t| t < attempt_by);
        Ok(Sending {
            body,
            headers,
            span,
            in_flight,
            upgrade,
            attempt_by,
            self_timed: hedge_after.is_none()
                && soft_by.is_none()
                && pool.upstream.self_timed(index, upgrade),
            hedge_after,
            soft_by,
        })
    }

    /// `per_try_timeout: auto` for this request: the pool's recent quantile of time to head,
    /// in the request's class and times its size, by the factor, within the bounds. `None`
    /// until the pool has seen enough attempts.
    fn auto_timeout(&self, auto: &AutoTimeout) -> Option<std::time::Duration> {
        let (class, size) = self.head_class;
        let q = self
            .to
            .pool()
            .health
            .head_latency()
            .quantile(class, auto.percentile / 100.0)?;
        let t = std::time::Duration::try_from_secs_f64(q * f64::from(size) * auto.factor).ok()?;
        let t = t.max(auto.min);
        Some(auto.max.map_or(t, |m| t.min(m)))
    }

    /// Record how the attempt at `index` ended (`None`: past its deadline) and say what it
    /// means for the request.
    fn ended(
        &mut self,
        rx: &mut Exchange<'_>,
        raced: Option<Raced>,
        index: usize,
        in_flight: InFlight,
        mut span: Option<AttemptSpan>,
        attempt_start: Instant,
    ) -> Result<Ended, Reject> {
        let (route, pool) = (self.to.route, self.to.pool());
        // One clock read serves every latency record of this attempt.
        let attempt_end = Instant::now();
        let rtt = attempt_end.duration_since(attempt_start);
        // The first attempt's time to head (or to its end: lost to a hedge, failed, timed out).
        let mut in_flight = in_flight;
        in_flight.head_done(rtt);
        if raced.as_ref().is_some_and(|r| r.hedged) {
            rx.finish.hedged();
        }
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
                ..
            }) => (Some(result), index, in_flight, lost),
            Some(Raced {
                result,
                won: Some(won),
                span: winner,
                ..
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
        pool.endpoints[index]
            .state
            .record_latency_at(rtt, attempt_end.into_std());
        rx.finish.tried(pool.endpoints[index].address());
        let (attempt, error) = match result {
            Some(Ok(sent)) => {
                if let Some(h) = &route.hedger {
                    h.record_latency(rtt);
                }
                return Ok(self.on_response(rx, sent, index, in_flight, span));
            }
            Some(Err(failure)) => outcome::failure(pool, index, &failure)?,
            None => outcome::timeout(pool, index),
        };
        if let Some(s) = span {
            s.fail(error.kind());
        }
        Ok(Ended::Failed(attempt, error))
    }

    /// A response head arrived: record it, and return it unless the policy may retry it.
    fn on_response(
        &mut self,
        rx: &mut Exchange<'_>,
        (resp, mut conn): Sent,
        index: usize,
        in_flight: InFlight,
        mut span: Option<AttemptSpan>,
    ) -> Ended {
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
            if let Some(delay) = self.retry(&attempt) {
                // Dropped unread: the retry goes on (the connection is not reused mid-body).
                drop((resp, conn));
                return Ended::Retry(delay);
            }
        }
        if let (Some(t), Some(s)) = (rx.finish.trace_mut(), span) {
            t.set_upstream(s);
        }
        Ended::Answer(Box::new(Answer {
            resp,
            scan,
            raw,
            conn,
            index,
            in_flight,
        }))
    }

    /// Whether `attempt` is retried, and after how long, holding the retry's budget and breaker
    /// guards.
    fn retry(&mut self, attempt: &Attempt) -> Option<std::time::Duration> {
        let (route, pool) = (self.to.route, self.to.pool());
        let (delay, guards) = retry_decision(
            route,
            pool,
            route.retries(),
            self.tries,
            attempt,
            self.body.is_some(),
        )?;
        self.retry_guards.push(guards);
        Some(delay)
    }
}
