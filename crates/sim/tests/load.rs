//! Capacity check for the simulator itself: 16 replicas × 64 concurrent streams on one
//! current-thread runtime (one core). Ignored by default because it needs a release build and a
//! quiet machine:
//!
//! ```text
//! cargo test --release -p switchyard-sim --test load -- --ignored
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchyard_sim::{start_fleet, FleetConfig, ReplicaConfig};

/// CPU seconds used by the calling thread (Linux).
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the command name.
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

#[test]
#[ignore = "capacity benchmark: run with --release on a quiet machine"]
fn sixteen_replicas_by_64_streams_fit_on_one_core() {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = FleetConfig {
                replicas: vec![ReplicaConfig {
                    count: 16,
                    ..Default::default()
                }],
                ..FleetConfig::uniform(MODEL, 1, "h100")
            };
            let fleet = start_fleet(cfg).await.unwrap();
            addr_tx.send(fleet.addresses()).unwrap();
            let cpu0 = thread_cpu_seconds();
            let _ = stop_rx.await;
            let cpu = thread_cpu_seconds() - cpu0;
            fleet.shutdown().await;
            cpu
        })
    });
    let addrs = addr_rx.recv().unwrap();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tokens, wall) = client.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for &addr in &addrs {
            for i in 0..64 {
                let body = chat(&words(300, &format!("c{i}x")), "go", 200, true);
                tasks.push(tokio::spawn(async move {
                    post(addr, "/v1/chat/completions", &body).await
                }));
            }
        }
        let mut tokens = 0;
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.body.ends_with("data: [DONE]\n\n"));
            tokens += r.body.matches("\"delta\":{\"content\":\"").count();
        }
        (tokens, start.elapsed())
    });
    stop_tx.send(()).unwrap();
    let cpu = server.join().unwrap();
    assert_eq!(tokens, 16 * 64 * 200);
    // Model time for this load is about 2.5 s (prefill of 64 × 310 tokens in 8k chunks, then
    // 200 decode steps of ~9 ms); the simulator must not stretch it much or use the whole core.
    assert!(wall < Duration::from_secs(5), "took {wall:?}");
    assert!(
        cpu / wall.as_secs_f64() < 0.9,
        "simulator used {cpu:.2} s CPU in {wall:?}"
    );
}
