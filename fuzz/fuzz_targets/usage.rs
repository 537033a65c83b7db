//! Usage read from responses as they pass: `find_usage` on a body, `token_events` on a chunk,
//! and `TokenEvents` over the same bytes cut in two places, which must count what one call over
//! the joined bytes counts when no line is longer than its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_inference::{find_usage, token_events, TokenEvents, UsageTail};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let _ = find_usage(rest);
    let mut tail = UsageTail::new(64);
    tail.push(rest);
    let _ = tail.usage();
    let whole = token_events(rest);
    let a = usize::from(cut) % (rest.len() + 1);
    let b = a + (rest.len() - a) / 2;
    let mut events = TokenEvents::default();
    let split = events.push(&rest[..a]) + events.push(&rest[a..b]) + events.push(&rest[b..]);
    // A final line without `\n` stays pending in `TokenEvents`; count only complete lines.
    let complete = rest.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    if rest.len() < 16 * 1024 {
        assert_eq!(split, token_events(&rest[..complete]), "whole: {whole}");
    }
});
