//! Header rewriting on the way through: hop-by-hop removal (RFC 9110 §7.6.1), forwarding headers,
//! and request ids.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;
use switchyard_config::Priority;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_SWITCHYARD_PRIORITY: HeaderName = HeaderName::from_static("x-switchyard-priority");
static X_SWITCHYARD_DEBUG: HeaderName = HeaderName::from_static("x-switchyard-debug");
static X_SLO_TTFT_MS: HeaderName = HeaderName::from_static("x-slo-ttft-ms");
static X_SLO_TPOT_MS: HeaderName = HeaderName::from_static("x-slo-tpot-ms");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What the request path reads from a request's headers, gathered in one pass over them. A
/// hashed lookup costs about as much as visiting every header of a typical request, and the
/// path asks a dozen questions, most about headers that are absent.
#[derive(Debug, Default)]
pub struct RequestScan {
    /// The header block's size on the wire (name + ": " + value + CRLF each).
    pub bytes: usize,
    /// `Content-Length`: `Some(Err(()))` when a value is not a number or two values differ.
    pub content_length: Option<Result<u64, ()>>,
    /// `content-type: application/grpc...`
    pub grpc: bool,
    /// The client's `x-request-id`, when it is sane to pass on (and sent once).
    pub request_id: Option<HeaderValue>,
    /// Any `x-request-id` header, sane or not.
    pub request_id_present: bool,
    pub priority: Option<Priority>,
    /// `x-slo-ttft-ms` / `x-slo-tpot-ms`: a request's latency objectives, whole milliseconds
    /// 1..=600000 ([`switchyard_inference::parse_slo_ms`]); any other value is ignored.
    pub slo: switchyard_inference::Slo,
    /// The first `x-forwarded-for` value, to append the client to.
    pub forwarded_for: Option<HeaderValue>,
    /// Any `x-forwarded-for` or `x-forwarded-proto` header (replaced, not appended).
    pub forwarded_headers: bool,
    pub host: bool,
    /// How many `Host` headers (more than one is a bad request).
    pub hosts: u8,
    /// Every `Host` value is a valid `host[:port]` (checked in the same pass, so the request
    /// target stage needs no lookup of its own).
    pub host_valid: bool,
    /// `Transfer-Encoding` names a coding other than `chunked` (RFC 9112 §6.1: 501).
    pub unknown_coding: bool,
    /// Any hop-by-hop header (RFC 9110 §7.6.1), `Connection` included.
    pub hop_by_hop: bool,
    /// `Upgrade` present and `Connection` lists `upgrade`.
    pub upgrade: bool,
    /// `TE` lists `trailers`.
    pub trailers: bool,
    pub expect: bool,
    pub grpc_timeout: Option<std::time::Duration>,
    /// `x-switchyard-debug: 1`: explain the pick in the response.
    pub debug: bool,
    /// Any `x-forwarded-client-cert` header (a client's claim, stripped unless trusted).
    pub client_cert_header: bool,
}

