//! The client against a real hyper server on a real socket.

use std::time::Duration;

use hyper::StatusCode;

use super::*;
use crate::model::Frame;
use crate::test_server::{events, Canned, TestServer};

const FRAME: &str = include_str!("../testdata/frame.json");

/// No test waits on the network longer than this.
const BOUND: Duration = Duration::from_secs(10);

fn admin(server: &TestServer) -> Admin {
    Admin::parse(&server.addr.to_string()).unwrap()
}

#[tokio::test]
async fn reads_a_document() {
    let server = TestServer::start(vec![("/stats", Canned::Json(FRAME))]).await;
    let frame: Frame = tokio::time::timeout(BOUND, admin(&server).get_json("/stats"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.routes.len(), 3);
    assert_eq!(frame.pools[1].endpoints.len(), 3);
    assert_eq!(*server.requests.lock().unwrap(), vec!["/stats".to_owned()]);
}

#[tokio::test]
async fn reads_events_across_chunks_until_the_stream_ends() {
    let stream = events(&[
        r#"{"time_ms": 1}"#,
        r#"{"time_ms": 2}"#,
        r#"{"dropped": 3}"#,
    ]);
    // Cut mid-field, mid-line and between the two newlines that end an event.
    let chunks = vec![
        stream[..3].to_vec(),
        stream[3..12].to_vec(),
        stream[12..21].to_vec(),
        stream[21..].to_vec(),
    ];
    let server = TestServer::start(vec![("/stats/stream", Canned::Events(chunks))]).await;
    let mut events = tokio::time::timeout(BOUND, admin(&server).stream("/stats/stream"))
        .await
        .unwrap()
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(BOUND, events.next_event())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push(event);
    }
    assert_eq!(
        seen,
        vec![
            r#"{"time_ms": 1}"#,
            r#"{"time_ms": 2}"#,
            r#"{"dropped": 3}"#
        ]
    );
}

#[tokio::test]
async fn an_oversized_event_ends_the_stream_with_an_error() {
    let big = format!("data: {}\n\n", "x".repeat(300)).into_bytes();
    let chunks = vec![events(&["{}"]), big];
    let server = TestServer::start(vec![("/tap", Canned::Events(chunks))]).await;
    let mut admin = admin(&server);
    admin.max_event_bytes = 256;
    let mut events = admin.stream("/tap").await.unwrap();
    assert_eq!(events.next_event().await.unwrap().as_deref(), Some("{}"));
    let err = tokio::time::timeout(BOUND, events.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.failure,
        Failure::Event(SseError::TooLarge { limit: 256 })
    );
    assert!(err.to_string().contains("larger than 256 bytes"), "{err}");
    assert_eq!(
        events.next_event().await.unwrap(),
        None,
        "the stream is over"
    );
}

#[tokio::test]
async fn errors_name_the_address_the_path_and_the_step() {
    let server = TestServer::start(vec![
        (
            "/gone",
            Canned::Status(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        ),
        ("/text", Canned::Text("hello")),
        ("/bad", Canned::Json(r#"{"routes": 5}"#)),
    ])
    .await;
    let admin = admin(&server);
    let addr = server.addr.to_string();

    let err = admin.get_json::<Frame>("/gone").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("admin {addr}, GET /gone: status 503 Service Unavailable: draining")
    );
    let err = admin.get_json::<Frame>("/missing").await.unwrap_err();
    assert!(matches!(err.failure, Failure::Status { status, .. } if status == 404));

    let err = admin.stream("/text").await.unwrap_err();
    assert_eq!(err.failure, Failure::NotEventStream("text/plain".into()));

    let err = admin.get_json::<Frame>("/bad").await.unwrap_err();
    assert!(matches!(err.failure, Failure::Json(_)), "{err}");
    assert!(err
        .to_string()
        .starts_with(&format!("admin {addr}, GET /bad: not the expected JSON")));
}

#[tokio::test]
async fn a_refused_connection_is_reported() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Admin::parse(&format!("http://{addr}/"))
        .unwrap()
        .get_json::<Frame>("/stats")
        .await
        .unwrap_err();
    assert!(matches!(err.failure, Failure::Connect(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "admin http://{addr}/, GET /stats: cannot connect: "
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out_on_the_head() {
    // Bound and listening, so the kernel completes the handshake, but nothing ever answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut admin = Admin::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    admin.head_timeout = Duration::from_millis(100);
    let err = tokio::time::timeout(BOUND, admin.stream("/stats/stream"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.failure,
        Failure::HeadTimeout(Duration::from_millis(100))
    );
    assert!(
        err.to_string().ends_with("no response within 100ms"),
        "{err}"
    );
    drop(listener);
}

#[test]
fn admin_addresses() {
    for (given, host, port, authority) in [
        ("127.0.0.1:9901", "127.0.0.1", 9901, "127.0.0.1:9901"),
        ("http://localhost:9901", "localhost", 9901, "localhost:9901"),
        (
            "http://localhost:9901/",
            "localhost",
            9901,
            "localhost:9901",
        ),
        ("[::1]:9901", "::1", 9901, "[::1]:9901"),
    ] {
        let admin = Admin::parse(given).unwrap();
        assert_eq!(
            (admin.host.as_str(), admin.port, admin.authority.as_str()),
            (host, port, authority),
            "{given}"
        );
        assert_eq!(admin.as_str(), given);
    }
    for bad in ["https://gw:9901", "gw:9901/stats", "gw", "", "gw:port"] {
        let err = Admin::parse(bad).unwrap_err();
        assert!(matches!(err.failure, Failure::BadAddress(_)), "{bad}");
        assert!(err
            .to_string()
            .starts_with(&format!("admin {bad}: not an admin address")));
    }
}

#[test]
fn query_values_are_encoded() {
    let mut query = String::new();
    push_query(&mut query, "route", "chat v2");
    push_query(&mut query, "status", "5xx");
    push_query(&mut query, "pool", "a&b=c/é");
    assert_eq!(query, "?route=chat%20v2&status=5xx&pool=a%26b%3Dc%2F%C3%A9");
}
