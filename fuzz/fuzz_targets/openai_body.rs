//! `parse_openai` on each of the three OpenAI paths: never panics, and a parsed prompt is never
//! longer than the body (the bound the memory guarantee rests on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_inference::parse_openai;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let path = match which % 3 {
        0 => "/v1/completions",
        1 => "/v1/chat/completions",
        _ => "/v1/embeddings",
    };
    if let Ok(r) = parse_openai(path, body) {
        assert!(r.prompt.len() <= body.len());
        assert!(!r.model.is_empty());
        let _ = r.block_hashes(16);
    }
});
