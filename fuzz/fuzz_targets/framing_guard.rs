//! The request-smuggling guard over a client's bytes cut at arbitrary points: it never panics,
//! and it marks the same request as conflicting whether the bytes came in one read or many.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use switchyard_proxy::framing_guard::{FramingFlags, Tracker};

/// The index of the request the guard marked, if any.
fn conflict(pieces: &[&[u8]], total: usize) -> Option<usize> {
    let flags = Arc::new(FramingFlags::default());
    let mut tracker = Tracker::new(flags.clone());
    for piece in pieces {
        tracker.advance(piece);
    }
    // A request head takes at least two bytes, so no index can pass `total`.
    (0..=total).find(|_| flags.next_request_conflicts())
}

fuzz_target!(|input: &[u8]| {
    // The first byte says how many cut sizes follow (up to 16), each one byte.
    let Some((&n, input)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 17).min(input.len());
    let (cuts, wire) = input.split_at(n);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + usize::from(c)).min(wire.len());
        pieces.push(&wire[at..end]);
        at = end;
    }
    pieces.push(&wire[at..]);
    let whole = conflict(&[wire], wire.len());
    assert_eq!(whole, conflict(&pieces, wire.len()), "cut as {pieces:?}");
    let bytes: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(whole, conflict(&bytes, wire.len()), "byte by byte");
});
