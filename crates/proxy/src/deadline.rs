//! A deadline that moves every request without touching the timer wheel: the connection's one
//! timer is re-armed only when it fires early or a deadline comes sooner than it, so a steady
//! stream of requests registers no timer per request (a `tokio::time::Timeout` each cost about
//! 500 instructions).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// One connection's deadline.
pub struct LazyDeadline {
    timer: Pin<Box<Sleep>>,
    /// `None`: nothing to wait for (the caller times the work).
    deadline: Option<Instant>,
    /// When `timer` fires.
    armed: Instant,
}

impl LazyDeadline {
    /// A deadline with its timer first armed at `armed` (a far instant, or the first deadline).
    pub fn new(armed: Instant) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep_until(armed)),
            deadline: None,
            armed,
        }
    }

    /// Bound what follows by `deadline` (`None`: unbounded here). A later deadline than the
    /// timer's only writes a field.
    pub fn set(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        if let Some(d) = deadline.filter(|d| *d < self.armed) {
            self.armed = d;
            self.timer.as_mut().reset(d);
        }
    }

    /// Ready once the deadline has passed; never without one.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.armed = deadline;
            self.timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn poll(d: &mut LazyDeadline) -> Poll<()> {
        let waker = std::task::Waker::noop();
        d.poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn later_deadlines_never_fire_early_and_sooner_ones_fire_on_time() {
        let start = Instant::now();
        let mut d = LazyDeadline::new(start + Duration::from_secs(3600));
        assert!(poll(&mut d).is_pending(), "no deadline, no firing");
        d.set(Some(start + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(poll(&mut d).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll(&mut d).is_ready());
        // Moved later: the timer (armed at 100 ms) fires early, finds time left, re-arms.
        d.set(Some(start + Duration::from_millis(300)));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(poll(&mut d).is_pending());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(poll(&mut d).is_ready());
    }
}
