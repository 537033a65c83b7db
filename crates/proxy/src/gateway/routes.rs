//! A new generation's routes: targets with their metrics, retry policies and hedgers carried
//! over when unchanged, and rollouts.

use std::sync::Arc;

use switchyard_telemetry::Metrics;

use switchyard_resilience::{HedgeDelay, HedgeParams, Hedger};

use super::{
    Gateway, HedgeMetrics, PoolEntry, RouteEntry, RouteMetrics, RouteRetry, RouteTarget, Shared,
};
use crate::route_match::RouteMatch;

/// One route of a new generation; an unchanged retry policy or hedger keeps its state.
pub(super) fn build_route(
    r: &switchyard_config::Route,
    old: Option<&Gateway>,
    pools: &[Arc<PoolEntry>],
    shared: &Shared<'_>,
    state_dir: Option<&std::path::Path>,
) -> Result<RouteEntry, String> {
    let (metrics, live) = (shared.metrics, shared.live);
    let rollout = build_rollout(r, old, metrics, state_dir)?;
    let mut targets = Vec::new();
    for (i, t) in r.targets().into_iter().enumerate() {
        let pool = pools
            .iter()
            .find(|p| p.name() == t.pool)
            .ok_or_else(|| format!("route `{}`: no pool named `{}`", r.name, t.pool))?
            .clone();
        targets.push(RouteTarget {
            pool,
            weight: t.weight,
            model: t.model.map(Arc::from),
            metrics: Arc::new(
                RouteMetrics::new(metrics, live, &r.name, t.pool)
                    .with_arm(rollout.as_ref().and_then(|ro| ro.arm(i)).cloned()),
            ),
        });
    }
    let filters = crate::filters::RouteFilters::compile(r, || {
        Arc::new(RouteMetrics::new(metrics, live, &r.name, ""))
    })
    .map_err(|e| format!("route `{}`: {e}", r.name))?;
    let answers = filters.as_ref().is_some_and(|f| f.answer.is_some());
    if targets.is_empty() && !answers {
        return Err(format!("route `{}`: no pool or backends", r.name));
    }
    let cumulative_weights = targets
        .iter()
        .scan(0u64, |sum, t| {
            *sum += u64::from(t.weight);
            Some(*sum)
        })
        .collect();
    let retry = r.retry.as_ref().map(|c| {
        let kept = old
            .and_then(|g| g.routes.iter().find(|o| o.name == r.name))
            .and_then(|o| o.retry.clone())
            .filter(|o| o.config == *c);
        kept.unwrap_or_else(|| RouteRetry::new(c))
    });
    let old_route = old.and_then(|g| g.routes.iter().find(|o| o.name == r.name));
    let hedger = r.hedge.as_ref().map(|c| {
        old_route
            .filter(|o| o.hedge_config.as_ref() == Some(c))
            .and_then(|o| o.hedger.clone())
            .unwrap_or_else(|| {
                let delay = match (c.delay, c.percentile) {
                    (Some(d), _) => HedgeDelay::Fixed(d),
                    (None, Some(p)) => HedgeDelay::Percentile(p),
                    (None, None) => HedgeDelay::Percentile(95.0),
                };
                let mut params = HedgeParams::new(delay);
                params.budget_percent = c.budget_percent;
                Hedger::new(params)
            })
    });
    Ok(RouteEntry {
        hedge_metrics: hedger.as_ref().map(|_| HedgeMetrics::new(metrics, &r.name)),
        priority: r.priority,
        slo: switchyard_inference::Slo {
            ttft_ms: r.slo.ttft.map(|d| d.as_secs_f64() * 1000.0),
            tpot_ms: r.slo.tpot.map(|d| d.as_secs_f64() * 1000.0),
        },
        retry,
        hedger,
        hedge_config: r.hedge.clone(),
        retries: metrics.retries.clone(),
        retries_refused: metrics.retries_refused.clone(),
        name: r.name.clone(),
        matcher: RouteMatch::compile(&r.matcher).map_err(|e| format!("route `{}`: {e}", r.name))?,
        targets: targets.into_boxed_slice(),
        cumulative_weights,
        timeout: r.timeout,
        idle_timeout: r.idle_timeout,
        max_request_body: r.max_request_body,
        body_read_timeout: r.body_read_timeout,
        split: crate::route_entry::Split::new(r)?,
        rollout,
        rate_limits: Box::new([]),
        filters,
        mirrors: r
            .mirror
            .iter()
            .map(|m| {
                let pool = pools
                    .iter()
                    .find(|p| p.name() == m.pool)
                    .ok_or_else(|| format!("route `{}`: no pool named `{}`", r.name, m.pool))?;
                Ok(Arc::new(crate::mirror::Mirror::new(
                    r,
                    m,
                    pool.clone(),
                    metrics,
                )))
            })
            .collect::<Result<_, String>>()?,
    })
}

/// A route's rollout: the running one when its block and backends are unchanged (a reload keeps
/// its step, failures and windows), else one from its saved state (`runtime.state_dir`, after a
/// restart), else a new one at its first step.
fn build_rollout(
    r: &switchyard_config::Route,
    old: Option<&Gateway>,
    metrics: &Metrics,
    state_dir: Option<&std::path::Path>,
) -> Result<Option<Arc<crate::rollout::Rollout>>, String> {
    let Some(config) = &r.rollout else {
        return Ok(None);
    };
    let pools: Vec<&str> = r.targets().iter().map(|t| t.pool).collect();
    let kept = old
        .and_then(|g| g.routes.iter().find(|o| o.name == r.name))
        .filter(|o| {
            let old_pools: Vec<&str> = o.targets.iter().map(|t| t.pool.name()).collect();
            old_pools == pools
        })
        .and_then(|o| o.rollout.clone())
        .filter(|ro| ro.config == *config);
    if let Some(ro) = kept {
        return Ok(Some(ro));
    }
    let ro = crate::rollout::Rollout::new(&r.name, config, &pools, metrics, state_dir)?;
    ro.spawn();
    Ok(Some(ro))
}
