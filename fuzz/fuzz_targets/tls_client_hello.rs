//! The ClientHello reader of tcp listeners with `sni_routes`, over a client's first bytes: it
//! never panics, and it answers a prefix of the bytes either "incomplete" or exactly as it
//! answers the whole, so reading more never changes a server name already decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proxy::l4::client_hello::{server_name, Parse};

fuzz_target!(|input: &[u8]| {
    let whole = server_name(input);
    for cut in 0..input.len() {
        let part = server_name(&input[..cut]);
        assert!(
            part == Parse::Incomplete || part == whole,
            "prefix of {cut} bytes: {part:?}, whole: {whole:?}"
        );
    }
});
