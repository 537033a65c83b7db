//! A pool's concurrency limit, fixed or adaptive, with a bounded fair queue in front of it.
//!
//! Like a semaphore, but the number of permits moves: the gradient controller
//! ([`crate::Gradient`]) raises and lowers it as latency changes. Lowering the limit never
//! revokes a permit; in-flight requests drain until the count is under the new limit. Requests
//! over the limit wait in a queue of at most `max_queue`, for at most `queue_timeout`, then
//! are rejected (the proxy answers 503): a short wait smooths bursts, an unbounded one would
//! only move the upstream's queue into the gateway (Netflix `concurrency-limits`, Envoy
//! `adaptive_concurrency`, which rejects at once).
//!
//! The queue ([`crate::fair_queue`]) serves higher priorities first and, within a priority,
//! takes tenants in turn, so a tenant that floods the pool delays the others by one turn per
//! grant rather than by its whole backlog; `max_per_tenant` bounds one tenant's share of the
//! queue, so it cannot fill the room either. With every request in one class (the default
//! [`QueueClass`]) it is a plain FIFO.
//!
//! Every state change happens under one short lock, with no await inside it. A waiter owns its
//! receiving end; a grant is a send under the lock, and a waiter that gives up (timeout, or its
//! future dropped) removes itself under the same lock, or, if it was granted in the meantime,
//! hands the slot straight back. So a [`Permit`] is released exactly once, on drop, and
//! cancellation never leaks a slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::adaptive_concurrency::{Gradient, GradientParams};
use crate::fair_queue::{FairQueue, QueueClass, PRIORITY_LEVELS};

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
    /// Waiters one tenant may have queued at one priority; `usize::MAX` for no cap below
    /// `max_queue`.
    pub max_per_tenant: usize,
}

impl Default for QueueParams {
    fn default() -> Self {
        QueueParams {
            max_queue: 128,
            queue_timeout: Duration::from_secs(1),
            max_per_tenant: usize::MAX,
        }
    }
}

/// Why a request got no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue already held `max_queue` requests.
    QueueFull,
    /// The request's tenant already had `max_per_tenant` requests queued at its priority.
    TenantQueueFull,
    /// The request waited `queue_timeout` without a permit.
    Timeout,
}

impl Rejected {
    /// Metric label: `queue_full`, `tenant_queue_full` or `queue_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::QueueFull => "queue_full",
            Rejected::TenantQueueFull => "tenant_queue_full",
            Rejected::Timeout => "queue_timeout",
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejected::QueueFull => "upstream concurrency limit reached and queue full",
            Rejected::TenantQueueFull => {
                "upstream concurrency limit reached and this tenant's share of the queue is full"
            }
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
    /// Waiting requests per priority level, lowest first.
    pub queued_by_priority: [usize; PRIORITY_LEVELS],
    /// Tenants with a request waiting (per level, summed).
    pub queued_tenants: usize,
    pub rejected_queue_full: u64,
    pub rejected_tenant_queue_full: u64,
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
    rejected_tenant_queue_full: AtomicU64,
    rejected_timeout: AtomicU64,
}

#[derive(Debug)]
struct State {
    limit: u32,
    in_flight: u32,
    waiters: FairQueue<oneshot::Sender<()>>,
    /// `QueueParams::max_per_tenant`, changeable in place on reload.
    max_per_tenant: usize,
    next_id: u64,
    gradient: Option<Gradient>,
}

impl State {
    /// Hands free slots to waiters, in the queue's order.
    fn grant(&mut self) {
        while self.in_flight < self.limit {
            let Some(tx) = self.waiters.pop() else {
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
                    waiters: FairQueue::default(),
                    max_per_tenant: queue.max_per_tenant,
                    next_id: 0,
                    gradient,
                }),
                rejected_queue_full: AtomicU64::new(0),
                rejected_tenant_queue_full: AtomicU64::new(0),
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

    /// A permit, waiting (in the default class, so FIFO among such callers) for at most
    /// `queue_timeout` if the limit is reached.
    pub async fn acquire(&self) -> Result<Permit, Rejected> {
        self.acquire_as(QueueClass::default()).await
    }

    /// A permit, waiting for at most `queue_timeout` if the limit is reached: behind every
    /// higher-priority waiter, and in turn with the other tenants of `class.priority`.
    pub async fn acquire_as(&self, class: QueueClass) -> Result<Permit, Rejected> {
        let (id, rx) = {
            let mut s = self.inner.lock();
            if s.waiters.is_empty() && s.in_flight < s.limit {
                s.in_flight += 1;
                return Ok(self.permit());
            }
            // The tenant's own cap first: when both are hit, the flooding tenant is the cause.
            if s.waiters.tenant_len(class) >= s.max_per_tenant {
                self.inner
                    .rejected_tenant_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Rejected::TenantQueueFull);
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
            s.waiters.push(class, id, tx);
            (id, rx)
        };
        let mut wait = Waiting {
            inner: &self.inner,
            class,
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

    /// Sets how many waiters one tenant may have queued at one priority (a reload changed
    /// it); waiters already over a lowered cap keep their places.
    pub fn set_max_per_tenant(&self, max: usize) {
        self.inner.lock().max_per_tenant = max.max(1);
    }

    pub fn stats(&self) -> LimiterStats {
        let s = self.inner.lock();
        LimiterStats {
            limit: s.limit,
            in_flight: s.in_flight,
            queued: s.waiters.len(),
            queued_by_priority: s.waiters.len_by_level(),
            queued_tenants: s.waiters.tenants(),
            rejected_queue_full: self.inner.rejected_queue_full.load(Ordering::Relaxed),
            rejected_tenant_queue_full: self
                .inner
                .rejected_tenant_queue_full
                .load(Ordering::Relaxed),
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
    class: QueueClass,
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
        // Still queued: leave. Otherwise a grant raced the timeout: give the slot to the next
        // waiter.
        if s.waiters.remove(self.class, self.id).is_none() && self.rx.try_recv().is_ok() {
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
