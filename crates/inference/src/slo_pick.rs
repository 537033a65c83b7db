//! The SLO decision of the `inference` picker: among the candidates the filter let through,
//! which one serves a request that carries latency objectives (`x-slo-ttft-ms`,
//! `x-slo-tpot-ms`, or the pool's `predictor.slo`), by the predictions of
//! [`crate::predictor`].
//!
//! A candidate is *feasible* when its predicted TTFT and TPOT, each raised by the model's
//! margin (the configured quantile of measured/predicted), are within the SLO. By default
//! (`selection: lowest_latency`) the pick is the feasible candidate with the most headroom.
//! `least_headroom` takes the one with the *least*, as llm-d's SLO-aware scheduler does:
//! requests pack onto endpoints that can just take them, keeping the others for requests that
//! need room. At full load on simulated fleets packing met far fewer SLOs (prediction errors
//! near the boundary become misses, and packed endpoints queue; docs/benchmarks.md), so it is
//! not the default.
//!
//! When no candidate is feasible the decision says so ([`SloOutcome::Infeasible`]) and names the
//! candidate with the least predicted violation; the caller sheds a sheddable request (429) and
//! sends any other there, except a share `explore` of them, sent there as explored (so a model
//! that came to predict everything late still learns what really happens).
//!
//! When even the unmargined prediction (the model's typical case) misses everywhere, the request
//! is [`SloOutcome::Late`]. It goes to a *spare* endpoint when there is one: an endpoint too slow
//! to meet the TTFT objective even idle (slower hardware), with nothing waiting there. That
//! endpoint can serve no on-time request, so a request that misses anyway costs nothing there
//! that the objective counts, where on the least violating endpoint it delays requests still
//! able to make theirs. (At 100% load on a simulated fleet with one replica at half speed this
//! took attainment from 80% to 86–87%.) With `predictor.late_priority` a late request is also
//! sent with an engine priority that lets requests still on time run first.
//!
//! A share `explore` of feasible picks goes to a random feasible candidate instead, so the model
//! keeps seeing endpoints it would not choose.
//!
//! The decision allocates nothing: one pass over the candidates, a second only to find the
//! k-th feasible one when exploring or a spare endpoint for a late request.

pub use crate::predictor::Selection;
use crate::predictor::{Features, LatencyPredictor, Model, Prediction, Slo};

/// What the SLO decision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloOutcome {
    /// A candidate is predicted to meet the SLO.
    Met,
    /// A random feasible candidate, for exploration.
    Explored,
    /// None is, with the model's margin: the least violating candidate.
    Infeasible,
    /// None is even without the margin: the least violating candidate, where the request is
    /// late all the same.
    Late,
}

impl SloOutcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Explored => "explored",
            Self::Infeasible => "infeasible",
            Self::Late => "late",
        }
    }

    /// No candidate was predicted to meet the SLO ([`Self::Infeasible`] or [`Self::Late`]).
    pub fn is_infeasible(self) -> bool {
        matches!(self, Self::Infeasible | Self::Late)
    }
}

/// The chosen candidate, how, and its (unmargined) prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloChoice {
    pub index: usize,
    pub outcome: SloOutcome,
    pub predicted: Prediction,
}

/// The predictor's part of a pick: for a request with an SLO (`slo`, else the pool's default)
/// and a warm model, the SLO decision replaces `chosen`; either way, the chosen endpoint's
/// prediction.
pub(crate) fn decide(
    p: &LatencyPredictor,
    slo: Slo,
    candidates: &[usize],
    features: &dyn Fn(usize) -> Features,
    chosen: &mut usize,
) -> (Option<SloOutcome>, Option<Prediction>) {
    let cfg = p.config();
    let slo = slo.or(cfg.default_slo);
    p.with_model(|m| {
        let Some(m) = m else {
            return (None, None);
        };
        let explore = (cfg.explore, fastrand::f64(), fastrand::u32(..));
        match choose(m, slo, candidates, features, cfg.selection, explore) {
            Some(c) => {
                *chosen = c.index;
                (Some(c.outcome), Some(c.predicted))
            }
            None => (None, Some(m.predict(*chosen, &features(*chosen)))),
        }
    })
}

