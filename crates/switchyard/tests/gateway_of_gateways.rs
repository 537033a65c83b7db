//! Gateways in front of gateways: each child reports its aggregate spare capacity (an ORCA
//! header on responses to a request that asks, and `GET /capacity`), and a parent pool of
//! children balancing with `weighted_least_utilization` sends its traffic to the one with room.

mod support;

use support::origin::Origin;
use support::{client, eventually, Gateway};

fn child(origin: &Origin) -> Gateway {
    Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\npools:\n  - name: p\n    endpoints:\n      - {{address: {}, capacity: 4}}\n",
        origin.addr
    ))
}

#[tokio::test]
async fn a_parent_balances_children_on_their_reported_capacity() {
    let (oa, ob) = (Origin::start(), Origin::start());
    let (a, b) = (child(&oa), child(&ob));
    let c = client::http1();

    // Three requests held in child A: it is at 3 of its 4.
    let mut held = Vec::new();
    for k in 1..=3 {
        let (c, url) = (c.clone(), a.url("/gate"));
        held.push(tokio::spawn(async move { client::get(&c, &url).await.0 }));
        eventually("a request held in child A", || oa.hits() == k).await;
    }
    let (_, body) = a.admin_get("/capacity");
    let cap: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cap["in_flight"], 3, "{cap}");
    assert_eq!(cap["capacity"], 4, "{cap}");
    assert_eq!(cap["pools"][0]["utilization"], 0.75, "{cap}");

    // Asked, a child answers with its own report.
    let req = http::Request::get(b.url("/"))
        .header("endpoint-load-metrics-format", "TEXT")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client::send(&c, req).await;
    let report = resp.1["endpoint-load-metrics"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        report.starts_with("TEXT application_utilization=0.0100"),
        "{report}"
    );

    let parent = Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: clusters\npools:\n  - name: clusters\n    balancer: {{kind: weighted_least_utilization, blackout: 0s}}\n    endpoints: [{}, {}]\n",
        a.addr(),
        b.addr()
    ));
    // Weights follow the reports once a second (A58's update period): batches of requests
    // until one shows them, each batch judged on its own.
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let (a0, b0) = (oa.hits(), ob.hits());
        for _ in 0..20 {
            let (status, _, _) = client::get(&c, &parent.url("/")).await;
            assert_eq!(status, 200);
        }
        let (to_a, to_b) = (oa.hits() - a0, ob.hits() - b0);
        assert_eq!(to_a + to_b, 20);
        if to_b >= 4 * to_a {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child A is at 75%, B idle, yet A {to_a}, B {to_b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    oa.open_gate(3);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
}
