//! 0-RTT on an HTTP/3 listener with `allow_0rtt: true`: early data is served only for
//! idempotent requests (with `Early-Data: 1` upstream), others get 425 (RFC 8470).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::support::origin::Origin;
use super::{client_config, h3_gateway, request};

/// A UDP relay between a QUIC client and the gateway that can hold back everything the gateway
/// sends: the client then never sees the server's handshake, so it cannot complete it and sends
/// its requests as 0-RTT early data, which the gateway serves (or refuses) as early data,
/// deterministically.
struct HoldingRelay {
    addr: SocketAddr,
    release: Arc<tokio::sync::Notify>,
}

impl HoldingRelay {
    async fn start(to: SocketAddr) -> Self {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(to).await.unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let addr = front.local_addr().unwrap();
        {
            let (front, back, client) = (front.clone(), back.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let _ = back.send(&buf[..n]).await;
                }
            });
        }
        {
            let release = release.clone();
            tokio::spawn(async move {
                let mut held: Vec<Vec<u8>> = Vec::new();
                let mut holding = true;
                let mut buf = vec![0u8; 65536];
                loop {
                    tokio::select! {
                        r = back.recv(&mut buf) => {
                            let Ok(n) = r else { return };
                            if holding {
                                held.push(buf[..n].to_vec());
                                continue;
                            }
                            let to = *client.lock().unwrap();
                            if let Some(to) = to {
                                let _ = front.send_to(&buf[..n], to).await;
                            }
                        }
                        _ = release.notified(), if holding => {
                            holding = false;
                            let to = client.lock().unwrap().expect("the client spoke first");
                            for p in held.drain(..) {
                                let _ = front.send_to(&p, to).await;
                            }
                        }
                    }
                }
            });
        }
        Self { addr, release }
    }
}

#[tokio::test]
async fn zero_rtt_serves_idempotent_requests_early_and_refuses_others_with_425() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, der) = h3_gateway(dir.path(), &origin, "    quic: {allow_0rtt: true}\n");

    // One client config for both connections: its session cache carries the ticket over.
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(&der, true));

    // A full handshake first, for a session ticket.
    let first = endpoint
        .connect(gw.addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(first.clone()))
        .await
        .unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    assert_eq!(request(&mut send, "GET", "/", None).await.status, 200);
    first.close(0u32.into(), b"");

    // Resumed with 0-RTT through a relay that keeps the server's handshake from the client.
    let relay = HoldingRelay::start(gw.addr()).await;
    let (conn, _accepted) = endpoint
        .connect(relay.addr, "localhost")
        .unwrap()
        .into_0rtt()
        .unwrap_or_else(|_| panic!("the session should resume with 0-RTT"));
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let mut get = send
        .send_request(
            http::Request::get("https://localhost/early")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    get.finish().await.unwrap();
    let mut post = send
        .send_request(
            http::Request::post("https://localhost/early")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    post.send_data(Bytes::from_static(b"x")).await.unwrap();
    post.finish().await.unwrap();
    // The GET reached the origin while the client could not yet have finished its handshake.
    for _ in 0..1000 {
        if origin.hits() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        origin.hits(),
        2,
        "the early GET was served before the handshake ended"
    );

    relay.release.notify_one();
    let resp = get.recv_response().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    while let Some(mut chunk) = get.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["early-data"], "1", "{seen}");
    let resp = post.recv_response().await.unwrap();
    assert_eq!(resp.status(), 425, "a replayable POST is not acted on");
    assert_eq!(origin.hits(), 2, "the early POST never reached the origin");

    // Once the handshake is done, the same POST is served and nothing is marked early.
    conn.handshake_data().expect("handshake done");
    let later = request(&mut send, "POST", "/later", Some(Bytes::from_static(b"x"))).await;
    assert_eq!(later.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&later.body()).unwrap();
    assert!(seen["headers"].get("early-data").is_none(), "{seen}");
}