impl RequestScan {
    pub fn new(headers: &HeaderMap) -> Self {
        let mut scan = RequestScan::default();
        let (mut upgrade_header, mut connection_upgrade) = (false, false);
        for (name, value) in headers {
            scan.bytes += name.as_str().len() + value.len() + 4;
            if name == CONTENT_LENGTH {
                let n = parse_decimal(value.as_bytes()).ok_or(());
                scan.content_length = match scan.content_length {
                    Some(prev) if prev != n => Some(Err(())),
                    _ => Some(n),
                };
            } else if name == CONTENT_TYPE {
                scan.grpc = value.as_bytes().starts_with(b"application/grpc");
            } else if name == HOST {
                scan.host = true;
                scan.hosts = scan.hosts.saturating_add(1);
                scan.host_valid =
                    valid_authority(value.as_bytes()) && (scan.hosts == 1 || scan.host_valid);
            } else if name == CONNECTION {
                scan.hop_by_hop = true;
                connection_upgrade |= has_token(value, "upgrade");
            } else if name == UPGRADE {
                scan.hop_by_hop = true;
                upgrade_header = true;
            } else if name == TE {
                scan.hop_by_hop = true;
                scan.trailers |= has_token(value, "trailers");
            } else if name == TRANSFER_ENCODING {
                scan.hop_by_hop = true;
                scan.unknown_coding |= value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| !t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name == KEEP_ALIVE || name == PROXY_CONNECTION {
                scan.hop_by_hop = true;
            } else if name == EXPECT {
                scan.expect = true;
            } else if name == X_REQUEST_ID {
                let b = value.as_bytes();
                if scan.request_id_present {
                    // Two ids: neither is the request's.
                    scan.request_id = None;
                } else if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
                {
                    scan.request_id = Some(value.clone());
                }
                scan.request_id_present = true;
            } else if name == X_FORWARDED_FOR {
                scan.forwarded_headers = true;
                if scan.forwarded_for.is_none() {
                    scan.forwarded_for = Some(value.clone());
                }
            } else if name == X_FORWARDED_PROTO {
                scan.forwarded_headers = true;
            } else if name == X_SWITCHYARD_PRIORITY {
                scan.priority = value.to_str().ok().and_then(Priority::parse);
            } else if name == X_SLO_TTFT_MS {
                scan.slo.ttft_ms = switchyard_inference::parse_slo_ms(value.as_bytes());
            } else if name == X_SLO_TPOT_MS {
                scan.slo.tpot_ms = switchyard_inference::parse_slo_ms(value.as_bytes());
            } else if name == X_SWITCHYARD_DEBUG {
                scan.debug = value.as_bytes() == b"1";
            } else if name == GRPC_TIMEOUT {
                scan.grpc_timeout = crate::grpc::parse_timeout(value.as_bytes());
            } else if name == X_FORWARDED_CLIENT_CERT {
                scan.client_cert_header = true;
            }
        }
        scan.upgrade = upgrade_header && connection_upgrade;
        scan
    }

    /// The request's id: the client's when it is sane, else a fresh UUIDv4.
    pub fn request_id(&self) -> HeaderValue {
        self.request_id.clone().unwrap_or_else(new_request_id)
    }
}

/// What the request path reads from an upstream response's headers, in one pass.
#[derive(Debug, Default)]
pub struct ResponseScan {
    pub event_stream: bool,
    pub json: bool,
    pub content_encoding: bool,
    pub hop_by_hop: bool,
    pub grpc_status: Option<u32>,
    pub retry_after: Option<HeaderValue>,
    /// An ORCA load report (`endpoint-load-metrics`).
    pub load_report: Option<HeaderValue>,
    /// Any `x-request-id` header.
    pub request_id: bool,
}

impl ResponseScan {
    /// Note one header of a raw head (hop-by-hop ones are left out by the parser).
    pub fn observe(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"content-type") {
            self.event_stream = value.starts_with(b"text/event-stream");
            self.json = value.starts_with(b"application/json");
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            self.content_encoding = true;
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            self.request_id = true;
        } else if name.eq_ignore_ascii_case(b"retry-after") {
            self.retry_after = HeaderValue::from_bytes(value).ok();
        } else if name.eq_ignore_ascii_case(b"grpc-status") {
            self.grpc_status = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if name.eq_ignore_ascii_case(b"endpoint-load-metrics") {
            self.load_report = HeaderValue::from_bytes(value).ok();
        }
    }

