use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;

fn resp(status: u16) -> Attempt {
    Attempt::Response {
        status: StatusCode::from_u16(status).unwrap(),
        grpc_status: None,
        retry_after: None,
    }
}

fn grpc(code: u32) -> Attempt {
    Attempt::Response {
        status: StatusCode::OK,
        grpc_status: Some(code),
        retry_after: None,
    }
}

const TRANSPORT: [Attempt; 4] = [
    Attempt::ConnectFailure,
    Attempt::RefusedStream,
    Attempt::Reset,
    Attempt::Timeout,
];

#[test]
fn nothing_enabled_retries_nothing() {
    let p = RetryPolicy::new(3, []);
    for a in TRANSPORT
        .into_iter()
        .chain([resp(503), resp(429), grpc(14)])
    {
        assert_eq!(p.classify(&a), None, "{a:?}");
    }
}

#[test]
fn transport_conditions() {
    let p = RetryPolicy::new(3, [RetryOn::ConnectFailure]);
    assert_eq!(
        p.classify(&Attempt::ConnectFailure),
        Some(RetryReason::ConnectFailure)
    );
    assert_eq!(p.classify(&Attempt::Reset), None);
    assert_eq!(p.classify(&resp(503)), None);

    let p = RetryPolicy::new(3, [RetryOn::RefusedStream]);
    assert_eq!(
        p.classify(&Attempt::RefusedStream),
        Some(RetryReason::RefusedStream)
    );
    assert_eq!(p.classify(&Attempt::Reset), None);

    let p = RetryPolicy::new(3, [RetryOn::Reset]);
    assert_eq!(p.classify(&Attempt::Reset), Some(RetryReason::Reset));
    assert_eq!(
        p.classify(&Attempt::RefusedStream),
        Some(RetryReason::RefusedStream)
    );
    assert_eq!(p.classify(&Attempt::Timeout), Some(RetryReason::Timeout));
    assert_eq!(p.classify(&Attempt::ConnectFailure), None);
    assert_eq!(p.classify(&resp(502)), None);
}

#[test]
fn five_xx_and_gateway_error_include_transport_failures() {
    for cond in [RetryOn::FiveXx, RetryOn::GatewayError] {
        let p = RetryPolicy::new(3, [cond]);
        for a in TRANSPORT {
            assert!(p.classify(&a).is_some(), "{cond:?} {a:?}");
        }
    }
    let five = RetryPolicy::new(3, [RetryOn::FiveXx]);
    let gw = RetryPolicy::new(3, [RetryOn::GatewayError]);
    for s in [500, 501, 502, 503, 504, 599] {
        assert_eq!(
            five.classify(&resp(s)),
            Some(RetryReason::Status(StatusCode::from_u16(s).unwrap()))
        );
        assert_eq!(
            gw.classify(&resp(s)).is_some(),
            (502..=504).contains(&s),
            "{s}"
        );
    }
    for s in [200, 404, 429] {
        assert_eq!(five.classify(&resp(s)), None);
        assert_eq!(gw.classify(&resp(s)), None);
    }
}

#[test]
fn exact_status_conditions() {
    let p = RetryPolicy::new(3, [RetryOn::Status503]);
    assert!(p.classify(&resp(503)).is_some());
    assert_eq!(p.classify(&resp(502)), None);
    assert_eq!(p.classify(&Attempt::ConnectFailure), None);

    let p = RetryPolicy::new(3, [RetryOn::Status429]);
    let r = p.classify(&resp(429)).unwrap();
    assert_eq!(r.as_str(), "429");
    assert_eq!(p.classify(&resp(503)), None);

    let mut p = RetryPolicy::new(3, [RetryOn::RetriableStatusCodes]);
    p.retriable_status_codes = vec![409, 502];
    assert!(p.classify(&resp(409)).is_some());
    assert!(p.classify(&resp(502)).is_some());
    assert_eq!(p.classify(&resp(503)), None);
}

#[test]
fn grpc_codes_by_name() {
    let all = [
        (1, GrpcCode::Cancelled),
        (4, GrpcCode::DeadlineExceeded),
        (8, GrpcCode::ResourceExhausted),
        (13, GrpcCode::Internal),
        (14, GrpcCode::Unavailable),
    ];
    for (num, code) in all {
        let p = RetryPolicy::new(2, [RetryOn::Grpc(code)]);
        assert_eq!(p.classify(&grpc(num)), Some(RetryReason::Grpc(code)));
        assert_eq!(RetryReason::Grpc(code).as_str(), code.as_str());
        for (other, _) in all.iter().filter(|(n, _)| *n != num) {
            assert_eq!(p.classify(&grpc(*other)), None, "{code:?} vs {other}");
        }
        assert_eq!(p.classify(&grpc(0)), None);
        assert_eq!(p.classify(&resp(503)), None);
    }
    // An HTTP condition still applies to a gRPC response whose status code is not enabled.
    let p = RetryPolicy::new(
        2,
        [RetryOn::Grpc(GrpcCode::Unavailable), RetryOn::Status503],
    );
    let a = Attempt::Response {
        status: StatusCode::SERVICE_UNAVAILABLE,
        grpc_status: Some(13),
        retry_after: None,
    };
    assert_eq!(
        p.classify(&a),
        Some(RetryReason::Status(StatusCode::SERVICE_UNAVAILABLE))
    );
}

