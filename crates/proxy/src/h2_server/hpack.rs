//! HPACK (RFC 7541) for the server side: response heads are encoded here, request heads
//! decoded by `loona-hpack` and checked here.
//!
//! The encoder uses the static table and literals only: no dynamic-table insertions and no
//! Huffman coding. A proxy's response heads are mostly values that change per response
//! (`date`, `content-length`, request ids), where indexing costs a table walk and an eviction
//! each time and saves the client almost nothing; h2's encoder spent ~4.7k instructions per
//! response doing both (issue 19). The bytes cost instead is a few dozen per head.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

/// Static-table index of a response header's name (RFC 7541 Appendix A), for the names a
/// response commonly carries.
fn static_name(name: &HeaderName) -> Option<u8> {
    use http::header::*;
    // Compared as the `http` crate's standard names: an enum compare, not a string compare.
    let i = if name == CONTENT_TYPE {
        31
    } else if name == CONTENT_LENGTH {
        28
    } else if name == DATE {
        33
    } else if name == SERVER {
        54
    } else if name == CACHE_CONTROL {
        24
    } else if name == CONTENT_ENCODING {
        26
    } else if name == SET_COOKIE {
        55
    } else if name == VARY {
        59
    } else if name == ETAG {
        34
    } else if name == LAST_MODIFIED {
        44
    } else if name == LOCATION {
        46
    } else if name == ACCEPT_RANGES {
        18
    } else if name == CONTENT_RANGE {
        30
    } else if name == RETRY_AFTER {
        53
    } else if name == ACCESS_CONTROL_ALLOW_ORIGIN {
        20
    } else if name == AGE {
        21
    } else if name == ALLOW {
        22
    } else if name == EXPIRES {
        36
    } else if name == LINK {
        45
    } else if name == VIA {
        60
    } else if name == WWW_AUTHENTICATE {
        61
    } else if name == STRICT_TRANSPORT_SECURITY {
        56
    } else {
        return None;
    };
    Some(i)
}

/// An HPACK integer with an `n`-bit prefix, the prefix's high bits set to `flags` (§5.1).
fn put_int(out: &mut BytesMut, flags: u8, n: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

/// A string literal, not Huffman-coded (§5.2).
fn put_str(out: &mut BytesMut, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.put_slice(s);
}

/// One field as a literal that is not indexed; never indexed (`0001`) when marked sensitive,
/// so that no intermediary's table keeps it either (§6.2.2, §6.2.3).
fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
    match static_name(name) {
        Some(i) => put_int(out, flags, 4, usize::from(i)),
        None => {
            out.put_u8(flags);
            put_str(out, name.as_str().as_bytes());
        }
    }
    put_str(out, value.as_bytes());
}

/// Encodes a response head: `:status` first, then every header of `headers`.
pub fn encode_response(out: &mut BytesMut, status: StatusCode, headers: &HeaderMap) {
    let indexed = match status.as_u16() {
        200 => Some(8),
        204 => Some(9),
        206 => Some(10),
        304 => Some(11),
        400 => Some(12),
        404 => Some(13),
        500 => Some(14),
        _ => None,
    };
    match indexed {
        Some(i) => out.put_u8(0x80 | i),
        None => {
            put_int(out, 0, 4, 8);
            put_str(out, status.as_str().as_bytes());
        }
    }
    encode_headers(out, headers);
}

/// Encodes trailers (or any header list without pseudo-headers).
pub fn encode_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        put_field(out, name, value);
    }
}

/// Why a request head is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR.
    Malformed(&'static str),
    /// Over the listener's header limits: answered 431.
    TooLarge,
}

/// A request head as decoded, before it becomes an `http::Request`.
#[derive(Default)]
pub struct RequestHead {
    pub method: Option<Method>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: bool,
    regular_seen: bool,
    pub headers: HeaderMap,
    /// Bytes counted against the header list limit (§6.5.2: name + value + 32 per field).
    list_size: usize,
    pub error: Option<HeadError>,
    /// The content-length the client declared, if any.
    pub content_length: Option<u64>,
}

