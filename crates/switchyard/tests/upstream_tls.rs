//! TLS and mTLS towards upstreams (`pools[].tls`): rustls origins made in the test with rcgen
//! certificates, for HTTP/1.1 and HTTP/2 pools; each certificate problem answered 502 with its
//! cause and logged once; health checks over TLS; a reload re-reading the CA file.

mod support;

use std::path::Path;

use support::client;
use support::pki::{loopback, Ca, Issued, Leaf};
use support::tls_origin::TlsOrigin;
use support::Gateway;

fn config(routes: &str, pools: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n{routes}pools:\n{pools}"
    )
}

fn route(name: &str, pool: &str) -> String {
    format!("  - {{name: {name}, match: {{path_prefix: /{name}}}, pool: {pool}}}\n")
}

fn server_cert(ca: &Ca, dir: &Path, file: &str, expired: bool) -> Issued {
    ca.issue(
        dir,
        file,
        Leaf {
            cn: "origin",
            dns: &["origin.internal"],
            ips: &[loopback()],
            expired,
            ..Leaf::default()
        },
    )
}

async fn get_json(gw: &Gateway, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = client::get(&client::http1(), &gw.url(path)).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::json!({ "raw": String::from_utf8_lossy(&body) }));
    (status.as_u16(), v)
}

#[tokio::test]
async fn http1_and_http2_pools_reach_a_tls_origin_by_ip_and_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "upstreams");
    let origin = TlsOrigin::start(&server_cert(&ca, dir.path(), "origin", false), None);
    let ca_pem = ca.pem.display();
    let yaml = config(
        &(route("h1", "h1") + &route("h2", "h2")),
        &format!(
            "  - {{name: h1, endpoints: [{a}], tls: {{ca: {ca_pem}}}}}\n  - {{name: h2, protocol: http2, endpoints: [{a}], tls: {{ca: {ca_pem}, sni: origin.internal}}}}\n",
            a = origin.addr
        ),
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..3 {
        let (status, v) = get_json(&gw, "/h1/x").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["alpn"], "http/1.1");
        assert_eq!(v["path"], "/h1/x");
        let (status, v) = get_json(&gw, "/h2/y").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["alpn"], "h2");
        assert_eq!(v["version"], "HTTP/2.0");
    }
    assert_eq!(origin.hits(), 6);
    // Idle TLS connections are reused (the session tickets a TLS 1.3 server sends after the
    // handshake do not make them look stale): one per pool.
    assert_eq!(origin.handshakes(), 2);
    // An upgrade goes through the pooled upgrade client, over TLS as well (the origin answers
    // 200, so nothing switches and the connection closes after the answer).
    let raw = client::raw_exchange(
        gw.addr(),
        b"GET /h1/ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n",
        support::WAIT,
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"path\":\"/h1/ws\""), "{raw}");
    assert_eq!(origin.hits(), 7);
}

#[tokio::test]
async fn an_mtls_origin_needs_the_pools_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "upstreams");
    let clients = Ca::new(dir.path(), "gateways");
    let origin = TlsOrigin::start(
        &server_cert(&ca, dir.path(), "origin", false),
        Some(&clients.pem),
    );
    let mine = clients.issue(
        dir.path(),
        "gateway",
        Leaf {
            cn: "gateway",
            uris: &["spiffe://test/gateway"],
            client: true,
            ..Leaf::default()
        },
    );
    let ca_pem = ca.pem.display();
    for protocol in ["http1", "http2"] {
        let yaml = config(
            &(route("yes", "with") + &route("no", "without")),
            &format!(
                "  - {{name: with, protocol: {protocol}, endpoints: [{a}], tls: {{ca: {ca_pem}, cert: {}, key: {}}}}}\n  - {{name: without, protocol: {protocol}, endpoints: [{a}], tls: {{ca: {ca_pem}}}}}\n",
                mine.cert.display(),
                mine.key.display(),
                a = origin.addr
            ),
        );
        let gw = Gateway::start(&yaml);
        let (status, v) = get_json(&gw, "/yes").await;
        assert_eq!(status, 200, "{protocol}: {v}");
        for _ in 0..4 {
            let (status, v) = get_json(&gw, "/no").await;
            assert_eq!(status, 502, "{protocol}: {v}");
            assert_eq!(v["error"]["type"], "upstream_tls_error", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("client certificate"),
                "{v}"
            );
        }
        assert_eq!(
            gw.metric(
                "switchyard_upstream_tls_errors_total{pool=\"without\",reason=\"client_certificate_rejected\"}"
            ),
            4.0,
            "{protocol}"
        );
        assert_eq!(
            gw.log_count(
                "upstream TLS failed (logged once per endpoint and cause until the next reload)"
            ),
            1,
            "{protocol}: one line for four failures"
        );
    }
}

