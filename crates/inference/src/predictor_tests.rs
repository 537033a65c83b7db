use super::*;

fn snapshot(waiting: f64, running: f64, kv: f64, in_flight_tokens: f64) -> SignalSnapshot {
    SignalSnapshot {
        waiting,
        running,
        kv_usage: Some(kv),
        in_flight_tokens,
        num_gpu_blocks: 1000,
        fresh: true,
    }
}

/// A synthetic engine: TTFT is a fixed cost, prefill of the uncached prompt, and a wait per
/// queued request; TPOT grows with the batch. Endpoint 3 runs at half speed.
fn truth(endpoint: usize, prompt: f64, share: f64, s: &SignalSnapshot) -> (f64, f64) {
    let slow = if endpoint == 3 { 2.0 } else { 1.0 };
    let ttft = 20.0 + 0.08 * prompt * (1.0 - share) + 35.0 * s.waiting + 0.4 * s.running;
    let tpot = 8.0 + 0.15 * s.running + 4.0 * s.kv_usage.unwrap_or(0.0);
    (slow * ttft, slow * tpot)
}

fn random_case(rng: &mut fastrand::Rng) -> (usize, f64, f64, SignalSnapshot) {
    let e = rng.usize(0..4);
    let waiting = f64::from(rng.u32(0..12));
    let running = f64::from(rng.u32(0..64));
    let s = snapshot(waiting, running, rng.f64() * 0.9, running * 300.0);
    (e, f64::from(rng.u32(100..3000)), rng.f64() * 0.8, s)
}

fn trained(streams: bool, n: usize) -> LatencyPredictor {
    let p = LatencyPredictor::new(PredictorConfig::default(), 4, PredictorMetrics::default());
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..n {
        let (e, prompt, share, s) = random_case(&mut rng);
        let x = Features::new(prompt, share, &s, (0.0, 0.0), (0.0, 0.0));
        let (ttft, tpot) = truth(e, prompt, share, &s);
        let ticket = Ticket {
            endpoint: e,
            features: x,
            predicted: p.model().map(|m| m.predict(e, &x)),
            ends_at: 0,
        };
        let output = rng.u32(16..256);
        let measured = if streams {
            Measured::Stream {
                ttft_ms: ttft,
                tpot_ms: Some(tpot),
            }
        } else {
            Measured::Total {
                latency_ms: ttft + f64::from(output) * tpot,
                output_tokens: output,
            }
        };
        p.observe(&ticket, measured);
    }
    p
}

/// Mean absolute percentage error of TTFT and TPOT on fresh cases.
fn mape(p: &LatencyPredictor) -> (f64, f64) {
    let m = p.model().expect("warm");
    let mut rng = fastrand::Rng::with_seed(99);
    let (mut et, mut ep) = (0.0, 0.0);
    for _ in 0..500 {
        let (e, prompt, share, s) = random_case(&mut rng);
        let (ttft, tpot) = truth(e, prompt, share, &s);
        let got = m.predict(e, &Features::new(prompt, share, &s, (0.0, 0.0), (0.0, 0.0)));
        et += (got.ttft_ms - ttft).abs() / ttft;
        ep += (got.tpot_ms - tpot).abs() / tpot;
    }
    (et / 500.0, ep / 500.0)
}

#[test]
fn cold_until_min_samples() {
    let p = trained(true, 40);
    assert!(p.model().is_none());
    let p = trained(true, 80);
    assert!(p.model().is_some());
}

#[test]
fn learns_streams_with_a_half_speed_endpoint() {
    let p = trained(true, 2000);
    let (ttft, tpot) = mape(&p);
    assert!(ttft < 0.05, "TTFT MAPE {ttft}");
    assert!(tpot < 0.05, "TPOT MAPE {tpot}");
    let m = p.model().unwrap();
    let ratio = m.scale(3) / m.scale(0);
    assert!(
        (ratio - 2.0).abs() < 0.1,
        "slow endpoint's scale ratio {ratio}"
    );
    // The online error the metric reports is small once warm.
    assert!(p.ttft_mape().unwrap() < 0.05, "{:?}", p.ttft_mape());
}

