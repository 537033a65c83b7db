use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};

use proptest::prelude::*;

use super::*;
use crate::fair_queue::QueueClass;

const MS: Duration = Duration::from_millis(1);

fn fixed(n: u32, max_queue: usize) -> ConcurrencyLimiter {
    ConcurrencyLimiter::new(
        ConcurrencyMode::Fixed(n),
        QueueParams {
            max_queue,
            queue_timeout: 100 * MS,
            ..QueueParams::default()
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
    Acquire(u8, u64),
    Release(usize),
    SetLimit(u32),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u64..3).prop_map(|(p, t)| Op::Acquire(p, t)),
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
            let l = ConcurrencyLimiter::new(
                ConcurrencyMode::Fixed(3),
                QueueParams {
                    max_queue: 4,
                    queue_timeout: 100 * MS,
                    max_per_tenant: 2,
                },
            );
            let held = Arc::new(Mutex::new(Vec::new()));
            let violations = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire(priority, tenant) => {
                        let (l, held, violations) = (l.clone(), held.clone(), violations.clone());
                        let class = QueueClass { priority, tenant };
                        tasks.push(tokio::spawn(async move {
                            if let Ok(p) = l.acquire_as(class).await {
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
                prop_assert_eq!(s.queued_by_priority.iter().sum::<usize>(), s.queued);
                prop_assert_eq!(s.in_flight as usize, held.lock().unwrap().len());
            }
            held.lock().unwrap().clear();
            for t in tasks {
                t.await.unwrap();
            }
            held.lock().unwrap().clear();
            prop_assert_eq!(violations.load(Ordering::Relaxed), 0);
            let s = l.stats();
            prop_assert_eq!((s.in_flight, s.queued, s.queued_tenants), (0, 0, 0));
            Ok(())
        })?;
    }
}

fn fair(limit: u32, max_queue: usize, max_per_tenant: usize) -> ConcurrencyLimiter {
    ConcurrencyLimiter::new(
        ConcurrencyMode::Fixed(limit),
        QueueParams {
            max_queue,
            queue_timeout: Duration::from_secs(10),
            max_per_tenant,
        },
    )
}

fn tenant(tenant: u64) -> QueueClass {
    QueueClass {
        priority: QueueClass::STANDARD,
        tenant,
    }
}

/// Starts a waiter that records `label` in `order` when granted and holds its permit for 1 ms.
fn waiter(
    l: &ConcurrencyLimiter,
    class: QueueClass,
    label: &'static str,
    order: &Arc<Mutex<Vec<&'static str>>>,
) -> tokio::task::JoinHandle<Result<(), Rejected>> {
    let (l, order) = (l.clone(), order.clone());
    tokio::spawn(async move {
        let p = l.acquire_as(class).await?;
        order.lock().unwrap().push(label);
        tokio::time::sleep(MS).await;
        drop(p);
        Ok(())
    })
}

#[tokio::test(start_paused = true)]
async fn queued_tenants_take_turns() {
    let l = fair(1, 16, 16);
    let held = l.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for label in ["a1", "a2", "a3", "a4"] {
        tasks.push(waiter(&l, tenant(1), label, &order));
        tokio::task::yield_now().await;
    }
    for label in ["b1", "b2"] {
        tasks.push(waiter(&l, tenant(2), label, &order));
        tokio::task::yield_now().await;
    }
    let s = l.stats();
    assert_eq!((s.queued, s.queued_tenants), (6, 2));
    drop(held);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["a1", "b1", "a2", "b2", "a3", "a4"]);
}

#[tokio::test(start_paused = true)]
async fn critical_waiters_go_before_standard_ones() {
    let l = fair(1, 16, 16);
    let held = l.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let critical = |t| QueueClass {
        priority: 2,
        tenant: t,
    };
    let tasks = vec![
        waiter(&l, tenant(1), "standard", &order),
        waiter(&l, critical(1), "critical-1", &order),
        waiter(&l, critical(2), "critical-2", &order),
    ];
    tokio::task::yield_now().await;
    assert_eq!(l.stats().queued_by_priority, [0, 1, 2]);
    drop(held);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["critical-1", "critical-2", "standard"]
    );
}

