//! gRPC specifics the gateway must honour without understanding protobuf: detecting gRPC calls
//! and the `grpc-timeout` deadline (PROTOCOL-HTTP2: `Timeout → "grpc-timeout" TimeoutValue
//! TimeoutUnit`, at most 8 digits).

use std::time::Duration;

/// Parse a `grpc-timeout` value; `None` when malformed (a malformed value is ignored, as gRPC
/// servers do).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<Duration> {
        parse_timeout(v.as_bytes())
    }

    #[test]
    fn units() {
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("-1S"), None);
    }
}
