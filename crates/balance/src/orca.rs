//! ORCA (Open Request Cost Aggregation) load reports from the `endpoint-load-metrics` response
//! header, in the three encodings Envoy and gRPC accept:
//!
//! - `TEXT cpu_utilization=0.3, rps_fractional=10, eps=0.1, named_metrics.foo=1`
//! - `JSON {"cpu_utilization":0.3,"rps_fractional":10,"named_metrics":{"foo":1}}` (proto3 JSON,
//!   so camelCase names are accepted too)
//! - `BIN <base64 of xds.data.orca.v3.OrcaLoadReport>`
//!
//! The protobuf is decoded by hand for the handful of fields a picker uses; field numbers are
//! those of `xds/data/orca/v3/orca_load_report.proto`: cpu_utilization 1, mem_utilization 2,
//! rps 3 (deprecated, used when rps_fractional is absent), rps_fractional 6, eps 7,
//! named_metrics 8, application_utilization 9. Unknown fields and keys are skipped, as protobuf
//! does, so a newer backend never breaks an older proxy. The parser is total: any input gives a
//! report or an error, never a panic.

use std::fmt;

/// Named metrics kept per report; a header is untrusted input, so the rest are dropped.
pub const MAX_NAMED_METRICS: usize = 16;

/// Longest header value parsed.
const MAX_LEN: usize = 16 * 1024;

/// One endpoint load report. Absent fields are zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub cpu_utilization: f64,
    pub mem_utilization: f64,
    pub application_utilization: f64,
    pub rps_fractional: f64,
    pub eps: f64,
    /// Application-specific metrics (`named_metrics`), at most [`MAX_NAMED_METRICS`].
    pub named: Vec<(String, f64)>,
}

impl LoadReport {
    /// The utilization A58 balances on: `application_utilization` when the backend reports it,
    /// else `cpu_utilization`.
    pub fn utilization(&self) -> f64 {
        if self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }

    fn set(&mut self, name: &str, v: f64) -> Result<(), OrcaError> {
        if !(v.is_finite() && v >= 0.0) {
            return Err(OrcaError::InvalidValue(name.to_string()));
        }
        match name {
            "cpu_utilization" | "cpuUtilization" => self.cpu_utilization = v,
            "mem_utilization" | "memUtilization" => self.mem_utilization = v,
            "application_utilization" | "applicationUtilization" => {
                self.application_utilization = v;
            }
            "rps_fractional" | "rpsFractional" => self.rps_fractional = v,
            "eps" => self.eps = v,
            _ => {}
        }
        Ok(())
    }

    fn add_named(&mut self, name: &str, v: f64) -> Result<(), OrcaError> {
        if !v.is_finite() {
            return Err(OrcaError::InvalidValue(format!("named_metrics.{name}")));
        }
        if self.named.len() < MAX_NAMED_METRICS {
            self.named.push((name.to_string(), v));
        }
        Ok(())
    }
}

/// Why a header value is not a load report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrcaError {
    /// Not prefixed with `TEXT `, `JSON ` or `BIN `, or longer than 16 KiB.
    Format,
    /// A `TEXT` entry that is not `name=number`.
    Text(String),
    Json(String),
    Base64,
    /// Truncated or malformed protobuf.
    Protobuf(&'static str),
    /// A metric that is negative, NaN or infinite.
    InvalidValue(String),
}

impl fmt::Display for OrcaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrcaError::Format => f.write_str("expected `TEXT`, `JSON` or `BIN` load report"),
            OrcaError::Text(e) => write!(f, "bad TEXT load report entry `{e}`"),
            OrcaError::Json(e) => write!(f, "bad JSON load report: {e}"),
            OrcaError::Base64 => f.write_str("bad base64 in BIN load report"),
            OrcaError::Protobuf(e) => write!(f, "bad BIN load report: {e}"),
            OrcaError::InvalidValue(name) => write!(f, "invalid value for `{name}`"),
        }
    }
}

impl std::error::Error for OrcaError {}

/// Parse one `endpoint-load-metrics` header value.
pub fn parse_orca(value: &[u8]) -> Result<LoadReport, OrcaError> {
    if value.len() > MAX_LEN {
        return Err(OrcaError::Format);
    }
    let value = value.trim_ascii();
    let (format, body) = match value.iter().position(|b| b.is_ascii_whitespace()) {
        Some(i) => (&value[..i], value[i..].trim_ascii()),
        None => return Err(OrcaError::Format),
    };
    match format {
        b"TEXT" => parse_text(body),
        b"JSON" => parse_json(body),
        b"BIN" => parse_proto(&base64_decode(body).ok_or(OrcaError::Base64)?),
        _ => Err(OrcaError::Format),
    }
}

