//! Stage 1b, the request target: one authority and one path, validated and normalized before
//! routing, and the same ones sent upstream. A gateway that routes on one reading of a request
//! and forwards another lets a client reach what its routes do not allow: `/v1/../internal`
//! matching a `/v1/` route, or a `Host` that differs from the authority the route matched.
//!
//! - Authority (RFC 9112 §3.2, RFC 9113 §8.3.1): an HTTP/1.1 request has exactly one `Host`; an
//!   absolute-form target's authority replaces it; an HTTP/2 `host` must name what `:authority`
//!   names. Anything else is a 400.
//! - Path (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded, dot segments
//!   removed, and (by setting) repeated slashes merged; an encoded slash or backslash (`%2F`,
//!   `%5C`), which a backend may decode into a path separator after routing, is refused by
//!   default, or kept or decoded by setting (Envoy's `path_with_escaped_slashes_action`).
//!
//! Most requests need none of this: one scan of the path finds nothing to do, and no
//! allocation happens.

use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Version};
use switchyard_config::{EscapedSlashes, PathNormalization};

use super::exchange::{Exchange, Reject};
use crate::error::GatewayError;
use crate::headers::valid_authority;

pub fn check<B>(rx: &Exchange<'_>, req: &mut Request<B>) -> Result<(), Reject> {
    authority(rx, req)?;
    let path = req.uri().path();
    let normalized = normalize_path(path, &rx.conn.paths)
        .map_err(|why| Reject::keep(GatewayError::BadRequest(why)))?;
    if let Some(path) = normalized {
        let mut parts = req.uri().clone().into_parts();
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.path_and_query = Some(
            PathAndQuery::try_from(pq)
                .map_err(|_| Reject::keep(GatewayError::BadRequest("invalid request target")))?,
        );
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| Reject::keep(GatewayError::BadRequest("invalid request target")))?;
    }
    Ok(())
}

/// One authority for the request, in `Host` as well as in the target when it has one. The
/// header scan already counted and checked `Host`; only a target with its own authority
/// (absolute form, HTTP/2) needs the header's value.
fn authority<B>(rx: &Exchange<'_>, req: &mut Request<B>) -> Result<(), Reject> {
    // A client that cannot say which host it wants is confused about the connection too.
    let bad = |why| Err(Reject::close(GatewayError::BadRequest(why)));
    let scan = &rx.scan;
    if scan.hosts > 1 {
        return bad("more than one Host header");
    }
    if scan.host && !scan.host_valid {
        return bad("invalid Host header");
    }
    let Some(a) = req.uri().authority() else {
        if !scan.host && req.version() == Version::HTTP_11 {
            return bad("HTTP/1.1 request without a Host header");
        }
        return Ok(());
    };
    if !valid_authority(a.as_str().as_bytes()) {
        return bad("invalid request authority");
    }
    match req.headers().get(HOST) {
        Some(h) if h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => Ok(()),
        // HTTP/2 and HTTP/3: `host` must name the entity `:authority` names.
        Some(_) if req.version() >= Version::HTTP_2 => bad("Host header differs from :authority"),
        // HTTP/1 absolute form: the target's authority wins over `Host`.
        _ => {
            let value = HeaderValue::from_str(a.as_str())
                .map_err(|_| Reject::close(GatewayError::BadRequest("invalid authority")))?;
            req.headers_mut().insert(HOST, value);
            Ok(())
        }
    }
}

/// The normalized form of `path`, or `None` when it is already normal. `Err` names why the path
/// is refused.
pub fn normalize_path(
    path: &str,
    opts: &PathNormalization,
) -> Result<Option<String>, &'static str> {
    let b = path.as_bytes();
    if !opts.normalize || !needs_normalizing(b, opts.merge_slashes) {
        return Ok(None);
    }
    if b.contains(&b'\\') && opts.escaped_slashes == EscapedSlashes::Reject {
        return Err("backslash in the request path");
    }
    let decoded = decode_unreserved(b, opts.escaped_slashes)?;
    let mut out = remove_dot_segments(&decoded);
    if opts.merge_slashes {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // Only ASCII went in, and decoding only produced unreserved ASCII or kept escapes.
    let out = String::from_utf8(out).map_err(|_| "invalid request path")?;
    Ok((out != path).then_some(out))
}

/// One pass: an escape, a backslash, a segment starting with `.`, or (when merging) `//`.
fn needs_normalizing(b: &[u8], merge_slashes: bool) -> bool {
    let mut prev = 0u8;
    for &c in b {
        if c == b'%' || c == b'\\' || (prev == b'/' && (c == b'.' || (merge_slashes && c == b'/')))
        {
            return true;
        }
        prev = c;
    }
    false
}

