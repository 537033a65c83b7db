//! A real publisher and subscriber over loopback: loss recovered by replay, loss beyond the
//! replay buffer reported, a restarted publisher detected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_kv_events::subscriber::run;
use switchyard_kv_events::{
    EventBatch, KvEvent, Publisher, PublisherConfig, Shape, Sink, SubscriberConfig,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    resets: usize,
    applied: Vec<u64>,
    lost: Vec<(u64, u64)>,
}

struct Recorder(Arc<Mutex<Seen>>, Arc<Notify>);

impl Sink for Recorder {
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
        self.1.notify_one();
    }
    fn apply(&mut self, seq: u64, batch: EventBatch) {
        assert_eq!(batch.events, [KvEvent::AllBlocksCleared]);
        self.0.lock().unwrap().applied.push(seq);
        self.1.notify_one();
    }
    fn lost(&mut self, from: u64, to: u64, _why: &str) {
        self.0.lock().unwrap().lost.push((from, to));
        self.1.notify_one();
    }
}

async fn publisher(cfg: PublisherConfig, cancel: &CancellationToken) -> Arc<Publisher> {
    let p = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Publisher::start(cfg, p, r, cancel.clone()).unwrap()
}

/// Binds the ports a stopped publisher held, once its tasks have let go of them.
async fn rebind(p: &Publisher, cfg: PublisherConfig, cancel: &CancellationToken) -> Arc<Publisher> {
    for _ in 0..2000 {
        if let (Ok(pl), Ok(rl)) = (
            TcpListener::bind(p.pub_addr).await,
            TcpListener::bind(p.replay_addr).await,
        ) {
            return Publisher::start(cfg, pl, rl, cancel.clone()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("ports of the stopped publisher never freed");
}

async fn subscribed(p: &Publisher) {
    for _ in 0..2000 {
        if p.subscribers() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("subscription never took effect");
}

fn sub_cfg(p: &Publisher, replay: bool) -> SubscriberConfig {
    SubscriberConfig {
        endpoint: p.pub_addr,
        replay: replay.then_some(p.replay_addr),
        timeout: Duration::from_secs(2),
        reconnect_max: Duration::from_millis(100),
        idle_probe: Duration::from_millis(200),
    }
}

fn batch() -> EventBatch {
    EventBatch {
        events: vec![KvEvent::AllBlocksCleared],
        ..Default::default()
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

#[tokio::test]
async fn loss_is_replayed_and_restarts_reset() {
    let cancel = CancellationToken::new();
    let cfg = PublisherConfig {
        shape: Shape::Map,
        replay_buffer: 1000,
        ..Default::default()
    };
    let life = cancel.child_token();
    let p = publisher(cfg.clone(), &life).await;
    // Published before the subscriber connects: its first replay brings them.
    for _ in 0..5 {
        p.publish(&batch());
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let notify = Arc::new(Notify::new());
    let mut sink = Recorder(seen.clone(), notify.clone());
    let sub = tokio::spawn({
        let (cancel, cfg) = (cancel.clone(), sub_cfg(&p, true));
        async move { run(cfg, &mut sink, cancel).await }
    });
    wait_until(&seen, &notify, |s| s.resets == 1 && s.applied.len() == 5).await;
    subscribed(&p).await;
    // Half the live messages are dropped on the PUB side; the last is sent, so the gap before
    // it shows. Every one arrives, in order, once.
    p.set_loss(0.5);
    for _ in 0..200 {
        p.publish(&batch());
    }
    p.set_loss(0.0);
    p.publish(&batch());
    wait_until(&seen, &notify, |s| s.applied.len() == 206).await;
    {
        let s = seen.lock().unwrap();
        assert!(s.lost.is_empty(), "{:?}", s.lost);
        assert_eq!(s.applied, (0..206).collect::<Vec<u64>>());
    }

    // A restarted engine: same ports, seqs from 0, nothing buffered from its past life.
    life.cancel();
    let life = cancel.child_token();
    let p2 = rebind(&p, cfg, &life).await;
    wait_until(&seen, &notify, |s| s.resets == 2).await;
    subscribed(&p2).await;
    p2.publish(&batch());
    wait_until(&seen, &notify, |s| s.applied.len() == 207).await;
    assert_eq!(seen.lock().unwrap().applied.last(), Some(&0));
    cancel.cancel();
    sub.await.unwrap();
}

#[tokio::test]
async fn loss_beyond_the_replay_buffer_is_reported() {
    let cancel = CancellationToken::new();
    let p = publisher(
        PublisherConfig {
            replay_buffer: 2,
            ..Default::default()
        },
        &cancel,
    )
    .await;
    p.publish(&batch());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let notify = Arc::new(Notify::new());
    let mut sink = Recorder(seen.clone(), notify.clone());
    let sub = tokio::spawn({
        let (cancel, cfg) = (cancel.clone(), sub_cfg(&p, true));
        async move { run(cfg, &mut sink, cancel).await }
    });
    wait_until(&seen, &notify, |s| s.applied == [0]).await;
    subscribed(&p).await;
    // Seqs 1..=5 dropped; the buffer keeps only the last two messages (5 and 6) by the time
    // seq 6 arrives, so 1..5 are reported lost and 5 is replayed.
    p.set_loss(1.0);
    for _ in 0..5 {
        p.publish(&batch());
    }
    p.set_loss(0.0);
    p.publish(&batch());
    wait_until(&seen, &notify, |s| s.applied.len() == 3).await;
    cancel.cancel();
    sub.await.unwrap();
    let s = seen.lock().unwrap();
    assert_eq!(s.applied, [0, 5, 6]);
    assert_eq!(s.lost, [(1, 5)]);
}

#[tokio::test]
async fn a_lost_last_message_is_found_by_the_idle_probe() {
    let cancel = CancellationToken::new();
    let p = publisher(PublisherConfig::default(), &cancel).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let notify = Arc::new(Notify::new());
    let mut sink = Recorder(seen.clone(), notify.clone());
    let sub = tokio::spawn({
        let (cancel, cfg) = (cancel.clone(), sub_cfg(&p, true));
        async move { run(cfg, &mut sink, cancel).await }
    });
    wait_until(&seen, &notify, |s| s.resets == 1).await;
    subscribed(&p).await;
    // Dropped on the PUB side and nothing follows it: only the probe can find it.
    p.set_loss(1.0);
    p.publish(&batch());
    wait_until(&seen, &notify, |s| s.applied == [0]).await;
    cancel.cancel();
    sub.await.unwrap();
    assert!(seen.lock().unwrap().lost.is_empty());
}
