use super::*;
use proptest::prelude::*;

/// A minimal protobuf encoder for the fields under test.
fn encode(fields: &[(u32, f64)], named: &[(&str, f64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(n, v) in fields {
        out.push(((n << 3) | 1) as u8);
        out.extend_from_slice(&v.to_le_bytes());
    }
    for &(k, v) in named {
        let mut entry = vec![0x0a, k.len() as u8];
        entry.extend_from_slice(k.as_bytes());
        entry.push(0x11);
        entry.extend_from_slice(&v.to_le_bytes());
        out.push((8 << 3) | 2);
        out.push(entry.len() as u8);
        out.extend(entry);
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn expected() -> LoadReport {
    LoadReport {
        cpu_utilization: 0.3,
        mem_utilization: 0.5,
        application_utilization: 0.25,
        rps_fractional: 10.0,
        eps: 0.1,
        named: vec![("foo".into(), 1.0)],
    }
}

#[test]
fn text() {
    let r = parse_orca(b"TEXT cpu_utilization=0.3, mem_utilization=0.5, application_utilization=0.25, rps_fractional=10, eps=0.1, named_metrics.foo=1").unwrap();
    assert_eq!(r, expected());
}

#[test]
fn json_snake_and_camel() {
    let snake = br#"JSON {"cpu_utilization":0.3,"mem_utilization":0.5,"application_utilization":0.25,"rps_fractional":10,"eps":0.1,"named_metrics":{"foo":1}}"#;
    assert_eq!(parse_orca(snake).unwrap(), expected());
    let camel = br#"JSON {"cpuUtilization":0.3,"memUtilization":0.5,"applicationUtilization":0.25,"rpsFractional":10,"eps":0.1,"namedMetrics":{"foo":1},"future":"x"}"#;
    assert_eq!(parse_orca(camel).unwrap(), expected());
}

#[test]
fn binary() {
    let bytes = encode(
        &[(1, 0.3), (2, 0.5), (9, 0.25), (6, 10.0), (7, 0.1)],
        &[("foo", 1.0)],
    );
    let header = format!("BIN {}", base64(&bytes));
    assert_eq!(parse_orca(header.as_bytes()).unwrap(), expected());
    // Unpadded and URL-safe base64 are accepted too.
    let unpadded = header
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    assert_eq!(parse_orca(unpadded.as_bytes()).unwrap(), expected());
}

#[test]
fn binary_skips_unknown_fields_and_reads_legacy_rps() {
    let mut bytes = vec![3 << 3, 42]; // rps = 42 (deprecated varint)
    bytes.extend([(15 << 3) | 5, 1, 2, 3, 4]); // unknown fixed32
    bytes.extend(encode(&[(1, 0.5)], &[]));
    let r = parse_orca(format!("BIN {}", base64(&bytes)).as_bytes()).unwrap();
    assert_eq!((r.cpu_utilization, r.rps_fractional), (0.5, 42.0));
}

#[test]
fn errors() {
    assert_eq!(parse_orca(b"cpu_utilization=1"), Err(OrcaError::Format));
    assert_eq!(parse_orca(b"XML <a/>"), Err(OrcaError::Format));
    assert!(matches!(
        parse_orca(b"TEXT cpu_utilization"),
        Err(OrcaError::Text(_))
    ));
    assert!(matches!(
        parse_orca(b"TEXT eps=-1"),
        Err(OrcaError::InvalidValue(_))
    ));
    assert!(matches!(
        parse_orca(b"TEXT eps=NaN"),
        Err(OrcaError::InvalidValue(_))
    ));
    assert!(matches!(parse_orca(b"JSON [1]"), Err(OrcaError::Json(_))));
    assert_eq!(parse_orca(b"BIN !!!"), Err(OrcaError::Base64));
    let truncated = &encode(&[(1, 0.5)], &[])[..5];
    assert!(matches!(
        parse_orca(format!("BIN {}", base64(truncated)).as_bytes()),
        Err(OrcaError::Protobuf(_))
    ));
}

#[test]
fn named_metrics_are_capped() {
    let text: String = (0..40).map(|i| format!("named_metrics.m{i}=1,")).collect();
    let r = parse_orca(format!("TEXT {text}").as_bytes()).unwrap();
    assert_eq!(r.named.len(), MAX_NAMED_METRICS);
}

#[test]
fn utilization_prefers_application() {
    let mut r = expected();
    assert_eq!(r.utilization(), 0.25);
    r.application_utilization = 0.0;
    assert_eq!(r.utilization(), 0.3);
}

proptest! {
    #[test]
    fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_orca(&bytes);
    }

    #[test]
    fn never_panics_on_prefixed_garbage(prefix in prop::sample::select(vec!["TEXT ", "JSON ", "BIN "]), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut v = prefix.as_bytes().to_vec();
        v.extend(body);
        let _ = parse_orca(&v);
    }

    #[test]
    fn never_panics_on_base64_of_garbage(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_orca(format!("BIN {}", base64(&body)).as_bytes());
    }

    #[test]
    fn all_encodings_agree(cpu in 0.0..4.0f64, rps in 0.0..1e6f64, eps in 0.0..1e3f64) {
        let text = parse_orca(format!("TEXT cpu_utilization={cpu}, rps_fractional={rps}, eps={eps}").as_bytes()).unwrap();
        let json = parse_orca(format!(r#"JSON {{"cpu_utilization":{cpu},"rps_fractional":{rps},"eps":{eps}}}"#).as_bytes()).unwrap();
        let bin = parse_orca(format!("BIN {}", base64(&encode(&[(1, cpu), (6, rps), (7, eps)], &[]))).as_bytes()).unwrap();
        // TEXT and BIN are exact; serde_json may be off in the last bit.
        prop_assert_eq!(&text, &bin);
        prop_assert_eq!(text.cpu_utilization, cpu);
        let close = |a: f64, b: f64| (a - b).abs() <= a.abs() * 1e-12;
        prop_assert!(close(json.cpu_utilization, cpu) && close(json.rps_fractional, rps) && close(json.eps, eps));
    }
}
