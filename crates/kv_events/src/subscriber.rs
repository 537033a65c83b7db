//! A router's side of one engine's KV events: the PUB stream turned into an ordered feed in
//! which every message is applied once, in seq order, or reported lost.
//!
//! * **Order and duplicates**: a message below the next expected seq was already applied (by a
//!   replay) and is dropped.
//! * **Gaps**: a seq above the expected one means messages were dropped (ZMQ drops at its
//!   high-water mark without telling anyone). They are asked for on the replay socket and
//!   applied in order; what the engine no longer buffers is reported with [`Sink::lost`], so the
//!   index can stop trusting what it holds for that engine rather than keep a removal it missed.
//!   A lost *last* message leaves no gap to see, so a quiet stream is probed: after
//!   `idle_probe` without a message the replay socket is asked for anything newer.
//! * **Restarts**: a dropped connection may mean a new engine process with an empty cache and
//!   seqs from 0 (vLLM's hashes are seeded per process, so old entries would never be removed).
//!   Every new connection therefore starts with [`Sink::reset`] and a replay from seq 0, which
//!   is also how a restarted gateway rebuilds its index in the time one replay takes.
//! * **Bad frames**: a batch that does not decode is lost too (a replay would return the same
//!   bytes); the error names the field.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::decode_batch;
use crate::event::EventBatch;
use crate::publisher::END_SEQ;
use crate::zmtp::{answer_command, handshake, Incoming, SocketType, ZmtpReader, ZmtpWriter};

/// Where one engine publishes.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub endpoint: SocketAddr,
    pub replay: Option<SocketAddr>,
    /// Bound on connecting, the handshake, and one whole replay.
    pub timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// After this long without a message, the replay socket is asked for anything after the
    /// last one applied (a lost last message is otherwise noticed only when another arrives).
    pub idle_probe: Duration,
}

/// What the feed tells its consumer.
pub trait Sink: Send {
    /// A new connection: the engine may be a new process; forget what it held.
    fn reset(&mut self);
    /// The next batch, in seq order.
    fn apply(&mut self, seq: u64, batch: EventBatch);
    /// Messages `from..to` are gone for good (not replayable, or undecodable).
    fn lost(&mut self, from: u64, to: u64, why: &str);
    /// The connection is gone (the engine may be restarting); [`Sink::reset`] follows a new one.
    fn disconnected(&mut self) {}
}

const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Follows the engine at `cfg.endpoint` until `cancel`, reconnecting as needed.
pub async fn run(cfg: SubscriberConfig, sink: &mut dyn Sink, cancel: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = connect(cfg.endpoint, SocketType::Sub, cfg.timeout) => c,
        };
        // Subscribe to every topic (ZMTP 3.0 form).
        let subscribed = match conn {
            Ok((r, mut w)) => w.send(&[b"\x01"]).await.map(|()| (r, w)),
            Err(e) => Err(e),
        };
        let (r, w) = match subscribed {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(endpoint = %cfg.endpoint, error = %e, "kv events: connect failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
                continue;
            }
        };
        let connected_at = tokio::time::Instant::now();
        sink.reset();
        let mut feed = Feed {
            cfg: &cfg,
            expected: None,
        };
        if cfg.replay.is_some() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = feed.catch_up(0, None, sink, false) => {}
            }
        }
        let e = tokio::select! {
            _ = cancel.cancelled() => return,
            e = feed.follow(r, w, sink) => e,
        };
        sink.disconnected();
        tracing::info!(endpoint = %cfg.endpoint, error = %e, "kv events: connection lost; reconnecting");
        // A publisher that accepts and then drops or garbles every connection is not hammered
        // (each new connection replays its buffer): the backoff resets only after a connection
        // that lasted.
        if connected_at.elapsed() >= cfg.reconnect_max {
            backoff = FIRST_BACKOFF;
        } else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(cfg.reconnect_max);
        }
    }
}

