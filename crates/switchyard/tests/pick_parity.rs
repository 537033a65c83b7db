//! The gateway and `switchyard epp` pick through one seam (issue 11, item 3): the same requests,
//! against copies of the same fleet state, get the same endpoints. Each router scrapes its own
//! copy of a fleet of fixed-load replicas (so what one router sends cannot change what the other
//! sees); after every request both wait for a scrape and for the request's in-flight tokens to
//! be released, so each pick starts from the same state: the scraped load plus what earlier
//! picks left behind (prefix blocks, adapters).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use support::static_model::{Load, StaticModel};
use support::{client, ext_proc, Gateway};
use switchyard_epp::proto::processing_response::Response as Reply;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Distinct loads, so no two replicas tie on a fresh prompt (the scores differ by more than the
/// picker's tie margin); the third, second-best on load, has an adapter loaded, so the adapter's
/// requests go there and the rest to the second.
const FLEET: [Load; 3] = [
    Load {
        waiting: 2,
        running: 6,
        kv_usage: 0.45,
        adapter: None,
    },
    Load {
        waiting: 0,
        running: 2,
        kv_usage: 0.20,
        adapter: None,
    },
    Load {
        waiting: 0,
        running: 2,
        kv_usage: 0.30,
        adapter: Some("sql-lora"),
    },
];

fn fleet() -> Vec<StaticModel> {
    FLEET
        .iter()
        .map(|l| StaticModel::start(MODEL, *l))
        .collect()
}

fn endpoints(fleet: &[StaticModel]) -> String {
    let a: Vec<String> = fleet.iter().map(|m| m.addr.to_string()).collect();
    a.join(", ")
}

/// Wait until every replica of `fleet` has been scraped twice more than `before`: the first of
/// those scrapes started after the last pick, so its result has been applied.
async fn scraped_since(fleet: &[StaticModel], before: &[usize]) {
    support::eventually("a scrape after the pick", || {
        fleet
            .iter()
            .zip(before)
            .all(|(m, b)| m.scrapes.load(Ordering::SeqCst) >= b + 2)
    })
    .await;
}

fn scrapes(fleet: &[StaticModel]) -> Vec<usize> {
    fleet
        .iter()
        .map(|m| m.scrapes.load(Ordering::SeqCst))
        .collect()
}

fn index_of(fleet: &[StaticModel], addr: &str) -> usize {
    fleet
        .iter()
        .position(|m| m.addr.to_string() == addr)
        .unwrap_or_else(|| panic!("{addr} is not in the fleet"))
}

/// The requests: shared system prompts (prefix affinity), an adapter, both OpenAI APIs, and
/// output estimates from none to large.
fn requests() -> Vec<(&'static str, String)> {
    let rules = "You route trains through a busy switchyard; answer in one line. ".repeat(30);
    let manual = "Signal manual, chapter one: a red aspect means stop and wait. ".repeat(30);
    let chat = |system: &str, user: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ("/v1/chat/completions", v.to_string())
    };
    let none = serde_json::json!({});
    vec![
        chat(&rules, "which track for the 9:15?", serde_json::json!({"max_tokens": 16})),
        chat(&rules, "and the 9:40?", serde_json::json!({"max_tokens": 900})),
        chat(&manual, "what does yellow mean?", none.clone()),
        (
            "/v1/completions",
            serde_json::json!({"model": MODEL, "prompt": format!("{manual} Flashing yellow means"), "max_tokens": 8}).to_string(),
        ),
        chat("", "select trains late by ten minutes", serde_json::json!({"model": "sql-lora"})),
        chat(&rules, "is the 10:05 on time?", none.clone()),
        (
            "/v1/completions",
            serde_json::json!({"model": "sql-lora", "prompt": "SELECT * FROM trains WHERE", "max_tokens": 32}).to_string(),
        ),
        chat("Be brief.", "hello", none.clone()),
        chat(&manual, "and green?", serde_json::json!({"max_tokens": 64})),
        chat(&rules, "platform for the 11:00?", serde_json::json!({"max_completion_tokens": 5})),
    ]
}

