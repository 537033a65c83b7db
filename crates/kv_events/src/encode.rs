//! Encoding a batch as vLLM does, in either shape: the simulator publishes with it, and tests
//! feed the decoder real frames.

use crate::event::{EventBatch, KvEvent, Shape};
use crate::msgpack::write;

/// The msgpack frame of `batch` in `shape`. Engine hashes go out as unsigned integers.
pub fn encode_batch(batch: &EventBatch, shape: Shape) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // The batch itself is positional in both shapes (vLLM's `EventBatch` stays array-like).
    write::array(&mut out, 3);
    write::float(&mut out, batch.ts);
    write::array(&mut out, batch.events.len());
    for e in &batch.events {
        event(&mut out, e, shape);
    }
    match batch.dp_rank {
        Some(r) => write::uint(&mut out, r.max(0) as u64),
        None => write::nil(&mut out),
    }
    out
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write::str(out, s),
        None => write::nil(out),
    }
}

fn opt_uint(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => write::uint(out, v),
        None => write::nil(out),
    }
}

fn hashes(out: &mut Vec<u8>, hashes: &[u64]) {
    write::array(out, hashes.len());
    for &h in hashes {
        write::uint(out, h);
    }
}

/// Writes a field's key in the map shape; nothing in the array shape.
fn key(out: &mut Vec<u8>, shape: Shape, name: &str) {
    if shape == Shape::Map {
        write::str(out, name);
    }
}

fn head(out: &mut Vec<u8>, shape: Shape, tag: &str, fields: usize) {
    match shape {
        Shape::Array => write::array(out, fields + 1),
        Shape::Map => {
            write::map(out, fields + 1);
            write::str(out, "type");
        }
    }
    write::str(out, tag);
}

fn event(out: &mut Vec<u8>, e: &KvEvent, shape: Shape) {
    match e {
        KvEvent::BlockStored(s) => {
            head(out, shape, "BlockStored", 7);
            key(out, shape, "block_hashes");
            hashes(out, &s.block_hashes);
            key(out, shape, "parent_block_hash");
            opt_uint(out, s.parent_block_hash);
            key(out, shape, "token_ids");
            write::array(out, s.token_ids.len());
            for &t in &s.token_ids {
                write::uint(out, u64::from(t));
            }
            key(out, shape, "block_size");
            write::uint(out, s.block_size as u64);
            key(out, shape, "lora_id");
            opt_uint(out, s.lora_id.map(|v| v.max(0) as u64));
            key(out, shape, "medium");
            opt_str(out, s.medium.as_deref());
            key(out, shape, "lora_name");
            opt_str(out, s.lora_name.as_deref());
        }
        KvEvent::BlockRemoved {
            block_hashes,
            medium,
        } => {
            head(out, shape, "BlockRemoved", 2);
            key(out, shape, "block_hashes");
            hashes(out, block_hashes);
            key(out, shape, "medium");
            opt_str(out, medium.as_deref());
        }
        KvEvent::AllBlocksCleared => head(out, shape, "AllBlocksCleared", 0),
    }
}
