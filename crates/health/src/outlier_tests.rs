//! Deterministic detector scenarios under paused tokio time.

use super::*;

fn addrs(n: u16) -> Vec<SocketAddr> {
    (1..=n)
        .map(|p| SocketAddr::from(([10, 0, 0, 1], p)))
        .collect()
}

pub(super) fn detector(n: u16, settings: OutlierSettings) -> (OutlierDetector, Vec<SocketAddr>) {
    let a = addrs(n);
    (OutlierDetector::new(settings, a.clone()), a)
}

pub(super) fn ejected(events: &[OutlierEvent]) -> Vec<SocketAddr> {
    let mut out: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            OutlierEvent::Ejected { address, .. } => Some(*address),
            OutlierEvent::Returned { .. } => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn status_classification() {
    assert_eq!(Outcome::from_status(200), Outcome::Success);
    assert_eq!(Outcome::from_status(429), Outcome::Success);
    assert_eq!(Outcome::from_status(500), Outcome::Http5xx);
    assert_eq!(Outcome::from_status(503), Outcome::GatewayError);
}

#[tokio::test(start_paused = true)]
async fn consecutive_gateway_errors_eject_and_success_resets() {
    let (mut d, a) = detector(10, OutlierSettings::default());
    let snapshot = d.snapshot();
    let now = Instant::now();
    assert_eq!(d.record(a[0], Outcome::GatewayError, now), None);
    assert_eq!(d.record(a[0], Outcome::GatewayError, now), None);
    assert_eq!(d.record(a[0], Outcome::Success, now), None);
    assert_eq!(d.record(a[0], Outcome::GatewayError, now), None);
    assert_eq!(d.record(a[0], Outcome::GatewayError, now), None);
    assert_eq!(d.record(a[0], Outcome::LocalOrigin, now), None, "ignored");
    let event = d.record(a[0], Outcome::GatewayError, now);
    assert_eq!(
        event,
        Some(OutlierEvent::Ejected {
            address: a[0],
            reason: EjectReason::ConsecutiveGatewayErrors,
            duration: Duration::from_secs(30),
        })
    );
    assert!(d.is_ejected(a[0], now));
    assert!(snapshot.load().is_ejected(a[0], now));
    assert!(!snapshot.load().is_ejected(a[1], now));
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_ejects_at_once_within_the_cap() {
    let settings = OutlierSettings {
        max_ejected_percent: 20,
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(10, settings);
    let now = Instant::now();
    assert_eq!(
        d.record(a[0], Outcome::ConnectRefused, now),
        Some(OutlierEvent::Ejected {
            address: a[0],
            reason: EjectReason::ConsecutiveRefused,
            duration: Duration::from_secs(30),
        })
    );
    assert_eq!(EjectReason::ConsecutiveRefused.as_str(), "connect_refused");
    assert!(d.record(a[1], Outcome::ConnectRefused, now).is_some());
    // The cap (20% of 10) holds for refusals too: a third refusing endpoint stays in.
    assert_eq!(d.record(a[2], Outcome::ConnectRefused, now), None);
    assert!(!d.is_ejected(a[2], now));
    // A refusal is a gateway error as well: two more make three in a row.
    let (mut d, a) = detector(
        10,
        OutlierSettings {
            consecutive_refused: 0,
            ..OutlierSettings::default()
        },
    );
    assert_eq!(d.record(a[0], Outcome::ConnectRefused, now), None, "off");
    assert_eq!(d.record(a[0], Outcome::GatewayError, now), None);
    assert!(matches!(
        d.record(a[0], Outcome::ConnectRefused, now),
        Some(OutlierEvent::Ejected {
            reason: EjectReason::ConsecutiveGatewayErrors,
            ..
        })
    ));
    // With a threshold of two, anything else in between starts the count again.
    let (mut d, a) = detector(
        10,
        OutlierSettings {
            consecutive_refused: 2,
            consecutive_gateway_errors: 0,
            consecutive_5xx: 0,
            ..OutlierSettings::default()
        },
    );
    assert_eq!(d.record(a[0], Outcome::ConnectRefused, now), None);
    assert_eq!(d.record(a[0], Outcome::GatewayError, now), None);
    assert_eq!(d.record(a[0], Outcome::ConnectRefused, now), None);
    assert!(d.record(a[0], Outcome::ConnectRefused, now).is_some());
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_counts_gateway_errors_too() {
    let (mut d, a) = detector(10, OutlierSettings::default());
    let now = Instant::now();
    // 500, 503, 500, 503: the gateway streak never reaches 3, the 5xx streak reaches 5.
    for outcome in [
        Outcome::Http5xx,
        Outcome::GatewayError,
        Outcome::Http5xx,
        Outcome::GatewayError,
    ] {
        assert_eq!(d.record(a[0], outcome, now), None);
    }
    let event = d.record(a[0], Outcome::Http5xx, now).unwrap();
    assert!(matches!(
        event,
        OutlierEvent::Ejected {
            reason: EjectReason::Consecutive5xx,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_repeats_returns_and_decays() {
    let settings = OutlierSettings {
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(75),
        interval: Duration::from_secs(10),
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(10, settings);
    let eject = |d: &mut OutlierDetector| {
        let now = Instant::now();
        let mut last = None;
        for _ in 0..3 {
            last = d.record(a[0], Outcome::GatewayError, now);
        }
        match last {
            Some(OutlierEvent::Ejected { duration, .. }) => duration,
            other => panic!("expected an ejection, got {other:?}"),
        }
    };
    assert_eq!(eject(&mut d), Duration::from_secs(30));
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(d.is_ejected(a[0], Instant::now()));
    assert!(d.tick(Instant::now()).is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        !d.is_ejected(a[0], Instant::now()),
        "back exactly when the time is up"
    );
    assert!(!d.snapshot().load().is_ejected(a[0], Instant::now()));
    assert_eq!(
        d.tick(Instant::now()),
        [OutlierEvent::Returned { address: a[0] }]
    );

    // Ejected again at once: twice the base time; a third time is capped by max_ejection.
    assert_eq!(eject(&mut d), Duration::from_secs(60));
    tokio::time::advance(Duration::from_secs(60)).await;
    d.tick(Instant::now());
    assert_eq!(eject(&mut d), Duration::from_secs(75));
    tokio::time::advance(Duration::from_secs(75)).await;
    d.tick(Instant::now());

    // Staying healthy decays the multiplier by one per interval: 3 → 1 after two intervals.
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(10)).await;
        d.tick(Instant::now());
    }
    assert_eq!(eject(&mut d), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn cap_on_ejected_share_holds() {
    let settings = OutlierSettings {
        max_ejected_percent: 50,
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(10, settings);
    let now = Instant::now();
    let mut events = Vec::new();
    for _ in 0..3 {
        for &addr in &a {
            events.extend(d.record(addr, Outcome::GatewayError, now));
        }
    }
    assert_eq!(ejected(&events).len(), 5);
    assert_eq!(d.snapshot().load().count(now), 5);

    // The default 10% of a 3-endpoint pool still allows one ejection, but not two.
    let (mut d, a) = detector(3, OutlierSettings::default());
    let mut events = Vec::new();
    for _ in 0..3 {
        for &addr in &a {
            events.extend(d.record(addr, Outcome::GatewayError, now));
        }
    }
    assert_eq!(ejected(&events), [a[0]]);
}

fn traffic(d: &mut OutlierDetector, addr: SocketAddr, ok: u32, failed: u32, now: Instant) {
    for _ in 0..ok {
        d.record(addr, Outcome::Success, now);
    }
    // Interleave failures with successes so the consecutive detectors stay quiet.
    for _ in 0..failed {
        d.record(addr, Outcome::Http5xx, now);
        d.record(addr, Outcome::Success, now);
    }
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_statistical_outlier() {
    let settings = OutlierSettings {
        max_ejected_percent: 100,
        consecutive_5xx: 0,
        consecutive_gateway_errors: 0,
        success_rate: Some(SuccessRateSettings::default()),
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(6, settings);
    let now = Instant::now();
    // Five endpoints at ~99%, one at ~67%; a[5] sends too little to count.
    for &addr in &a[..4] {
        traffic(&mut d, addr, 198, 2, now);
    }
    traffic(&mut d, a[4], 100, 100, now);
    traffic(&mut d, a[5], 10, 40, now);
    let events = d.tick(now);
    assert_eq!(ejected(&events), [a[4]]);
    assert!(matches!(
        events[0],
        OutlierEvent::Ejected {
            reason: EjectReason::SuccessRate,
            ..
        }
    ));

    // Counts start over each interval; with fewer than minimum_hosts qualifying, nothing runs.
    for &addr in &a[..3] {
        traffic(&mut d, addr, 198, 2, now);
    }
    traffic(&mut d, a[5], 10, 100, now);
    assert!(d.tick(now).is_empty());
}

#[tokio::test(start_paused = true)]
async fn success_rate_leaves_a_uniform_pool_alone() {
    let settings = OutlierSettings {
        max_ejected_percent: 100,
        consecutive_5xx: 0,
        consecutive_gateway_errors: 0,
        success_rate: Some(SuccessRateSettings::default()),
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(5, settings);
    let now = Instant::now();
    for (i, &addr) in a.iter().enumerate() {
        traffic(&mut d, addr, 150, 50 + i as u32, now);
    }
    assert!(d.tick(now).is_empty());
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_above_threshold() {
    let settings = OutlierSettings {
        max_ejected_percent: 100,
        consecutive_5xx: 0,
        consecutive_gateway_errors: 0,
        failure_percentage: Some(FailurePercentageSettings::default()),
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(6, settings);
    let now = Instant::now();
    for &addr in &a[..3] {
        traffic(&mut d, addr, 60, 0, now);
    }
    // Local-origin outcomes do not count towards the volume or the percentage.
    for &addr in &a[3..5] {
        for _ in 0..10 {
            for _ in 0..4 {
                d.record(addr, Outcome::Http5xx, now);
            }
            d.record(addr, Outcome::Success, now);
        }
        for _ in 0..40 {
            d.record(addr, Outcome::LocalOrigin, now);
        }
    }
    // a[3] and a[4] fail 80%: below the threshold.
    assert!(d.tick(now).is_empty());
    for &addr in &a[..4] {
        traffic(&mut d, addr, 60, 0, now);
    }
    for _ in 0..10 {
        for _ in 0..9 {
            d.record(a[4], Outcome::Http5xx, now);
        }
        d.record(a[4], Outcome::Success, now);
    }
    let events = d.tick(now);
    assert_eq!(ejected(&events), [a[4]]);
    assert!(matches!(
        events[0],
        OutlierEvent::Ejected {
            reason: EjectReason::FailurePercentage,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_state_of_remaining_endpoints() {
    let settings = OutlierSettings {
        max_ejected_percent: 100,
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(4, settings);
    let now = Instant::now();
    for _ in 0..3 {
        d.record(a[0], Outcome::GatewayError, now);
    }
    d.record(a[1], Outcome::GatewayError, now);
    d.record(a[1], Outcome::GatewayError, now);
    d.update(None, [a[0], a[1]]);
    assert!(d.is_ejected(a[0], now));
    assert!(d.snapshot().load().is_ejected(a[0], now));
    assert!(
        d.record(a[1], Outcome::GatewayError, now).is_some(),
        "streak kept"
    );
    d.update(None, [a[1]]);
    assert!(
        !d.snapshot().load().is_ejected(a[0], now),
        "removed endpoints leave the snapshot"
    );
    assert_eq!(
        d.record(a[2], Outcome::GatewayError, now),
        None,
        "unknown address"
    );
}

#[tokio::test(start_paused = true)]
async fn ticker_returns_ejected_endpoints_on_schedule() {
    let (d, a) = detector(10, OutlierSettings::default());
    let d = Arc::new(Mutex::new(d));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = spawn_ticker(&d, move |e| {
        let _ = tx.send((e, Instant::now()));
    });
    let start = Instant::now();
    for _ in 0..3 {
        d.lock().unwrap().record(a[0], Outcome::GatewayError, start);
    }
    // Ejected for 30s; the 10s ticker reports the return at the first tick after that.
    let (event, at) = rx.recv().await.unwrap();
    assert_eq!(event, OutlierEvent::Returned { address: a[0] });
    assert_eq!(at - start, Duration::from_secs(30));
    drop(d);
    tokio::time::advance(Duration::from_secs(10)).await;
    task.await.unwrap();
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the traffic, at most `max(1, max_ejected_percent × n / 100)` endpoints are
        /// ejected at once, and the pick-path snapshot agrees with the detector.
        #[test]
        fn cap_holds_and_snapshot_agrees(
            n in 1u16..16,
            cap in 0u32..=100,
            statistical in any::<bool>(),
            ops in proptest::collection::vec((0u16..16, 0u8..5, 0u64..20), 0..400),
        ) {
            let settings = OutlierSettings {
                max_ejected_percent: cap,
                consecutive_5xx: 2,
                consecutive_gateway_errors: 2,
                success_rate: statistical.then_some(SuccessRateSettings {
                    minimum_hosts: 2,
                    request_volume: 3,
                    stdev_factor: 500,
                }),
                failure_percentage: statistical.then_some(FailurePercentageSettings {
                    threshold: 50,
                    minimum_hosts: 2,
                    request_volume: 3,
                }),
                ..OutlierSettings::default()
            };
            let (mut d, a) = detector(n, settings);
            let snapshot = d.snapshot();
            let limit = ((cap as usize) * (n as usize) / 100).max(1);
            let mut now = Instant::now();
            for (host, op, advance) in ops {
                let addr = a[(host % n) as usize];
                now += Duration::from_secs(advance);
                match op {
                    0 => { d.record(addr, Outcome::Success, now); }
                    1 => { d.record(addr, Outcome::Http5xx, now); }
                    2 => { d.record(addr, Outcome::GatewayError, now); }
                    3 => { d.record(addr, Outcome::LocalOrigin, now); }
                    _ => { d.tick(now); }
                }
                let ejected = a.iter().filter(|&&x| d.is_ejected(x, now)).count();
                prop_assert!(ejected <= limit, "{ejected} ejected, limit {limit}");
                for &x in &a {
                    prop_assert_eq!(d.is_ejected(x, now), snapshot.load().is_ejected(x, now));
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_returns_the_expired_ones_before_counting_the_cap() {
    // Two of four may be out. Both ejections end at 30 s; before the next tick, two other
    // endpoints fail. Each ejection first returns the expired ones, so the flags never show
    // more than two out.
    let settings = OutlierSettings {
        consecutive_gateway_errors: 1,
        max_ejected_percent: 50,
        interval: Duration::from_secs(10),
        ..OutlierSettings::default()
    };
    let (mut d, a) = detector(4, settings);
    let t0 = Instant::now();
    assert!(d.record(a[0], Outcome::GatewayError, t0).is_some());
    assert!(d.record(a[1], Outcome::GatewayError, t0).is_some());
    let later = t0 + Duration::from_secs(31);
    assert!(d.record(a[2], Outcome::GatewayError, later).is_some());
    let returned = d.take_returned();
    assert_eq!(returned.len(), 2, "{returned:?}");
    assert!(returned
        .iter()
        .all(|e| matches!(e, OutlierEvent::Returned { .. })));
    assert!(d.record(a[3], Outcome::GatewayError, later).is_some());
    assert!(d.take_returned().is_empty());
    // The tick finds nothing more to return.
    assert!(d
        .tick(later)
        .iter()
        .all(|e| !matches!(e, OutlierEvent::Returned { .. })));
}