#[test]
fn learns_ttft_and_tpot_from_total_latency_alone() {
    // Non-streamed responses show no first token; the joint fit still separates the two.
    let p = trained(false, 3000);
    let (ttft, tpot) = mape(&p);
    assert!(ttft < 0.15, "TTFT MAPE {ttft}");
    assert!(tpot < 0.05, "TPOT MAPE {tpot}");
}

/// Endpoint 0 streamed a response with `ttft` and `tpot`, picked with features `x` and
/// `predicted`.
fn observe_stream(
    p: &LatencyPredictor,
    x: Features,
    predicted: Option<Prediction>,
    (ttft, tpot): (f64, f64),
) {
    let t = Ticket {
        endpoint: 0,
        features: x,
        predicted,
        ends_at: 0,
    };
    let measured = Measured::Stream {
        ttft_ms: ttft,
        tpot_ms: Some(tpot),
    };
    p.observe(&t, measured);
}

#[test]
fn buckets_keep_rare_load_levels() {
    let p = LatencyPredictor::new(PredictorConfig::default(), 1, PredictorMetrics::default());
    let observe = |waiting: f64| {
        let s = snapshot(waiting, 4.0, 0.2, 0.0);
        let x = Features::new(500.0, 0.0, &s, (0.0, 0.0), (0.0, 0.0));
        observe_stream(&p, x, None, truth(0, 500.0, 0.0, &s));
    };
    // A short burst at a queue of 40, then a long quiet spell.
    for _ in 0..100 {
        observe(40.0);
    }
    for i in 0..20_000 {
        observe(f64::from(i % 2));
    }
    // The window is bounded, and the burst's samples are still in it.
    assert!(p.samples() <= 8 * 128);
    let w = p.window.lock().unwrap();
    let burst = w
        .buckets
        .iter()
        .flat_map(|b| &b.items)
        .filter(|s| s.x.0[3] * 8.0 > 30.0)
        .count();
    assert!(burst >= 100, "{burst} burst samples left");
    drop(w);
    let m = p.model().unwrap();
    let s = snapshot(40.0, 4.0, 0.2, 0.0);
    let (want, _) = truth(0, 500.0, 0.0, &s);
    let got = m
        .predict(0, &Features::new(500.0, 0.0, &s, (0.0, 0.0), (0.0, 0.0)))
        .ttft_ms;
    assert!((got - want).abs() / want < 0.05, "{got} vs {want}");
}

#[test]
fn margin_covers_noise_at_the_quantile() {
    let cfg = PredictorConfig {
        quantile: 0.99,
        ..PredictorConfig::default()
    };
    let p = LatencyPredictor::new(cfg, 1, PredictorMetrics::default());
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..3000 {
        let s = snapshot(f64::from(rng.u32(0..8)), 8.0, 0.3, 0.0);
        let x = Features::new(800.0, 0.0, &s, (0.0, 0.0), (0.0, 0.0));
        let (ttft, tpot) = truth(0, 800.0, 0.0, &s);
        // ±20% uniform noise.
        let noise = 0.8 + 0.4 * rng.f64();
        let predicted = p.model().map(|m| m.predict(0, &x));
        observe_stream(&p, x, predicted, (ttft * noise, tpot));
    }
    let (margin, _) = p.model().unwrap().margins();
    assert!(margin > 1.1 && margin < 1.4, "p99 margin {margin}");
}

