//! KV-cache event batches as a model server publishes them (msgpack, both vLLM shapes): never
//! panics, and never decodes more events than the frame has bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = switchyard_kv_events::decode_batch(data) {
        assert!(batch.events.len() <= data.len());
    }
});
