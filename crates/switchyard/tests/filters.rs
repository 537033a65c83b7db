//! Route filters (issue 22) end to end: header modifiers, URL rewrites, redirects and direct
//! responses, each over HTTP/1.1 and HTTP/2 downstream and HTTP/1.1 and HTTP/2 upstream, with
//! the edge cases Gateway API's HTTPRoute conformance tests list for these filters.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::origin::Origin;
use support::{client, Gateway};

const ROUTES: &str = r#"
  - name: req-h1
    match: { path_prefix: /req/h1/ }
    pool: up1
    filters: &req
      - request_headers:
          set: { X-Set: set-value, x-replace: replaced }
          add: { x-add: added, x-vars: "id=${request_id} ip=${client_ip} route=${route} user=%REQ(x-user)%" }
          remove: [X-Remove-Me]
      - request_headers: { add: { x-second: "saw %REQ(x-set)%" } }
      - url_rewrite: { path_prefix: / }
  - name: req-h2
    match: { path_prefix: /req/h2/ }
    pool: up2
    filters: *req
  - name: resp-h1
    match: { path_prefix: /resp/h1/ }
    pool: up1
    filters: &resp
      - response_headers:
          set: { cache-control: no-store, x-origin-multi: replaced }
          add: { x-served-by: sy, x-echo: "%REQ(x-user)%" }
          remove: [server, X-Origin-Private]
      - url_rewrite: { path_prefix: / }
  - name: resp-h2
    match: { path_prefix: /resp/h2/ }
    pool: up2
    filters: *resp
  - name: prefix-one
    match: { path_prefix: /prefix/one }
    pool: up1
    filters: [ url_rewrite: { path_prefix: /one } ]
  - name: strip-prefix
    match: { path_prefix: /strip-prefix }
    pool: up1
    filters: [ url_rewrite: { path_prefix: / } ]
  - name: slashes
    match: { path_prefix: /foo/ }
    pool: up1
    filters: [ url_rewrite: { path_prefix: /xyz/ } ]
  - name: full
    match: { path_prefix: /full/one }
    pool: up1
    filters: [ url_rewrite: { path: /one } ]
  - name: host-h1
    match: { path_prefix: /host/h1 }
    pool: up1
    filters: [ url_rewrite: { host: "models.internal:9000" } ]
  - name: host-h2
    match: { path_prefix: /host/h2 }
    pool: up2
    filters: [ url_rewrite: { host: "models.internal:9000" } ]
  - { name: redir-plain, match: { path_prefix: /redir/plain }, filters: [ redirect: {} ] }
  - { name: redir-https, match: { path_prefix: /redir/https }, filters: [ redirect: { scheme: https } ] }
  - { name: redir-port, match: { path_prefix: /redir/port }, filters: [ redirect: { port: 8443 } ] }
  - { name: redir-both, match: { path_prefix: /redir/both }, filters: [ redirect: { scheme: https, port: 8443 } ] }
  - { name: redir-http80, match: { path_prefix: /redir/http80 }, filters: [ redirect: { scheme: http, port: 80 } ] }
  - { name: redir-host, match: { path_prefix: /redir/host }, filters: [ redirect: { host: example.net, status: 301 } ] }
  - { name: redir-full, match: { path_prefix: /redir/full }, filters: [ redirect: { path: /new, status: 308 } ] }
  - { name: redir-prefix, match: { path_prefix: /redir/prefix/ }, filters: [ redirect: { path_prefix: /v1, status: 307, scheme: https, host: api.example.com } ] }
  - name: health
    match: { path: /healthz }
    filters: [ direct_response: { status: 200, body: "ok\n" } ]
  - name: gone
    match: { path_prefix: /gone }
    filters:
      - direct_response: { status: 410, body: '{"error":"gone"}', headers: { content-type: application/json, x-why: retired } }
      - response_headers: { add: { x-route: "${route}" } }
"#;

fn start(origin: &Origin) -> Gateway {
    Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         pools:\n  - {{name: up1, endpoints: [{a}]}}\n  - {{name: up2, protocol: http2, endpoints: [{a}]}}\n\
         routes:{ROUTES}",
        a = origin.addr
    ))
}

