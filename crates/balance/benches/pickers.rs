//! Pick cost per request for every picker at 8, 128 and 1,024 endpoints. Rings and tables are
//! built on the first pick and cached, so these measure the steady state a request sees.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard_balance::{build, hash_key, parse_orca, Endpoint, EndpointState, PickContext};
use switchyard_config::Balancer;

fn endpoints(n: usize) -> Vec<Endpoint> {
    let now = Instant::now();
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(0x0a00_0000 + i as u32);
            let state = Arc::new(EndpointState::new(SocketAddr::from((ip, 8000))));
            state.record_latency_at(std::time::Duration::from_micros(500 + i as u64 % 7), now);
            Endpoint {
                state,
                weight: 1 + (i % 4) as u32,
                zone: None,
                region: None,
            }
        })
        .collect()
}

fn kinds() -> Vec<(&'static str, Balancer)> {
    [
        "round_robin",
        "random",
        "weighted_round_robin",
        "least_request",
        "peak_ewma",
        "ring_hash",
        "maglev",
        "weighted_least_utilization",
    ]
    .into_iter()
    .map(|k| {
        (
            k,
            switchyard_config::yaml::from_str(k).expect("balancer kind"),
        )
    })
    .collect()
}

fn pick(c: &mut Criterion) {
    for n in [8usize, 128, 1024] {
        let eps = endpoints(n);
        let mut group = c.benchmark_group(format!("pick/{n}"));
        for (name, spec) in kinds() {
            let picker = build(&spec);
            let mut k = 0u64;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let ctx = PickContext::with_hash_key(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    black_box(picker.pick_with(black_box(&eps), &ctx))
                });
            });
        }
        group.finish();
    }
}

/// The hashing pickers skip the load scan while a key's owner is idle; with every endpoint
/// busy they sum in-flight over the set on each pick, which is their worst case.
fn pick_loaded(c: &mut Criterion) {
    for n in [8usize, 128, 1024] {
        let eps = endpoints(n);
        let _busy: Vec<_> = eps
            .iter()
            .flat_map(|e| (0..2).map(|_| e.state.begin()))
            .collect();
        let mut group = c.benchmark_group(format!("pick_loaded/{n}"));
        for (name, spec) in kinds()
            .into_iter()
            .filter(|(k, _)| matches!(*k, "ring_hash" | "maglev"))
        {
            let picker = build(&spec);
            let mut k = 0u64;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let ctx = PickContext::with_hash_key(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    black_box(picker.pick_with(black_box(&eps), &ctx))
                });
            });
        }
        group.finish();
    }
}

fn helpers(c: &mut Criterion) {
    c.bench_function("hash_key/36B", |b| {
        b.iter(|| hash_key(black_box(b"0b6c5f7e-2d4a-4c1b-9f6e-1a2b3c4d5e6f")));
    });
    c.bench_function("parse_orca/text", |b| {
        b.iter(|| {
            parse_orca(black_box(
                b"TEXT cpu_utilization=0.3, rps_fractional=10, eps=0.1",
            ))
        });
    });
}

criterion_group!(benches, pick, pick_loaded, helpers);
criterion_main!(benches);
