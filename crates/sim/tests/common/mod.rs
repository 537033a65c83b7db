//! Test client helpers: one HTTP/1.1 connection per request (TCP_NODELAY), with the time the
//! first token arrived, and a strict Prometheus text parser.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use switchyard_sim::{start_fleet, Fleet, FleetConfig, ReplicaConfig};
use tokio::net::TcpStream;

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A fleet of one replica with `cfg`.
pub async fn one(cfg: ReplicaConfig) -> (Fleet, SocketAddr) {
    let fleet = start_fleet(FleetConfig {
        replicas: vec![cfg],
        ..FleetConfig::uniform(MODEL, 1, "h100")
    })
    .await
    .expect("fleet starts");
    let addr = fleet.addresses()[0];
    (fleet, addr)
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// When the first generated token arrived (streams only).
    pub first_token: Option<Duration>,
    pub elapsed: Duration,
    /// The body ended with an error (connection dropped).
    pub aborted: bool,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("bad SSE event {e:?}"))
                    .to_string()
            })
            .collect()
    }
}

fn has_token(chunk: &str) -> bool {
    chunk.contains("\"delta\":{\"content\":\"")
        || (chunk.contains("\"text\":\"") && !chunk.contains("\"text\":\"\""))
}

pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Resp> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut first_token = None;
    let mut aborted = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    let s = std::str::from_utf8(&data)?;
                    if first_token.is_none() && has_token(s) {
                        first_token = Some(start.elapsed());
                    }
                    text.push_str(s);
                }
            }
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    Ok(Resp {
        status,
        headers,
        body: text,
        first_token,
        elapsed: start.elapsed(),
        aborted,
    })
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Resp {
    request(addr, Method::POST, path, body, &[])
        .await
        .expect("request")
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, Method::GET, path, "", &[])
        .await
        .expect("request")
}

/// A chat request body.
pub fn chat(system: &str, user: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

/// `n` distinct words (each one token).
pub fn words(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("{tag}{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses Prometheus text format 0.0.4 strictly: every sample belongs to a family declared by
/// `# TYPE` before it, names and labels are well-formed, values are floats, histogram buckets are
/// cumulative and end with `+Inf` equal to `_count`. Returns samples keyed by `name{labels}`.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut last_bucket: HashMap<String, f64> = HashMap::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().expect("metric name");
            assert!(valid_name(name), "bad name {name}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().expect("type");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "duplicate TYPE {name}"
                    );
                }
                _ => panic!("bad comment line {line}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}")),
            ),
            None => (series, ""),
        };
        assert!(valid_name(name), "bad name {name}");
        let mut le = None;
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label in {line}"));
            assert!(valid_name(k) && !k.contains(':'), "bad label name {k}");
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated label value in {line}"));
            if k == "le" {
                le = Some(after[..end].to_string());
            }
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        if name.ends_with("_bucket") {
            let le = le.expect("bucket without le");
            let prev = last_bucket.insert(family.to_string(), value).unwrap_or(0.0);
            assert!(value >= prev, "buckets not cumulative: {line}");
            if le == "+Inf" {
                last_bucket.remove(family);
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series {series}"
        );
    }
    for (name, t) in &types {
        if t == "histogram" {
            let inf = samples
                .iter()
                .find(|(k, _)| {
                    k.starts_with(&format!("{name}_bucket")) && k.contains("le=\"+Inf\"")
                })
                .map(|(_, v)| *v);
            let count = samples
                .iter()
                .find(|(k, _)| k.starts_with(&format!("{name}_count")))
                .map(|(_, v)| *v);
            assert_eq!(inf, count, "{name}: +Inf bucket must equal _count");
        }
    }
    samples
}

/// The value of the first sample of `name` (any labels).
pub fn metric(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .find(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

pub async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    parse_prometheus(&r.body)
}
