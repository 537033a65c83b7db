//! Reading a config range from etcd and following it.
//!
//! A watch event is news, not content: on one, the whole range is read again at one revision
//! and handed over whole. That costs a read per change, which a config changed by people and
//! pipelines can afford, and buys three properties a per-key event stream makes hard: a config
//! split over keys is never seen half-updated, a burst of writes becomes one read, and nothing
//! depends on every event arriving. The watch resumes just after the revision last read, so a
//! reconnect neither misses nor replays a change; a history compacted past that point is
//! answered by reading the range afresh.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use crate::layout::{belongs, range_end, Entry, MAX_CONFIG_BYTES};
use crate::EtcdUrl;

/// One revision of the config range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision when the range was read: the watch resumes after it.
    pub read_at: i64,
    /// The config's own revision: the last write to one of its keys (what `config push`
    /// printed), the same on every replica that read it.
    pub revision: i64,
    pub entries: Vec<Entry>,
}

/// What the follower reports.
#[derive(Debug)]
pub enum Update {
    /// The range as of a newer revision than any reported before.
    Changed(Snapshot),
    /// etcd could not be read or watched; the follower retries with backoff.
    Unreachable(String),
    /// The watch fell behind etcd's compaction; the range is read afresh.
    Compacted,
    /// etcd answers again after being unreachable.
    Reconnected,
}

/// Connect and call timeouts. A watch stream is not bounded by the call timeout, only its
/// requests are.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest message taken from etcd: a whole config (the range read) and then some. tonic's
/// default of 4 MiB would refuse a legal 8 MiB config, and refuse it again on every retry.
const MAX_MESSAGE: usize = 2 * MAX_CONFIG_BYTES;

/// Backoff between reconnects: doubling from `MIN_BACKOFF` to `MAX_BACKOFF`, with jitter so a
/// fleet does not reconnect in step after an etcd restart.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub async fn connect(url: &EtcdUrl) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), CALL_TIMEOUT)
        // A member cut off from the quorum would keep a watch open and silent: the replica
        // would look current while missing every change.
        .with_require_leader(true);
    Client::connect(url.endpoints.clone(), Some(options))
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))
}

/// Read the whole config range at one revision.
pub async fn read(client: &mut Client, url: &EtcdUrl) -> Result<Snapshot, String> {
    let options = GetOptions::new().with_range(range_end(&url.key));
    let response = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE)
        .get(url.key.as_bytes(), Some(options))
        .await
        .map_err(|e| format!("{url}: read failed: {e}"))?;
    let read_at = response.header().map_or(0, |h| h.revision());
    let mut revision = 0;
    let mut entries = Vec::new();
    for kv in response.kvs() {
        let Ok(key) = std::str::from_utf8(kv.key()) else {
            continue;
        };
        if !belongs(&url.key, key) {
            continue;
        }
        revision = revision.max(kv.mod_revision());
        entries.push(Entry {
            key: key.to_string(),
            value: kv.value().to_vec(),
        });
    }
    Ok(Snapshot {
        read_at,
        revision,
        entries,
    })
}

/// Follow the range after `after` (the store revision of the state already applied) and report
/// every newer state on `updates` until the receiver is dropped.
///
/// `from_cache`: that state came from the local cache, not from etcd: the range is read as soon
/// as etcd answers, and [`Update::Reconnected`] reported. Otherwise it was just read from etcd
/// and the watch starts right after it.
pub async fn follow(url: EtcdUrl, mut after: i64, from_cache: bool, updates: mpsc::Sender<Update>) {
    let mut backoff = MIN_BACKOFF;
    let mut reachable = !from_cache;
    let mut must_read = from_cache;
    loop {
        let result = follow_once(&url, &mut after, &mut must_read, &updates, &mut reachable).await;
        // Every reconnect reads the range afresh and watches from there: a watch resumed from
        // an old revision would replay history (each write a whole config) and could fail on it
        // again and again.
        must_read = true;
        if updates.is_closed() {
            return;
        }
        // A connection that worked before it broke earns a quick reconnect.
        if reachable {
            backoff = MIN_BACKOFF;
        }
        match result {
            Ok(()) => {}
            Err(e) => {
                if reachable {
                    tracing::warn!(source = %url, error = %e, "config source unreachable; serving the last good config");
                }
                reachable = false;
                if updates.send(Update::Unreachable(e)).await.is_err() {
                    return;
                }
            }
        }
        let jitter = backoff.mul_f64(fastrand::f64());
        tokio::time::sleep(backoff + jitter / 2).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: read if needed, then watch until the stream fails.
async fn follow_once(
    url: &EtcdUrl,
    after: &mut i64,
    must_read: &mut bool,
    updates: &mpsc::Sender<Update>,
    reachable: &mut bool,
) -> Result<(), String> {
    let mut client = connect(url).await?;
    // The revision of the write that made us read: a delete leaves no key to date the config.
    let mut event_revision = 0;
    loop {
        if *must_read {
            let mut snapshot = read(&mut client, url).await?;
            snapshot.revision = snapshot.revision.max(event_revision);
            if !*reachable {
                *reachable = true;
                tracing::info!(source = %url, "config source reachable again");
                send(updates, Update::Reconnected).await?;
            }
            *must_read = false;
            if snapshot.read_at != *after {
                if snapshot.read_at < *after {
                    tracing::warn!(source = %url, read_at = snapshot.read_at, after = *after, "etcd's revision went backwards (restored from a backup, or another cluster); following it");
                }
                *after = snapshot.read_at;
                send(updates, Update::Changed(snapshot)).await?;
            }
        }
        let options = WatchOptions::new()
            .with_range(range_end(&url.key))
            .with_start_revision(*after + 1)
            .with_fragment();
        let mut stream = client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(url.key.as_bytes(), Some(options))
            .await
            .map_err(|e| format!("{url}: watch failed: {e}"))?;
        if !*reachable {
            *reachable = true;
            tracing::info!(source = %url, "config source reachable again");
            send(updates, Update::Reconnected).await?;
        }
        loop {
            let message = stream
                .message()
                .await
                .map_err(|e| format!("{url}: watch broke: {e}"))?;
            let Some(response) = message else {
                return Err(format!("{url}: watch ended"));
            };
            if response.compact_revision() > 0 {
                tracing::warn!(source = %url, compacted = response.compact_revision(), after = *after, "watch fell behind compaction; reading the config afresh");
                send(updates, Update::Compacted).await?;
                *must_read = true;
                break;
            }
            if response.canceled() {
                return Err(format!(
                    "{url}: watch canceled by etcd: {}",
                    response.cancel_reason()
                ));
            }
            let newest = response
                .events()
                .iter()
                .filter_map(|e| e.kv())
                .filter(|kv| std::str::from_utf8(kv.key()).is_ok_and(|k| belongs(&url.key, k)))
                .map(|kv| kv.mod_revision())
                .max();
            // Older than what was read: already part of it (a reconnect's overlap).
            if let Some(rev) = newest.filter(|rev| *rev > *after) {
                event_revision = rev;
                *must_read = true;
                break;
            }
        }
    }
}

async fn send(updates: &mpsc::Sender<Update>, update: Update) -> Result<(), String> {
    updates
        .send(update)
        .await
        .map_err(|_| "the gateway stopped following its config".to_string())
}
