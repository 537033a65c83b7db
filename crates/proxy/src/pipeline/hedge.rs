//! Hedging ("The Tail at Scale", Dean and Barroso): when the first attempt is slower than the
//! route's hedge delay, send a second one to another endpoint and take whichever answers first;
//! the other is dropped. A hedge that fails before its head loses the race and the first attempt
//! goes on; its failure still counts against its endpoint.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use switchyard_balance::{InFlight, PickContext};
use switchyard_resilience::TriedSet;

use super::exchange::Routed;
use super::pick_endpoint::pick_untried;
use crate::body::RequestBody;
use crate::trace::{AttemptKind, AttemptSpan, RequestSpan};
use crate::upstream::{Failure, Sent};

/// The hedge that won the race.
pub struct HedgeWin {
    pub index: usize,
    pub in_flight: InFlight,
}

/// How a race ended: the result to use, the hedge when it won, and the hedge's span when one
/// was sent and lives on (the caller ends it as won or cancelled).
pub struct Raced {
    pub result: Result<Sent, Failure>,
    pub won: Option<HedgeWin>,
    pub span: Option<AttemptSpan>,
    /// A hedge was sent (whether or not it won).
    pub hedged: bool,
}

impl Raced {
    pub fn alone(result: Result<Sent, Failure>) -> Self {
        Self {
            result,
            won: None,
            span: None,
            hedged: false,
        }
    }
}

/// What a hedge needs to be sent.
pub struct HedgeCx<'a> {
    pub to: Routed<'a>,
    pub tried: &'a TriedSet,
    pub pick: &'a PickContext<'static>,
    pub parts: &'a http::request::Parts,
    /// Hedged bodies are buffered: this is replayed.
    pub body: &'a RequestBody,
    pub trace: Option<&'a RequestSpan>,
}

pub async fn race<F>(mut first: Pin<&mut F>, delay: Duration, cx: HedgeCx<'_>) -> Raced
where
    F: Future<Output = Result<Sent, Failure>>,
{
    tokio::select! {
        r = &mut first => return Raced::alone(r),
        _ = tokio::time::sleep(delay) => {}
    }
    let (route, pool) = (cx.to.route, cx.to.pool());
    let (Some(counters), Some(hedger)) = (route.hedge_metrics.as_ref(), route.hedger.as_ref())
    else {
        return Raced::alone(first.await);
    };
    let Some(index) = pick_untried(pool, cx.tried, cx.pick).filter(|i| !cx.tried.contains(*i))
    else {
        counters.refused_no_endpoint.inc();
        return Raced::alone(first.await);
    };
    let Some(_hedge) = hedger.try_acquire_hedge() else {
        counters.refused_budget.inc();
        return Raced::alone(first.await);
    };
    counters.sent.inc();
    let endpoint = &pool.endpoints[index];
    let in_flight = endpoint.state.begin();
    pool.picks[index].inc();
    let mut head = cx.parts.headers.clone();
    let mut span = cx.trace.map(|t| {
        t.attempt(
            AttemptKind::Hedge,
            pool.name(),
            pool.spec.balancer.kind(),
            endpoint.address(),
            &mut head,
        )
    });
    // Boxed: an attempt future is large, and unboxed it would swell every future that can
    // hold a race, which the request path moves on every request, hedged or not.
    let second = Box::pin(pool.upstream.send(
        index,
        cx.parts,
        head,
        cx.body.replay(),
        false,
        None,
        &pool.breaker,
        &endpoint.state,
    ));
    tokio::select! {
        r = &mut first => Raced { result: r, won: None, span, hedged: true },
        r = second => match r {
            Ok(resp) => {
                counters.won.inc();
                let won = Some(HedgeWin { index, in_flight });
                Raced { result: Ok(resp), won, span, hedged: true }
            }
            Err(failure) => {
                if let Some(s) = span.take() {
                    s.fail(failure.kind());
                }
                if failure.is_upstream() {
                    endpoint.state.record_failure();
                    pool.record_outcome(index, failure.outcome());
                }
                drop(in_flight);
                Raced { hedged: true, ..Raced::alone(first.await) }
            }
        },
    }
}