/// How far a margined prediction is from the SLO: the larger of predicted/objective over the
/// objectives set (≤ 1 is feasible).
#[inline]
fn load_ratio(p: Prediction, slo: Slo) -> f64 {
    let mut r = 0.0f64;
    if let Some(t) = slo.ttft_ms {
        r = r.max(p.ttft_ms / t);
    }
    if let Some(t) = slo.tpot_ms {
        r = r.max(p.tpot_ms / t);
    }
    r
}

/// Choose among `candidates` (endpoint indexes; `features(i)` gives endpoint `i`'s features)
/// for `slo`. `explore_roll` is a uniform 0..1 draw and `pick_roll` a uniform `u32`, passed in
/// so that tests are deterministic. `None` when there are no candidates or no objective.
pub fn choose(
    model: &Model,
    slo: Slo,
    candidates: &[usize],
    features: impl Fn(usize) -> Features,
    selection: Selection,
    explore: (f64, f64, u32),
) -> Option<SloChoice> {
    if !slo.is_set() || candidates.is_empty() {
        return None;
    }
    let (share, explore_roll, pick_roll) = explore;
    let mut feasible = 0u32;
    let mut best: Option<(usize, f64, Prediction)> = None;
    let mut least_bad: Option<(usize, f64, Prediction)> = None;
    for &i in candidates {
        let p = model.predict(i, &features(i));
        let r = load_ratio(model.margined(p), slo);
        if least_bad.is_none_or(|(_, b, _)| r < b) {
            least_bad = Some((i, r, p));
        }
        if r <= 1.0 {
            feasible += 1;
            let better = match (selection, best) {
                (_, None) => true,
                (Selection::LeastHeadroom, Some((_, b, _))) => r > b,
                (Selection::LowestLatency, Some((_, b, _))) => r < b,
            };
            if better {
                best = Some((i, r, p));
            }
        }
    }
    if let Some((i, _, p)) = best {
        if feasible > 1 && explore_roll < share {
            let k = pick_roll % feasible;
            let mut seen = 0;
            for &j in candidates {
                let p = model.predict(j, &features(j));
                if load_ratio(model.margined(p), slo) <= 1.0 {
                    if seen == k {
                        return Some(SloChoice {
                            index: j,
                            outcome: SloOutcome::Explored,
                            predicted: p,
                        });
                    }
                    seen += 1;
                }
            }
        }
        return Some(SloChoice {
            index: i,
            outcome: SloOutcome::Met,
            predicted: p,
        });
    }
    // A share `explore` of these goes out as explored, not infeasible: a sheddable one is sent
    // rather than refused. Else a model that came to predict every endpoint late (after a
    // burst, say) would refuse all sheddable traffic and, learning only from what it sends,
    // never see that it was wrong.
    let (mut index, _, mut predicted) = least_bad?;
    let outcome = match (explore_roll < share, load_ratio(predicted, slo) > 1.0) {
        (true, _) => SloOutcome::Explored,
        (false, true) => SloOutcome::Late,
        (false, false) => SloOutcome::Infeasible,
    };
    // Late everywhere: better late where on-time requests could not be served anyway. (Not
    // an infeasible one: it may still make it where it is predicted to, and on a spare
    // endpoint it misses for certain; on a simulated fleet doing so raised the TTFT tail and
    // not attainment.)
    if outcome == SloOutcome::Late {
        if let Some((i, p)) = spare(model, slo, candidates, &features) {
            (index, predicted) = (i, p);
        }
    }
    Some(SloChoice {
        index,
        outcome,
        predicted,
    })
}

