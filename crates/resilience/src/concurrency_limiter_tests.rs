use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};

use proptest::prelude::*;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn fixed(n: u32, max_queue: usize) -> ConcurrencyLimiter {
    ConcurrencyLimiter::new(
        ConcurrencyMode::Fixed(n),
        QueueParams {
            max_queue,
            queue_timeout: 100 * MS,
        },
    )
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(&Waker::from(Arc::new(NoopWake))))
}

#[tokio::test(start_paused = true)]
async fn fixed_limit_admits_up_to_the_limit() {
    let l = fixed(2, 0);
    let a = l.acquire().await.unwrap();
    let b = l.try_acquire().unwrap();
    assert!(l.try_acquire().is_none());
    assert_eq!(l.acquire().await.unwrap_err(), Rejected::QueueFull);
    let s = l.stats();
    assert_eq!((s.limit, s.in_flight, s.rejected_queue_full), (2, 2, 1));
    drop((a, b));
    assert_eq!(l.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn queue_is_fifo_and_released_permits_go_to_the_oldest() {
    let l = fixed(1, 8);
    let first = l.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let (l, order) = (l.clone(), order.clone());
            tokio::spawn(async move {
                let p = l.acquire().await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(MS).await;
                drop(p);
            })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(l.stats().queued, 3);
    // Queued requests are ahead of a newcomer even when a slot is free for an instant.
    drop(first);
    assert!(l.try_acquire().is_none());
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    let s = l.stats();
    assert_eq!((s.in_flight, s.queued, s.rejected_timeout), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn queue_bound_and_timeout_hold() {
    let l = fixed(1, 2);
    let _held = l.acquire().await.unwrap();
    let start = Instant::now();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.acquire().await.map(drop) })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(l.acquire().await.unwrap_err(), Rejected::QueueFull);
    for w in waiters {
        assert_eq!(w.await.unwrap(), Err(Rejected::Timeout));
    }
    assert_eq!(start.elapsed(), 100 * MS);
    let s = l.stats();
    assert_eq!((s.in_flight, s.queued), (1, 0));
    assert_eq!((s.rejected_queue_full, s.rejected_timeout), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_leaves_the_queue() {
    let l = fixed(1, 4);
    let held = l.acquire().await.unwrap();
    {
        let mut fut = pin!(l.acquire());
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(l.stats().queued, 1);
    }
    assert_eq!(l.stats().queued, 0);
    drop(held);
    assert_eq!(l.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn grant_to_an_abandoned_waiter_is_returned() {
    let l = fixed(1, 4);
    let held = l.acquire().await.unwrap();
    {
        let mut fut = pin!(l.acquire());
        assert!(poll_once(fut.as_mut()).is_pending());
        // The slot is granted under the lock, but the waiter is dropped before it runs.
        l.set_limit(2);
        assert_eq!(l.stats().in_flight, 2);
    }
    assert_eq!(l.stats().in_flight, 1);
    drop(held);
    assert_eq!(l.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn lowering_the_limit_drains_without_revoking() {
    let l = fixed(4, 4);
    let held: Vec<_> = (0..4).map(|_| l.try_acquire().unwrap()).collect();
    l.set_limit(2);
    let mut held = held.into_iter();
    drop(held.next());
    drop(held.next());
    assert!(l.try_acquire().is_none());
    drop(held.next());
    assert!(l.try_acquire().is_some());
}

/// Runs rounds of `limit` concurrent requests that each take `rtt`; returns the final limit.
async fn run(l: &ConcurrencyLimiter, rtt: Duration, total: Duration) -> u32 {
    let end = Instant::now() + total;
    while Instant::now() < end {
        let permits: Vec<_> = std::iter::from_fn(|| l.try_acquire()).collect();
        tokio::time::sleep(rtt).await;
        drop(permits);
    }
    l.stats().limit
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_follows_latency() {
    let params = GradientParams {
        min_rtt_samples: 10,
        ..GradientParams::default()
    };
    let l = ConcurrencyLimiter::new(ConcurrencyMode::Adaptive(params), QueueParams::default());
    assert_eq!(l.stats().limit, 3);
    let grown = run(&l, 20 * MS, Duration::from_secs(1)).await;
    assert!(grown > 30, "{grown}");
    assert_eq!(l.stats().min_rtt, Some(20 * MS));
    // The upstream starts queueing: RTT × 5. The limit backs off.
    let shrunk = run(&l, 100 * MS, Duration::from_secs(2)).await;
    assert!(shrunk < grown / 4, "{grown} -> {shrunk}");
    // Latency recovers: the limit climbs again.
    let regrown = run(&l, 20 * MS, Duration::from_secs(1)).await;
    assert!(regrown > shrunk * 2, "{shrunk} -> {regrown}");
}

#[tokio::test(start_paused = true)]
async fn discarded_and_early_samples() {
    let params = GradientParams {
        min_rtt_samples: 2,
        ..GradientParams::default()
    };
    let l = ConcurrencyLimiter::new(ConcurrencyMode::Adaptive(params), QueueParams::default());
    let mut a = l.try_acquire().unwrap();
    a.discard_sample();
    tokio::time::sleep(500 * MS).await;
    drop(a);
    assert_eq!(l.stats().min_rtt, None);
    for _ in 0..2 {
        let mut p = l.try_acquire().unwrap();
        tokio::time::sleep(7 * MS).await;
        p.record_sample();
        // Time after the sample (streaming the body) does not count.
        tokio::time::sleep(500 * MS).await;
    }
    assert_eq!(l.stats().min_rtt, Some(7 * MS));
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Release(usize),
    SetLimit(u32),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        3 => any::<usize>().prop_map(Op::Release),
        1 => (1u32..8).prop_map(Op::SetLimit),
        1 => (1u64..150).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whoever gets a permit, directly or from the queue, gets it with in-flight within the
    /// limit; the queue never exceeds its bound; every slot comes back.
    #[test]
    fn in_flight_within_limit_at_acquire(ops in proptest::collection::vec(op(), 0..120)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let l = fixed(3, 4);
            let held = Arc::new(Mutex::new(Vec::new()));
            let violations = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        let (l, held, violations) = (l.clone(), held.clone(), violations.clone());
                        tasks.push(tokio::spawn(async move {
                            if let Ok(p) = l.acquire().await {
                                let s = l.stats();
                                if s.in_flight > s.limit {
                                    violations.fetch_add(1, Ordering::Relaxed);
                                }
                                held.lock().unwrap().push(p);
                            }
                        }));
                    }
                    Op::Release(i) => {
                        let mut h = held.lock().unwrap();
                        if !h.is_empty() {
                            let n = h.len();
                            h.swap_remove(i % n);
                        }
                    }
                    Op::SetLimit(n) => l.set_limit(n),
                    Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                let s = l.stats();
                prop_assert!(s.queued <= 4);
                prop_assert_eq!(s.in_flight as usize, held.lock().unwrap().len());
            }
            held.lock().unwrap().clear();
            for t in tasks {
                t.await.unwrap();
            }
            held.lock().unwrap().clear();
            prop_assert_eq!(violations.load(Ordering::Relaxed), 0);
            prop_assert_eq!(l.stats().in_flight, 0);
            Ok(())
        })?;
    }
}
