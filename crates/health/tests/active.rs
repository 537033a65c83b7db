//! Active health checks against real servers on loopback port 0: an HTTP/1.1 origin whose
//! `/health` status the test flips, a closed TCP port, and a tiny h2c gRPC health server.
//! Waits are on events, never on fixed sleeps; intervals are 50ms to keep the suite fast.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_balance::EndpointState;
use switchyard_health::probe::{decode_check_request, encode_check_response};
use switchyard_health::{ActiveCheck, EventSink, HealthChecker, HealthEvent, Probe, ProbeFailure};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

/// An HTTP/1.1 origin answering every request with `status`, counting requests.
struct Origin {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

async fn origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let (s, h) = (status.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (s, h) = (s.clone(), h.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (s, h) = (s.clone(), h.clone());
                    async move {
                        assert_eq!(req.uri().path(), "/health");
                        h.fetch_add(1, Ordering::SeqCst);
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = s.load(Ordering::SeqCst).try_into().unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Origin { addr, status, hits }
}

fn http_check() -> ActiveCheck {
    ActiveCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        jitter: Some(Duration::from_millis(5)),
        ..ActiveCheck::new(Probe::Http {
            path: "/health".into(),
            expect: vec![(200, 204)],
        })
    }
}

/// A sink that forwards events with the origin's hit count at the moment of the transition.
fn sink(
    hits: Option<Arc<AtomicUsize>>,
) -> (EventSink, mpsc::UnboundedReceiver<(HealthEvent, usize)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: EventSink = Arc::new(move |event| {
        let seen = hits.as_ref().map_or(0, |h| h.load(Ordering::SeqCst));
        let _ = tx.send((event, seen));
    });
    (sink, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(HealthEvent, usize)>) -> (HealthEvent, usize) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no health event in time")
        .unwrap()
}

async fn wait_for_hits(hits: &AtomicUsize, at_least: usize) {
    tokio::time::timeout(WAIT, async {
        while hits.load(Ordering::SeqCst) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("origin was not probed in time");
}

#[tokio::test]
async fn http_endpoint_goes_unhealthy_after_threshold_and_returns() {
    let origin = origin().await;
    let endpoint = Arc::new(EndpointState::new(origin.addr));
    let (sink, mut events) = sink(Some(origin.hits.clone()));
    let check = ActiveCheck {
        healthy: 2,
        unhealthy: 3,
        ..http_check()
    };
    let _checker = HealthChecker::new(Some(check), [endpoint.clone()], sink);

    wait_for_hits(&origin.hits, 2).await;
    assert!(
        endpoint.is_healthy(),
        "starts healthy, passing probes change nothing"
    );
    let before = origin.hits.load(Ordering::SeqCst);
    origin.status.store(503, Ordering::SeqCst);

    let (event, hits) = next(&mut events).await;
    assert!(!event.healthy);
    assert_eq!(event.address, origin.addr);
    assert!(
        event.reason.contains("unexpected status 503"),
        "{}",
        event.reason
    );
    // Exactly `unhealthy` failing probes (one pass may have been in flight when we flipped).
    assert!(
        (before + 3..=before + 4).contains(&hits),
        "{before} → {hits}"
    );
    assert!(!endpoint.is_healthy());

    let before = origin.hits.load(Ordering::SeqCst);
    origin.status.store(204, Ordering::SeqCst);
    let (event, hits) = next(&mut events).await;
    assert!(event.healthy, "{event:?}");
    assert!(
        (before + 2..=before + 3).contains(&hits),
        "{before} → {hits}"
    );
    assert!(endpoint.is_healthy());
}

#[tokio::test]
async fn tcp_check_against_a_closed_port_fails() {
    // Bound for the test's length but not listening: connections are refused.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = closed.local_addr().unwrap();
    let endpoint = Arc::new(EndpointState::new(addr));
    let (sink, mut events) = sink(None);
    let check = ActiveCheck {
        interval: Duration::from_millis(50),
        unhealthy: 2,
        ..ActiveCheck::new(Probe::Tcp)
    };
    let checker = HealthChecker::new(Some(check), [endpoint.clone()], sink);
    let (event, _) = next(&mut events).await;
    assert!(!event.healthy);
    assert!(event.reason.contains("connect failed"), "{}", event.reason);
    assert!(!endpoint.is_healthy());
    assert!(!checker.is_healthy(addr));

    let open = origin().await;
    assert_eq!(Probe::Tcp.run(open.addr, WAIT).await, Ok(()));
}

#[tokio::test]
async fn reload_starts_and_stops_tasks_and_keeps_state() {
    let (a, b) = (origin().await, origin().await);
    let (ea, eb) = (
        Arc::new(EndpointState::new(a.addr)),
        Arc::new(EndpointState::new(b.addr)),
    );
    let (sink, mut events) = sink(None);
    let check = ActiveCheck {
        unhealthy: 1,
        ..http_check()
    };
    a.status.store(500, Ordering::SeqCst);
    let mut checker = HealthChecker::new(Some(check.clone()), [ea.clone()], sink);
    let (event, _) = next(&mut events).await;
    assert_eq!((event.address, event.healthy), (a.addr, false));

    // Add b: it gets probed; a keeps its (unhealthy) state.
    checker.update(Some(check.clone()), [ea.clone(), eb.clone()]);
    wait_for_hits(&b.hits, 2).await;
    assert!(!ea.is_healthy() && !checker.is_healthy(a.addr));
    assert!(eb.is_healthy());

    // Remove a: its probes stop (at most one already in flight).
    checker.update(Some(check), [eb.clone()]);
    let frozen = a.hits.load(Ordering::SeqCst);
    let b_now = b.hits.load(Ordering::SeqCst);
    wait_for_hits(&b.hits, b_now + 3).await;
    assert!(a.hits.load(Ordering::SeqCst) <= frozen + 1);

    // Drop stops everything.
    drop(checker);
    let frozen = b.hits.load(Ordering::SeqCst);
    let a_probe = origin().await; // a yardstick of elapsed probe intervals
    let yardstick = Arc::new(EndpointState::new(a_probe.addr));
    let (sink, _events) = self::sink(None);
    let _other = HealthChecker::new(Some(http_check()), [yardstick], sink);
    wait_for_hits(&a_probe.hits, 3).await;
    assert!(b.hits.load(Ordering::SeqCst) <= frozen + 1);
}

/// A tiny h2c gRPC health server: service name → ServingStatus; unknown → NOT_FOUND (5).
async fn grpc_server(
    statuses: Arc<Mutex<HashMap<String, u64>>>,
    calls: Arc<AtomicU64>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (statuses, calls) = (statuses.clone(), calls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (statuses, calls) = (statuses.clone(), calls.clone());
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        assert_eq!(req.headers()["content-type"], "application/grpc");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let service = decode_check_request(body).unwrap();
                        let status = statuses.lock().unwrap().get(&service).copied();
                        Ok::<_, Infallible>(grpc_response(status))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn grpc_response(status: Option<u64>) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let builder = hyper::Response::builder().header("content-type", "application/grpc");
    match status {
        Some(status) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let body = Full::new(encode_check_response(status))
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            builder.body(body).unwrap()
        }
        // Trailers-only response: grpc-status in the headers, no body.
        None => builder
            .header("grpc-status", "5")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
    }
}

#[tokio::test]
async fn grpc_health_check_reads_serving_status() {
    let statuses = Arc::new(Mutex::new(HashMap::from([
        (String::new(), 1),
        ("llm".to_string(), 2),
    ])));
    let calls = Arc::new(AtomicU64::new(0));
    let addr = grpc_server(statuses.clone(), calls.clone()).await;
    let probe = |service: &str| Probe::Grpc {
        service: service.to_string(),
    };
    assert_eq!(probe("").run(addr, WAIT).await, Ok(()));
    assert_eq!(
        probe("llm").run(addr, WAIT).await,
        Err(ProbeFailure::NotServing(2))
    );
    assert_eq!(
        probe("nope").run(addr, WAIT).await,
        Err(ProbeFailure::GrpcStatus(5))
    );

    // Through the checker: flipping the service to NOT_SERVING and back flips the endpoint.
    let endpoint = Arc::new(EndpointState::new(addr));
    let (sink, mut events) = sink(None);
    let check = ActiveCheck {
        interval: Duration::from_millis(50),
        healthy: 1,
        unhealthy: 2,
        ..ActiveCheck::new(probe("llm"))
    };
    let _checker = HealthChecker::new(Some(check), [endpoint.clone()], sink);
    let (event, _) = next(&mut events).await;
    assert!(!event.healthy);
    assert!(event.reason.contains("NOT_SERVING"), "{}", event.reason);
    statuses.lock().unwrap().insert("llm".to_string(), 1);
    let (event, _) = next(&mut events).await;
    assert!(event.healthy);
    assert!(endpoint.is_healthy());
}
