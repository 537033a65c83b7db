use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::concurrency::DEFAULT_QUEUE_TIMEOUT;
use super::*;

/// The shapes a route and a pool hold these under, for the contract examples.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Route {
    retry: Option<RetryConfig>,
    hedge: Option<HedgeConfig>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Pool {
    #[serde(default)]
    limits: CircuitLimits,
    concurrency: Option<Concurrency>,
}

fn yaml<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, String> {
    crate::yaml::from_str(s).map_err(|e| e.to_string())
}

fn roundtrip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(v: &T) {
    let text = serde_json::to_string(v).unwrap();
    assert_eq!(&yaml::<T>(&text).unwrap(), v, "{text}");
}

#[test]
fn contract_example_parses() {
    let r: Route = yaml(
        "retry: { attempts: 3, retry_on: [connect-failure, reset, gateway-error, 503], \
         per_try_timeout: 2s, budget: { ratio: 0.2, min_concurrency: 3 } }\n\
         hedge: { delay: 50ms }\n",
    )
    .unwrap();
    let retry = r.retry.unwrap();
    assert_eq!(retry.attempts, 3);
    use RetryOn::*;
    assert_eq!(
        retry.retry_on,
        [ConnectFailure, Reset, GatewayError, Status503]
    );
    assert_eq!(
        retry.per_try_timeout,
        Some(PerTryTimeout::Fixed(Duration::from_secs(2)))
    );
    assert_eq!(retry.budget, RetryBudgetConfig::default());
    assert_eq!(retry.backoff, BackoffConfig::default());
    assert!(retry.validate().is_empty());
    let hedge = r.hedge.unwrap();
    assert_eq!(hedge.delay, Some(Duration::from_millis(50)));
    assert!(hedge.validate().is_empty());
    roundtrip(&retry);
    roundtrip(&hedge);

    let p: Pool = yaml(
        "limits: { max_connections: 1024, max_pending: 1024, max_requests: 1024, max_retries: 3 }\n\
         concurrency: adaptive\n",
    )
    .unwrap();
    assert_eq!(
        p.limits,
        CircuitLimits {
            max_retries: Some(3),
            ..CircuitLimits::default()
        }
    );
    assert_eq!(
        p.concurrency,
        Some(Concurrency::Adaptive(AdaptiveConcurrency::default()))
    );
    roundtrip(&p);
}

#[test]
fn defaults() {
    let r: RetryConfig = yaml("{}").unwrap();
    assert_eq!(r, RetryConfig::default());
    assert_eq!(r.attempts, 1);
    assert_eq!(
        r.retry_on,
        [RetryOn::ConnectFailure, RetryOn::RefusedStream]
    );
    assert_eq!(r.retry_after_max, Duration::from_secs(10));
    assert_eq!(r.max_replay_body, 65536);
    assert_eq!(r.backoff.base, Duration::from_millis(25));
    assert_eq!(r.backoff.max, Duration::from_millis(250));
    assert_eq!((r.budget.ratio, r.budget.min_concurrency), (0.2, 3));
    let l: CircuitLimits = yaml("{ max_retries: 5 }").unwrap();
    assert_eq!(
        (l.max_connections, l.max_pending, l.max_requests),
        (1024, 1024, 1024)
    );
    assert_eq!(l.max_retries, Some(5));
    assert_eq!(CircuitLimits::default().max_retries, None);
    let h: HedgeConfig = yaml("{ percentile: 95 }").unwrap();
    assert_eq!((h.percentile, h.budget_percent), (Some(95.0), 10.0));
}