/// Decode `%XX` escapes of unreserved characters (RFC 3986 §2.3); other escapes are kept, with
/// upper-case hex digits (§6.2.2.1). Encoded slashes and backslashes follow `slashes`.
fn decode_unreserved(b: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("malformed percent-encoding in the request path");
        };
        let c = (hi * 16 + lo) as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else if matches!(c, b'/' | b'\\') {
            match slashes {
                EscapedSlashes::Reject => {
                    return Err("encoded slash or backslash in the request path")
                }
                EscapedSlashes::Unescape => out.push(b'/'),
                EscapedSlashes::Keep => out.extend_from_slice(&[b'%', hexdigit(hi), hexdigit(lo)]),
            }
        } else {
            out.extend_from_slice(&[b'%', hexdigit(hi), hexdigit(lo)]);
        }
        i += 3;
    }
    if slashes == EscapedSlashes::Unescape {
        for c in &mut out {
            if *c == b'\\' {
                *c = b'/';
            }
        }
    }
    Ok(out)
}

fn hexdigit(v: u32) -> u8 {
    b"0123456789ABCDEF"[v as usize & 0xf]
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the one before it (never
/// above the root).
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let body = path.strip_prefix(b"/").unwrap_or(path);
    let mut parts = body.split(|&c| c == b'/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            b"." => trailing_slash = last,
            b".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(merge: bool, slashes: EscapedSlashes) -> PathNormalization {
        PathNormalization {
            normalize: true,
            merge_slashes: merge,
            escaped_slashes: slashes,
        }
    }

    fn norm(p: &str) -> Result<String, &'static str> {
        normalize_path(p, &PathNormalization::default()).map(|o| o.unwrap_or_else(|| p.into()))
    }

    #[test]
    fn traversals_are_resolved_before_routing() {
        assert_eq!(norm("/v1/../internal/x").unwrap(), "/internal/x");
        assert_eq!(norm("/v1/%2e%2e/internal").unwrap(), "/internal");
        assert_eq!(norm("/v1/%2E%2e/internal").unwrap(), "/internal");
        assert_eq!(
            norm("/v1/./chat/completions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(norm("/../../etc").unwrap(), "/etc");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/v1/%63hat").unwrap(), "/v1/chat");
        // Reserved escapes stay (hex upper-cased); only unreserved ones decode.
        assert_eq!(norm("/q/a%3fb%20c").unwrap(), "/q/a%3Fb%20c");
        assert_eq!(norm("/a//b").unwrap(), "/a//b");
    }

    #[test]
    fn encoded_slashes_are_refused_kept_or_unescaped() {
        assert!(norm("/v1/..%2finternal").is_err());
        assert!(norm("/v1/..%5Cinternal").is_err());
        assert!(norm("/v1/..\\internal").is_err());
        let keep = opts(false, EscapedSlashes::Keep);
        assert_eq!(
            normalize_path("/v1/..%2finternal", &keep).unwrap().unwrap(),
            "/v1/..%2Finternal"
        );
        let unescape = opts(false, EscapedSlashes::Unescape);
        assert_eq!(
            normalize_path("/v1/..%2finternal", &unescape)
                .unwrap()
                .unwrap(),
            "/internal"
        );
        assert_eq!(
            normalize_path("/v1/..\\internal", &unescape)
                .unwrap()
                .unwrap(),
            "/internal"
        );
    }

    #[test]
    fn slashes_merge_when_asked() {
        let merge = opts(true, EscapedSlashes::Reject);
        assert_eq!(
            normalize_path("//v1//chat", &merge).unwrap().unwrap(),
            "/v1/chat"
        );
        assert_eq!(normalize_path("/v1/chat", &merge).unwrap(), None);
    }

    #[test]
    fn normal_paths_cost_nothing_and_bad_escapes_are_refused() {
        assert_eq!(
            normalize_path("/v1/chat/completions", &PathNormalization::default()).unwrap(),
            None
        );
        assert!(norm("/a%2").is_err());
        assert!(norm("/a%zz").is_err());
    }

    #[test]
    fn authorities() {
        for ok in [
            "a",
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "user@host",
            "host:port",
            "[::1",
            "[zz]",
            "a:123456",
            "a/b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent_and_leaves_no_dot_segments(
            segs in proptest::collection::vec("(\\.|\\.\\.|%2[eE]|%2[fF]|%41|[a-z]{1,3}|)", 0..8),
            merge in any::<bool>(),
            slash in 0u8..3,
        ) {
            let slashes = [EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Unescape][slash as usize];
            let o = opts(merge, slashes);
            let path = format!("/{}", segs.join("/"));
            if let Ok(first) = normalize_path(&path, &o) {
                let first = first.unwrap_or(path.clone());
                prop_assert!(first.starts_with('/'));
                for seg in first.split('/') {
                    prop_assert!(seg != "." && seg != "..", "{path} -> {first}");
                }
                prop_assert_eq!(normalize_path(&first, &o).unwrap(), None, "{} -> {}", path, first);
            }
        }
    }
}
