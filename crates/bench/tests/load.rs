//! End-to-end checks of `run_load` against scripted SSE servers on real sockets.

mod common;

use std::time::Duration;

use common::{start, Script};
use switchyard_bench::{
    run_load, Arrival, Endpoint, Load, LoadSpec, SharedPrefixSpec, Slo, SyntheticSpec, Target,
    WorkloadSpec,
};
use tokio_util::sync::CancellationToken;

fn spec(targets: Vec<Target>) -> LoadSpec {
    let mut s = LoadSpec::new(
        targets,
        WorkloadSpec::Synthetic(SyntheticSpec {
            prompt_tokens: switchyard_bench::Distribution::Fixed { value: 16 },
            output_tokens: switchyard_bench::Distribution::Fixed { value: 10 },
        }),
    );
    s.timeout = Duration::from_secs(10);
    s
}

/// Timings are checked against what the scripted server makes them: never below its delays
/// (the lower bound is exact), and well short of the next wrong answer (the upper bound leaves
/// room for a loaded machine; it catches measuring the wrong span, not a slow one).
fn within(v: f64, lo: f64, hi: f64, what: &str) {
    assert!(v >= lo && v <= hi, "{what} = {v}, expected {lo}..={hi}");
}

#[tokio::test]
async fn fixed_latencies_are_measured() {
    let server = start(Script::Stream {
        first: Duration::from_millis(100),
        gap: Duration::from_millis(20),
        tokens: 10,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("fixed", server.url())]);
    s.load = Load::Closed { concurrency: 4 };
    s.max_requests = Some(20);
    s.slo = Slo::parse("ttft=1s,tpot=100ms").unwrap();
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    let t = &r.targets[0];
    assert_eq!(
        (t.sent, t.completed, t.failed),
        (20, 20, 0),
        "{:?}",
        t.errors
    );
    assert_eq!(
        t.output_tokens, 200,
        "usage completion_tokens are summed exactly"
    );
    assert_eq!(t.prompt_tokens, 60);
    // TTFT is 100 ms (the whole reply, a wrong answer, 280 ms); gaps are 20 ms.
    within(t.ttft_ms.p50, 100.0, 190.0, "ttft p50");
    within(t.ttft_ms.max, 100.0, 270.0, "ttft max");
    assert_eq!(t.itl_ms.count, 20 * 9);
    within(t.itl_ms.p50, 18.0, 40.0, "itl p50");
    within(t.itl_ms.mean, 18.0, 40.0, "itl mean");
    within(t.tpot_ms.mean, 19.0, 40.0, "tpot mean");
    within(t.e2e_ms.p50, 280.0, 500.0, "e2e p50");
    // Four users, five rounds of ~280 ms each (one user would take 5.6 s).
    within(r.elapsed_s, 1.4, 3.5, "elapsed");
    within(
        t.request_throughput * r.elapsed_s,
        19.99,
        20.01,
        "throughput × elapsed",
    );
    within(
        t.output_token_throughput,
        10.0 * t.request_throughput - 0.01,
        10.0 * t.request_throughput + 0.01,
        "tok/s",
    );
    let g = t.goodput.as_ref().unwrap();
    assert_eq!((g.good, g.share), (20, 1.0));
    // The server saw streaming requests with usage and ignore_eos.
    let body = server.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["ignore_eos"], true);
    assert_eq!(body["max_tokens"], 10);
    assert_eq!(
        body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        16
    );
}

#[tokio::test]
async fn without_usage_tokens_are_counted_from_chunks() {
    let server = start(Script::Stream {
        first: Duration::from_millis(10),
        gap: Duration::from_millis(2),
        tokens: 7,
        usage: false,
    })
    .await;
    let mut s = spec(vec![Target::new("t", server.url())]);
    s.endpoint = Endpoint::Completions;
    s.load = Load::Closed { concurrency: 2 };
    s.max_requests = Some(6);
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    let t = &r.targets[0];
    assert_eq!((t.completed, t.output_tokens, t.prompt_tokens), (6, 42, 0));
    assert!(server.bodies.lock().unwrap()[0]["prompt"].is_string());
}