#[test]
fn every_retry_condition_by_name_and_number() {
    for want in RetryOn::ALL {
        let name = want.as_str();
        let c: RetryOn = yaml(name).unwrap();
        assert_eq!(c, want);
        assert_eq!(c.to_string(), name);
        roundtrip(&c);
    }
    assert_eq!(yaml::<RetryOn>("503").unwrap(), RetryOn::Status503);
    assert_eq!(yaml::<RetryOn>("'429'").unwrap(), RetryOn::Status429);
    let err = yaml::<RetryOn>("500").unwrap_err();
    assert!(err.contains("retriable-status-codes"), "{err}");
    assert!(yaml::<RetryOn>("-1").is_err());
    let err = yaml::<RetryOn>("conect-failure").unwrap_err();
    assert!(err.contains("connect-failure"), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let err = yaml::<Route>("retry:\n  attempts: 3\n  retries_on: [reset]\n").unwrap_err();
    assert!(
        err.contains("retries_on") && err.contains("line 3"),
        "{err}"
    );
    for bad in [
        "retry: { budget: { percent: 20 } }",
        "retry: { backoff: { base: 1s, cap: 2s } }",
        "hedge: { delay: 5ms, after: 2 }",
    ] {
        assert!(
            yaml::<Route>(bad).unwrap_err().contains("unknown field"),
            "{bad}"
        );
    }
    assert!(yaml::<Pool>("limits: { max_request: 3 }").is_err());
}

#[test]
fn concurrency_forms() {
    let c: Concurrency = yaml("64").unwrap();
    assert_eq!(c, Concurrency::Fixed(FixedConcurrency::new(64)));
    assert_eq!(serde_json::to_string(&c).unwrap().trim(), "64");
    let c: Concurrency = yaml("{ kind: fixed, limit: 8, max_queue: 0 }").unwrap();
    let Concurrency::Fixed(f) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(
        (f.limit, f.max_queue, f.queue_timeout),
        (8, 0, DEFAULT_QUEUE_TIMEOUT)
    );
    roundtrip(&c);

    let c: Concurrency = yaml(
        "{ max_queue: 10, kind: adaptive, min_limit: 5, max_limit: 50, sample_window: 250ms, \
         min_rtt_interval: 30s, queue_timeout: 200ms }",
    )
    .unwrap();
    let want = AdaptiveConcurrency {
        min_limit: 5,
        max_limit: 50,
        sample_window: Duration::from_millis(250),
        min_rtt_interval: Duration::from_secs(30),
        max_queue: 10,
        queue_timeout: Duration::from_millis(200),
    };
    assert_eq!(c, Concurrency::Adaptive(want));
    assert!(c.validate().is_empty());
    roundtrip(&c);
    assert_eq!(
        yaml::<Concurrency>("{ kind: adaptive }").unwrap(),
        yaml::<Concurrency>("adaptive").unwrap()
    );
}

#[test]
fn concurrency_errors_name_the_problem() {
    let cases = [
        ("0", "between 1 and"),
        ("-3", "positive"),
        ("fixed", "unknown variant"),
        ("{ limit: 4 }", "missing field `kind`"),
        ("{ kind: fixed }", "missing field `limit`"),
        ("{ kind: lifo }", "unknown variant `lifo`"),
        (
            "{ kind: fixed, limit: 4, min_limit: 2 }",
            "unknown field `min_limit`",
        ),
        (
            "{ min_limit: 2, kind: fixed, limit: 4 }",
            "unknown field `min_limit`",
        ),
        ("{ kind: adaptive, limit: 4 }", "unknown field `limit`"),
        ("{ kind: adaptive, kind: fixed }", "duplicate field `kind`"),
        ("{ kind: adaptive, sample_window: soon }", "sample_window"),
        (
            "{ kind: adaptive, max_limits: 3 }",
            "unknown field `max_limits`",
        ),
    ];
    for (text, want) in cases {
        let err = yaml::<Concurrency>(text).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
    let err =
        yaml::<Pool>("limits: {}\nconcurrency:\n  kind: adaptive\n  min_limt: 3\n").unwrap_err();
    assert!(err.contains("min_limt") && err.contains("line "), "{err}");
}

#[test]
fn retry_validation() {
    let bad = RetryConfig {
        attempts: 11,
        retry_on: vec![RetryOn::RetriableStatusCodes],
        retriable_status_codes: vec![],
        per_try_timeout: Some(PerTryTimeout::Fixed(Duration::ZERO)),
        backoff: BackoffConfig {
            base: Duration::ZERO,
            max: Duration::ZERO,
        },
        budget: RetryBudgetConfig {
            ratio: 1.5,
            min_concurrency: 3,
        },
        ..RetryConfig::default()
    };
    let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "attempts",
            "retriable_status_codes",
            "per_try_timeout",
            "backoff.base",
            "budget.ratio"
        ]
    );
    let r: RetryConfig = yaml("{ attempts: 2, retry_on: [] }").unwrap();
    assert_eq!(r.validate()[0].0, "retry_on");
    let r: RetryConfig = yaml("{ retriable_status_codes: [409, 700] }").unwrap();
    let keys: Vec<String> = r.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["retriable_status_codes", "retriable_status_codes[1]"]
    );
    let r: RetryConfig =
        yaml("{ retry_on: [retriable-status-codes], retriable_status_codes: [409] }").unwrap();
    assert!(r.validate().is_empty());
    let b = BackoffConfig {
        base: Duration::from_secs(1),
        max: Duration::from_millis(1),
    };
    assert_eq!(b.validate()[0].0, "max");
}

