//! What a route's filters cost a request: the three header changes of
//! `bench/proxies/instructions.sh` with `HEADER_OPS=1` (set and remove on the request, add on
//! the response), on a browser-sized request head, against the same head untouched. The head
//! is rebuilt for every iteration in both cases (`iter_batched`), so the difference is the
//! filters' own cost.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use switchyard_proxy::filters::{RouteFilters, Vars};
use switchyard_proxy::route_metrics::RouteMetrics;

fn route(filters: &str) -> RouteFilters {
    let yaml = format!(
        "pools: [{{name: p}}]\nroutes:\n  - name: r\n    pool: p\n    match: {{path_prefix: /}}\n    filters: {filters}\n"
    );
    let c = switchyard_config::parse(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let m = switchyard_telemetry::Metrics::new();
    *RouteFilters::compile(&c.routes[0], || {
        Arc::new(RouteMetrics::new(
            &m,
            &switchyard_proxy::observe::LiveRegistry::default(),
            "r",
            "",
        ))
    })
    .unwrap()
    .unwrap()
}

fn request() -> http::request::Parts {
    let mut b = http::Request::get("/v1/chat/completions?x=1");
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-0123456789"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0f3c2a9e-1b7d-4c55-9a0e-2f1d5e6b7c8d"),
        ("x-internal", "drop me"),
    ] {
        b = b.header(k, v);
    }
    b.body(()).unwrap().into_parts().0
}

fn response() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "14"),
        ("date", "Thu, 03 Dec 2026 12:00:00 GMT"),
        ("server", "uvicorn"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let three = route(
        "[{request_headers: {set: {x-env: prod}, remove: [x-internal]}}, {response_headers: {add: {x-served-by: sy}}}]",
    );
    let templated = route(
        "[{request_headers: {set: {x-env: prod}, add: {x-who: '${client_ip} ${route} %REQ(x-request-id)%'}, remove: [x-internal]}}, {response_headers: {add: {x-served-by: sy}}}]",
    );
    let (id, ip) = (
        HeaderValue::from_static("0f3c2a9e-1b7d-4c55-9a0e-2f1d5e6b7c8d"),
        HeaderValue::from_static("10.0.0.1"),
    );
    let vars = Vars {
        request_id: &id,
        client_ip: &ip,
        route: "r",
    };
    let mut g = c.benchmark_group("filters");
    g.bench_function("none", |b| {
        b.iter_batched(
            || (request(), response()),
            |(req, resp)| black_box((req, resp)),
            BatchSize::SmallInput,
        );
    });
    for (name, f) in [("three_ops", &three), ("templated", &templated)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || (request(), response()),
                |(mut req, mut resp)| {
                    f.apply_request(&mut req, &vars);
                    f.apply_response(&mut resp, &vars, None);
                    black_box((req, resp))
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