#[test]
fn margin_is_the_current_models_not_the_picks() {
    // Every pick's prediction was near zero, as the first fits' were for loads they had not
    // seen: the margin is what the model fitted now makes of the same samples, not those picks'
    // ratios (thousands), which once refused nearly every sheddable request.
    let p = LatencyPredictor::new(PredictorConfig::default(), 1, PredictorMetrics::default());
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..600 {
        let s = snapshot(f64::from(rng.u32(0..8)), 8.0, 0.3, 0.0);
        let x = Features::new(800.0, 0.0, &s, (0.0, 0.0), (0.0, 0.0));
        let near_zero = Prediction {
            ttft_ms: MIN_TARGET_MS,
            tpot_ms: MIN_TARGET_MS,
        };
        observe_stream(&p, x, Some(near_zero), truth(0, 800.0, 0.0, &s));
    }
    let (ttft, tpot) = p.model().unwrap().margins();
    assert!((0.95..1.1).contains(&ttft), "TTFT margin {ttft}");
    assert!((0.95..1.1).contains(&tpot), "TPOT margin {tpot}");
    // The error is still the picks' own: that is what was predicted.
    assert!(p.ttft_mape().unwrap() > 0.9);
}

#[test]
fn slo_headers_parse_strictly() {
    assert_eq!(parse_slo_ms(b"250"), Some(250.0));
    assert_eq!(parse_slo_ms(b"600000"), Some(600_000.0));
    for bad in [
        &b""[..],
        b"0",
        b"600001",
        b"9999999",
        b"-5",
        b"1.5",
        b" 20",
        b"20ms",
        b"1e3",
    ] {
        assert_eq!(
            parse_slo_ms(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn insane_measurements_and_unknown_endpoints_are_ignored() {
    let p = LatencyPredictor::new(PredictorConfig::default(), 2, PredictorMetrics::default());
    let t = |endpoint| Ticket {
        endpoint,
        features: Features::default(),
        predicted: None,
        ends_at: 0,
    };
    p.observe(
        &t(5),
        Measured::Stream {
            ttft_ms: 10.0,
            tpot_ms: None,
        },
    );
    p.observe(
        &t(0),
        Measured::Stream {
            ttft_ms: f64::NAN,
            tpot_ms: None,
        },
    );
    p.observe(
        &t(0),
        Measured::Total {
            latency_ms: 10.0,
            output_tokens: 0,
        },
    );
    assert_eq!(p.samples(), 0);
}

#[test]
fn backlog_queues_sends_drains_with_time_and_resets_when_nothing_prefills() {
    let p = trained(true, 400);
    let t0 = Instant::now();
    // Cold endpoints and unknown ones have none.
    assert_eq!(p.backlog_ms(1, t0), 0.0);
    assert_eq!(p.backlog_ms(99, t0), 0.0);
    let idle = snapshot(0.0, 0.0, 0.1, 0.0);
    let x = Features::new(1000.0, 0.0, &idle, (0.0, 0.0), (0.0, 0.0));
    let one = p.model().unwrap().idle_ttft_ms(1, &x);
    // Truth: 20 + 80 ms for 1,000 uncached tokens on an idle endpoint.
    assert!((one - 100.0).abs() < 10.0, "{one}");
    p.on_sent(1, &x, t0);
    p.on_sent(1, &x, t0);
    let b = p.backlog_ms(1, t0);
    assert!((b - 2.0 * one).abs() < 1e-3, "{b} vs 2 x {one}");
    // Time drains it; a send after it drained starts from then, not from the old deadline.
    let later = t0 + std::time::Duration::from_secs_f64(b / 1000.0 + 1.0);
    assert_eq!(p.backlog_ms(1, later), 0.0);
    p.on_sent(1, &x, later);
    assert!((p.backlog_ms(1, later) - one).abs() < 1e-3);
    // The slow endpoint's work counts double; a drained endpoint has none.
    p.on_sent(3, &x, t0);
    assert!(p.backlog_ms(3, t0) > 1.5 * one, "{}", p.backlog_ms(3, t0));
    p.on_drained(3);
    assert_eq!(p.backlog_ms(3, t0), 0.0);
}

#[test]
fn a_full_batch_waits_for_the_earliest_predicted_end() {
    let p = trained(true, 400);
    let t0 = Instant::now();
    let idle = snapshot(0.0, 0.0, 0.1, 0.0);
    let x = |slot_wait| Features::new(1000.0, 0.0, &idle, (0.0, 0.0), (0.0, slot_wait));
    // Cold: not tracked.
    let cold = LatencyPredictor::new(PredictorConfig::default(), 1, PredictorMetrics::default());
    assert_eq!(cold.track_end(0, &x(0.0), 10, t0), 0);
    let m = p.model().unwrap();
    let service = |out| m.idle_ttft_ms(0, &x(0.0)) + f64::from(out) * m.predict(0, &x(0.0)).tpot_ms;
    // Truth: 100 ms to the first token, then 10 × 8.4 ms.
    assert!((service(10) - 184.0).abs() < 20.0, "{}", service(10));
    let a = p.track_end(0, &x(0.0), 10, t0);
    let b = p.track_end(0, &x(0.0), 100, t0);
    assert!(a > 0 && b > a);
    let wait = |limit| p.slot_wait_ms(0, limit, t0);
    // A batch of 3 has room; an unknown limit is no wait.
    assert_eq!((wait(Some(3)), wait(None)), (0.0, 0.0));
    // A batch of 2 frees a slot when the first ends; of 1, when the second does.
    assert!(
        (wait(Some(2)) - service(10)).abs() < 1e-3,
        "{}",
        wait(Some(2))
    );
    assert!(
        (wait(Some(1)) - service(100)).abs() < 1e-3,
        "{}",
        wait(Some(1))
    );
    p.on_ended(0, a);
    assert_eq!(wait(Some(2)), 0.0);
    p.on_ended(0, b);
    // One that found the batch full ends its own service after that wait, whatever weight
    // the model gives the wait.
    p.track_end(0, &x(300.0), 10, t0);
    assert!(
        (wait(Some(1)) - 300.0 - service(10)).abs() < 1e-3,
        "{}",
        wait(Some(1))
    );
    // Another endpoint's requests are not this one's; unknown endpoints are not tracked.
    assert_eq!(p.slot_wait_ms(1, Some(1), t0), 0.0);
    assert_eq!(p.track_end(99, &x(0.0), 10, t0), 0);
}

#[test]
fn more_load_never_predicts_faster() {
    // Trained where the gateway's count of requests awaiting a first byte runs a little apart
    // from the scraped queue, and where it ran ahead the response happened to come sooner (in
    // a real fleet: a scrape that lagged the requests it had already counted). Unconstrained,
    // the count's weight fits negative; asked about an endpoint the gateway has just piled 20
    // requests onto, which the last scrape did not show yet, such a model predicts it faster
    // than before, and an SLO pick would send it more.
    let p = LatencyPredictor::new(PredictorConfig::default(), 2, PredictorMetrics::default());
    // A 1,000-token request to an endpoint with `waiting` queued (scraped) and `prefilling`
    // sent by this gateway and awaiting their first byte.
    let features = |waiting: f64, prefilling: f64| {
        let s = snapshot(waiting, 8.0, 0.3, 0.0);
        Features::new(
            1000.0,
            0.0,
            &s,
            (prefilling, prefilling * 1000.0),
            (0.0, 0.0),
        )
    };
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2_000 {
        let waiting = f64::from(rng.u32(0..12));
        let ahead = rng.f64() * 2.0 - 1.0;
        let x = features(waiting, (waiting + ahead).max(0.0));
        let ttft = 50.0 + 20.0 * waiting - 3.0 * ahead;
        observe_stream(&p, x, None, (ttft, 10.0));
    }
    let m = p.model().expect("warm");
    for waiting in [0.0, 3.0, 7.0] {
        let at = |prefilling: f64| m.predict(0, &features(waiting, prefilling)).ttft_ms;
        let (seen, piled) = (at(waiting), at(waiting + 20.0));
        assert!(
            piled >= seen - 1e-6,
            "queue {waiting}: {seen:.1} ms, {piled:.1} ms with 20 more sent"
        );
        // And the fit still knows the queue.
        let want = 50.0 + 20.0 * waiting;
        assert!(
            (seen - want).abs() / want < 0.1,
            "queue {waiting}: {seen:.1} ms, want {want}"
        );
    }
}
