//! Locality tiers: which endpoints a first attempt may go to, nearest first, spilling on
//! capacity rather than only on health.
//!
//! Endpoints are ranked by (`priority`, distance) where distance is 0 in the gateway's zone, 1
//! elsewhere in its region, 2 anywhere else (all 0 when the gateway's locality is unknown or the
//! mode is `priority`). A request goes to the nearest tier that has an available endpoint below
//! `spill_at` of its capacity; the pool's own picker then chooses within that tier. So below
//! saturation everything stays local, and past it only the overflow leaves: each request that
//! finds the local tier full goes one tier out, and the next one comes back as soon as a local
//! request finishes. The decision reads the gateway's live in-flight counts (or an endpoint's
//! ORCA utilization), which move with every request, so there is no state to flap. When every
//! tier is full, the whole pool is offered to the picker, which then spreads by load.

use crate::Endpoint;

/// How long an ORCA utilization report counts for the spill decision.
const REPORT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Per-endpoint inputs from the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement {
    pub priority: u32,
    /// Concurrent requests the endpoint serves well.
    pub capacity: Option<u32>,
}

/// The gateway's own place.
#[derive(Debug, Clone, Default)]
pub struct Here {
    pub region: Option<String>,
    pub zone: Option<String>,
}

#[derive(Debug)]
pub struct Tier {
    /// Indices into the pool's endpoints.
    pub indices: Vec<usize>,
    /// The same endpoints, for the picker.
    pub endpoints: Vec<Endpoint>,
    /// (priority, distance), for operators.
    pub rank: (u32, u8),
}

#[derive(Debug)]
pub struct Tiers {
    tiers: Vec<Tier>,
    capacity: Vec<Option<u32>>,
    spill_at: f64,
}

/// 0 same zone, 1 same region, 2 elsewhere; 0 for everyone when `here` is unknown.
fn distance(here: Option<&Here>, e: &Endpoint) -> u8 {
    let Some(here) = here else { return 0 };
    let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
    let region_ok = here.region.is_none() || e.region.is_none() || same(&here.region, &e.region);
    if here.zone.is_some() && same(&here.zone, &e.zone) && region_ok {
        0
    } else if same(&here.region, &e.region) {
        1
    } else if here.zone.is_none() && here.region.is_none() {
        0
    } else {
        2
    }
}