/// Ask the endpoint picker for `body` on `path`, as Envoy would (headers, then the whole body),
/// and end the stream: its trailers come after the pick's tokens are released.
async fn epp_pick(epp: SocketAddr, path: &str, body: &str) -> String {
    let (mut send, resp, _driver) = ext_proc::stream(epp).await;
    let headers = ext_proc::headers(
        &[
            (":method", "POST"),
            (":path", path),
            ("content-type", "application/json"),
        ],
        false,
    );
    send.send_data(ext_proc::message(&headers), false).unwrap();
    send.send_data(
        ext_proc::message(&ext_proc::body(body.as_bytes(), true)),
        true,
    )
    .unwrap();
    let (data, status) = ext_proc::reply(resp).await;
    assert_eq!(status.as_deref(), Some("0"));
    ext_proc::decode(&data)
        .into_iter()
        .filter_map(|m| match m.response {
            Some(Reply::RequestBody(b)) => b.response?.header_mutation,
            _ => None,
        })
        .flat_map(|m| m.set_headers)
        .filter_map(|h| h.header)
        .find(|h| h.key == switchyard_epp::DESTINATION_HEADER)
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value
            } else {
                String::from_utf8(h.raw_value).unwrap()
            }
        })
        .unwrap_or_else(|| panic!("no destination for {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_the_endpoint_picker_pick_alike() {
    let (for_gateway, for_epp) = (fleet(), fleet());
    // The two routers scrape different copies of the fleet, at different addresses, so a new
    // prefix's rendezvous owner (hashed with the address) differs between them by design.
    let balancer = "{kind: inference, scrape_interval: 20ms, weights: {prefix_owner: 0}}";
    let gw = Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0, trusted_headers: [debug]}}]\n\
         routes: [{{name: r, match: {{path_prefix: /}}, pool: llama}}]\n\
         pools:\n  - name: llama\n    balancer: {balancer}\n    endpoints: [{}]\n",
        endpoints(&for_gateway)
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("epp.yaml");
    std::fs::write(
        &config,
        format!(
            "pools:\n  - name: llama\n    balancer: {balancer}\n    endpoints: [{}]\n",
            endpoints(&for_epp)
        ),
    )
    .unwrap();
    let (_epp, epp) = support::start_epp(&config, &[]);
    scraped_since(&for_gateway, &[0; 3]).await;
    scraped_since(&for_epp, &[0; 3]).await;

    let c = client::http1();
    let mut picks = Vec::new();
    for (i, (path, body)) in requests().into_iter().enumerate() {
        let before = scrapes(&for_gateway);
        let req = http::Request::post(gw.url(path))
            .header("content-type", "application/json")
            .header("x-switchyard-debug", "1")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let (status, headers, answer) = client::send(&c, req).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let served = headers["x-served-by"].to_str().unwrap().to_string();
        let why = headers["x-switchyard-pick"].to_str().unwrap().to_string();
        support::eventually("the gateway to release the request's tokens", || {
            let pools = support::fleet::pools(&gw);
            pools["pools"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["inference"]["in_flight_tokens"] == 0.0)
        })
        .await;
        scraped_since(&for_gateway, &before).await;

        let before = scrapes(&for_epp);
        let picked = epp_pick(epp, path, &body).await;
        scraped_since(&for_epp, &before).await;

        let (g, e) = (index_of(&for_gateway, &served), index_of(&for_epp, &picked));
        assert_eq!(
            g, e,
            "request {i} ({path}): gateway picked {g} ({why}), epp {e}; so far {picks:?}"
        );
        picks.push(g);
    }
    // The sequence exercised more than one reason to pick: load, prefix, adapter.
    let mut distinct = picks.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "every request went to one replica: {picks:?}"
    );
}