/// Limits a request head is checked against.
#[derive(Clone, Copy)]
pub struct HeadLimits {
    pub max_list_size: usize,
    pub max_headers: usize,
}

impl RequestHead {
    /// Takes one decoded field. The first problem found is kept; later fields are still
    /// decoded by the caller (the HPACK table must stay in step) but ignored.
    pub fn field(&mut self, name: &[u8], value: &[u8], limits: HeadLimits) {
        if self.error.is_some() {
            return;
        }
        self.list_size += name.len() + value.len() + 32;
        if self.list_size > limits.max_list_size {
            self.error = Some(HeadError::TooLarge);
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                return self.malformed("pseudo-header after a regular header");
            }
            let slot = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        return self.malformed("duplicate :method");
                    }
                    match Method::from_bytes(value) {
                        Ok(m) => self.method = Some(m),
                        Err(_) => self.malformed("invalid :method"),
                    }
                    return;
                }
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                b"protocol" => {
                    // Extended CONNECT (RFC 8441) is not offered in our SETTINGS.
                    self.protocol = true;
                    return self.malformed(":protocol without extended CONNECT");
                }
                _ => return self.malformed("unknown pseudo-header"),
            };
            if slot.is_some() {
                return self.malformed("duplicate pseudo-header");
            }
            *slot = Some(Bytes::copy_from_slice(value));
            return;
        }
        self.regular_seen = true;
        if self.headers.len() >= limits.max_headers {
            self.error = Some(HeadError::TooLarge);
            return;
        }
        let Ok(name) = HeaderName::from_lowercase(name) else {
            return self.malformed("invalid or uppercase header name");
        };
        // Connection-specific fields are malformed in HTTP/2 (§8.2.2).
        use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
        if name == CONNECTION
            || name == TRANSFER_ENCODING
            || name == UPGRADE
            || name == "keep-alive"
            || name == "proxy-connection"
        {
            return self.malformed("connection-specific header");
        }
        if name == TE && value != b"trailers" {
            return self.malformed("te other than trailers");
        }
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return self.malformed("invalid header value");
        };
        if name == CONTENT_LENGTH {
            let parsed = crate::headers::parse_decimal(value.as_bytes());
            match (parsed, self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return self.malformed("invalid content-length"),
            }
        }
        self.headers.append(name, value);
    }

    fn malformed(&mut self, why: &'static str) {
        self.error = Some(HeadError::Malformed(why));
    }

    /// The request's method and URI, once every field is in.
    pub fn finish(&mut self) -> Result<(Method, Uri), HeadError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let method = self
            .method
            .take()
            .ok_or(HeadError::Malformed("no :method"))?;
        let mut parts = http::uri::Parts::default();
        if let Some(a) = self.authority.take() {
            parts.authority = Some(
                http::uri::Authority::from_maybe_shared(a)
                    .map_err(|_| HeadError::Malformed("invalid :authority"))?,
            );
        }
        if method == Method::CONNECT {
            // §8.5: only :method and :authority.
            if self.scheme.is_some() || self.path.is_some() || parts.authority.is_none() {
                return Err(HeadError::Malformed("CONNECT with :scheme or :path"));
            }
        } else {
            let scheme = self
                .scheme
                .take()
                .ok_or(HeadError::Malformed("no :scheme"))?;
            let path = self.path.take().ok_or(HeadError::Malformed("no :path"))?;
            if path.is_empty() {
                return Err(HeadError::Malformed("empty :path"));
            }
            parts.scheme = Some(
                http::uri::Scheme::try_from(&scheme[..])
                    .map_err(|_| HeadError::Malformed("invalid :scheme"))?,
            );
            parts.path_and_query = Some(
                http::uri::PathAndQuery::from_maybe_shared(path)
                    .map_err(|_| HeadError::Malformed("invalid :path"))?,
            );
            if parts.authority.is_none() {
                // A URI with a scheme needs an authority; the Host header names it instead.
                parts.scheme = None;
            }
        }
        let uri = Uri::from_parts(parts).map_err(|_| HeadError::Malformed("invalid URI"))?;
        Ok((method, uri))
    }

    /// The head is a trailer section: no pseudo-headers (§8.1).
    pub fn is_trailers(&self) -> bool {
        self.method.is_none()
            && self.scheme.is_none()
            && self.authority.is_none()
            && self.path.is_none()
            && !self.protocol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut d = loona_hpack::Decoder::new();
        d.decode(block).unwrap()
    }

    const LIMITS: HeadLimits = HeadLimits {
        max_list_size: 16 * 1024,
        max_headers: 100,
    };

    #[test]
    fn a_response_head_decodes_as_encoded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "text/event-stream".parse().unwrap(),
        );
        headers.insert("x-request-id", "abc".parse().unwrap());
        let mut secret = HeaderValue::from_static("s3cret");
        secret.set_sensitive(true);
        headers.insert(http::header::SET_COOKIE, secret);
        let long = "v".repeat(300);
        headers.insert("x-long-header-name", long.parse().unwrap());
        for status in [200, 404, 429, 503] {
            let mut out = BytesMut::new();
            encode_response(&mut out, StatusCode::from_u16(status).unwrap(), &headers);
            let fields = decode(&out);
            assert_eq!(
                fields[0],
                (b":status".to_vec(), status.to_string().into_bytes())
            );
            let rest: Vec<_> = fields[1..]
                .iter()
                .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
                .collect();
            assert!(rest.contains(&("content-type".into(), "text/event-stream".into())));
            assert!(rest.contains(&("x-request-id".into(), "abc".into())));
            assert!(rest.contains(&("set-cookie".into(), "s3cret".into())));
            assert!(rest.contains(&("x-long-header-name".into(), long.as_str().into())));
        }
        // The sensitive value is never indexed: `0001` prefix with set-cookie's index (55).
        let mut out = BytesMut::new();
        let mut only = HeaderMap::new();
        let mut v = HeaderValue::from_static("a");
        v.set_sensitive(true);
        only.insert(http::header::SET_COOKIE, v);
        encode_headers(&mut out, &only);
        assert_eq!(&out[..2], &[0x1f, 55 - 15]);
    }

    fn head(fields: &[(&str, &str)]) -> RequestHead {
        let mut h = RequestHead::default();
        for (n, v) in fields {
            h.field(n.as_bytes(), v.as_bytes(), LIMITS);
        }
        h
    }

    #[test]
    fn a_request_head_becomes_method_and_uri() {
        let mut h = head(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.example:8443"),
            (":path", "/v1/chat?x=1"),
            ("content-length", "12"),
            ("te", "trailers"),
        ]);
        let (m, uri) = h.finish().unwrap();
        assert_eq!(m, Method::POST);
        assert_eq!(uri.to_string(), "https://api.example:8443/v1/chat?x=1");
        assert_eq!(h.content_length, Some(12));
        assert_eq!(h.headers.len(), 2);
    }

    #[test]
    fn malformed_heads_are_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[(":method", "GET"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "http")],
            &[(":method", "GET"), (":scheme", "http"), (":path", "")],
            &[
                ("a", "b"),
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("Upper", "x"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("connection", "x"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("te", "gzip"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":foo", "x"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("content-length", "1"),
                ("content-length", "2"),
            ],
            &[
                (":method", "CONNECT"),
                (":authority", "a:1"),
                (":path", "/"),
            ],
        ];
        for fields in cases {
            let err = head(fields).finish().unwrap_err();
            assert!(
                matches!(err, HeadError::Malformed(_)),
                "{fields:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_head_over_the_limits_is_too_large() {
        let big = "x".repeat(20 * 1024);
        let mut h = head(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("x", &big),
        ]);
        assert_eq!(h.finish().unwrap_err(), HeadError::TooLarge);
        let mut h = RequestHead::default();
        for f in [(":method", "GET"), (":scheme", "http"), (":path", "/")] {
            h.field(f.0.as_bytes(), f.1.as_bytes(), LIMITS);
        }
        for i in 0..101 {
            h.field(format!("x-{i}").as_bytes(), b"v", LIMITS);
        }
        assert_eq!(h.finish().unwrap_err(), HeadError::TooLarge);
    }
}
