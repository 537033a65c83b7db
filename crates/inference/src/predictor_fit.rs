//! The fitting half of [`crate::predictor`]: weighted ridge regression over the joint TTFT/TPOT
//! parameters, per-endpoint scales, and quantiles of the measured/predicted ratios.

use crate::predictor::{
    Features, Measured, Prediction, Sample, Window, BUCKETS, FEATURES, MIN_SCALE_SAMPLES,
    MIN_TARGET_MS, PARAMS,
};

/// Weights per load bucket, shrunk toward the pool-wide fit.
pub(crate) type Thetas = [[f64; PARAMS]; BUCKETS];

/// Samples a load bucket needs for weights of its own.
const MIN_BUCKET_FIT: usize = 32;

/// The pool-wide weights, then each load bucket's: a bucket's fit is pulled toward the pool's
/// (a ridge prior centred there, stronger the fewer samples it has), so the model is piecewise
/// linear in load (queueing is not linear) without a sparse bucket fitting noise.
pub(crate) fn fit_buckets(w: &Window) -> Option<Thetas> {
    let total: usize = w.buckets.iter().map(|b| b.items.len()).sum();
    let (global, curvature) = fit(w.buckets.iter().flat_map(|b| &b.items), &w.scale, None)?;
    let mut thetas = [global; BUCKETS];
    for (t, b) in thetas.iter_mut().zip(&w.buckets) {
        let n = b.items.len();
        if n >= MIN_BUCKET_FIT {
            // The pool's curvature at this bucket's size, so that a feature the bucket never
            // saw keeps the pool's weight rather than none.
            let mut prior = curvature;
            for c in &mut prior {
                *c *= 8.0 / total.max(1) as f64;
            }
            if let Some((own, _)) = fit(b.items.iter(), &w.scale, Some((&global, &prior))) {
                *t = own;
            }
        }
    }
    Some(thetas)
}

/// The regression rows of one sample: (features over the joint parameters, target in ms).
fn rows(s: &Sample, mut f: impl FnMut(&[f64; PARAMS], f64)) {
    let mut phi = [0.0; PARAMS];
    match s.measured {
        Measured::Stream { ttft_ms, tpot_ms } => {
            phi[..FEATURES].copy_from_slice(&s.x.0);
            f(&phi, ttft_ms);
            if let Some(t) = tpot_ms {
                phi = [0.0; PARAMS];
                phi[FEATURES..].copy_from_slice(&s.x.0);
                f(&phi, t);
            }
        }
        Measured::Total {
            latency_ms,
            output_tokens,
        } => {
            let n = f64::from(output_tokens);
            for k in 0..FEATURES {
                phi[k] = s.x.0[k];
                phi[FEATURES + k] = n * s.x.0[k];
            }
            f(&phi, latency_ms);
        }
    }
}

/// Weighted ridge regression (weights 1/y², targets divided by their endpoint's scale),
/// toward `prior` weights with per-parameter strengths when given. Returns the weights and the
/// data's curvature (the normal matrix's diagonal).
#[allow(clippy::needless_range_loop)]
fn fit<'a>(
    samples: impl Iterator<Item = &'a Sample>,
    scale: &[f64],
    prior: Option<(&[f64; PARAMS], &[f64; PARAMS])>,
) -> Option<([f64; PARAMS], [f64; PARAMS])> {
    let mut a = [[0.0f64; PARAMS]; PARAMS];
    let mut b = [0.0f64; PARAMS];
    for s in samples {
        let k = scale.get(usize::from(s.endpoint)).copied().unwrap_or(1.0);
        rows(s, |phi, y| {
            let y = (y / k).max(MIN_TARGET_MS);
            let wt = 1.0 / (y * y);
            for i in 0..PARAMS {
                if phi[i] == 0.0 {
                    continue;
                }
                let wi = wt * phi[i];
                b[i] += wi * y;
                for j in 0..PARAMS {
                    a[i][j] += wi * phi[j];
                }
            }
        });
    }
    // Ridge relative to each parameter's own curvature: the TTFT and TPOT blocks see targets
    // an order of magnitude apart, and one λ for both would flatten the smaller one.
    let trace: f64 = (0..PARAMS).map(|i| a[i][i]).sum();
    let mut curvature = [0.0; PARAMS];
    for (i, row) in a.iter_mut().enumerate() {
        curvature[i] = row[i];
        if let Some((p, strength)) = prior {
            row[i] += strength[i];
            b[i] += strength[i] * p[i];
        }
        row[i] += 1e-6 * row[i] + 1e-12 * trace + 1e-15;
    }
    solve_monotone(a, b).map(|t| (t, curvature))
}