#[tokio::test]
async fn whole_replies_are_timed_when_they_arrive() {
    let server = start(Script::Stream {
        first: Duration::from_millis(50),
        gap: Duration::from_millis(10),
        tokens: 10,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("whole", server.url())]);
    s.stream = false;
    s.load = Load::Closed { concurrency: 2 };
    s.max_requests = Some(6);
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    let t = &r.targets[0];
    assert_eq!((t.sent, t.completed, t.failed), (6, 6, 0), "{:?}", t.errors);
    assert_eq!(t.output_tokens, 60);
    // The first token is seen with the whole reply, after ~140 ms (not at 50 ms).
    within(t.ttft_ms.p50, 135.0, 300.0, "ttft p50");
    within(t.e2e_ms.p50, 135.0, 300.0, "e2e p50");
    let body = server.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["stream"], false);
    assert!(body.get("stream_options").is_none(), "{body}");
}

#[tokio::test]
async fn errors_are_counted_by_kind() {
    let unavailable = start(Script::Status(503)).await;
    let broken = start(Script::BreakAfter { tokens: 2 }).await;
    let garbage = start(Script::Garbage).await;
    let slow = start(Script::Stream {
        first: Duration::from_secs(5),
        gap: Duration::from_millis(1),
        tokens: 1,
        usage: true,
    })
    .await;
    // Bound for the test's length but not listening: connections are refused.
    let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
    closed_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = format!("http://{}", closed_socket.local_addr().unwrap());
    let mut s = spec(vec![
        Target::new("unavailable", unavailable.url()),
        Target::new("broken", broken.url()),
        Target::new("garbage", garbage.url()),
        Target::new("slow", slow.url()),
        Target::new("closed", closed),
    ]);
    s.load = Load::Closed { concurrency: 5 };
    s.max_requests = Some(10);
    s.timeout = Duration::from_millis(300);
    s.slo = Slo::parse("e2e=10s").unwrap();
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    let expect = [
        "http_503",
        "stream_broken",
        "invalid_sse",
        "timeout",
        "connect",
    ];
    for (t, kind) in r.targets.iter().zip(expect) {
        assert_eq!(
            (t.sent, t.failed, t.completed),
            (2, 2, 0),
            "{}: {:?}",
            t.name,
            t.errors
        );
        assert_eq!(t.errors.get(kind), Some(&2), "{}: {:?}", t.name, t.errors);
        assert_eq!(t.goodput.as_ref().unwrap().share, 0.0);
    }
}

#[tokio::test]
async fn two_targets_are_interleaved() {
    let script = Script::Stream {
        first: Duration::from_millis(5),
        gap: Duration::from_millis(1),
        tokens: 3,
        usage: true,
    };
    let a = start(script.clone()).await;
    let b = start(script).await;
    let mut s = spec(vec![Target::new("a", a.url()), Target::new("b", b.url())]);
    s.load = Load::Open {
        rate: 100.0,
        arrival: Arrival::Constant,
    };
    s.max_requests = Some(20);
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    assert_eq!((a.count(), b.count()), (10, 10));
    assert_eq!(
        r.targets.iter().map(|t| t.completed).collect::<Vec<_>>(),
        vec![10, 10]
    );
    // Arrivals alternate: every request to `a` is followed by one to `b` (10 ms later on
    // schedule) before the next one to `a`.
    let (ta, tb) = (
        a.arrivals.lock().unwrap().clone(),
        b.arrivals.lock().unwrap().clone(),
    );
    for (i, (x, y)) in ta.iter().zip(&tb).enumerate() {
        assert!(x < y, "request {i} to b came before the one to a");
        if let Some(next) = ta.get(i + 1) {
            assert!(y < next, "request {} to a came before {i} to b", i + 1);
        }
    }
    // Both targets got the same prompts, in the same order.
    let first =
        |s: &common::TestServer| s.bodies.lock().unwrap()[3]["messages"][0]["content"].clone();
    assert_eq!(first(&a), first(&b));
    // Constant rate: 20 arrivals at 100/s span ~190 ms.
    within(r.elapsed_s, 0.19, 1.0, "elapsed");
}

#[tokio::test]
async fn open_loop_rate_and_duration_bound() {
    let server = start(Script::Stream {
        first: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 2,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("t", server.url())]);
    s.load = Load::Open {
        rate: 200.0,
        arrival: Arrival::Poisson,
    };
    s.duration = Some(Duration::from_millis(500));
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    within(
        r.targets[0].sent as f64,
        70.0,
        130.0,
        "requests in 0.5 s at 200/s",
    );
    assert_eq!(r.targets[0].failed, 0);
}

