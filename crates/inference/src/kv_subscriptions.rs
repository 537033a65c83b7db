//! One task per endpoint following its engine's KV events into the pool's [`KvIndex`]
//! (`switchyard_kv_events::subscriber` does the ordering, replay and reconnection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_kv_events::subscriber::run;
use switchyard_kv_events::{EventBatch, Sink, SubscriberConfig};
use tokio_util::sync::CancellationToken;

use crate::kv_index::KvIndex;

/// Bound on connecting, the handshake and one whole replay.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between reconnections to an engine that is down.
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// A quiet stream asks for anything newer this often (a lost last message shows no gap).
const IDLE_PROBE: Duration = Duration::from_secs(1);

/// The running subscriptions of one pool; dropping it stops them.
#[derive(Debug)]
pub struct KvSubscriptions {
    cancel: CancellationToken,
}

impl Drop for KvSubscriptions {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Follows `sockets[i]` (the PUB socket and, if any, the replay socket of endpoint `i`) into
/// `index`; endpoints without sockets are left to the approximate index. Must be called inside
/// a tokio runtime.
pub fn spawn_kv_subscriptions(
    sockets: Vec<Option<(SocketAddr, Option<SocketAddr>)>>,
    index: Arc<KvIndex>,
) -> KvSubscriptions {
    let cancel = CancellationToken::new();
    for (endpoint, s) in sockets.into_iter().enumerate() {
        let Some((events, replay)) = s else { continue };
        let cfg = SubscriberConfig {
            endpoint: events,
            replay,
            timeout: TIMEOUT,
            reconnect_max: RECONNECT_MAX,
            idle_probe: IDLE_PROBE,
        };
        let mut sink = IndexSink {
            index: index.clone(),
            endpoint,
        };
        let cancel = cancel.clone();
        tokio::spawn(async move { run(cfg, &mut sink, cancel).await });
    }
    KvSubscriptions { cancel }
}

struct IndexSink {
    index: Arc<KvIndex>,
    endpoint: usize,
}

impl Sink for IndexSink {
    fn reset(&mut self) {
        self.index.on_connect(self.endpoint);
    }
    fn apply(&mut self, _seq: u64, batch: EventBatch) {
        self.index.apply(self.endpoint, &batch);
    }
    fn lost(&mut self, from: u64, to: u64, why: &str) {
        tracing::warn!(
            endpoint = self.endpoint,
            from,
            to,
            why,
            "kv events lost; scoring the endpoint approximately while its index rebuilds"
        );
        self.index.on_lost(self.endpoint, Instant::now());
    }
    fn disconnected(&mut self) {
        self.index.on_disconnect(self.endpoint);
    }
}
