//! `--kv-events`: the simulator publishes its real cache's events, and a subscriber sees the
//! prompt's blocks stored with their tokens, evictions, a cleared cache and a restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{post, MODEL};
use switchyard_kv_events::subscriber::run;
use switchyard_kv_events::{EventBatch, KvEvent, Sink, SubscriberConfig};
use switchyard_sim::config::KvEventsConfig;
use switchyard_sim::tokenizer::tokenize;
use switchyard_sim::{start_fleet, FleetConfig, ReplicaConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    resets: usize,
    events: Vec<KvEvent>,
    lost: usize,
}

struct Recorder(Arc<Mutex<Seen>>, Arc<Notify>);

impl Sink for Recorder {
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
        self.1.notify_one();
    }
    fn apply(&mut self, _seq: u64, batch: EventBatch) {
        self.0.lock().unwrap().events.extend(batch.events);
        self.1.notify_one();
    }
    fn lost(&mut self, _from: u64, _to: u64, _why: &str) {
        self.0.lock().unwrap().lost += 1;
        self.1.notify_one();
    }
}

async fn wait_until(seen: &Arc<Mutex<Seen>>, notify: &Notify, f: impl Fn(&Seen) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !f(&seen.lock().unwrap()) {
            notify.notified().await;
        }
    })
    .await
    .expect("state reached within 10 s");
}

fn completion(prompt: &str) -> String {
    serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 2}).to_string()
}

#[tokio::test]
async fn published_events_follow_the_cache() {
    let fleet = start_fleet(FleetConfig {
        replicas: vec![ReplicaConfig {
            speed: 100.0,
            num_gpu_blocks: Some(40),
            ..Default::default()
        }],
        kv_events: Some(KvEventsConfig {
            shape: "map".into(),
            ..Default::default()
        }),
        ..FleetConfig::uniform(MODEL, 1, "h100")
    })
    .await
    .unwrap();
    let addr = fleet.addresses()[0];
    let (events, replay) = fleet.kv_event_addresses()[0];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let notify = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let mut sink = Recorder(seen.clone(), notify.clone());
    let cfg = SubscriberConfig {
        endpoint: events,
        replay: Some(replay),
        timeout: Duration::from_secs(2),
        reconnect_max: Duration::from_millis(100),
        idle_probe: Duration::from_millis(200),
    };
    let sub = tokio::spawn({
        let cancel = cancel.clone();
        async move { run(cfg, &mut sink, cancel).await }
    });
    wait_until(&seen, &notify, |s| s.resets == 1).await;

    // The prompt's full blocks are stored with the simulator's own tokens.
    let prompt = "You are a careful assistant for routing questions. ".repeat(8);
    let tokens = tokenize(&prompt);
    let full = tokens.len() / 16;
    assert!(full >= 4);
    assert_eq!(
        post(addr, "/v1/completions", &completion(&prompt))
            .await
            .status,
        200
    );
    wait_until(&seen, &notify, |s| {
        s.events
            .iter()
            .filter_map(|e| match e {
                KvEvent::BlockStored(b) => Some(b.token_ids.clone()),
                _ => None,
            })
            .flatten()
            .collect::<Vec<u32>>()
            == tokens[..full * 16]
    })
    .await;
    // The same prompt again is served from the cache (vLLM's prompt_tokens_details).
    let again = post(addr, "/v1/completions", &completion(&prompt))
        .await
        .json();
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        full * 16
    );

    // Other prompts fill the 40-block cache: the first prompt's blocks are evicted and removed.
    for i in 0..12 {
        let other = format!("{i} another unrelated prompt about caches and queues. ").repeat(8);
        assert_eq!(
            post(addr, "/v1/completions", &completion(&other))
                .await
                .status,
            200
        );
    }
    wait_until(&seen, &notify, |s| {
        s.events
            .iter()
            .any(|e| matches!(e, KvEvent::BlockRemoved { .. }))
    })
    .await;

    // vLLM's /reset_prefix_cache clears everything.
    assert_eq!(post(addr, "/reset_prefix_cache", "").await.status, 200);
    wait_until(&seen, &notify, |s| {
        s.events.last() == Some(&KvEvent::AllBlocksCleared)
    })
    .await;

    // A crash ends the process: the subscriber reconnects to the new one and resets.
    assert_eq!(
        post(addr, "/sim/faults", r#"{"crash_for_ms":50}"#)
            .await
            .status,
        200
    );
    wait_until(&seen, &notify, |s| s.resets == 2).await;
    assert_eq!(seen.lock().unwrap().lost, 0);
    cancel.cancel();
    sub.await.unwrap();
    fleet.shutdown().await;
}