fn parse_text(body: &[u8]) -> Result<LoadReport, OrcaError> {
    let text = std::str::from_utf8(body).map_err(|_| OrcaError::Text("not UTF-8".into()))?;
    let mut report = LoadReport::default();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || OrcaError::Text(entry.chars().take(64).collect());
        let (name, v) = entry.split_once('=').ok_or_else(bad)?;
        let v: f64 = v.trim().parse().map_err(|_| bad())?;
        match name.trim().strip_prefix("named_metrics.") {
            Some(n) if !n.is_empty() => report.add_named(n, v)?,
            Some(_) => return Err(bad()),
            None => report.set(name.trim(), v)?,
        }
    }
    Ok(report)
}

fn parse_json(body: &[u8]) -> Result<LoadReport, OrcaError> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(body).map_err(|e| OrcaError::Json(e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(OrcaError::Json("expected an object".into()));
    };
    let mut report = LoadReport::default();
    for (name, v) in &map {
        if name == "named_metrics" || name == "namedMetrics" {
            let Value::Object(named) = v else {
                return Err(OrcaError::Json(format!("`{name}` must be an object")));
            };
            for (n, v) in named {
                let v = v
                    .as_f64()
                    .ok_or_else(|| OrcaError::InvalidValue(format!("named_metrics.{n}")))?;
                report.add_named(n, v)?;
            }
        } else if let Some(x) = v.as_f64() {
            report.set(name, x)?;
        }
    }
    Ok(report)
}

/// Standard or URL-safe base64, padding optional.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let text = match text.iter().rposition(|&c| c != b'=') {
        Some(end) if text.len() - end - 1 <= 2 => &text[..=end],
        Some(_) => return None,
        None => &[],
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | sextet(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&acc.to_be_bytes()[1..]),
            3 => out.extend_from_slice(&(acc << 6).to_be_bytes()[1..3]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

/// A protobuf wire-format cursor.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, OrcaError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or(OrcaError::Protobuf("truncated"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(OrcaError::Protobuf("varint too long"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], OrcaError> {
        if self.0.len() < n {
            return Err(OrcaError::Protobuf("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn double(&mut self) -> Result<f64, OrcaError> {
        let b = self.bytes(8)?;
        Ok(f64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    /// The next field as (number, value); only wire types 0, 1, 2 and 5 exist in proto3.
    fn field(&mut self) -> Result<(u64, Value<'a>), OrcaError> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Double(self.double()?),
            2 => {
                let n = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                Value::Bytes(self.bytes(n)?)
            }
            5 => {
                self.bytes(4)?;
                Value::Fixed32
            }
            _ => return Err(OrcaError::Protobuf("unsupported wire type")),
        };
        Ok((tag >> 3, value))
    }
}

enum Value<'a> {
    Varint(u64),
    Double(f64),
    Bytes(&'a [u8]),
    Fixed32,
}

fn parse_proto(bytes: &[u8]) -> Result<LoadReport, OrcaError> {
    let mut report = LoadReport::default();
    let mut legacy_rps = None;
    let mut w = Wire(bytes);
    while !w.0.is_empty() {
        match w.field()? {
            (1, Value::Double(v)) => report.set("cpu_utilization", v)?,
            (2, Value::Double(v)) => report.set("mem_utilization", v)?,
            (3, Value::Varint(v)) => legacy_rps = Some(v as f64),
            (6, Value::Double(v)) => report.set("rps_fractional", v)?,
            (7, Value::Double(v)) => report.set("eps", v)?,
            (8, Value::Bytes(entry)) => {
                let (name, v) = map_entry(entry)?;
                report.add_named(name, v)?;
            }
            (9, Value::Double(v)) => report.set("application_utilization", v)?,
            (1 | 2 | 3 | 6 | 7 | 8 | 9, _) => return Err(OrcaError::Protobuf("wrong wire type")),
            _ => {}
        }
    }
    if report.rps_fractional == 0.0 {
        if let Some(rps) = legacy_rps {
            report.rps_fractional = rps;
        }
    }
    Ok(report)
}

/// A `map<string, double>` entry: key is field 1, value field 2.
fn map_entry(bytes: &[u8]) -> Result<(&str, f64), OrcaError> {
    let (mut key, mut value) = ("", 0.0);
    let mut w = Wire(bytes);
    while !w.0.is_empty() {
        match w.field()? {
            (1, Value::Bytes(k)) => {
                key = std::str::from_utf8(k).map_err(|_| OrcaError::Protobuf("key not UTF-8"))?;
            }
            (2, Value::Double(v)) => value = v,
            (1 | 2, _) => return Err(OrcaError::Protobuf("wrong wire type in map entry")),
            _ => {}
        }
    }
    Ok((key, value))
}

#[cfg(test)]
#[path = "orca_tests.rs"]
mod tests;
