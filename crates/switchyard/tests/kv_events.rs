//! Precise prefix routing end to end: simulated replicas publish their KV-cache events (with
//! messages dropped on the way, so gaps are replayed), the gateway subscribes per endpoint, and
//! a request goes to the replica that really holds its prefix, even one the gateway never sent
//! it to; a cleared cache and a restarted replica's entries are dropped; a gateway started late
//! holds what the first one holds.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send, TestClient};
use support::fleet::{kv_events_config, pools, MODEL};
use support::{eventually, Gateway};
use switchyard_sim::config::KvEventsConfig;
use switchyard_sim::{start_fleet, Fleet, FleetConfig, ReplicaConfig};

async fn kv_fleet(n: usize, loss: f64) -> Fleet {
    start_fleet(FleetConfig {
        model: MODEL.into(),
        replicas: vec![ReplicaConfig {
            count: n,
            speed: 20.0,
            ..ReplicaConfig::default()
        }],
        kv_events: Some(KvEventsConfig {
            shape: "map".into(),
            loss,
            ..KvEventsConfig::default()
        }),
        ..FleetConfig::default()
    })
    .await
    .unwrap()
}

fn kv_status(gw: &Gateway, i: usize) -> serde_json::Value {
    pools(gw)["pools"][0]["endpoints"][i]["inference"]["kv_events"].clone()
}

async fn complete(c: &TestClient, url: &str, prompt: &str) -> (http::HeaderMap, serde_json::Value) {
    let body = serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 2});
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("x-switchyard-debug", "1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (status, headers, body) = send(c, req).await;
    assert_eq!(status, 200, "{body:?}");
    (headers, serde_json::from_slice(&body).unwrap())
}

fn direct(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/completions")
}