#[tokio::test(start_paused = true)]
async fn one_tenant_cannot_fill_the_queue() {
    let l = fair(1, 4, 2);
    let _held = l.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let _a: Vec<_> = (0..2).map(|_| waiter(&l, tenant(1), "a", &order)).collect();
    tokio::task::yield_now().await;
    // Tenant 1 is at its share of the queue.
    assert_eq!(
        l.acquire_as(tenant(1)).await.unwrap_err(),
        Rejected::TenantQueueFull
    );
    let _b: Vec<_> = (0..2).map(|_| waiter(&l, tenant(2), "b", &order)).collect();
    tokio::task::yield_now().await;
    // The room itself is full now.
    assert_eq!(
        l.acquire_as(tenant(3)).await.unwrap_err(),
        Rejected::QueueFull
    );
    let s = l.stats();
    assert_eq!((s.queued, s.queued_tenants), (4, 2));
    assert_eq!(
        (s.rejected_tenant_queue_full, s.rejected_queue_full),
        (1, 1)
    );
    // A reload may change the share in place; then the room is what is full.
    l.set_max_per_tenant(3);
    assert_eq!(
        l.acquire_as(tenant(1)).await.unwrap_err(),
        Rejected::QueueFull
    );
}

/// One tenant floods (4 requests every 2 ms against a capacity of 200/s), another sends one
/// request at a time; every admitted request holds its permit for 10 ms. Returns the light
/// tenant's waits (or refusals) and how many flood requests were refused.
async fn flood(
    l: &ConcurrencyLimiter,
    flooder: u64,
    light: u64,
) -> (Vec<Result<Duration, Rejected>>, usize) {
    let end = Instant::now() + Duration::from_secs(1);
    let flood = {
        let l = l.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            while Instant::now() < end {
                for _ in 0..4 {
                    let l = l.clone();
                    tasks.push(tokio::spawn(async move {
                        let Ok(p) = l.acquire_as(tenant(flooder)).await else {
                            return 1;
                        };
                        tokio::time::sleep(10 * MS).await;
                        drop(p);
                        0
                    }));
                }
                tokio::time::sleep(2 * MS).await;
            }
            let mut refused = 0;
            for t in tasks {
                refused += t.await.unwrap();
            }
            refused
        })
    };
    tokio::time::sleep(5 * MS).await;
    let mut waits = Vec::new();
    while Instant::now() < end {
        let asked = Instant::now();
        match l.acquire_as(tenant(light)).await {
            Ok(p) => {
                waits.push(Ok(asked.elapsed()));
                tokio::time::sleep(10 * MS).await;
                drop(p);
            }
            Err(e) => waits.push(Err(e)),
        }
        tokio::time::sleep(15 * MS).await;
    }
    (waits, flood.await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_does_not_starve_a_light_one() {
    let l = fair(2, 64, 8);
    let (waits, refused) = flood(&l, 1, 2).await;
    assert!(waits.len() >= 25, "light requests: {}", waits.len());
    // A slot frees every 5 ms on average; the light tenant waits for at most one flood grant
    // before its own.
    let waits: Vec<Duration> = waits.into_iter().map(Result::unwrap).collect();
    let worst = waits.iter().max().unwrap();
    assert!(*worst <= 10 * MS, "light tenant waited {worst:?}");
    assert!(refused > 1000, "flood refusals: {refused}");
    let s = l.stats();
    assert_eq!(s.rejected_tenant_queue_full as usize, refused);
    assert_eq!((s.rejected_queue_full, s.rejected_timeout), (0, 0));

    // The same traffic through a FIFO queue: the light tenant waits behind the whole flood.
    let fifo = fair(2, 64, usize::MAX);
    let (waits, _) = flood(&fifo, 0, 0).await;
    let starved = waits
        .iter()
        .filter(|w| w.as_ref().map_or(true, |d| *d >= 100 * MS))
        .count();
    assert!(starved * 2 > waits.len(), "FIFO light outcomes: {waits:?}");
}
