//! Holding a request at the gateway while no endpoint is predicted to meet its SLO
//! (`predictor: {queue: {max_wait, max_queued}}`).
//!
//! Without it such a request goes at once to the endpoint predicted to violate least, where it
//! waits in the engine's own queue: it misses its SLO, and every request queued behind it there
//! is later too. Held here instead, it costs the engines nothing until one can take it in time:
//! each time an endpoint frees prefill capacity (a first byte) or a batch slot (a response
//! ends), the held requests are asked again, with their SLO reduced by the time already waited,
//! and those now predicted to make it go. A request whose budget is spent (it can no longer
//! make its SLO) waits for an endpoint predicted to serve a fresh request in time, so that it
//! does not take capacity others could use; after `max_wait` any request goes to the least
//! violating endpoint, as without a queue. At most `max_queued` are held; past that a request
//! is sent at once. Sheddable requests are not held: they are refused, as before.
//!
//! Priority: the more urgent a held request, the sooner it is asked when capacity frees (a
//! standard request yields to the runtime once, a sheddable one twice, before asking), so a
//! critical request takes a freed slot first. The order is that of the wake-up, not strict.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Bounds of a pool's SLO queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    pub max_wait: Duration,
    pub max_queued: usize,
}

/// Priority ranks: 0 critical, 1 standard, 2 sheddable.
pub const RANKS: usize = 3;

/// The requests of one pool held for an endpoint predicted to meet their SLO.
#[derive(Debug)]
pub struct SloQueue {
    config: QueueConfig,
    held: AtomicUsize,
    wake: [Notify; RANKS],
}

/// A place in the queue; leaving it (drop) frees it.
#[derive(Debug)]
pub struct Place<'a> {
    queue: &'a SloQueue,
    rank: usize,
}

impl SloQueue {
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config,
            held: AtomicUsize::new(0),
            wake: Default::default(),
        }
    }

    pub fn config(&self) -> QueueConfig {
        self.config
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A place for a request of priority `rank` (clamped to the last), unless `max_queued`
    /// are held.
    pub fn enter(&self, rank: usize) -> Option<Place<'_>> {
        let max = self.config.max_queued;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Place {
            queue: self,
            rank: rank.min(RANKS - 1),
        })
    }

    /// Capacity freed on some endpoint: every held request asks again.
    pub fn kick(&self) {
        if self.held.load(Ordering::Relaxed) > 0 {
            for w in &self.wake {
                w.notify_waiters();
            }
        }
    }
}

impl Place<'_> {
    /// Wait for the next [`SloQueue::kick`] or `timeout`, whichever is first. `ask` runs after
    /// the wait is registered, so a kick while it runs is not lost: it returns `Some` when the
    /// request can go (no wait then).
    pub async fn ask_or_wait<T>(
        &self,
        timeout: Duration,
        ask: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        let notified = self.queue.wake[self.rank].notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(t) = ask() {
            return Some(t);
        }
        if tokio::time::timeout(timeout, notified).await.is_ok() {
            // Less urgent requests let the more urgent, woken by the same kick, ask first.
            for _ in 0..self.rank {
                tokio::task::yield_now().await;
            }
        }
        None
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_and_woken_by_a_kick() {
        let q = std::sync::Arc::new(SloQueue::new(QueueConfig {
            max_wait: Duration::from_secs(1),
            max_queued: 1,
        }));
        let place = q.enter(2).expect("room for one");
        assert!(q.enter(0).is_none(), "past max_queued");
        assert_eq!(q.held(), 1);
        // Asked and able to go: no wait.
        let now = place
            .ask_or_wait(Duration::from_secs(600), || Some(7))
            .await;
        assert_eq!(now, Some(7));
        // Not able: a kick from another task ends the wait (the test would hang otherwise).
        let kicker = {
            let q = q.clone();
            tokio::spawn(async move {
                loop {
                    q.kick();
                    tokio::task::yield_now().await;
                }
            })
        };
        let woken = place
            .ask_or_wait(Duration::from_secs(600), || None::<u8>)
            .await;
        assert_eq!(woken, None);
        kicker.abort();
        drop(place);
        assert_eq!(q.held(), 0);
        assert!(q.enter(0).is_some());
    }
}