fn clients() -> [(&'static str, client::TestClient); 2] {
    [("h1", client::http1()), ("h2", client::http2())]
}

async fn get(
    c: &client::TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, headers, body) = client::send(c, req.body(Full::new(Bytes::new())).unwrap()).await;
    (status.as_u16(), headers, body)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

/// Every value of `name` the origin saw, in order.
fn seen(answer: &serde_json::Value, name: &str) -> Vec<String> {
    answer["header_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0] == name)
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect()
}

fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn request_headers_are_set_added_and_removed_on_every_protocol() {
    let origin = Origin::start();
    let gw = start(&origin);
    for (down, c) in clients() {
        for up in ["h1", "h2"] {
            let (status, _, body) = get(
                &c,
                &gw.url(&format!("/req/{up}/v1/models?x=1")),
                &[
                    ("x-replace", "one"),
                    ("X-Replace", "two"),
                    ("x-add", "client"),
                    ("x-remove-me", "secret"),
                    ("x-request-id", "rid-7"),
                    ("x-user", "ann"),
                ],
            )
            .await;
            let case = format!("{down} → {up}");
            assert_eq!(status, 200, "{case}");
            let a = json(&body);
            assert_eq!(a["path"], "/v1/models", "{case}");
            assert!(
                a["uri"].as_str().unwrap().ends_with("/v1/models?x=1"),
                "{case}: {a}"
            );
            // `set` replaces every value whatever the case it was sent in; `add` appends.
            assert_eq!(seen(&a, "x-set"), ["set-value"], "{case}");
            assert_eq!(seen(&a, "x-replace"), ["replaced"], "{case}");
            assert_eq!(seen(&a, "x-add"), ["client", "added"], "{case}");
            assert!(seen(&a, "x-remove-me").is_empty(), "{case}");
            assert_eq!(
                seen(&a, "x-vars"),
                ["id=rid-7 ip=127.0.0.1 route=req-".to_string() + up + " user=ann"],
                "{case}"
            );
            // Filters run in order: the second reads what the first set.
            assert_eq!(seen(&a, "x-second"), ["saw set-value"], "{case}");
            assert_eq!(
                a["version"],
                if up == "h2" { "HTTP/2.0" } else { "HTTP/1.1" }
            );
        }
    }
}

#[tokio::test]
async fn response_headers_change_before_the_first_byte_and_leave_bodies_and_trailers() {
    let origin = Origin::start();
    let gw = start(&origin);
    for (down, c) in clients() {
        for up in ["h1", "h2"] {
            let case = format!("{down} → {up}");
            let (status, h, body) = get(
                &c,
                &gw.url(&format!("/resp/{up}/plain")),
                &[("x-user", "bob")],
            )
            .await;
            assert_eq!(status, 200, "{case}");
            assert_eq!(json(&body)["path"], "/plain", "{case}");
            assert_eq!(values(&h, "cache-control"), ["no-store"], "{case}");
            assert_eq!(values(&h, "x-origin-multi"), ["replaced"], "{case}");
            assert_eq!(values(&h, "x-served-by"), ["sy"], "{case}");
            assert_eq!(values(&h, "x-echo"), ["bob"], "{case}");
            assert!(
                h.get("server").is_none() && h.get("x-origin-private").is_none(),
                "{case}: {h:?}"
            );
            assert!(h.get("x-request-id").is_some(), "{case}");
            // A stream: the head changed, every event still arrives.
            let (status, h, body) =
                get(&c, &gw.url(&format!("/resp/{up}/sse?n=3&ms=5")), &[]).await;
            assert_eq!(status, 200, "{case}");
            assert_eq!(values(&h, "cache-control"), ["no-store"], "{case}");
            assert_eq!(values(&h, "content-type"), ["text/event-stream"], "{case}");
            assert_eq!(
                String::from_utf8_lossy(&body).matches("data: ").count(),
                3,
                "{case}"
            );
        }
    }
    // Trailers pass untouched through a filtered route (HTTP/2 end to end).
    let resp = client::http2()
        .request(
            http::Request::get(gw.url("/resp/h2/trailers"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(values(resp.headers(), "cache-control"), ["no-store"]);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "payload");
}

#[tokio::test]
async fn url_rewrites_follow_gateway_api_prefix_and_full_path_rules() {
    let origin = Origin::start();
    let gw = start(&origin);
    let cases = [
        ("/prefix/one/two", "/one/two"),
        ("/prefix/one", "/one"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/strip-prefix/", "/"),
        ("/foo/bar", "/xyz/bar"),
        ("/foo/", "/xyz/"),
        ("/full/one/two?q=1", "/one?q=1"),
        ("/full/one", "/one"),
        ("/strip-prefix/a%20b?x=y&z", "/a%20b?x=y&z"),
    ];
    for (down, c) in clients() {
        for (from, want) in cases {
            let (status, _, body) = get(&c, &gw.url(from), &[]).await;
            assert_eq!(status, 200, "{down} {from}");
            let a = json(&body);
            let uri = a["uri"].as_str().unwrap();
            assert!(
                uri == want || uri.ends_with(&format!(":{}{want}", origin.addr.port())),
                "{down} {from}: {uri}"
            );
        }
        // The Host goes upstream rewritten: as `Host` on HTTP/1.1, as `:authority` on HTTP/2.
        let (_, _, body) = get(&c, &gw.url("/host/h1/x"), &[]).await;
        let a = json(&body);
        assert_eq!(a["headers"]["host"], "models.internal:9000", "{down}");
        assert_eq!(a["path"], "/host/h1/x", "{down}");
        let (_, _, body) = get(&c, &gw.url("/host/h2/x"), &[]).await;
        let a = json(&body);
        assert_eq!(
            a["uri"], "http://models.internal:9000/host/h2/x",
            "{down}: {a}"
        );
        assert!(a["headers"].get("host").is_none(), "{down}: {a}");
    }
}

#[tokio::test]
async fn redirects_follow_gateway_api_status_scheme_and_port_rules() {
    let origin = Origin::start();
    let gw = start(&origin);
    let port = gw.addr().port();
    let cases = [
        (
            "/redir/plain/a?q=1",
            302,
            format!("http://127.0.0.1:{port}/redir/plain/a?q=1"),
        ),
        (
            "/redir/https/a",
            302,
            "https://127.0.0.1/redir/https/a".to_string(),
        ),
        (
            "/redir/port/a",
            302,
            "http://127.0.0.1:8443/redir/port/a".to_string(),
        ),
        (
            "/redir/both/a",
            302,
            "https://127.0.0.1:8443/redir/both/a".to_string(),
        ),
        (
            "/redir/http80/a",
            302,
            "http://127.0.0.1/redir/http80/a".to_string(),
        ),
        (
            "/redir/host/a?b=c",
            301,
            format!("http://example.net:{port}/redir/host/a?b=c"),
        ),
        (
            "/redir/full/deep/path?k=v",
            308,
            format!("http://127.0.0.1:{port}/new?k=v"),
        ),
        (
            "/redir/prefix/models",
            307,
            "https://api.example.com/v1/models".to_string(),
        ),
        (
            "/redir/prefix/",
            307,
            "https://api.example.com/v1/".to_string(),
        ),
    ];
    for (down, c) in clients() {
        for (path, status, location) in &cases {
            let (got, h, body) = get(&c, &gw.url(path), &[]).await;
            assert_eq!(got, *status, "{down} {path}");
            assert_eq!(
                values(&h, "location"),
                std::slice::from_ref(location),
                "{down} {path}"
            );
            assert!(body.is_empty(), "{down} {path}");
        }
    }
    assert_eq!(origin.hits(), 0, "a redirect never goes upstream");
    assert_eq!(
        gw.metric("switchyard_requests_total{route=\"redir-plain\",pool=\"\",code=\"302\"}"),
        2.0
    );
}

#[tokio::test]
async fn direct_responses_answer_without_a_pool() {
    let origin = Origin::start();
    let gw = start(&origin);
    for (down, c) in clients() {
        let (status, h, body) = get(&c, &gw.url("/healthz"), &[]).await;
        assert_eq!((status, &body[..]), (200, &b"ok\n"[..]), "{down}");
        assert_eq!(values(&h, "content-type"), ["text/plain"], "{down}");
        assert!(h.get("x-request-id").is_some(), "{down}");
        let (status, h, body) = get(&c, &gw.url("/gone/v0"), &[]).await;
        assert_eq!(status, 410, "{down}");
        assert_eq!(json(&body)["error"], "gone", "{down}");
        assert_eq!(values(&h, "content-type"), ["application/json"], "{down}");
        assert_eq!(values(&h, "x-why"), ["retired"], "{down}");
        assert_eq!(values(&h, "x-route"), ["gone"], "{down}");
        // `match.path` is exact: this one is not the health route.
        let (status, _, _) = get(&c, &gw.url("/healthz/x"), &[]).await;
        assert_eq!(status, 404, "{down}");
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn every_retried_attempt_carries_the_rewritten_request() {
    let origin = Origin::start();
    // An endpoint that refuses connections, so some requests are retried on the live one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         pools:\n  - {{name: p, balancer: round_robin, endpoints: [{dead}, {live}]}}\n\
         routes:\n  - name: r\n    match: {{path_prefix: /api/}}\n    pool: p\n\
         \x20   retry: {{ attempts: 3, retry_on: [connect-failure], budget: {{ ratio: 1.0, min_concurrency: 10 }} }}\n\
         \x20   filters:\n      - request_headers: {{ set: {{ x-env: prod }} }}\n      - url_rewrite: {{ path_prefix: /v1/ }}\n",
        live = origin.addr
    ));
    let c = client::http1();
    for i in 0..6 {
        let (status, _, body) = get(&c, &gw.url(&format!("/api/item/{i}")), &[]).await;
        assert_eq!(status, 200);
        let a = json(&body);
        assert_eq!(a["path"], format!("/v1/item/{i}"));
        assert_eq!(seen(&a, "x-env"), ["prod"]);
    }
    assert!(gw.metric("switchyard_retries_total{route=\"r\",reason=\"connect-failure\"}") >= 1.0);
}