#[tokio::test]
async fn shared_prefix_sends_history_back() {
    let server = start(Script::Stream {
        first: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 4,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("t", server.url())]);
    s.workload = WorkloadSpec::SharedPrefix(SharedPrefixSpec {
        groups: 1,
        users_per_group: 1,
        system_prompt_tokens: 20,
        question_tokens: 5,
        turns: 3,
        output_tokens: switchyard_bench::Distribution::Fixed { value: 4 },
    });
    s.load = Load::Closed { concurrency: 1 };
    s.max_requests = Some(4);
    run_load(s, CancellationToken::new()).await.unwrap();
    let bodies = server.bodies.lock().unwrap().clone();
    let lens: Vec<usize> = bodies
        .iter()
        .map(|b| b["messages"].as_array().unwrap().len())
        .collect();
    assert_eq!(lens, vec![2, 4, 6, 2]);
    let m = &bodies[2]["messages"];
    assert_eq!(
        m[0], bodies[0]["messages"][0],
        "system prompt is shared exactly"
    );
    assert_eq!(m[1], bodies[0]["messages"][1], "earlier question is resent");
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(
        m[2]["content"],
        common::reply_text(4),
        "reply is resent as received"
    );
    assert_eq!(m[3], bodies[1]["messages"][3]);
}

#[tokio::test]
async fn spread_targets_share_one_conversation() {
    let script = Script::Stream {
        first: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 4,
        usage: true,
    };
    let (a, b) = (start(script.clone()).await, start(script).await);
    let mut s = spec(vec![Target::new("a", a.url()), Target::new("b", b.url())]);
    s.workload = WorkloadSpec::SharedPrefix(SharedPrefixSpec {
        groups: 1,
        users_per_group: 1,
        system_prompt_tokens: 20,
        question_tokens: 5,
        turns: 4,
        output_tokens: switchyard_bench::Distribution::Fixed { value: 4 },
    });
    s.load = Load::Closed { concurrency: 1 };
    s.max_requests = Some(4);
    s.spread = true;
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    // One user's turns alternate between the two replicas, each turn carrying the history the
    // other one answered: one conversation, not one per target.
    let lens = |t: &common::TestServer| -> Vec<usize> {
        let bodies = t.bodies.lock().unwrap();
        bodies
            .iter()
            .map(|b| b["messages"].as_array().unwrap().len())
            .collect()
    };
    assert_eq!((lens(&a), lens(&b)), (vec![2, 6], vec![4, 8]));
    assert_eq!(
        r.targets.iter().map(|t| t.completed).collect::<Vec<_>>(),
        vec![2, 2]
    );
}

#[tokio::test]
async fn cancelling_returns_a_partial_report() {
    let server = start(Script::Stream {
        first: Duration::from_millis(5),
        gap: Duration::from_millis(5),
        tokens: 2,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("t", server.url())]);
    s.load = Load::Open {
        rate: 50.0,
        arrival: Arrival::Constant,
    };
    let stop = CancellationToken::new();
    let run = tokio::spawn(run_load(s, stop.clone()));
    // Cancel once some requests have arrived (with no duration set, only cancelling ends it).
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.count() < 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("requests did not arrive");
    stop.cancel();
    let r = run.await.unwrap().unwrap();
    assert!(r.cancelled);
    let t = &r.targets[0];
    // Requests cut off in flight are not counted; all that are reached the server.
    assert!(t.completed >= 1, "none completed before cancel");
    assert!(
        t.sent <= server.count() as u64,
        "{} > {}",
        t.sent,
        server.count()
    );
    assert_eq!(r.config["load"]["mode"], "open");
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let server = start(Script::Stream {
        first: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 3,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("t", server.url())]);
    s.http2 = true;
    s.load = Load::Closed { concurrency: 3 };
    s.max_requests = Some(9);
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    assert_eq!(
        (r.targets[0].completed, r.targets[0].output_tokens),
        (9, 27)
    );
}

#[tokio::test]
async fn arrivals_beyond_the_in_flight_cap_are_dropped() {
    let server = start(Script::Stream {
        first: Duration::from_millis(300),
        gap: Duration::from_millis(1),
        tokens: 1,
        usage: true,
    })
    .await;
    let mut s = spec(vec![Target::new("t", server.url())]);
    s.load = Load::Open {
        rate: 100.0,
        arrival: Arrival::Constant,
    };
    s.duration = Some(Duration::from_millis(95));
    s.max_in_flight = 2;
    let r = run_load(s, CancellationToken::new()).await.unwrap();
    let t = &r.targets[0];
    assert_eq!((t.sent, t.completed, t.dropped), (2, 2, 8));
    assert_eq!(server.count(), 2);
}
