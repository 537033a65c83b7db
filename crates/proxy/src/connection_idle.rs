//! Time bounds for a connection between requests, for HTTP/2 above all.
//!
//! A multiplexed connection has no "waiting for the next request head" state to time out: a
//! connection that never sends a request, or one that stops at a HEADERS frame without
//! END_HEADERS, would stay open for ever. Envoy closes a connection that has had no active
//! stream for its `idle_timeout`, with GOAWAY; this module tells our servers (`h2_server`, and
//! hyper's HTTP/1 server for the requests the fast path hands over) when to, by counting the
//! requests in flight on the connection.
//!
//! - Until the first request arrives, the bound is the listener's `header_read_timeout`. A
//!   request counts only once its header block is complete, so this also bounds a first header
//!   block that never ends.
//! - After that, a connection with no request in flight for `idle_timeout` is closed.
//! - A later header block that never ends is bounded by `h2_server` itself, by the same
//!   `header_read_timeout`.
//!
//! A request counts as in flight from the moment its head is complete until its response body
//! is dropped (sent in full, or abandoned), so a long streamed completion is never idle.

use std::future::pending;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// Requests in flight on one connection.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Requests ever started: tells a quiet spell from one that had a request come and go.
    started: AtomicU64,
    /// Signalled when `in_flight` drops to zero.
    quiet: Notify,
}

/// Held while a request is in flight; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_one();
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A request arrived.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once no request is in flight (a draining connection may close then).
    pub async fn quiet(&self) {
        while self.in_flight.load(Ordering::Acquire) > 0 {
            self.quiet.notified().await;
        }
    }

    /// Resolves once the connection has been idle too long: no request for `first` after it
    /// opened, or none in flight for `idle` after that (`None`: no bound once a request came).
    pub async fn idle(&self, first: Duration, idle: Option<Duration>) {
        loop {
            let started = self.started.load(Ordering::Acquire);
            if self.in_flight.load(Ordering::Acquire) > 0 {
                self.quiet.notified().await;
                continue;
            }
            let bound = match (started, idle) {
                (0, _) => first,
                (_, Some(idle)) => idle,
                (_, None) => return pending().await,
            };
            tokio::select! {
                _ = tokio::time::sleep(bound) => {
                    let quiet = self.in_flight.load(Ordering::Acquire) == 0
                        && self.started.load(Ordering::Acquire) == started;
                    if quiet {
                        return;
                    }
                }
                // A request came and went meanwhile: the quiet spell starts again now.
                _ = self.quiet.notified() => {}
            }
        }
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(1);
    const IDLE: Duration = Duration::from_secs(10);

    async fn idle_after(activity: &Activity, idle: Option<Duration>) -> Duration {
        let at = tokio::time::Instant::now();
        activity.idle(FIRST, idle).await;
        at.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_at_all_is_bounded_by_the_first_timeout() {
        let a = Activity::new();
        assert_eq!(idle_after(&a, Some(IDLE)).await, FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle() {
        let a = Activity::new();
        let request = a.start();
        let watch = tokio::spawn({
            let a = a.clone();
            async move { idle_after(&a, Some(IDLE)).await }
        });
        tokio::time::sleep(IDLE * 5).await;
        assert!(!watch.is_finished(), "closed with a request in flight");
        drop(request);
        // The quiet spell counts from the end of the request.
        assert_eq!(watch.await.unwrap(), IDLE * 5 + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_came_and_went_restarts_the_quiet_spell() {
        let a = Activity::new();
        let watch = tokio::spawn({
            let a = a.clone();
            async move { idle_after(&a, Some(IDLE)).await }
        });
        tokio::time::sleep(FIRST / 2).await;
        drop(a.start());
        assert_eq!(watch.await.unwrap(), FIRST / 2 + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_only_the_first_request_is_bounded() {
        let a = Activity::new();
        drop(a.start());
        let watch = tokio::spawn({
            let a = a.clone();
            async move { idle_after(&a, None).await }
        });
        tokio::time::sleep(IDLE * 100).await;
        assert!(!watch.is_finished());
        watch.abort();
    }
}
