//! The endpoint picker's gRPC stream: length-prefixed messages split off the bytes Envoy sends
//! and decoded as `ProcessingRequest`. Never panics, and yields the same messages whether the
//! bytes came in one HTTP/2 DATA frame or many.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_epp::framing::next_request;
use switchyard_epp::proto::ProcessingRequest;

/// The messages decoded from `pieces` fed in order, stopping at the first one prost refuses
/// (as the server does), and how many bytes were left waiting.
fn messages(pieces: &[&[u8]]) -> (Vec<ProcessingRequest>, bool, usize) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(msg) = next_request(&mut buf) {
            match msg {
                Ok(m) => out.push(m),
                Err(_) => return (out, true, 0),
            }
        }
    }
    (out, false, buf.len())
}

fuzz_target!(|input: &[u8]| {
    // The first byte says how many cut sizes follow (up to 8), each one byte.
    let Some((&n, input)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 9).min(input.len());
    let (cuts, wire) = input.split_at(n);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + usize::from(c)).min(wire.len());
        pieces.push(&wire[at..end]);
        at = end;
    }
    pieces.push(&wire[at..]);
    assert_eq!(messages(&[wire]), messages(&pieces));
});