/// Whether parameter `i` must not be negative: every weight but each block's constant. Each
/// feature is a load or a size (queue, batch, KV use, tokens, predicted backlog), so a
/// negative weight predicts a *lower* latency for more load. Unconstrained, correlated
/// features (the scraped queue, the gateway's requests awaiting a first byte, its predicted
/// backlog) fit with opposite signs that cancel in the load seen so far; where they part,
/// as when the gateway piles requests onto one endpoint between two scrapes, the model can
/// rank the busiest endpoint fastest, and an SLO pick then sends it more.
fn non_negative(i: usize) -> bool {
    !i.is_multiple_of(FEATURES)
}

/// [`solve`] with the weights [`non_negative`] names kept at or above zero: the unconstrained
/// solution when it already is; else projected coordinate descent on the same quadratic
/// (`½ xᵀa x − bᵀx`), from that solution clamped. `a` is positive definite (the ridge
/// makes it so), so each coordinate step is exact and the sweeps converge to the constrained
/// minimum; a bounded number of sweeps makes a refit's cost bounded too.
#[allow(clippy::needless_range_loop)]
pub(crate) fn solve_monotone(
    a: [[f64; PARAMS]; PARAMS],
    b: [f64; PARAMS],
) -> Option<[f64; PARAMS]> {
    let mut x = solve(a, b)?;
    if (0..PARAMS).all(|i| !non_negative(i) || x[i] >= 0.0) {
        return Some(x);
    }
    for i in 0..PARAMS {
        if non_negative(i) {
            x[i] = x[i].max(0.0);
        }
    }
    for _ in 0..MONOTONE_SWEEPS {
        let mut moved = 0.0f64;
        for i in 0..PARAMS {
            let r: f64 = b[i] - (0..PARAMS).map(|j| a[i][j] * x[j]).sum::<f64>();
            let mut v = x[i] + r / a[i][i];
            if non_negative(i) {
                v = v.max(0.0);
            }
            moved = moved.max((v - x[i]).abs() / x[i].abs().max(1e-3));
            x[i] = v;
        }
        if moved < 1e-9 {
            break;
        }
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Coordinate sweeps a constrained fit may take (each ~PARAMS² multiply-adds).
const MONOTONE_SWEEPS: usize = 200;

/// Per-endpoint scales by least squares on relative error, normalised to a geometric mean of
/// one over the endpoints that have enough samples.
pub(crate) fn fit_scales(w: &mut Window, thetas: &Thetas) {
    let n = w.scale.len();
    let mut num = vec![0.0; n];
    let mut den = vec![0.0; n];
    let mut count = vec![0usize; n];
    for s in w.buckets.iter().flat_map(|b| &b.items) {
        let e = usize::from(s.endpoint);
        if e >= n {
            continue;
        }
        let theta = &thetas[s.x.bucket()];
        rows(s, |phi, y| {
            let p: f64 = phi.iter().zip(theta).map(|(x, t)| x * t).sum();
            let y = y.max(MIN_TARGET_MS);
            if p > 0.0 {
                num[e] += p / y;
                den[e] += (p / y) * (p / y);
            }
        });
        count[e] += 1;
    }
    let mut log_sum = 0.0;
    let mut fitted = 0;
    for e in 0..n {
        if count[e] >= MIN_SCALE_SAMPLES && num[e] > 0.0 {
            // Minimises Σ (s·p/y − 1)²: s = Σ(p/y) / Σ(p/y)².
            w.scale[e] = (num[e] / den[e]).clamp(0.1, 10.0);
            log_sum += w.scale[e].ln();
            fitted += 1;
        }
    }
    if fitted > 0 {
        let g = (log_sum / fitted as f64).exp();
        for s in &mut w.scale {
            *s = (*s / g).clamp(0.1, 10.0);
        }
    }
}

/// Solve `a x = b` for a symmetric positive definite `a` (Cholesky).
#[allow(clippy::needless_range_loop)] // index arithmetic reads as the textbook's
fn solve(mut a: [[f64; PARAMS]; PARAMS], mut b: [f64; PARAMS]) -> Option<[f64; PARAMS]> {
    for j in 0..PARAMS {
        let mut d = a[j][j];
        for k in 0..j {
            d -= a[j][k] * a[j][k];
        }
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..PARAMS {
            let mut v = a[i][j];
            for k in 0..j {
                v -= a[i][k] * a[j][k];
            }
            a[i][j] = v / d;
        }
    }
    for i in 0..PARAMS {
        for k in 0..i {
            b[i] -= a[i][k] * b[k];
        }
        b[i] /= a[i][i];
    }
    for i in (0..PARAMS).rev() {
        for k in i + 1..PARAMS {
            b[i] -= a[k][i] * b[k];
        }
        b[i] /= a[i][i];
    }
    b.iter().all(|v| v.is_finite()).then_some(b)
}

/// The `q` quantile of `values` (nearest rank), when there are 16 or more.
/// The margins (TTFT, TPOT): quantile `q` of measured over predicted latency over the window's
/// samples, as `predict` (the model just fitted) predicts them; 1 while fewer than 16.
pub(crate) fn margins(
    w: &Window,
    predict: impl Fn(usize, &Features) -> Prediction,
    q: f64,
) -> (f64, f64) {
    let (mut ttft, mut tpot) = (Vec::new(), Vec::new());
    for s in w.buckets.iter().flat_map(|b| &b.items) {
        let p = predict(usize::from(s.endpoint), &s.x);
        match s.measured {
            Measured::Stream { ttft_ms, tpot_ms } => {
                ttft.push(ttft_ms / p.ttft_ms);
                if let Some(t) = tpot_ms {
                    tpot.push(t / p.tpot_ms);
                }
            }
            Measured::Total {
                latency_ms,
                output_tokens,
            } => {
                // One ratio for both: the split between the two is not observed.
                let r = latency_ms / (p.ttft_ms + f64::from(output_tokens) * p.tpot_ms);
                ttft.push(r);
                tpot.push(r);
            }
        }
    }
    (
        quantile(&ttft, q).unwrap_or(1.0),
        quantile(&tpot, q).unwrap_or(1.0),
    )
}

fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.len() < 16 {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity, with parameters `i` and `j` correlated by `c`.
    fn correlated(i: usize, j: usize, c: f64) -> [[f64; PARAMS]; PARAMS] {
        let mut a = [[0.0; PARAMS]; PARAMS];
        for (k, row) in a.iter_mut().enumerate() {
            row[k] = 1.0;
        }
        a[i][j] = c;
        a[j][i] = c;
        a
    }

    #[test]
    fn a_load_weight_stays_at_or_above_zero_and_the_rest_refit() {
        // Queue (3) and requests awaiting a first byte (9), correlated 0.9: unconstrained,
        // x3 = 2.89 and x9 = -2.11. Constrained, x9 = 0 and x3 takes what it explains alone.
        let a = correlated(3, 9, 0.9);
        let mut b = [0.0; PARAMS];
        b[3] = 1.0;
        b[9] = 0.5;
        // A constant may be negative.
        b[0] = -1.0;
        let free = solve(a, b).unwrap();
        assert!(free[9] < -2.0 && free[3] > 2.8, "{free:?}");
        let x = solve_monotone(a, b).unwrap();
        assert!((x[3] - 1.0).abs() < 1e-6, "{x:?}");
        assert_eq!(x[9], 0.0);
        assert!((x[0] + 1.0).abs() < 1e-9);
        // The same in the TPOT block.
        let (i, j) = (FEATURES + 3, FEATURES + 9);
        let mut b2 = [0.0; PARAMS];
        b2[i] = 1.0;
        b2[j] = 0.5;
        let y = solve_monotone(correlated(i, j, 0.9), b2).unwrap();
        assert!((y[i] - 1.0).abs() < 1e-6 && y[j] == 0.0, "{y:?}");
    }

    #[test]
    fn a_solution_already_non_negative_is_the_unconstrained_one() {
        let a = correlated(3, 9, 0.5);
        let mut b = [0.0; PARAMS];
        b[3] = 1.0;
        b[9] = 1.0;
        assert_eq!(solve_monotone(a, b), solve(a, b));
    }
}
