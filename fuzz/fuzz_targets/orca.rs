//! ORCA `endpoint-load-metrics` header values (TEXT, JSON and base64 BIN): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchyard_balance::parse_orca(data);
});
