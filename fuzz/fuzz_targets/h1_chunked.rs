//! The chunked body decoder over bytes cut at arbitrary points: it never panics, every call that
//! produces something consumes bytes (no loop without progress), and the body it decodes (data,
//! how it ends, what is left after it) does not depend on where the reads were cut.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::h1_codec::{decode_chunked, Chunked, Decoded};

#[derive(Debug, PartialEq)]
enum End {
    /// Ran out of bytes in this state.
    Incomplete(Chunked),
    Error,
    Last,
    Trailers(Vec<(String, Vec<u8>)>),
}

/// Decode `pieces` as successive reads: (data, how it ended, the bytes after the body).
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, End, Vec<u8>) {
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        let rest = |buf: &BytesMut| [&buf[..], &pieces[i + 1..].concat()].concat();
        loop {
            let before = buf.len();
            let end = match decode_chunked(&mut state, &mut buf) {
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty(), "empty data frame");
                    data.extend_from_slice(&d);
                    assert!(buf.len() < before, "data without progress");
                    continue;
                }
                Ok(Decoded::End) => End::Last,
                Ok(Decoded::Trailers(t)) => End::Trailers(
                    t.iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                ),
                Err(_) => return (data, End::Error, Vec::new()),
            };
            assert!(buf.len() < before, "end without progress");
            return (data, end, rest(&buf));
        }
    }
    (data, End::Incomplete(state), buf.to_vec())
}

fuzz_target!(|input: &[u8]| {
    // The first byte says how many cut sizes follow (up to 8), each one byte.
    let Some((&n, input)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 9).min(input.len());
    let (cuts, wire) = input.split_at(n);
    let whole = decode(&[wire]);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + usize::from(c)).min(wire.len());
        pieces.push(&wire[at..end]);
        at = end;
    }
    pieces.push(&wire[at..]);
    assert_eq!(whole, decode(&pieces), "cut as {pieces:?}");
    let mid = wire.len() / 2;
    assert_eq!(whole, decode(&[&wire[..mid], &wire[mid..]]));
});
