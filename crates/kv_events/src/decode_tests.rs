use proptest::prelude::*;

use crate::decode::decode_batch;
use crate::encode::encode_batch;
use crate::event::{BlockStored, EventBatch, KvEvent, Shape};
use crate::msgpack::write;

fn stored(hashes: Vec<u64>, parent: Option<u64>, block_size: usize) -> KvEvent {
    let token_ids = (0..hashes.len() * block_size).map(|t| t as u32).collect();
    KvEvent::BlockStored(BlockStored {
        block_hashes: hashes,
        parent_block_hash: parent,
        token_ids,
        block_size,
        lora_id: None,
        lora_name: None,
        medium: Some("GPU".into()),
    })
}

#[test]
fn both_shapes_round_trip() {
    let batch = EventBatch {
        ts: 1.25,
        events: vec![
            stored(vec![7, 8], None, 4),
            KvEvent::BlockRemoved {
                block_hashes: vec![7],
                medium: None,
            },
            KvEvent::AllBlocksCleared,
        ],
        dp_rank: Some(0),
        unknown: 0,
    };
    for shape in [Shape::Array, Shape::Map] {
        assert_eq!(decode_batch(&encode_batch(&batch, shape)).unwrap(), batch);
    }
}

/// A frame as vLLM's newer releases write it: a map event with bytes hashes, a field this
/// decoder has never heard of, and an event type it does not know.
#[test]
fn tagged_maps_with_unknown_fields_and_types() {
    let mut f = Vec::new();
    write::array(&mut f, 3);
    write::float(&mut f, 3.0);
    write::array(&mut f, 2);
    write::map(&mut f, 6);
    write::str(&mut f, "extra_keys");
    write::array(&mut f, 1);
    write::map(&mut f, 1);
    write::str(&mut f, "x");
    write::nil(&mut f);
    write::str(&mut f, "type");
    write::str(&mut f, "BlockStored");
    write::str(&mut f, "block_hashes");
    write::array(&mut f, 1);
    write::bin(&mut f, &[0xab; 32]);
    write::str(&mut f, "parent_block_hash");
    write::nil(&mut f);
    write::str(&mut f, "token_ids");
    write::array(&mut f, 2);
    write::uint(&mut f, 1);
    write::uint(&mut f, 2);
    write::str(&mut f, "block_size");
    write::uint(&mut f, 2);
    write::map(&mut f, 1);
    write::str(&mut f, "type");
    write::str(&mut f, "BlockMoved");
    write::nil(&mut f);
    let b = decode_batch(&f).unwrap();
    assert_eq!(b.unknown, 1);
    let KvEvent::BlockStored(s) = &b.events[0] else {
        panic!("{b:?}")
    };
    assert_eq!(s.token_ids, [1, 2]);
    assert_eq!(s.block_hashes.len(), 1);
}

#[test]
fn errors_name_the_field() {
    let mut f = Vec::new();
    write::array(&mut f, 3);
    write::float(&mut f, 0.0);
    write::array(&mut f, 1);
    write::array(&mut f, 5);
    write::str(&mut f, "BlockStored");
    write::array(&mut f, 1);
    write::uint(&mut f, 1);
    write::nil(&mut f);
    write::array(&mut f, 1);
    write::str(&mut f, "oops");
    write::uint(&mut f, 1);
    write::nil(&mut f);
    let e = decode_batch(&f).unwrap_err();
    assert_eq!(e.field, "events[0].token_ids[0]");
    assert!(e.message.contains("found a string"), "{e}");

    // Token count that does not match the blocks.
    let bad = EventBatch {
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: vec![1, 2],
            token_ids: vec![1; 3],
            block_size: 2,
            ..Default::default()
        })],
        ..Default::default()
    };
    let e = decode_batch(&encode_batch(&bad, Shape::Map)).unwrap_err();
    assert!(e.message.contains("3 token ids for 2 blocks"), "{e}");
    assert!(decode_batch(&[0x90]).is_err());
    assert!(decode_batch(&[]).is_err());
}

fn arb_event() -> impl Strategy<Value = KvEvent> {
    prop_oneof![
        (
            proptest::collection::vec(any::<u64>(), 0..5),
            proptest::option::of(any::<u64>()),
            1usize..5,
            proptest::option::of("[a-z]{0,6}"),
            proptest::option::of(0i64..100),
        )
            .prop_map(|(h, p, bs, lora, id)| {
                let n = h.len() * bs;
                KvEvent::BlockStored(BlockStored {
                    block_hashes: h,
                    parent_block_hash: p,
                    token_ids: (0..n as u32).collect(),
                    block_size: bs,
                    lora_id: id,
                    lora_name: lora,
                    medium: None,
                })
            }),
        (
            proptest::collection::vec(any::<u64>(), 0..5),
            proptest::option::of("GPU|CPU")
        )
            .prop_map(|(block_hashes, medium)| KvEvent::BlockRemoved {
                block_hashes,
                medium
            }),
        Just(KvEvent::AllBlocksCleared),
    ]
}

proptest! {
    /// Any batch survives encoding in either shape.
    #[test]
    fn round_trips(events in proptest::collection::vec(arb_event(), 0..6), map in any::<bool>(), ts in 0.0f64..1e10) {
        let batch = EventBatch { ts, events, dp_rank: Some(0), unknown: 0 };
        let shape = if map { Shape::Map } else { Shape::Array };
        prop_assert_eq!(decode_batch(&encode_batch(&batch, shape)).unwrap(), batch);
    }

    /// Any bytes, and any corruption of a real frame: an error or a batch, never a panic, and
    /// never more events than the frame has bytes.
    #[test]
    fn corrupted_frames_never_panic(
        events in proptest::collection::vec(arb_event(), 0..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let batch = EventBatch { events, ..Default::default() };
        let mut frame = encode_batch(&batch, Shape::Map);
        for (i, b) in flips {
            let i = i.index(frame.len());
            frame[i] = b;
        }
        let frame = &frame[..cut.index(frame.len() + 1)];
        if let Ok(b) = decode_batch(frame) {
            prop_assert!(b.events.len() <= frame.len());
        }
        let _ = decode_batch(&noise);
    }
}

/// The fuzz target's seeds are real frames of both shapes.
#[test]
fn fuzz_seeds_decode() {
    let array = decode_batch(include_bytes!("../../../fuzz/corpus/kv_event_batch/array")).unwrap();
    assert_eq!(array.events.len(), 3);
    assert_eq!(array.events[2], KvEvent::AllBlocksCleared);
    let map = decode_batch(include_bytes!("../../../fuzz/corpus/kv_event_batch/map")).unwrap();
    assert!(matches!(&map.events[0], KvEvent::BlockStored(s) if s.token_ids == [1, 2, 3, 4]));
}
