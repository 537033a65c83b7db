//! Upstream response heads: `parse_response_head` and `response_framing` never panic, a parsed
//! head's raw spans stay inside the head, a length beside chunked coding is never forwarded,
//! and bytes after the head do not change how it parses.
#![no_main]

use bytes::Bytes;
use http::Method;
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::h1_codec::{parse_response_head, response_framing, MAX_HEAD_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&which, wire)) = data.split_first() else {
        return;
    };
    let head = match parse_response_head(wire) {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert!(wire.len() <= MAX_HEAD_BYTES);
            return;
        }
        Err(_) => return,
    };
    assert!(head.len <= wire.len() && head.len <= MAX_HEAD_BYTES);
    let again = parse_response_head(&wire[..head.len])
        .expect("the head alone parses")
        .expect("the head alone is complete");
    assert_eq!(again.len, head.len);
    assert_eq!(again.status, head.status);
    let mut head = head;
    if let Some(raw) = head.raw.as_mut() {
        raw.set_head(Bytes::copy_from_slice(&wire[..head.len]));
        for (name, _) in raw.iter() {
            assert!(!(head.transfer_encoding && name.eq_ignore_ascii_case(b"content-length")));
        }
        let _ = raw.to_map();
    }
    let method = match which % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let _ = response_framing(&method, &mut head);
});