async fn connect(
    addr: SocketAddr,
    me: SocketType,
    timeout: Duration,
) -> io::Result<(ZmtpReader, ZmtpWriter)> {
    tokio::time::timeout(timeout, async {
        let s = TcpStream::connect(addr).await?;
        handshake(s, me, false).await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

struct Feed<'a> {
    cfg: &'a SubscriberConfig,
    /// The next seq to apply; `None` before the first message of a connection.
    expected: Option<u64>,
}

/// Reads messages on a task of its own (a ZMTP read is not cancel-safe, and the feed waits for
/// messages with a timeout), answering commands such as PING there.
fn read_messages(
    mut r: ZmtpReader,
    mut w: ZmtpWriter,
) -> (
    mpsc::Receiver<io::Result<Vec<Bytes>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        loop {
            let item = match r.recv().await {
                Ok(Incoming::Message(parts)) => Ok(parts),
                Ok(Incoming::Command { name, body }) => {
                    match answer_command(&mut w, &name, &body).await {
                        Ok(()) => continue,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    (rx, task)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn seq_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl Feed<'_> {
    async fn follow(&mut self, r: ZmtpReader, w: ZmtpWriter, sink: &mut dyn Sink) -> io::Error {
        let (mut messages, reader) = read_messages(r, w);
        let _stop_reader = AbortOnDrop(reader);
        loop {
            let parts = match tokio::time::timeout(self.cfg.idle_probe, messages.recv()).await {
                Ok(Some(Ok(parts))) => parts,
                Ok(Some(Err(e))) => return e,
                Ok(None) => return io::ErrorKind::UnexpectedEof.into(),
                // Nothing for a while: a lost *last* message shows no gap until the next one
                // arrives, so ask the replay socket whether anything came after.
                Err(_) => {
                    if let Some(e) = self.expected.filter(|_| self.cfg.replay.is_some()) {
                        self.catch_up(e, None, sink, true).await;
                    }
                    continue;
                }
            };
            // [topic, seq, payload]; a message of another shape is not from a KV publisher.
            let (Some(seq), Some(payload)) = (
                parts.get(1).and_then(|s| seq_of(s)),
                parts.get(2).filter(|_| parts.len() == 3),
            ) else {
                return io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "kv events: message of {} parts, not [topic, seq, batch]",
                        parts.len()
                    ),
                );
            };
            match self.expected {
                Some(e) if seq < e => continue,
                Some(e) if seq > e => {
                    if self.cfg.replay.is_some() {
                        self.catch_up(e, Some(seq), sink, false).await;
                    }
                    if let Some(e) = self.expected.filter(|&e| e < seq) {
                        sink.lost(e, seq, "not in the engine's replay buffer");
                    }
                }
                _ => {}
            }
            self.apply(seq, payload, sink);
        }
    }

    fn apply(&mut self, seq: u64, payload: &Bytes, sink: &mut dyn Sink) {
        match decode_batch(payload) {
            Ok(batch) => sink.apply(seq, batch),
            Err(e) => {
                tracing::warn!(endpoint = %self.cfg.endpoint, seq, error = %e, "kv events: undecodable batch");
                sink.lost(seq, seq + 1, "undecodable batch");
            }
        }
        self.expected = Some(seq + 1);
    }

    /// Replays from `from` and applies, in order, what comes back below `until`. An empty
    /// buffer at the first catch-up means the engine has published nothing yet: seq 0 is next.
    /// `quiet`: a failure is logged at debug level (the idle probe repeats every `idle_probe`).
    async fn catch_up(&mut self, from: u64, until: Option<u64>, sink: &mut dyn Sink, quiet: bool) {
        let Some(addr) = self.cfg.replay else { return };
        let first = self.expected.is_none();
        let result = tokio::time::timeout(self.cfg.timeout, async {
            let (mut r, mut w) = connect(addr, SocketType::Dealer, self.cfg.timeout).await?;
            w.send(&[b"", &from.to_be_bytes()]).await?;
            loop {
                let Incoming::Message(parts) = r.recv().await? else {
                    continue;
                };
                let [_, seq, payload] = parts.as_slice() else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad replay message",
                    ));
                };
                if seq[..] == END_SEQ {
                    return Ok(());
                }
                let Some(seq) = seq_of(seq) else {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad replay seq"));
                };
                if until.is_some_and(|u| seq >= u) {
                    return Ok(());
                }
                match self.expected {
                    Some(e) if seq < e => continue,
                    Some(e) if seq > e => sink.lost(e, seq, "not in the engine's replay buffer"),
                    _ => {}
                }
                self.apply(seq, payload, sink);
            }
        })
        .await;
        match result {
            Ok(Ok(())) if first && self.expected.is_none() => self.expected = Some(0),
            Ok(Ok(())) => {}
            Ok(Err(e)) if quiet => {
                tracing::debug!(endpoint = %self.cfg.endpoint, replay = %addr, error = %e, "kv events: replay probe failed");
            }
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %self.cfg.endpoint, replay = %addr, error = %e, "kv events: replay failed");
            }
            Err(_) => {
                tracing::warn!(endpoint = %self.cfg.endpoint, replay = %addr, "kv events: replay timed out");
            }
        }
    }
}
