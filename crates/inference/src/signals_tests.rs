//! Unit tests of `signals.rs`.
use super::*;

#[test]
fn picks_between_scrapes_count_until_the_next_scrape() {
    let s = EndpointSignals::new();
    let t0 = Instant::now();
    let stale = Duration::from_secs(1);
    assert!(!s.snapshot(t0, stale).fresh);
    s.apply_scrape(
        &ScrapedMetrics {
            waiting: Some(3.0),
            running: Some(10.0),
            kv_usage: Some(0.5),
            num_gpu_blocks: Some(1000),
            lora: None,
            models: None,
            prefix_cache: None,
        },
        t0,
    );
    s.on_pick(1600);
    s.on_pick(1600);
    let snap = s.snapshot(t0, stale);
    assert!(snap.fresh);
    assert_eq!(snap.waiting, 5.0);
    assert_eq!(snap.running, 10.0);
    assert!((snap.kv_usage.unwrap() - 0.7).abs() < 1e-9);
    assert_eq!(snap.in_flight_tokens, 3200.0);
    // The next scrape already includes those requests.
    s.apply_scrape(
        &ScrapedMetrics {
            waiting: Some(5.0),
            ..Default::default()
        },
        t0,
    );
    let snap = s.snapshot(t0, stale);
    assert_eq!(snap.waiting, 5.0);
    assert_eq!(snap.kv_usage, Some(0.5));
    s.on_finish(1600);
    s.on_finish(1600);
    s.on_finish(1600);
    assert_eq!(s.snapshot(t0, stale).in_flight_tokens, 0.0);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn stale_or_failed_scrapes_fall_back_to_gateway_counts() {
    let s = EndpointSignals::new();
    let t0 = Instant::now();
    let stale = Duration::from_millis(200);
    s.apply_scrape(
        &ScrapedMetrics {
            waiting: Some(50.0),
            kv_usage: Some(0.9),
            ..Default::default()
        },
        t0,
    );
    s.on_pick(10);
    let late = s.snapshot(t0 + Duration::from_secs(1), stale);
    assert!(!late.fresh);
    assert_eq!((late.waiting, late.kv_usage), (1.0, None));
    assert!(s.snapshot(t0, stale).fresh);
    s.mark_failed(ScrapeError::Connect);
    assert!(!s.snapshot(t0, stale).fresh);
    let lora = LoraState {
        running: vec!["a".into()],
        waiting: vec![],
        max_lora: 2,
    };
    s.apply_scrape(
        &ScrapedMetrics {
            lora: Some(lora.clone()),
            ..Default::default()
        },
        t0,
    );
    assert!(s.snapshot(t0, stale).fresh);
    assert_eq!(**s.lora(), lora);
}

fn scrape(waiting: f64, kv: f64) -> ScrapedMetrics {
    ScrapedMetrics {
        waiting: Some(waiting),
        running: Some(8.0),
        kv_usage: Some(kv),
        num_gpu_blocks: Some(1000),
        ..Default::default()
    }
}

fn orca(text: &str) -> OrcaSignals {
    OrcaSignals::from_orca(&switchyard_balance::parse_orca(text.as_bytes()).unwrap()).unwrap()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn the_newest_source_wins_with_the_picks_made_since_it() {
    let s = EndpointSignals::new();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let stale = ms(500);
    s.apply_scrape(&scrape(10.0, 0.5), t0);
    s.on_pick(1600);
    s.on_pick(1600);
    let snap = s.snapshot(t0, stale);
    assert_eq!(snap.waiting, 12.0);
    assert!(close(snap.kv_usage, 0.7));
    // A response reports the server's state after those picks: it replaces the scrape.
    s.apply_orca(
        &orca("TEXT named_metrics.kv_cache_utilization=0.2, named_metrics.num_requests_waiting=3, named_metrics.num_requests_running=9"),
        t0 + ms(10),
    );
    let snap = s.snapshot(t0 + ms(10), stale);
    assert_eq!((snap.waiting, snap.running), (3.0, 9.0));
    assert!(close(snap.kv_usage, 0.2));
    // Picks after the report count on top of it.
    s.on_pick(1600);
    let snap = s.snapshot(t0 + ms(11), stale);
    assert_eq!(snap.waiting, 4.0);
    assert!(close(snap.kv_usage, 0.3));
    // A newer scrape wins again, with no picks since it.
    s.apply_scrape(&scrape(6.0, 0.4), t0 + ms(20));
    let snap = s.snapshot(t0 + ms(20), stale);
    assert_eq!((snap.waiting, snap.running), (6.0, 8.0));
    assert!(close(snap.kv_usage, 0.4));
    // And an older report never overrides it: the report's time is when it arrived.
    assert_eq!(s.last_orca(), Some(t0 + ms(10)));
}

#[test]
fn reports_keep_an_endpoint_fresh_while_scrapes_fail_and_go_stale_alike() {
    let s = EndpointSignals::new();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let stale = ms(200);
    s.apply_scrape(&scrape(50.0, 0.9), t0);
    s.mark_failed(ScrapeError::Connect);
    s.on_pick(10);
    let snap = s.snapshot(t0, stale);
    assert!(!snap.fresh);
    assert_eq!((snap.waiting, snap.kv_usage), (1.0, None));
    // A report with KV only: KV is known again; the queue has no fresh source.
    s.apply_orca(&orca("TEXT application_utilization=0.25"), t0 + ms(50));
    let snap = s.snapshot(t0 + ms(50), stale);
    assert!(snap.fresh);
    assert!(close(snap.kv_usage, 0.25));
    assert_eq!(
        snap.waiting, 1.0,
        "queue from the gateway's in-flight count"
    );
    // The same staleness bound applies to reports.
    let late = s.snapshot(t0 + ms(251), stale);
    assert!(!late.fresh);
    assert_eq!(late.kv_usage, None);
}

#[test]
fn a_partial_report_replaces_only_what_it_carries() {
    let s = EndpointSignals::new();
    let t0 = Instant::now();
    let stale = Duration::from_secs(1);
    s.apply_scrape(&scrape(5.0, 0.5), t0);
    s.on_pick(0);
    s.apply_orca(&orca("TEXT named_metrics.kv_cache_usage=0.1"), t0);
    let snap = s.snapshot(t0, stale);
    assert_eq!(
        snap.waiting, 6.0,
        "queue still from the scrape, plus the pick since"
    );
    assert!(close(snap.kv_usage, 0.1));
}

#[test]
fn orca_reports_map_to_signals() {
    let r = orca("JSON {\"cpu_utilization\":0.9,\"named_metrics\":{\"kv_cache_utilization\":0.4,\"num_requests_waiting\":7}}");
    assert_eq!(
        r,
        OrcaSignals {
            waiting: Some(7.0),
            running: None,
            kv_usage: Some(0.4),
        }
    );
    // A named KV metric wins over application_utilization; values are clamped.
    let r = orca("TEXT application_utilization=0.7, named_metrics.gpu_cache_usage_perc=1.5");
    assert_eq!(r.kv_usage, Some(1.0));
    // CPU alone says nothing about a model server's queue or KV cache.
    let cpu =
        switchyard_balance::parse_orca(b"TEXT cpu_utilization=0.9, rps_fractional=3").unwrap();
    assert_eq!(OrcaSignals::from_orca(&cpu), None);
}

#[test]
fn a_batch_is_full_only_while_the_last_scrape_found_a_queue() {
    let s = EndpointSignals::new();
    let now = Instant::now();
    assert_eq!(s.full_batch(), None);
    let queue = |waiting, running| ScrapedMetrics {
        running: Some(running),
        ..scrape(waiting, 0.5)
    };
    s.apply_scrape(&queue(0.0, 12.0), now);
    assert_eq!(s.full_batch(), None, "room: nothing waits");
    s.apply_scrape(&queue(3.0, 16.0), now);
    assert_eq!(s.full_batch(), Some(16));
    // The gateway's own picks since are no engine queue.
    s.apply_scrape(&queue(0.0, 16.0), now);
    s.on_pick(100);
    assert_eq!(s.full_batch(), None);
    // A smaller batch later is the batch now (not the largest ever seen).
    s.apply_scrape(&queue(1.0, 4.0), now);
    assert_eq!(s.full_batch(), Some(4));
}