#[test]
fn attempt_from_response_headers() {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from_static("14"));
    h.insert("retry-after", HeaderValue::from_static("3"));
    let a = Attempt::from_response(StatusCode::OK, &h, SystemTime::now());
    assert_eq!(
        a,
        Attempt::Response {
            status: StatusCode::OK,
            grpc_status: Some(14),
            retry_after: Some(Duration::from_secs(3)),
        }
    );
    h.insert("grpc-status", HeaderValue::from_static("x"));
    h.insert("retry-after", HeaderValue::from_static("later"));
    let a = Attempt::from_response(StatusCode::OK, &h, SystemTime::now());
    assert!(matches!(
        a,
        Attempt::Response {
            grpc_status: None,
            retry_after: None,
            ..
        }
    ));
}

#[test]
fn attempts_bound_retries() {
    let p = RetryPolicy::new(3, [RetryOn::Reset]);
    assert!(p.should_retry(1, &Attempt::Reset).is_some());
    assert!(p.should_retry(2, &Attempt::Reset).is_some());
    assert_eq!(p.should_retry(3, &Attempt::Reset), None);
    assert_eq!(
        RetryPolicy::new(1, [RetryOn::Reset]).should_retry(1, &Attempt::Reset),
        None
    );
    assert_eq!(RetryPolicy::new(0, [RetryOn::Reset]).attempts, 1);
}

#[test]
fn backoff_delay_used_without_retry_after() {
    let p = RetryPolicy::new(5, [RetryOn::Reset]);
    for tries in 1..5 {
        let r = p.should_retry(tries, &Attempt::Reset).unwrap();
        assert!(r.delay <= p.backoff.ceiling(tries));
    }
}

#[test]
fn retry_after_honoured_and_capped() {
    let p = RetryPolicy::new(3, [RetryOn::Status429, RetryOn::Status503]);
    let with_after = |status, secs| Attempt::Response {
        status: StatusCode::from_u16(status).unwrap(),
        grpc_status: None,
        retry_after: Some(Duration::from_secs(secs)),
    };
    let r = p.should_retry(1, &with_after(429, 2)).unwrap();
    assert_eq!(r.delay, Duration::from_secs(2));
    assert_eq!(
        p.should_retry(1, &with_after(503, 10)).unwrap().delay,
        p.retry_after_max
    );
    assert_eq!(p.should_retry(1, &with_after(503, 11)), None);
    let mut strict = p.clone();
    strict.retry_after_max = Duration::from_secs(1);
    assert_eq!(strict.should_retry(1, &with_after(429, 2)), None);
}

#[test]
fn replayable_needs_a_known_length_under_the_cap() {
    assert!(replayable(Some(0), DEFAULT_MAX_REPLAY_BODY));
    assert!(replayable(Some(64 * 1024), DEFAULT_MAX_REPLAY_BODY));
    assert!(!replayable(Some(64 * 1024 + 1), DEFAULT_MAX_REPLAY_BODY));
    assert!(!replayable(None, DEFAULT_MAX_REPLAY_BODY));
}

#[test]
fn tried_set_tracks_and_forgets_oldest() {
    let mut t = TriedSet::new();
    assert!(t.is_empty() && !t.contains(0));
    t.insert(3);
    t.insert(3);
    t.insert(1);
    assert_eq!(t.len(), 2);
    assert!(t.contains(3) && t.contains(1) && !t.contains(2));
    assert!(!t.covers(4));
    t.insert(0);
    t.insert(2);
    assert!(t.covers(4));
    let mut t = TriedSet::new();
    for i in 0..TRIED_CAPACITY + 2 {
        t.insert(i);
    }
    assert_eq!(t.len(), TRIED_CAPACITY);
    assert!(!t.contains(0) && !t.contains(1) && t.contains(TRIED_CAPACITY + 1));
}

#[test]
fn condition_names_map_one_to_one() {
    let names = [
        "connect-failure",
        "refused-stream",
        "reset",
        "5xx",
        "gateway-error",
        "503",
        "429",
        "retriable-status-codes",
        "cancelled",
        "deadline-exceeded",
        "resource-exhausted",
        "internal",
        "unavailable",
    ];
    let conditions: Vec<RetryOn> = names.iter().filter_map(|n| RetryOn::from_name(n)).collect();
    assert_eq!(conditions.len(), names.len());
    let all = RetryPolicy::new(2, conditions.iter().copied());
    assert!(conditions.iter().all(|c| all.retries_on(*c)));
    // Every condition has its own bit.
    for (i, c) in conditions.iter().enumerate() {
        let one = RetryPolicy::new(2, [*c]);
        let others = conditions.iter().enumerate().filter(|(j, _)| *j != i);
        assert!(
            others.into_iter().all(|(_, o)| !one.retries_on(*o)),
            "{c:?}"
        );
    }
    assert_eq!(RetryOn::from_name("500"), None);
    for c in RetryOn::ALL {
        assert_eq!(RetryOn::from_name(c.as_str()), Some(c));
    }
}

#[test]
fn conditions_deserialize_by_name_and_number_and_reject_the_rest() {
    let parse = |s: &str| serde_json::from_str::<RetryOn>(s).map_err(|e| e.to_string());
    for c in RetryOn::ALL {
        assert_eq!(parse(&format!("\"{c}\"")), Ok(c));
        assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
    }
    assert_eq!(parse("503"), Ok(RetryOn::Status503));
    assert_eq!(parse("429"), Ok(RetryOn::Status429));
    assert!(parse("500").unwrap_err().contains("retriable-status-codes"));
    assert!(parse("-1").is_err());
    let err = parse("\"conect-failure\"").unwrap_err();
    assert!(
        err.contains("unknown variant") && err.contains("`connect-failure`"),
        "{err}"
    );
}
