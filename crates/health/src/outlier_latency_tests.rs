//! Latency judging under paused tokio time.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_balance::head_latency::{HeadClass, HeadWindow};
use tokio::time::Instant;

use super::super::tests::{detector, ejected};
use super::super::{EjectReason, OutlierDetector, OutlierEvent, OutlierSettings};
use super::LatencySettings;

fn latency_settings(max_ejected_percent: u32) -> OutlierSettings {
    OutlierSettings {
        max_ejected_percent,
        latency: Some(LatencySettings {
            factor: 3.0,
            min_requests: 5,
            interval: Duration::from_secs(1),
            intervals: 2,
        }),
        ..OutlierSettings::default()
    }
}

/// One interval of traffic: six finished attempts on every endpoint, at `latency(i)` for
/// endpoint `i`; returns what the interval's judgement ejected.
fn latency_interval(
    d: &mut OutlierDetector,
    a: &[SocketAddr],
    at: Instant,
    latency: impl Fn(usize) -> Duration,
) -> Vec<OutlierEvent> {
    let windows: Vec<_> = a
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let l = latency(i).as_secs_f64();
            (
                addr,
                HeadWindow::from_latencies(HeadClass::Immediate, &[l; 6]),
            )
        })
        .collect();
    d.judge_latency(&windows, at + Duration::from_secs(1))
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_holding_its_requests_is_judged_by_their_age() {
    // The slow endpoint finished only two (too few to judge alone), but holds eight more that
    // have waited 900 ms on average: that is the evidence.
    let (mut d, a) = detector(5, latency_settings(20));
    let t0 = Instant::now();
    let windows = |_: ()| -> Vec<(SocketAddr, HeadWindow)> {
        a.iter()
            .enumerate()
            .map(|(i, &addr)| {
                if i == 2 {
                    let mut w = HeadWindow::from_latencies(HeadClass::Immediate, &[1.0; 2]);
                    w.classes[0].waiting = 8;
                    w.classes[0].waiting_age = 0.9;
                    (addr, w)
                } else {
                    (
                        addr,
                        HeadWindow::from_latencies(HeadClass::Immediate, &[0.1; 20]),
                    )
                }
            })
            .collect()
    };
    assert!(d.judge_latency(&windows(()), t0).is_empty());
    let events = d.judge_latency(&windows(()), t0 + Duration::from_secs(1));
    assert_eq!(ejected(&events), vec![a[2]]);
    // Classes are judged apart: per-token latencies never set the bar for stream heads.
    let (mut d, a) = detector(5, latency_settings(20));
    let mixed: Vec<_> = a
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let mut w = HeadWindow::from_latencies(HeadClass::Immediate, &[0.05; 10]);
            let per_token = HeadWindow::from_latencies(HeadClass::PerToken, &[0.01; 10]);
            if i % 2 == 0 {
                w.classes[1] = per_token.classes[1];
            }
            (addr, w)
        })
        .collect();
    for k in 0..3 {
        assert!(d
            .judge_latency(&mixed, t0 + Duration::from_secs(k))
            .is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_ejected_after_slow_intervals_in_a_row() {
    let (mut d, a) = detector(5, latency_settings(20));
    let t0 = Instant::now();
    let slow = |i: usize| Duration::from_millis(if i == 3 { 1000 } else { 100 });
    assert!(
        latency_interval(&mut d, &a, t0, slow).is_empty(),
        "one slow interval is not enough"
    );
    let events = latency_interval(&mut d, &a, t0 + Duration::from_secs(1), slow);
    assert_eq!(ejected(&events), vec![a[3]]);
    assert!(matches!(
        events[0],
        OutlierEvent::Ejected {
            reason: EjectReason::Latency,
            ..
        }
    ));
    // A slow interval followed by a normal one starts the count over.
    let (mut d, a) = detector(5, latency_settings(20));
    assert!(latency_interval(&mut d, &a, t0, slow).is_empty());
    let fine = |_| Duration::from_millis(100);
    assert!(latency_interval(&mut d, &a, t0 + Duration::from_secs(1), fine).is_empty());
    assert!(latency_interval(&mut d, &a, t0 + Duration::from_secs(2), slow).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_fleet_wide_slowdown_ejects_nobody_and_the_cap_holds() {
    let t0 = Instant::now();
    // Everyone twice as slow: the median moves with them.
    let (mut d, a) = detector(5, latency_settings(20));
    for k in 0..4 {
        let events = latency_interval(&mut d, &a, t0 + Duration::from_secs(k), |i| {
            Duration::from_millis(200 + i as u64)
        });
        assert!(events.is_empty(), "{events:?}");
    }
    // Two slow endpoints of five with a 20% cap: only the slower one goes.
    let (mut d, a) = detector(5, latency_settings(20));
    let two = |i: usize| {
        Duration::from_millis(match i {
            1 => 2000,
            2 => 1000,
            _ => 100,
        })
    };
    latency_interval(&mut d, &a, t0, two);
    let events = latency_interval(&mut d, &a, t0 + Duration::from_secs(1), two);
    assert_eq!(ejected(&events), vec![a[1]]);
    // Fewer than three endpoints with enough attempts: no median to judge by.
    let (mut d, a) = detector(2, latency_settings(50));
    for k in 0..3 {
        let events = latency_interval(&mut d, &a, t0 + Duration::from_secs(k), |i| {
            Duration::from_millis(if i == 0 { 100 } else { 5000 })
        });
        assert!(events.is_empty());
    }
}