#[test]
fn hedge_limits_and_concurrency_validation() {
    let first_key = |p: Problems| p.into_iter().next().map(|(k, _)| k);
    let both: HedgeConfig = yaml("{ delay: 5ms, percentile: 95 }").unwrap();
    assert_eq!(first_key(both.validate()).as_deref(), Some("delay"));
    let neither: HedgeConfig = yaml("{ budget_percent: 5 }").unwrap();
    assert_eq!(first_key(neither.validate()).as_deref(), Some("delay"));
    let p100: HedgeConfig = yaml("{ percentile: 100 }").unwrap();
    assert_eq!(first_key(p100.validate()).as_deref(), Some("percentile"));
    let over: HedgeConfig = yaml("{ delay: 1ms, budget_percent: 150 }").unwrap();
    assert_eq!(
        first_key(over.validate()).as_deref(),
        Some("budget_percent")
    );

    let l: CircuitLimits = yaml("{ max_requests: 0, max_retries: 0, max_pending: 0 }").unwrap();
    assert_eq!(first_key(l.validate()).as_deref(), Some("max_requests"));
    assert_eq!(l.validate().len(), 1);

    let fixed = Concurrency::Fixed(FixedConcurrency {
        limit: 0,
        max_queue: 5,
        queue_timeout: Duration::ZERO,
    });
    let keys: Vec<String> = fixed.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["limit", "queue_timeout"]);
    let adaptive = Concurrency::Adaptive(AdaptiveConcurrency {
        min_limit: 0,
        max_limit: 0,
        sample_window: Duration::ZERO,
        min_rtt_interval: Duration::ZERO,
        max_queue: 0,
        queue_timeout: Duration::ZERO,
    });
    let keys: Vec<String> = adaptive.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["min_limit", "sample_window", "min_rtt_interval"]);
}

#[test]
fn per_try_timeout_is_a_duration_or_auto() {
    let r: Route = yaml("retry: { attempts: 2, per_try_timeout: auto }\n").unwrap();
    let retry = r.retry.unwrap();
    assert_eq!(
        retry.per_try_timeout,
        Some(PerTryTimeout::Auto(AutoTimeout::default()))
    );
    assert!(retry.validate().is_empty());
    roundtrip(&retry);
    let r: Route = yaml(
        "retry: { attempts: 2, per_try_timeout: { percentile: 95, factor: 2, min: 50ms, max: 1s } }\n",
    )
    .unwrap();
    let Some(PerTryTimeout::Auto(a)) = r.retry.as_ref().unwrap().per_try_timeout.clone() else {
        panic!("not auto");
    };
    assert_eq!((a.percentile, a.factor), (95.0, 2.0));
    assert_eq!(a.max, Some(Duration::from_secs(1)));
    roundtrip(r.retry.as_ref().unwrap());
    // Mistakes are named, inside the settings as outside.
    let e = yaml::<Route>("retry: { per_try_timeout: soon }\n").unwrap_err();
    assert!(e.contains("`soon`") && e.contains("auto"), "{e}");
    let e = yaml::<Route>("retry: { per_try_timeout: { percentil: 99 } }\n").unwrap_err();
    assert!(e.contains("percentil"), "{e}");
    let r: Route =
        yaml("retry: { per_try_timeout: { factor: 0.5, min: 1s, max: 10ms } }\n").unwrap();
    let problems = r.retry.unwrap().validate();
    let keys: Vec<_> = problems.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(keys, ["per_try_timeout.factor", "per_try_timeout.max"]);
}