    pub fn new(headers: &HeaderMap) -> Self {
        let mut scan = ResponseScan::default();
        for (name, value) in headers {
            if is_hop_by_hop(name) {
                scan.hop_by_hop = true;
            } else {
                scan.observe(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        scan
    }
}

/// Length of the request target as sent, without allocating: with [`RequestScan::bytes`], the
/// head's size for the header limit.
pub fn uri_len(uri: &http::Uri) -> usize {
    uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Remove hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (cheap comparisons) instead of a
    // hashed removal per hop-by-hop name.
    if headers.keys().any(is_hop_by_hop) {
        strip_present_hop_by_hop(headers);
    }
}

/// [`strip_hop_by_hop`] for a message known (from a scan) to carry some.
pub fn strip_present_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    headers.remove(TE);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The value of cookie `name`, from any `Cookie` header of the request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a `TE` header asks for trailers (gRPC needs `te: trailers` on HTTP/2 upstreams).
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Set `name` to `value`. When a scan saw no such header (`maybe_present` false) it is appended,
/// which skips the search for values to replace; otherwise it replaces them.
pub fn put(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue, maybe_present: bool) {
    if maybe_present {
        headers.insert(name.clone(), value);
    } else {
        headers.append(name.clone(), value);
    }
}

/// Append the client address to `x-forwarded-for` and set `x-forwarded-proto`; `scan` says
/// whether the client sent either.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    scan: &RequestScan,
    client_ip: &HeaderValue,
    https: bool,
) {
    let xff = match &scan.forwarded_for {
        Some(prev) if !prev.is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        put(headers, &X_FORWARDED_FOR, v, scan.forwarded_headers);
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    put(headers, &X_FORWARDED_PROTO, proto, scan.forwarded_headers);
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    // Version 4, variant 10 (RFC 9562).
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    // 32 hex digits, two per byte, then the dashes of the 8-4-4-4-12 groups.
    let mut hex = [0u8; 32];
    for (i, byte) in n.to_be_bytes().iter().enumerate() {
        hex[2 * i] = HEX[usize::from(byte >> 4)];
        hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    let mut id = HeaderValue::from_bytes(&out).expect("hex and dashes are valid header bytes");
    // HPACK "never indexed": a value unique to one request only churns an HTTP/2 encoder's
    // table. Indexed, each response's id was inserted into h2's 4 KiB dynamic table, evicting
    // an older one after walking the chain of every id still there (~50, each compared):
    // ~2.5k instructions per h2 response (docs/benchmarks.md, "TLS handshakes and HTTP/2 CPU").
    id.set_sensitive(true);
    id
}

/// A `Content-Length` value (surrounding whitespace allowed), at most 19 digits.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii();
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// `host[:port]` as RFC 3986 allows it in a request (no userinfo): a reg-name, IPv4 or
/// bracketed IPv6 literal, and an optional numeric port.
pub fn valid_authority(a: &[u8]) -> bool {
    if a.is_empty() || a.len() > 255 {
        return false;
    }
    let (host, port) = if a[0] == b'[' {
        let Some(end) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &a[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &a[end + 1..] {
            [] => (&a[..0], None),
            [b':', port @ ..] => (&a[..0], Some(port)),
            _ => return false,
        }
    } else {
        match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    let host_ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let scan = RequestScan::new(&h);
        set_forwarded(&mut h, &scan, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    fn request_id(h: &HeaderMap) -> HeaderValue {
        RequestScan::new(h).request_id()
    }

    #[test]
    fn forwarded_headers_are_appended_when_absent() {
        let mut h = HeaderMap::new();
        let scan = RequestScan::new(&h);
        set_forwarded(&mut h, &scan, &HeaderValue::from_static("127.0.0.1"), true);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn scan_answers_what_the_request_path_asks() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "12".parse().unwrap());
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        h.insert("host", "example".parse().unwrap());
        h.insert("te", "gzip, Trailers".parse().unwrap());
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("expect", "100-continue".parse().unwrap());
        h.insert("x-switchyard-priority", "critical".parse().unwrap());
        h.insert("x-switchyard-debug", "1".parse().unwrap());
        h.insert("grpc-timeout", "250m".parse().unwrap());
        let s = RequestScan::new(&h);
        assert_eq!(s.content_length, Some(Ok(12)));
        assert!(s.grpc && s.host && s.trailers && s.upgrade && s.expect && s.hop_by_hop);
        assert!(s.debug);
        assert_eq!(s.priority, Some(Priority::Critical));
        assert_eq!(s.grpc_timeout, Some(std::time::Duration::from_millis(250)));
        let wire: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        assert_eq!(s.bytes, wire);

        let plain = RequestScan::new(&HeaderMap::new());
        assert!(
            !plain.hop_by_hop && !plain.upgrade && !plain.grpc && plain.content_length.is_none()
        );

        // Upgrade without `Connection: upgrade` is not an upgrade.
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(!RequestScan::new(&h).upgrade);
    }

    #[test]
    fn conflicting_or_bad_content_lengths_are_flagged() {
        let mut h = HeaderMap::new();
        h.append("content-length", "5".parse().unwrap());
        h.append("content-length", "5".parse().unwrap());
        assert_eq!(RequestScan::new(&h).content_length, Some(Ok(5)));
        h.append("content-length", "6".parse().unwrap());
        assert_eq!(RequestScan::new(&h).content_length, Some(Err(())));
        let mut h = HeaderMap::new();
        h.insert("content-length", "+5".parse().unwrap());
        assert_eq!(RequestScan::new(&h).content_length, Some(Err(())));
    }

    #[test]
    fn two_request_ids_make_a_fresh_one() {
        let mut h = HeaderMap::new();
        h.append("x-request-id", "a".parse().unwrap());
        h.append("x-request-id", "b".parse().unwrap());
        let s = RequestScan::new(&h);
        assert!(s.request_id.is_none() && s.request_id_present);
        assert_eq!(s.request_id().len(), 36);
    }

    #[test]
    fn response_scan() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "text/event-stream; charset=utf-8".parse().unwrap(),
        );
        h.insert("grpc-status", " 14".parse().unwrap());
        h.insert("retry-after", "3".parse().unwrap());
        h.insert(
            "endpoint-load-metrics",
            "TEXT cpu_utilization=0.5".parse().unwrap(),
        );
        h.insert("x-request-id", "r".parse().unwrap());
        let s = ResponseScan::new(&h);
        assert!(s.event_stream && !s.json && !s.hop_by_hop && !s.content_encoding && s.request_id);
        assert_eq!(s.grpc_status, Some(14));
        assert_eq!(s.retry_after.unwrap(), "3");
        assert!(s.load_report.is_some());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert!(ResponseScan::new(&h).hop_by_hop);
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_kept_when_given() {
        let h = HeaderMap::new();
        let id = request_id(&h);
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        for (i, c) in s.chars().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(c, '-', "{s}"),
                14 => assert_eq!(c, '4', "{s}"),
                19 => assert!("89ab".contains(c), "{s}"),
                _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{s}"),
            }
        }
        assert_ne!(request_id(&h), id, "fresh ids differ");
        assert_eq!(&s[14..15], "4");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
    }
}

/// `x-forwarded-client-cert` on the upstream hop (Envoy's `forward_client_cert_details`): the
/// client's own header is dropped unless the listener appends to it, and this connection's
/// element (`xfcc`, present when it has a client certificate and the listener forwards it) is
/// set or appended.
pub fn set_client_cert(
    headers: &mut HeaderMap,
    scan: &RequestScan,
    policy: switchyard_config::ForwardClientCert,
    xfcc: Option<&HeaderValue>,
) {
    use switchyard_config::ForwardClientCert as F;
    match policy {
        F::Sanitize | F::SanitizeSet => {
            if scan.client_cert_header {
                headers.remove(&X_FORWARDED_CLIENT_CERT);
            }
            if let (F::SanitizeSet, Some(v)) = (policy, xfcc) {
                headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v.clone());
            }
        }
        F::AppendForward => {
            let Some(v) = xfcc else {
                return;
            };
            if !scan.client_cert_header {
                headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v.clone());
                return;
            }
            let mut joined = Vec::new();
            for old in headers.get_all(&X_FORWARDED_CLIENT_CERT) {
                joined.extend_from_slice(old.as_bytes());
                joined.push(b',');
            }
            joined.extend_from_slice(v.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                headers.insert(X_FORWARDED_CLIENT_CERT.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod client_cert_tests {
    use super::*;
    use switchyard_config::ForwardClientCert as F;

    fn run(policy: F, client: Option<&str>, own: Option<&str>) -> Vec<String> {
        let mut h = HeaderMap::new();
        if let Some(c) = client {
            h.insert("x-forwarded-client-cert", HeaderValue::from_str(c).unwrap());
        }
        let scan = RequestScan::new(&h);
        let own = own.map(|v| HeaderValue::from_str(v).unwrap());
        set_client_cert(&mut h, &scan, policy, own.as_ref());
        h.get_all("x-forwarded-client-cert")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn policies() {
        assert!(run(F::Sanitize, Some("Hash=forged"), Some("Hash=a")).is_empty());
        assert_eq!(
            run(F::SanitizeSet, Some("Hash=forged"), Some("Hash=a")),
            ["Hash=a"]
        );
        assert!(run(F::SanitizeSet, Some("Hash=forged"), None).is_empty());
        assert_eq!(
            run(F::AppendForward, Some("Hash=up"), Some("Hash=a")),
            ["Hash=up,Hash=a"]
        );
        assert_eq!(run(F::AppendForward, None, Some("Hash=a")), ["Hash=a"]);
        assert_eq!(run(F::AppendForward, Some("Hash=up"), None), ["Hash=up"]);
    }
}