#[tokio::test]
async fn bad_upstream_certificates_are_502_with_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "upstreams");
    let stranger = Ca::new(dir.path(), "stranger");
    let good = TlsOrigin::start(&server_cert(&ca, dir.path(), "good", false), None);
    let expired = TlsOrigin::start(&server_cert(&ca, dir.path(), "expired", true), None);
    let untrusted = TlsOrigin::start(
        &server_cert(&stranger, dir.path(), "untrusted", false),
        None,
    );
    let ca_pem = ca.pem.display();
    let routes: String = ["name", "expired", "untrusted", "noverify"]
        .iter()
        .map(|n| route(n, n))
        .collect();
    let yaml = config(
        &routes,
        &format!(
            "  - {{name: name, endpoints: [{}], tls: {{ca: {ca_pem}, sni: someone-else.internal}}}}\n  - {{name: expired, endpoints: [{}], tls: {{ca: {ca_pem}}}}}\n  - {{name: untrusted, protocol: http2, endpoints: [{}], tls: {{ca: {ca_pem}}}}}\n  - {{name: noverify, endpoints: [{}], tls: {{verify: false}}}}\n",
            good.addr, expired.addr, untrusted.addr, untrusted.addr
        ),
    );
    let gw = Gateway::start(&yaml);
    for (path, cause, words) in [
        (
            "/name",
            "certificate_name_mismatch",
            "not valid for the server name",
        ),
        ("/expired", "certificate_expired", "expired"),
        (
            "/untrusted",
            "certificate_untrusted",
            "not signed by a trusted CA",
        ),
    ] {
        let (status, v) = get_json(&gw, path).await;
        assert_eq!(status, 502, "{path}: {v}");
        assert_eq!(v["error"]["type"], "upstream_tls_error", "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(words),
            "{path}: {v}"
        );
        let series = format!(
            "switchyard_upstream_tls_errors_total{{pool=\"{}\",reason=\"{cause}\"}}",
            &path[1..]
        );
        assert_eq!(gw.metric(&series), 1.0, "{series}");
    }
    // `verify: false` accepts what `verify: true` refused.
    let (status, v) = get_json(&gw, "/noverify").await;
    assert_eq!(status, 200, "{v}");
    assert!(
        gw.log_count("tls.verify is off: upstream certificates are not checked") >= 1,
        "a warning at load"
    );
}

