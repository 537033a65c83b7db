//! An engine's side of KV events, as vLLM's `ZmqEventPublisher` does it: a PUB socket sending
//! `[topic, seq, batch]` per step, and a ROUTER socket answering a replay request (the start
//! seq, 8 bytes big-endian) with every buffered message from that seq on, then an end marker
//! (seq −1 and an empty payload). The simulator publishes its real cache's events through this,
//! optionally dropping a share of messages on the PUB side (they stay in the replay buffer, as
//! when a slow subscriber hits ZMQ's high-water mark) so subscribers' gap handling is exercised.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::encode::encode_batch;
use crate::event::{EventBatch, Shape};
use crate::zmtp::{answer_command, handshake, Incoming, SocketType};

/// The replay end marker's seq: −1 as a signed 64-bit big-endian integer.
pub const END_SEQ: [u8; 8] = [0xff; 8];

/// How a publisher behaves.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub shape: Shape,
    /// Share of messages not sent on the PUB socket (still replayable), 0..1.
    pub loss: f64,
    /// Messages kept for replay (vLLM's `buffer_steps`, 10000 by default).
    pub replay_buffer: usize,
    pub topic: Vec<u8>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            shape: Shape::Array,
            loss: 0.0,
            replay_buffer: 10_000,
            topic: Vec::new(),
        }
    }
}

/// A running publisher; stops when its token is cancelled.
#[derive(Debug)]
pub struct Publisher {
    cfg: PublisherConfig,
    next_seq: Mutex<u64>,
    buffer: Arc<Mutex<VecDeque<(u64, Bytes)>>>,
    tx: broadcast::Sender<(u64, Bytes)>,
    /// `loss` as f64 bits, changeable while running.
    loss: AtomicU64,
    subscribed: Arc<AtomicUsize>,
    pub pub_addr: SocketAddr,
    pub replay_addr: SocketAddr,
}

impl Publisher {
    /// Serves the PUB socket on `pub_listener` and the replay ROUTER on `replay_listener` until
    /// `cancel`.
    pub fn start(
        cfg: PublisherConfig,
        pub_listener: TcpListener,
        replay_listener: TcpListener,
        cancel: CancellationToken,
    ) -> io::Result<Arc<Self>> {
        let (tx, _) = broadcast::channel(4096);
        let publisher = Arc::new(Self {
            pub_addr: pub_listener.local_addr()?,
            replay_addr: replay_listener.local_addr()?,
            next_seq: Mutex::new(0),
            buffer: Arc::new(Mutex::new(VecDeque::new())),
            tx,
            loss: AtomicU64::new(cfg.loss.to_bits()),
            subscribed: Arc::new(AtomicUsize::new(0)),
            cfg,
        });
        tokio::spawn(serve_pub(
            pub_listener,
            publisher.tx.clone(),
            publisher.cfg.topic.clone(),
            publisher.subscribed.clone(),
            cancel.clone(),
        ));
        tokio::spawn(serve_replay(
            replay_listener,
            publisher.buffer.clone(),
            cancel,
        ));
        Ok(publisher)
    }

    /// Changes the share of messages dropped on the PUB side.
    pub fn set_loss(&self, loss: f64) {
        self.loss
            .store(loss.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Connections whose subscription has taken effect (ZMQ's "slow joiner": messages sent
    /// before it are not delivered, only replayable).
    pub fn subscribers(&self) -> usize {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Publishes one batch (a step's events) under the next seq.
    pub fn publish(&self, batch: &EventBatch) {
        let payload = Bytes::from(encode_batch(batch, self.cfg.shape));
        // One lock orders seq assignment, buffering and sending, so subscribers see seqs rise.
        let mut next = self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
        let seq = *next;
        *next += 1;
        {
            let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buf.push_back((seq, payload.clone()));
            while buf.len() > self.cfg.replay_buffer.max(1) {
                buf.pop_front();
            }
        }
        let loss = f64::from_bits(self.loss.load(Ordering::Relaxed));
        if loss > 0.0 && fastrand::f64() < loss {
            return;
        }
        let _ = self.tx.send((seq, payload));
    }
}

async fn serve_pub(
    listener: TcpListener,
    tx: broadcast::Sender<(u64, Bytes)>,
    topic: Vec<u8>,
    count: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let mut rx = tx.subscribe();
        let topic = topic.clone();
        let cancel = cancel.clone();
        let count = count.clone();
        tokio::spawn(async move {
            let Ok(Ok((mut r, mut w))) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                handshake(stream, SocketType::Pub, true),
            )
            .await
            else {
                return;
            };
            let mut sub = Subscribed { on: false, count };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = rx.recv() => match m {
                        Ok((seq, payload)) if sub.on => {
                            if w.send(&[&topic, &seq.to_be_bytes(), &payload]).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    incoming = r.recv() => match incoming {
                        // 3.0 subscriptions: a message whose first byte is 1 (0 unsubscribes).
                        // Topic filtering is all-or-nothing here: one topic per publisher.
                        Ok(Incoming::Message(parts)) => {
                            if let Some(&flag) = parts.first().and_then(|p| p.first()) {
                                sub.set(flag == 1 && topic.starts_with(&parts[0][1..]));
                            }
                        }
                        Ok(Incoming::Command { name, body }) => {
                            if name == "SUBSCRIBE" {
                                sub.set(topic.starts_with(&body));
                            } else if answer_command(&mut w, &name, &body).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    },
                }
            }
        });
    }
}

/// One connection's subscription, counted in [`Publisher::subscribers`] while on.
struct Subscribed {
    on: bool,
    count: Arc<AtomicUsize>,
}

impl Subscribed {
    fn set(&mut self, on: bool) {
        if on != self.on {
            if on {
                self.count.fetch_add(1, Ordering::Relaxed);
            } else {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            self.on = on;
        }
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.set(false);
    }
}

async fn serve_replay(
    listener: TcpListener,
    buffer: Arc<Mutex<VecDeque<(u64, Bytes)>>>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let buffer = buffer.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(Ok((mut r, mut w))) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                handshake(stream, SocketType::Router, true),
            )
            .await
            else {
                return;
            };
            loop {
                let incoming = tokio::select! {
                    _ = cancel.cancelled() => return,
                    i = r.recv() => i,
                };
                let parts = match incoming {
                    Ok(Incoming::Message(parts)) => parts,
                    Ok(Incoming::Command { name, body }) => {
                        if answer_command(&mut w, &name, &body).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                // [empty delimiter, start seq], as a REQ or a DEALER sends it.
                let start = match parts.as_slice() {
                    [d, s] if d.is_empty() && s.len() == 8 => {
                        u64::from_be_bytes(s[..].try_into().unwrap_or_default())
                    }
                    _ => continue,
                };
                let replay: Vec<(u64, Bytes)> = buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|(seq, _)| *seq >= start)
                    .cloned()
                    .collect();
                for (seq, payload) in replay {
                    if w.send(&[b"", &seq.to_be_bytes(), &payload]).await.is_err() {
                        return;
                    }
                }
                if w.send(&[b"", &END_SEQ, b""]).await.is_err() {
                    return;
                }
            }
        });
    }
}
