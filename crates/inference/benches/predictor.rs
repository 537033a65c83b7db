//! Cost of one SLO-aware `inference` pick (issue 18: < 20 µs p99 at 16 endpoints): 16
//! endpoints with scraped signals, a warm latency predictor, a ~2k-token request with a TTFT
//! SLO that about half the endpoints are predicted to meet. Criterion reports the mean; the
//! p50/p99/p99.9 of single picks, timed one by one, are printed after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard_balance::{Endpoint, EndpointState};
use switchyard_inference::predictor::Features;
use switchyard_inference::signals::ScrapedMetrics;
use switchyard_inference::{
    prompt_block_hashes, EndpointSignals, InferencePicker, LatencyPredictor, Measured,
    PickerConfig, PredictorConfig, PrefixIndex, RequestContext, Slo, Ticket,
};

const ENDPOINTS: usize = 16;

fn setup() -> (Vec<Endpoint>, InferencePicker) {
    fastrand::seed(7);
    let now = Instant::now();
    let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{}:8000", i + 1).parse().unwrap();
            Endpoint {
                state: Arc::new(EndpointState::new(addr)),
                weight: 1,
                zone: None,
                region: None,
            }
        })
        .collect();
    let signals: Vec<_> = (0..ENDPOINTS)
        .map(|i| {
            let s = Arc::new(EndpointSignals::new());
            s.apply_scrape(
                &ScrapedMetrics {
                    waiting: Some((i % 8) as f64),
                    running: Some(fastrand::u32(0..64) as f64),
                    kv_usage: Some(fastrand::f64() * 0.85),
                    num_gpu_blocks: Some(26_900),
                    lora: None,
                    models: None,
                    prefix_cache: None,
                },
                now,
            );
            s
        })
        .collect();
    let predictor = Arc::new(LatencyPredictor::new(
        PredictorConfig::default(),
        ENDPOINTS,
        Default::default(),
    ));
    // Train it: TTFT 30 ms + 40 ms per queued request + prefill, endpoint 15 at half speed.
    let (mut observing, mut refits) = (std::time::Duration::ZERO, Vec::new());
    for n in 0..2000 {
        let e = n % ENDPOINTS;
        let snap = signals[e].snapshot(now, std::time::Duration::from_secs(1));
        let mut snap = snap;
        snap.waiting = f64::from(fastrand::u32(0..10));
        let prompt = f64::from(fastrand::u32(100..3000));
        let x = Features::new(
            prompt,
            0.0,
            &snap,
            (snap.waiting, snap.waiting * 1000.0),
            (0.0, 0.0),
        );
        let slow = if e == 15 { 2.0 } else { 1.0 };
        let ticket = Ticket {
            endpoint: e,
            features: x,
            predicted: predictor.model().map(|m| m.predict(e, &x)),
            ends_at: 0,
        };
        let ttft = slow * (30.0 + 40.0 * snap.waiting + 0.05 * prompt);
        let t = Instant::now();
        predictor.observe(
            &ticket,
            Measured::Stream {
                ttft_ms: ttft,
                tpot_ms: Some(slow * 12.0),
            },
        );
        let took = t.elapsed();
        observing += took;
        if n >= 64 && n % 16 == 15 {
            refits.push(took);
        }
    }
    refits.sort_unstable();
    println!(
        "observe (response path): mean {:.2} µs over 2,000 with refits; a refit: median {:.0} µs, max {:.0} µs",
        observing.as_secs_f64() * 1e6 / 2000.0,
        refits[refits.len() / 2].as_secs_f64() * 1e6,
        refits[refits.len() - 1].as_secs_f64() * 1e6,
    );
    assert!(predictor.model().is_some());
    let picker = InferencePicker::new(
        PickerConfig::default(),
        signals,
        Arc::new(PrefixIndex::new()),
    )
    .with_predictor(predictor);
    (endpoints, picker)
}

fn bench(c: &mut Criterion) {
    let (endpoints, picker) = setup();
    let prompt = "lorem ipsum dolor sit amet ".repeat(400);
    let hashes = prompt_block_hashes(&prompt, 16);
    let cx = RequestContext {
        block_hashes: &hashes,
        est_tokens: 2300,
        prompt_tokens: 2000,
        slo: Slo {
            ttft_ms: Some(250.0),
            tpot_ms: Some(20.0),
        },
        ..Default::default()
    };
    let d = picker.pick(&endpoints, &cx);
    assert!(d.slo.is_some(), "{d:?}");
    c.bench_function("inference_pick_slo_16ep_2k_tokens", |b| {
        b.iter(|| black_box(picker.pick(black_box(&endpoints), black_box(&cx))));
    });
    let no_slo = RequestContext {
        slo: Slo::default(),
        ..cx
    };
    c.bench_function("inference_pick_predicted_no_slo_16ep", |b| {
        b.iter(|| black_box(picker.pick(black_box(&endpoints), black_box(&no_slo))));
    });
    // Single picks timed one by one, for the tail.
    let mut times: Vec<u64> = (0..200_000)
        .map(|_| {
            let t = Instant::now();
            black_box(picker.pick(black_box(&endpoints), black_box(&cx)));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    times.sort_unstable();
    let at =
        |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)] as f64 / 1000.0;
    println!(
        "inference_pick_slo_16ep single picks: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs",
        at(0.5),
        at(0.99),
        at(0.999)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