#[tokio::test]
async fn health_checks_over_tls_take_out_an_endpoint_with_a_bad_certificate() {
    // An HTTP check sends its request over TLS; a TCP check of a TLS pool completes the
    // handshake, so a certificate the pool would refuse fails it too.
    for (check, settings) in [("http", "{path: /health}"), ("tcp", "{}")] {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "upstreams");
        let good = TlsOrigin::start(&server_cert(&ca, dir.path(), "good", false), None);
        let expired = TlsOrigin::start(&server_cert(&ca, dir.path(), "expired", true), None);
        let yaml = config(
            &route("p", "p"),
            &format!(
                "  - name: p\n    endpoints: [{}, {}]\n    tls: {{ca: {}}}\n    health: {{{check}: {settings}, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 1}}\n",
                good.addr,
                expired.addr,
                ca.pem.display(),
            ),
        );
        let gw = Gateway::start(&yaml);
        let health = |addr: std::net::SocketAddr| {
            let (_, pools) = gw.admin_get("/pools");
            let v: serde_json::Value = serde_json::from_str(&pools).unwrap();
            v["pools"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["address"] == addr.to_string())
                .map(|e| e["healthy"].as_bool().unwrap())
                .unwrap()
        };
        support::eventually("the expired endpoint to be marked unhealthy", || {
            !health(expired.addr)
        })
        .await;
        if check == "http" {
            support::eventually("the good endpoint probed over TLS", || good.hits() >= 2).await;
        }
        assert!(health(good.addr), "{check}");
        // Every request now goes to the good endpoint.
        for _ in 0..5 {
            let (status, v) = get_json(&gw, "/p").await;
            assert_eq!(status, 200, "{check}: {v}");
        }
    }
}

#[tokio::test]
async fn a_reload_rereads_the_ca_and_refuses_an_unreadable_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = Ca::new(dir.path(), "old");
    let new = Ca::new(dir.path(), "new");
    let origin = TlsOrigin::start(&server_cert(&new, dir.path(), "origin", false), None);
    let trusted = dir.path().join("trusted.pem");
    std::fs::copy(&old.pem, &trusted).unwrap();
    let yaml = config(
        &route("p", "p"),
        &format!(
            "  - {{name: p, endpoints: [{}], tls: {{ca: {}}}}}\n",
            origin.addr,
            trusted.display()
        ),
    );
    let gw = Gateway::start(&yaml);
    let (status, v) = get_json(&gw, "/p").await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["type"], "upstream_tls_error");
    // The same config, the CA file rotated underneath it.
    std::fs::copy(&new.pem, &trusted).unwrap();
    gw.reload(&yaml);
    assert_eq!(gw.log_count("config reloaded"), 1);
    let (status, v) = get_json(&gw, "/p").await;
    assert_eq!(status, 200, "{v}");
    // A CA file that holds no certificate refuses the reload, naming the file; the previous
    // generation keeps serving.
    std::fs::write(&trusted, "not a certificate\n").unwrap();
    gw.reload(&yaml);
    let rejected = gw.log_lines("config reload rejected; keeping the previous config");
    assert_eq!(rejected.len(), 1);
    let why = rejected[0]["error"].as_str().unwrap();
    assert!(
        why.contains("pool `p`") && why.contains("trusted.pem"),
        "{why}"
    );
    let (status, v) = get_json(&gw, "/p").await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_tls_failure_is_a_connect_failure_retried_on_another_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "upstreams");
    let good = TlsOrigin::start(&server_cert(&ca, dir.path(), "good", false), None);
    let expired = TlsOrigin::start(&server_cert(&ca, dir.path(), "expired", true), None);
    let routes = "  - name: p\n    match: {path_prefix: /p}\n    pool: p\n    retry: { attempts: 2, retry_on: [connect-failure], budget: { ratio: 1.0, min_concurrency: 10 } }\n";
    let yaml = config(
        routes,
        &format!(
            "  - {{name: p, balancer: round_robin, endpoints: [{}, {}], tls: {{ca: {}}}}}\n",
            expired.addr,
            good.addr,
            ca.pem.display()
        ),
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..6 {
        let (status, v) = get_json(&gw, "/p").await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(good.hits(), 6);
    let failed = gw
        .metric("switchyard_upstream_tls_errors_total{pool=\"p\",reason=\"certificate_expired\"}");
    assert!(failed >= 1.0, "the expired endpoint was tried: {failed}");
    assert_eq!(
        gw.metric("switchyard_retries_total{route=\"p\",reason=\"connect-failure\"}"),
        failed,
        "each TLS failure retried as a connect failure"
    );
}