/// A lost batch shows as a gap when a later one arrives (or at the subscriber's idle probe, a
/// second later): keep `target` publishing (distinct prompts, each storing blocks of its own)
/// until `done`. Batches apply in order, so once one sent after an event is applied, that event
/// is too.
async fn publish_until(c: &TestClient, target: SocketAddr, what: &str, done: impl Fn() -> bool) {
    for i in 0..200 {
        if done() {
            return;
        }
        let filler = format!("{i} filler text that stores a block or two of its own. ").repeat(3);
        complete(c, &direct(target), &filler).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_replicas_real_caches_through_loss_and_restarts() {
    // A third of the event messages are dropped on the PUB side; only replay recovers them.
    let fleet = kv_fleet(4, 0.3).await;
    let gw = Gateway::start(&kv_events_config(&fleet, ""));
    let c = client::http1();
    eventually("every endpoint subscribed", || {
        (0..4).all(|i| kv_status(&gw, i)["fresh"] == true)
    })
    .await;

    // Warm replica 2 directly, behind the gateway's back: only its events can tell.
    let prompt = "Route this railway timetable question to the right desk. ".repeat(12);
    let blocks = switchyard_sim::tokenizer::tokenize(&prompt).len() / 16;
    let target = fleet.addresses()[2];
    complete(&c, &direct(target), &prompt).await;
    publish_until(&c, target, "the prompt's blocks indexed", || {
        kv_status(&gw, 2)["blocks"].as_u64().unwrap() >= blocks as u64
    })
    .await;
    assert_eq!(kv_status(&gw, 2)["lost"], 0, "gaps were replayed, not lost");

    // Through the gateway, the prompt goes to replica 2 and is served from its cache.
    let (headers, body) = complete(&c, &gw.url("/v1/completions"), &prompt).await;
    let pick = headers["x-switchyard-pick"].to_str().unwrap().to_string();
    assert!(pick.starts_with("2="), "{pick}");
    assert!(pick.contains("prefix=1.00"), "{pick}");
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 16 * (blocks as u64 - 1), "{body}");
    let holder = r#"switchyard_inference_prefix_picks_total{pool="p",reason="holder"}"#;
    assert_eq!(gw.metric(holder), 1.0, "the pick counted as a holder's");

    // vLLM's /reset_prefix_cache on replica 2: its AllBlocksCleared drops the entries.
    let resets = kv_status(&gw, 2)["resets"].as_u64().unwrap();
    let req = http::Request::post(format!("http://{target}/reset_prefix_cache"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.0, 200);
    publish_until(&c, target, "AllBlocksCleared applied", || {
        kv_status(&gw, 2)["resets"].as_u64().unwrap() > resets
    })
    .await;

    // Replica 2 restarts with an empty cache: the gateway drops its entries, though it has
    // just sent the prompt there itself (the approximate index still says so).
    let resets = kv_status(&gw, 2)["resets"].as_u64().unwrap();
    let crash = serde_json::json!({"crash_for_ms": 100}).to_string();
    let req = http::Request::post(format!("http://{target}/sim/faults"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(crash)))
        .unwrap();
    assert_eq!(send(&c, req).await.0, 200);
    eventually("the restarted replica's entries dropped", || {
        let s = kv_status(&gw, 2);
        s["resets"].as_u64().unwrap() > resets && s["fresh"] == true && s["blocks"] == 0
    })
    .await;
    eventually("the restarted replica serves again", || {
        pools(&gw)["pools"][0]["endpoints"][2]["available"] == true
    })
    .await;
    let (headers, _) = complete(&c, &gw.url("/v1/completions"), &prompt).await;
    let pick = headers["x-switchyard-pick"].to_str().unwrap().to_string();
    assert!(!pick.contains("prefix=1.00"), "stale hit claimed: {pick}");
    assert_eq!(gw.metric(holder), 1.0, "no holder now: {pick}");

    // A second gateway started now holds the same entries as the first (replayed on connect).
    let gw2 = Gateway::start(&kv_events_config(&fleet, ""));
    eventually("two gateways hold the same index", || {
        (0..4).all(|i| {
            let (a, b) = (kv_status(&gw, i), kv_status(&gw2, i));
            b["fresh"] == true && a["blocks"] == b["blocks"]
        })
    })
    .await;
}

/// A prompt sent as token ids is keyed from the ids as sent, with no tokenizer involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_id_prompts_follow_the_cache_that_holds_them() {
    let fleet = kv_fleet(2, 0.0).await;
    let gw = Gateway::start(&kv_events_config(&fleet, ""));
    let ids: Vec<u32> = (0..200).map(|i| 1000 + i * 7).collect();
    let c = client::http1();
    let send_ids = |url: String| {
        let body = serde_json::json!({"model": MODEL, "prompt": ids, "max_tokens": 2});
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .header("x-switchyard-debug", "1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        send(&c, req)
    };
    let (status, _, _) = send_ids(direct(fleet.addresses()[1])).await;
    assert_eq!(status, 200);
    eventually("the ids' blocks indexed", || {
        kv_status(&gw, 1)["blocks"].as_u64() >= Some(200 / 16)
    })
    .await;
    let (status, headers, _) = send_ids(gw.url("/v1/completions")).await;
    assert_eq!(status, 200);
    let pick = headers["x-switchyard-pick"].to_str().unwrap();
    assert!(
        pick.starts_with("1=") && pick.contains("prefix=1.00"),
        "{pick}"
    );
}

const ZMQ_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/interop/zmq_kv_events.py"
);

/// A line the child printed on stdout, read on a blocking thread.
fn read_line(out: &mut std::io::BufReader<std::process::ChildStdout>) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// libzmq (pyzmq), shaped like vLLM's publisher: positional-array events with bytes hashes,
/// the first batch only in the replay buffer. The gateway's SUB and DEALER talk to it, replay
/// the gap, and route on what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_publisher_shaped_like_vllm_feeds_the_index() {
    let fleet = support::fleet::fleet(1).await;
    let prompt = "Route this railway timetable question to the right desk. ".repeat(12);
    let tokens = switchyard_sim::tokenizer::tokenize(&prompt);
    let path = std::env::temp_dir().join(format!("kv-tokens-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&tokens).unwrap()).unwrap();
    let mut child = std::process::Command::new(support::python3())
        .args([ZMQ_SCRIPT, "publish", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _kill = support::Kill(child);
    let line = read_line(&mut out);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[0], words[2]), ("pub", "replay"), "{line}");
    let addr = fleet.addresses()[0];
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0, trusted_headers: [debug]}}\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\npools:\n  - name: p\n    endpoints:\n      - {{ address: {addr}, kv_events: \"{}\", kv_replay: \"{}\" }}\n    balancer: {{ kind: inference, kv_events: {{}} }}\n",
        words[1], words[3]
    );
    let gw = Gateway::start(&yaml);
    let blocks = tokens.len() / 16;
    eventually("the replayed BlockStored applied", || {
        kv_status(&gw, 0)["blocks"].as_u64() == Some(blocks as u64)
    })
    .await;
    assert_eq!(kv_status(&gw, 0)["lost"], 0);
    let c = client::http1();
    let (headers, _) = complete(&c, &gw.url("/v1/completions"), &prompt).await;
    let pick = headers["x-switchyard-pick"].to_str().unwrap().to_string();
    assert!(pick.contains("prefix=1.00"), "{pick}");
    let _ = std::fs::remove_file(&path);
}

/// The other way round: libzmq's SUB and DEALER against the simulator's PUB and ROUTER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_subscribes_to_the_simulator() {
    let fleet = kv_fleet(1, 0.0).await;
    let (events, replay) = fleet.kv_event_addresses()[0];
    let mut child = std::process::Command::new(support::python3())
        .args([
            ZMQ_SCRIPT,
            "subscribe",
            &format!("tcp://{events}"),
            &format!("tcp://{replay}"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _kill = support::Kill(child);
    assert_eq!(read_line(&mut out), "subscribed");
    let addr = fleet.addresses()[0];
    let c = client::http1();
    let info = || async {
        let (_, _, body) = client::get(&c, &format!("http://{addr}/sim/info")).await;
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    // Wait for the subscription to take effect (ZMQ's slow joiner), then store blocks.
    for i in 0.. {
        if info().await["kv_events"]["subscribers"] == 1 {
            break;
        }
        assert!(i < 3000, "libzmq never subscribed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let prompt = "A prompt long enough to fill a few blocks of the cache. ".repeat(6);
    complete(&c, &direct(addr), &prompt).await;
    let lines = tokio::task::spawn_blocking(move || {
        (0..2).map(|_| read_line(&mut out)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(lines[0], "event BlockStored", "{lines:?}");
    assert!(lines[1].starts_with("replayed "), "{lines:?}");
    assert_ne!(lines[1], "replayed 0");
}

async fn complete_told(
    c: &TestClient,
    url: &str,
    prompt: &str,
    truth: &str,
) -> (http::HeaderMap, serde_json::Value) {
    let body = serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 2});
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("x-switchyard-debug", "1")
        .header("x-switchyard-oracle-cached", truth)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (status, headers, body) = send(c, req).await;
    assert_eq!(status, 200, "{body:?}");
    (headers, serde_json::from_slice(&body).unwrap())
}

/// A benchmark's oracle: the simulator's true cache state, passed per request, replaces what
/// the event index holds, on listeners that trust debug headers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oracles_header_replaces_the_index_on_trusted_listeners_only() {
    let fleet = kv_fleet(4, 0.0).await;
    let config = kv_events_config(&fleet, "").replace(
        "listeners:\n",
        "listeners:\n  - {name: untrusted, address: 127.0.0.1:0}\n",
    );
    let gw = Gateway::start(&config);
    let c = client::http1();
    eventually("every endpoint subscribed", || {
        (0..4).all(|i| kv_status(&gw, i)["fresh"] == true)
    })
    .await;
    let addrs = fleet.addresses();
    let prompt = "Which platform does the night train to the coast leave from? ".repeat(12);
    let blocks = switchyard_sim::tokenizer::tokenize(&prompt).len() / 16;
    complete(&c, &direct(addrs[1]), &prompt).await;
    eventually("the prompt's blocks indexed on replica 1", || {
        kv_status(&gw, 1)["blocks"].as_u64().unwrap() >= blocks as u64
    })
    .await;

    // An oracle that says replica 1 lost it and replica 3 has it wins over the index.
    let told = format!("{}=0,{}={blocks}", addrs[1], addrs[3]);
    let (headers, _) = complete_told(&c, &gw.url("/v1/completions"), &prompt, &told).await;
    let pick = headers["x-switchyard-pick"].to_str().unwrap();
    assert!(pick.starts_with("3="), "{pick}");
    assert!(pick.contains("prefix=1.00"), "{pick}");

    // The simulator's own answer: replicas 1 (warmed directly) and 3 (just served it) hold it.
    let req = http::Request::post(format!("http://{}/sim/oracle/cached", addrs[0]))
        .body(Full::new(Bytes::from(
            serde_json::json!({"model": MODEL, "prompt": prompt}).to_string(),
        )))
        .unwrap();
    let (status, _, truth) = send(&c, req).await;
    assert_eq!(status, 200);
    let truth = String::from_utf8(truth.to_vec()).unwrap();
    let want = format!(
        "{}=0,{}={blocks},{}=0,{}={blocks}",
        addrs[0], addrs[1], addrs[2], addrs[3]
    );
    assert_eq!(truth, want);
    let (headers, _) = complete_told(&c, &gw.url("/v1/completions"), &prompt, &truth).await;
    let pick = headers["x-switchyard-pick"].to_str().unwrap();
    assert!(pick.starts_with("1=") || pick.starts_with("3="), "{pick}");

    // From a client the listener does not trust, the header is ignored: the index decides.
    let untrusted = format!("http://{}/v1/completions", gw.listeners["untrusted"]);
    // (Honoured, this would send it to cold replica 0.)
    let lie = format!("{}={blocks},{}=0,{}=0", addrs[0], addrs[1], addrs[3]);
    let (_, body) = complete_told(&c, &untrusted, &prompt, &lie).await;
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= 16 * (blocks as u64 - 1),
        "served from a warm cache: {body}"
    );
    fleet.shutdown().await;
}
