//! The one-pass request header scan: never panics on any header map a client can send, and its
//! answers agree with the map (block size, Host count, Content-Length); `parse_decimal` agrees
//! with the standard library on what it accepts.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::headers::{parse_decimal, RequestScan};

fuzz_target!(|data: &[u8]| {
    // One header per line, `name:value`; lines `http` refuses are skipped.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Some(n) = parse_decimal(line) {
            let s = std::str::from_utf8(line).expect("digits are ASCII");
            assert_eq!(Some(n), s.trim_ascii().parse::<u64>().ok());
            assert!(!s.contains('+'));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let scan = RequestScan::new(&headers);
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    assert_eq!(scan.bytes, bytes);
    let hosts = headers.get_all(http::header::HOST).iter().count();
    assert_eq!(usize::from(scan.hosts), hosts.min(255));
    let lengths: Vec<Option<u64>> = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .map(|v| parse_decimal(v.as_bytes()))
        .collect();
    match scan.content_length {
        None => assert!(lengths.is_empty()),
        Some(Ok(n)) => assert!(lengths.iter().all(|l| *l == Some(n))),
        Some(Err(())) => assert!(lengths.iter().any(|l| *l != lengths[0] || l.is_none())),
    }
    let _ = scan.request_id();
});