/// The least violating of the candidates that could not meet the TTFT objective even idle and
/// have room: where a request late everywhere costs no request that is on time. A second pass,
/// taken only for late requests, so that a pick some endpoint can serve pays nothing for it.
fn spare(
    model: &Model,
    slo: Slo,
    candidates: &[usize],
    features: impl Fn(usize) -> Features,
) -> Option<(usize, Prediction)> {
    let ttft = slo.ttft_ms?;
    let mut spare: Option<(usize, f64, Prediction)> = None;
    for &i in candidates {
        let x = features(i);
        if x.queueing() || model.idle_ttft_ms(i, &x) * model.margins().0 <= ttft {
            continue;
        }
        let p = model.predict(i, &x);
        let r = load_ratio(model.margined(p), slo);
        if spare.is_none_or(|(_, b, _)| r < b) {
            spare = Some((i, r, p));
        }
    }
    spare.map(|(i, _, p)| (i, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::{LatencyPredictor, Measured, PredictorConfig, Ticket};
    use crate::signals::SignalSnapshot;

    /// A warm model of 4 endpoints where TTFT = 50 ms + 20 ms per waiting request, endpoint 3
    /// twice as slow.
    fn model() -> std::sync::Arc<Model> {
        model_with(0.5, 0.0)
    }

    /// [`model`] with margin `quantile`, every other TTFT `noise` × higher.
    fn model_with(quantile: f64, noise: f64) -> std::sync::Arc<Model> {
        let cfg = PredictorConfig {
            quantile,
            ..PredictorConfig::default()
        };
        let p = LatencyPredictor::new(cfg, 4, Default::default());
        for n in 0..600u32 {
            let e = (n % 4) as usize;
            let waiting = f64::from(n % 13);
            let x = features(waiting);
            let slow = if e == 3 { 2.0 } else { 1.0 };
            let ttft = slow * (50.0 + 20.0 * waiting) * (1.0 + noise * f64::from(n / 4 % 2));
            let ticket = Ticket {
                endpoint: e,
                features: x,
                predicted: p.model().map(|m| m.predict(e, &x)),
                ends_at: 0,
            };
            let measured = Measured::Stream {
                ttft_ms: ttft,
                tpot_ms: Some(slow * 10.0),
            };
            p.observe(&ticket, measured);
        }
        p.model().expect("warm")
    }

    fn features(waiting: f64) -> Features {
        let s = SignalSnapshot {
            waiting,
            running: 0.0,
            // As on an idle endpoint: a constant KV use would share the constant's weight.
            kv_usage: Some(0.0),
            in_flight_tokens: 0.0,
            num_gpu_blocks: 0,
            fresh: true,
        };
        Features::new(0.0, 0.0, &s, (0.0, 0.0), (0.0, 0.0))
    }

    const NO_EXPLORE: (f64, f64, u32) = (0.0, 1.0, 0);

    #[test]
    fn least_headroom_packs_onto_the_busiest_feasible() {
        let m = model();
        // Waiting 0, 2, 4, 0 (the last one slow): TTFT about 50, 90, 130, 100 ms.
        let waits = [0.0, 2.0, 4.0, 0.0];
        let f = |i: usize| features(waits[i]);
        let slo = Slo {
            ttft_ms: Some(110.0),
            tpot_ms: None,
        };
        let c = choose(
            &m,
            slo,
            &[0, 1, 2, 3],
            f,
            Selection::LeastHeadroom,
            NO_EXPLORE,
        )
        .unwrap();
        assert_eq!((c.index, c.outcome), (3, SloOutcome::Met), "{c:?}");
        let c = choose(
            &m,
            slo,
            &[0, 1, 2, 3],
            f,
            Selection::LowestLatency,
            NO_EXPLORE,
        )
        .unwrap();
        assert_eq!(c.index, 0);
    }

    #[test]
    fn infeasible_names_the_least_violating() {
        let m = model();
        let waits = [9.0, 6.0, 12.0, 3.0];
        let slo = Slo {
            ttft_ms: Some(60.0),
            tpot_ms: None,
        };
        let c = choose(
            &m,
            slo,
            &[0, 1, 2, 3],
            |i| features(waits[i]),
            Selection::LeastHeadroom,
            NO_EXPLORE,
        )
        .unwrap();
        // 230, 170, 290 and 2 × 110 = 220 ms: endpoint 1 violates least, late even unmargined.
        assert_eq!((c.index, c.outcome), (1, SloOutcome::Late), "{c:?}");
        // A TPOT objective only the fast endpoints meet.
        let slo = Slo {
            ttft_ms: None,
            tpot_ms: Some(15.0),
        };
        let c = choose(
            &m,
            slo,
            &[3],
            |i| features(waits[i]),
            Selection::LeastHeadroom,
            NO_EXPLORE,
        )
        .unwrap();
        assert_eq!(c.outcome, SloOutcome::Late);
    }

    #[test]
    fn a_share_of_requests_no_endpoint_can_serve_goes_out_as_explored() {
        let m = model();
        let slo = Slo {
            ttft_ms: Some(1.0),
            tpot_ms: None,
        };
        let pick = |roll| {
            let x = |_| features(0.0);
            choose(
                &m,
                slo,
                &[0, 1],
                x,
                Selection::LowestLatency,
                (0.1, roll, 0),
            )
            .unwrap()
        };
        // Within the share: sent (not shed) where the violation is least, to learn from.
        let c = pick(0.05);
        assert_eq!(c.outcome, SloOutcome::Explored);
        assert!(!c.outcome.is_infeasible());
        assert_eq!(pick(0.5).outcome, SloOutcome::Late);
    }

    #[test]
    fn a_late_request_goes_where_no_on_time_request_could_be_served() {
        let m = model();
        let slo = Slo {
            ttft_ms: Some(60.0),
            tpot_ms: None,
        };
        let pick = |waits: [f64; 4]| {
            let x = |i: usize| features(waits[i]);
            choose(
                &m,
                slo,
                &[0, 1, 2, 3],
                x,
                Selection::LowestLatency,
                NO_EXPLORE,
            )
            .unwrap()
        };
        // About 90, 110, 130 ms on the fast ones: late everywhere. The slow one (100 ms idle)
        // never meets 60 ms, and has room: the late request goes there, not to endpoint 0.
        let c = pick([2.0, 3.0, 4.0, 0.0]);
        assert_eq!((c.index, c.outcome), (3, SloOutcome::Late), "{c:?}");
        // Once it queues, it is no spare: the least violating again.
        let c = pick([2.0, 3.0, 4.0, 1.0]);
        assert_eq!((c.index, c.outcome), (0, SloOutcome::Late), "{c:?}");
        // An infeasible request (met in the typical case) stays where it may still make it.
        let m = model_with(0.9, 0.4);
        let p = m.predict(0, &features(0.0)).ttft_ms;
        let slo = Slo {
            ttft_ms: Some(p * 1.05),
            tpot_ms: None,
        };
        let x = |_| features(0.0);
        let c = choose(&m, slo, &[0, 3], x, Selection::LowestLatency, NO_EXPLORE).unwrap();
        assert_eq!((c.index, c.outcome), (0, SloOutcome::Infeasible), "{c:?}");
    }

    #[test]
    fn late_only_when_even_the_unmargined_prediction_misses() {
        // Half the TTFTs 40% higher: a margin above 1 at the 0.9 quantile.
        let m = model_with(0.9, 0.4);
        let p = m.predict(0, &features(0.0)).ttft_ms;
        let margined = m.margined(m.predict(0, &features(0.0))).ttft_ms;
        assert!(margined > p * 1.1, "{p} {margined}");
        let outcome = |slo_ms: f64| {
            let slo = Slo {
                ttft_ms: Some(slo_ms),
                tpot_ms: None,
            };
            let x = |_| features(0.0);
            choose(&m, slo, &[0], x, Selection::LowestLatency, NO_EXPLORE)
                .unwrap()
                .outcome
        };
        // Met in the typical case, not with the margin: infeasible, not late.
        assert_eq!(outcome((p + margined) / 2.0), SloOutcome::Infeasible);
        assert_eq!(outcome(p * 0.9), SloOutcome::Late);
        assert_eq!(outcome(margined * 1.01), SloOutcome::Met);
        assert!(SloOutcome::Late.is_infeasible() && !SloOutcome::Met.is_infeasible());
    }

    #[test]
    fn exploration_picks_only_feasible_candidates() {
        let m = model();
        let waits = [0.0, 1.0, 30.0, 0.0];
        let slo = Slo {
            ttft_ms: Some(120.0),
            tpot_ms: None,
        };
        let mut seen = [0u32; 4];
        for roll in 0..64u32 {
            let c = choose(
                &m,
                slo,
                &[0, 1, 2, 3],
                |i| features(waits[i]),
                Selection::LeastHeadroom,
                (1.0, 0.0, roll),
            )
            .unwrap();
            assert_eq!(c.outcome, SloOutcome::Explored);
            seen[c.index] += 1;
        }
        assert_eq!(seen[2], 0, "an infeasible endpoint was explored: {seen:?}");
        assert!(seen[0] > 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
        // No objective: no SLO decision.
        assert!(choose(
            &m,
            Slo::default(),
            &[0],
            |i| features(waits[i]),
            Selection::LeastHeadroom,
            NO_EXPLORE
        )
        .is_none());
    }
}