impl Tiers {
    /// Tiers for `endpoints` (with `placements` parallel to them); `None` when there is only
    /// one, and so nothing to prefer.
    pub fn build(
        endpoints: &[Endpoint],
        placements: &[Placement],
        here: Option<&Here>,
        spill_at: f64,
    ) -> Option<Self> {
        let mut ranked: Vec<((u32, u8), usize)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let p = placements.get(i).copied().unwrap_or_default();
                ((p.priority, distance(here, e)), i)
            })
            .collect();
        ranked.sort();
        let mut tiers: Vec<Tier> = Vec::new();
        for (rank, i) in ranked {
            match tiers.last_mut() {
                Some(t) if t.rank == rank => {
                    t.indices.push(i);
                    t.endpoints.push(endpoints[i].clone());
                }
                _ => tiers.push(Tier {
                    indices: vec![i],
                    endpoints: vec![endpoints[i].clone()],
                    rank,
                }),
            }
        }
        if tiers.len() < 2 {
            return None;
        }
        let capacity = (0..endpoints.len())
            .map(|i| placements.get(i).and_then(|p| p.capacity))
            .collect();
        Some(Self {
            tiers,
            capacity,
            spill_at,
        })
    }

    /// The nearest tier with room; `None` when every tier is full (offer the whole pool).
    pub fn choose(&self) -> Option<&Tier> {
        self.tiers.iter().find(|t| {
            t.indices
                .iter()
                .zip(&t.endpoints)
                .any(|(&i, e)| e.is_available() && !self.full(i, e))
        })
    }

    fn full(&self, i: usize, e: &Endpoint) -> bool {
        if let Some(cap) = self.capacity[i] {
            return e.state.in_flight() as f64 >= self.spill_at * f64::from(cap);
        }
        // ORCA utilization, when the endpoint reported it recently: a tier judged full gets no
        // more traffic, hence no fresher report, so an old one must not keep it full.
        e.state
            .recent_utilization(REPORT_MAX_AGE, std::time::Instant::now())
            .is_some_and(|utilization| utilization >= self.spill_at)
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::EndpointState;

    fn endpoint(port: u16, zone: &str, region: &str) -> Endpoint {
        Endpoint {
            state: Arc::new(EndpointState::new(([127, 0, 0, 1], port).into())),
            weight: 1,
            zone: Some(zone.into()),
            region: Some(region.into()),
        }
    }

    fn here(zone: &str, region: &str) -> Here {
        Here {
            zone: Some(zone.into()),
            region: Some(region.into()),
        }
    }

    fn fleet() -> Vec<Endpoint> {
        vec![
            endpoint(1, "b", "eu"),
            endpoint(2, "a", "eu"),
            endpoint(3, "x", "us"),
            endpoint(4, "a", "eu"),
        ]
    }

    #[test]
    fn tiers_run_zone_then_region_then_elsewhere() {
        let eps = fleet();
        let tiers = Tiers::build(&eps, &[], Some(&here("a", "eu")), 0.8).unwrap();
        let order: Vec<&[usize]> = tiers.tiers().iter().map(|t| &t.indices[..]).collect();
        assert_eq!(order, [&[1, 3][..], &[0], &[2]]);
        assert_eq!(tiers.choose().unwrap().indices, [1, 3]);
    }

    #[test]
    fn only_the_overflow_spills_and_it_comes_back() {
        let eps = fleet();
        let cap = Placement {
            priority: 0,
            capacity: Some(5),
        };
        let tiers = Tiers::build(&eps, &[cap; 4], Some(&here("a", "eu")), 0.8).unwrap();
        // 4 of 5 is full at spill_at 0.8: fill one local endpoint, the other still has room.
        let mut held: Vec<_> = (0..4).map(|_| eps[1].state.begin()).collect();
        assert_eq!(tiers.choose().unwrap().indices, [1, 3]);
        held.extend((0..4).map(|_| eps[3].state.begin()));
        assert_eq!(
            tiers.choose().unwrap().indices,
            [0],
            "the zone is full: spill"
        );
        held.pop();
        assert_eq!(tiers.choose().unwrap().indices, [1, 3], "room again: back");
        held.extend((0..5).map(|_| eps[3].state.begin()));
        held.extend((0..4).map(|_| eps[0].state.begin()));
        held.extend((0..4).map(|_| eps[2].state.begin()));
        assert!(tiers.choose().is_none(), "all full: the whole pool");
    }

    #[test]
    fn an_unhealthy_zone_fails_over_and_priorities_order_levels() {
        let eps = fleet();
        eps[1].state.set_healthy(false);
        eps[3].state.set_healthy(false);
        let tiers = Tiers::build(&eps, &[], Some(&here("a", "eu")), 0.8).unwrap();
        assert_eq!(tiers.choose().unwrap().indices, [0]);
        // Priority outranks distance: level 1 is used only when level 0 has no room.
        let p = |priority| Placement {
            priority,
            capacity: None,
        };
        let tiers =
            Tiers::build(&eps, &[p(1), p(1), p(0), p(1)], Some(&here("a", "eu")), 0.8).unwrap();
        assert_eq!(tiers.choose().unwrap().indices, [2]);
        // One tier: nothing to prefer.
        assert!(Tiers::build(&eps, &[], None, 0.8).is_none());
    }

    #[test]
    fn a_reported_utilization_counts_while_fresh_only() {
        let eps = fleet();
        let tiers = Tiers::build(&eps, &[], Some(&here("a", "eu")), 0.8).unwrap();
        let report = crate::LoadReport {
            application_utilization: 0.9,
            rps_fractional: 10.0,
            ..Default::default()
        };
        let now = std::time::Instant::now();
        assert!(eps[1].state.record_load_report_at(&report, now));
        assert!(eps[3].state.record_load_report_at(&report, now));
        assert_eq!(
            tiers.choose().unwrap().indices,
            [0],
            "both local endpoints report 90%"
        );
        let later = now + REPORT_MAX_AGE + std::time::Duration::from_secs(1);
        assert_eq!(
            eps[1].state.recent_utilization(REPORT_MAX_AGE, now),
            Some(0.9)
        );
        assert_eq!(eps[1].state.recent_utilization(REPORT_MAX_AGE, later), None);
    }
}
