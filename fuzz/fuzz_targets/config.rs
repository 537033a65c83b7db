//! The YAML config loader: never panics, whatever the file holds.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = switchyard_config::parse(text, Path::new("fuzz.yaml"));
});
