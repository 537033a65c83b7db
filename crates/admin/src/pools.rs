//! `GET /pools`: each pool's endpoints as the pickers see them.

use switchyard_balance::head_latency::{HeadClass, LatencyHistogram};
use switchyard_proxy::GatewayHandle;

/// `GET /pools`: pools, endpoints and their live state.
pub(crate) fn pools(handle: &GatewayHandle) -> serde_json::Value {
    let g = handle.load();
    let pools: Vec<_> = g
        .pools
        .iter()
        .map(|p| {
            let now = std::time::Instant::now();
            let endpoints: Vec<_> = p
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    // What the `inference` picker scores: scraped signals corrected by the
                    // gateway's own picks, and whether they are fresh.
                    let inference = p.inference.as_ref().and_then(|picker| {
                        let v = picker.endpoint_view(i, now)?;
                        let scrape_error = v.last_scrape_error.map(|(e, age)| {
                            serde_json::json!({
                                "cause": e.cause(),
                                "status": e.status(),
                                "ms_ago": age.as_secs_f64() * 1000.0,
                            })
                        });
                        Some(serde_json::json!({
                            "fresh": v.signals.fresh,
                            "scrape_fresh": v.scrape_fresh,
                            "last_scrape_ms_ago": v.last_scrape_age.map(|d| d.as_secs_f64() * 1000.0),
                            "last_scrape_error": scrape_error,
                            "waiting": v.signals.waiting,
                            "running": v.signals.running,
                            "kv_usage": v.signals.kv_usage,
                            "in_flight_tokens": v.signals.in_flight_tokens,
                            "num_gpu_blocks": v.signals.num_gpu_blocks,
                            "lora_running": v.lora_running,
                            "lora_waiting": v.lora_waiting,
                            // The KV-event index's view of this endpoint (`kv_events`).
                            "kv_events": picker.kv_index().and_then(|k| k.status(i, now)).map(|k| {
                                serde_json::json!({
                                    "fresh": k.fresh,
                                    "blocks": k.blocks,
                                    "batches": k.batches,
                                    "resets": k.resets,
                                    "lost": k.lost,
                                    "skipped": k.skipped,
                                })
                            }),
                        }))
                    });
                    serde_json::json!({
                        "inference": inference,
                        "address": e.address().to_string(),
                        "weight": e.weight,
                        "zone": e.zone,
                        "region": e.region,
                        "healthy": e.state.is_healthy(),
                        "ejected": e.state.is_ejected(),
                        "load_report": e.state.last_load_report().map(|(u, q, eps)| {
                            serde_json::json!({"utilization": u, "qps": q, "eps": eps})
                        }),
                        "available": e.is_available(),
                        "latency_ewma_ms": e.state.latency_at(std::time::Instant::now()).map(|d| d.as_secs_f64() * 1000.0),
                        "in_flight": e.state.in_flight(),
                        "requests": e.state.requests(),
                        "failures": e.state.failures(),
                    })
                })
                .collect();
            // An `inference` pool with no fresh signals anywhere scores every endpoint on the
            // gateway's own in-flight counts: say so rather than claim to be scoring.
            let mode = match &p.inference {
                Some(picker) if picker.fresh_endpoints(now) == 0 => format!(
                    "degraded: {} (no endpoint has fresh metrics)",
                    p.picker.name()
                ),
                Some(_) => "inference".to_string(),
                None => p.picker.name().to_string(),
            };
            serde_json::json!({
                "name": p.name(),
                "protocol": p.spec.protocol,
                "balancer": p.spec.balancer.kind(),
                "mode": mode,
                "head_latency": head_latency(&p.health.head_latency()),
                "endpoints": endpoints,
            })
        })
        .collect();
    serde_json::json!({ "pools": pools })
}

/// The pool's recent time to response head, per class (what `per_try_timeout: auto` reads):
/// p50 and p99 in milliseconds, `null` until enough attempts were seen.
fn head_latency(h: &LatencyHistogram) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for class in HeadClass::ALL {
        let ms = |q| h.quantile(class, q).map(|s| s * 1000.0);
        out.insert(
            class.as_str().into(),
            serde_json::json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99)}),
        );
    }
    out.into()
}
