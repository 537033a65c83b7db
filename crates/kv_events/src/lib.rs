//! KV-cache events from vLLM and SGLang engines: what each engine says it cached and evicted,
//! so a router can know rather than guess which replica holds a prompt's prefix.
//!
//! An engine started with `--kv-events-config` publishes on a ZMQ PUB socket a multipart
//! message per scheduler step, `[topic, seq (u64 big-endian), msgpack batch]`, and answers
//! replays of recent messages on a ROUTER socket. llm-d's precise prefix scorer routes on these;
//! its users' reports are about what happens when the stream is not perfect (a restarted engine
//! leaving stale entries, lost messages, a cleared cache ignored, a changed wire shape). This
//! crate is the wire: [`decode`] and [`encode`] for the msgpack batch in both shapes,
//! [`zmtp`] for the sockets, [`publisher`] for an engine's side (the simulator's), and
//! [`subscriber`] for a router's side, which turns the stream into an ordered feed with
//! explicit gaps and resets. What the router does with it lives in `switchyard-inference`.

pub mod decode;
pub mod encode;
pub mod event;
pub mod msgpack;
pub mod publisher;
pub mod subscriber;
pub mod zmtp;

pub use decode::{decode_batch, DecodeError};
pub use encode::encode_batch;
pub use event::{
    engine_hash_of_bytes, is_gpu, BlockStored, EngineHash, EventBatch, KvEvent, Shape,
};
pub use publisher::{Publisher, PublisherConfig};
pub use subscriber::{Sink, SubscriberConfig};

#[cfg(test)]
mod decode_tests;
