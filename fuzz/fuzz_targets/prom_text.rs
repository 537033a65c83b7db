//! The Prometheus text parser of model-server `/metrics` pages: never panics, and every sample
//! it returns has a name and labels it can look up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_inference::prom_text::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(samples) = parse(text) {
        for s in &samples {
            assert!(!s.name.is_empty());
            for (k, v) in &s.labels {
                assert!(s.label(k).is_some(), "{k}={v}");
            }
        }
    }
});
