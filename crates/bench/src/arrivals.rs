//! Open-loop arrival schedules.
//!
//! Open-loop load is what production sees: users do not wait for each other, so arrivals keep
//! coming when the server slows down and queues build. Closed-loop load (fixed concurrency)
//! hides that, since a slow server slows the load generator too ("coordinated omission").
//! Arrival times are computed as offsets from the start of the run rather than as sleeps after
//! the previous request, so a late wake-up never shifts later arrivals.

use std::time::Duration;

use crate::spec::Arrival;

/// A sequence of arrival offsets from the start of the run.
#[derive(Debug)]
pub enum Schedule {
    /// Rate-driven arrivals.
    Rate {
        rate: f64,
        arrival: Arrival,
        next: f64,
        rng: fastrand::Rng,
    },
    /// Fixed offsets (a trace).
    Fixed { times: Vec<Duration>, index: usize },
}

impl Schedule {
    /// Arrivals at `rate` per second; Poisson gaps are seeded by `seed`. The first arrival is at 0.
    pub fn rate(rate: f64, arrival: Arrival, seed: u64) -> Self {
        Schedule::Rate {
            rate,
            arrival,
            next: 0.0,
            rng: fastrand::Rng::with_seed(seed ^ 0xa11),
        }
    }

    /// Arrivals at the given offsets.
    pub fn fixed(times: Vec<Duration>) -> Self {
        Schedule::Fixed { times, index: 0 }
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        match self {
            Schedule::Rate {
                rate,
                arrival,
                next,
                rng,
            } => {
                let at = *next;
                let gap = match arrival {
                    Arrival::Constant => 1.0 / *rate,
                    Arrival::Poisson => -(1.0 - rng.f64()).ln() / *rate,
                };
                *next += gap;
                Some(Duration::from_secs_f64(at))
            }
            Schedule::Fixed { times, index } => {
                let t = times.get(*index).copied();
                *index += 1;
                t
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_evenly_spaced() {
        let v: Vec<_> = Schedule::rate(4.0, Arrival::Constant, 0).take(3).collect();
        assert_eq!(
            v,
            vec![
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_millis(500)
            ]
        );
    }

    #[test]
    fn poisson_has_the_right_rate_and_is_seeded() {
        let n = 20_000;
        let last = Schedule::rate(100.0, Arrival::Poisson, 1).nth(n).unwrap();
        let rate = n as f64 / last.as_secs_f64();
        assert!((rate - 100.0).abs() < 3.0, "rate {rate}");
        let a: Vec<_> = Schedule::rate(10.0, Arrival::Poisson, 1).take(50).collect();
        assert_eq!(
            a,
            Schedule::rate(10.0, Arrival::Poisson, 1)
                .take(50)
                .collect::<Vec<_>>()
        );
        assert_ne!(
            a,
            Schedule::rate(10.0, Arrival::Poisson, 2)
                .take(50)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn fixed_replays_then_ends() {
        let mut s = Schedule::fixed(vec![Duration::ZERO, Duration::from_secs(1)]);
        assert_eq!(s.next(), Some(Duration::ZERO));
        assert_eq!(s.next(), Some(Duration::from_secs(1)));
        assert_eq!(s.next(), None);
    }
}
