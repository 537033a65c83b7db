//! Request path normalization (dot segments, unreserved escapes, slashes) on any path `http`
//! accepts, under every setting: never panics, leaves no `.` or `..` segment, and is
//! idempotent (normalizing its output again finds nothing to do).
#![no_main]

use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;
use switchyard_config::{EscapedSlashes, PathNormalization};
use switchyard_proxy::pipeline::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(pq) = PathAndQuery::try_from(rest) else {
        return;
    };
    let path = pq.path();
    let opts = PathNormalization {
        normalize: true,
        merge_slashes: which & 1 == 1,
        escaped_slashes: match (which >> 1) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Unescape,
        },
    };
    let Ok(Some(out)) = normalize_path(path, &opts) else {
        return;
    };
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert!(
        out.split('/').all(|s| s != "." && s != ".."),
        "{path:?} -> {out:?}"
    );
    assert_eq!(normalize_path(&out, &opts), Ok(None), "{path:?} -> {out:?}");
});
