//! A pool's concurrency limit, fixed or adaptive, with a bounded FIFO queue in front of it.
//!
//! Like a semaphore, but the number of permits moves: the gradient controller
//! ([`crate::Gradient`]) raises and lowers it as latency changes. Lowering the limit never
//! revokes a permit; in-flight requests drain until the count is under the new limit. Requests
//! over the limit wait in a FIFO queue of at most `max_queue`, for at most `queue_timeout`, then
//! are rejected (the proxy answers 503): a short wait smooths bursts, an unbounded one would
//! only move the upstream's queue into the gateway (Netflix `concurrency-limits`, Envoy
//! `adaptive_concurrency`, which rejects at once).
//!
//! Every state change happens under one short lock, with no await inside it. A waiter owns its
//! receiving end; a grant is a send under the lock, and a waiter that gives up (timeout, or its
//! future dropped) removes itself under the same lock, or, if it was granted in the meantime,
//! hands the slot straight back. So a [`Permit`] is released exactly once, on drop, and
//! cancellation never leaks a slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::adaptive_concurrency::{Gradient, GradientParams};

/// Fixed or adaptive concurrency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConcurrencyMode {
    Fixed(u32),
    Adaptive(GradientParams),
}

/// The queue in front of the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueParams {
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

impl Default for QueueParams {
    fn default() -> Self {
        QueueParams {
            max_queue: 128,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a request got no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue already held `max_queue` requests.
    QueueFull,
    /// The request waited `queue_timeout` without a permit.
    Timeout,
}

impl Rejected {
    /// Metric label: `queue_full` or `queue_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::QueueFull => "queue_full",
            Rejected::Timeout => "queue_timeout",
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejected::QueueFull => "upstream concurrency limit reached and queue full",
            Rejected::Timeout => "timed out waiting under the upstream concurrency limit",
        })
    }
}

impl std::error::Error for Rejected {}

/// A snapshot for metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    pub limit: u32,
    pub in_flight: u32,
    pub queued: usize,
    pub rejected_queue_full: u64,
    pub rejected_timeout: u64,
    pub min_rtt: Option<Duration>,
}

/// One pool's limiter; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: QueueParams,
    state: Mutex<State>,
    rejected_queue_full: AtomicU64,
    rejected_timeout: AtomicU64,
}

#[derive(Debug)]
struct State {
    limit: u32,
    in_flight: u32,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    next_id: u64,
    gradient: Option<Gradient>,
}

impl State {
    /// Hands free slots to waiters, oldest first.
    fn grant(&mut self) {
        while self.in_flight < self.limit {
            let Some((_, tx)) = self.waiters.pop_front() else {
                break;
            };
            // A waiter removes itself under the lock before its receiver drops, so this send
            // only fails if that guarantee is broken; then the slot simply is not taken.
            if tx.send(()).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    fn release(&mut self) {
        self.in_flight -= 1;
        self.grant();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the counts are still
        // consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConcurrencyLimiter {
    pub fn new(mode: ConcurrencyMode, queue: QueueParams) -> ConcurrencyLimiter {
        let (limit, gradient) = match mode {
            ConcurrencyMode::Fixed(n) => (n.max(1), None),
            ConcurrencyMode::Adaptive(p) => {
                let g = Gradient::new(p, Instant::now());
                (g.limit(), Some(g))
            }
        };
        ConcurrencyLimiter {
            inner: Arc::new(Inner {
                queue,
                state: Mutex::new(State {
                    limit,
                    in_flight: 0,
                    waiters: VecDeque::new(),
                    next_id: 0,
                    gradient,
                }),
                rejected_queue_full: AtomicU64::new(0),
                rejected_timeout: AtomicU64::new(0),
            }),
        }
    }

    /// A permit now if one is free and nobody is queued ahead, else `None`; never queues.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut s = self.inner.lock();
        if s.waiters.is_empty() && s.in_flight < s.limit {
            s.in_flight += 1;
            return Some(self.permit());
        }
        None
    }

    /// A permit, waiting in FIFO order for at most `queue_timeout` if the limit is reached.
    pub async fn acquire(&self) -> Result<Permit, Rejected> {
        let (id, rx) = {
            let mut s = self.inner.lock();
            if s.waiters.is_empty() && s.in_flight < s.limit {
                s.in_flight += 1;
                return Ok(self.permit());
            }
            if s.waiters.len() >= self.inner.queue.max_queue {
                self.inner
                    .rejected_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Rejected::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id += 1;
            s.waiters.push_back((id, tx));
            (id, rx)
        };
        let mut wait = Waiting {
            inner: &self.inner,
            id,
            rx,
            granted: false,
        };
        let timeout = self.inner.queue.queue_timeout;
        if let Ok(Ok(())) = tokio::time::timeout(timeout, &mut wait.rx).await {
            wait.granted = true;
            return Ok(self.permit());
        }
        self.inner.rejected_timeout.fetch_add(1, Ordering::Relaxed);
        Err(Rejected::Timeout)
    }

    /// Sets the limit (fixed mode, or an operator override); waiters are admitted at once if it
    /// rose. In adaptive mode the controller moves it again on its next window.
    pub fn set_limit(&self, limit: u32) {
        let mut s = self.inner.lock();
        s.limit = limit.max(1);
        s.grant();
    }

    pub fn stats(&self) -> LimiterStats {
        let s = self.inner.lock();
        LimiterStats {
            limit: s.limit,
            in_flight: s.in_flight,
            queued: s.waiters.len(),
            rejected_queue_full: self.inner.rejected_queue_full.load(Ordering::Relaxed),
            rejected_timeout: self.inner.rejected_timeout.load(Ordering::Relaxed),
            min_rtt: s.gradient.as_ref().and_then(Gradient::min_rtt),
        }
    }

    fn permit(&self) -> Permit {
        Permit {
            inner: self.inner.clone(),
            start: Instant::now(),
            sampled: false,
        }
    }
}

/// A queued acquire; on drop before a grant, leaves the queue or returns a late grant.
struct Waiting<'a> {
    inner: &'a Inner,
    id: u64,
    rx: oneshot::Receiver<()>,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut s = self.inner.lock();
        if let Some(pos) = s.waiters.iter().position(|(id, _)| *id == self.id) {
            s.waiters.remove(pos);
        } else if self.rx.try_recv().is_ok() {
            // Granted after the timeout fired: give the slot to the next waiter.
            s.release();
        }
    }
}

/// One unit of concurrency; released on drop. In adaptive mode its RTT (from acquire to
/// [`Permit::record_sample`] or drop) feeds the controller.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    start: Instant,
    sampled: bool,
}

impl Permit {
    /// Records the RTT now (say, at response headers, for a streamed response whose length
    /// says nothing about the upstream's health); drop then only releases.
    pub fn record_sample(&mut self) {
        if !self.sampled {
            self.sampled = true;
            let mut s = self.inner.lock();
            Self::sample(&mut s, self.start);
        }
    }

    /// Keeps this request's RTT out of the controller (a failure or a cancelled request says
    /// nothing about queueing).
    pub fn discard_sample(&mut self) {
        self.sampled = true;
    }

    fn sample(s: &mut State, started: Instant) {
        let Some(g) = s.gradient.as_mut() else {
            return;
        };
        if let Some(limit) = g.on_sample(started, Instant::now()) {
            s.limit = limit;
            s.grant();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        if !self.sampled {
            Self::sample(&mut s, self.start);
        }
        s.release();
    }
}

#[cfg(test)]
#[path = "concurrency_limiter_tests.rs"]
mod tests;
