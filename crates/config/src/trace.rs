//! `tracing`: OpenTelemetry spans exported over OTLP. Absent means tracing is off and the request
//! path does no tracing work at all.
//!
//! The sampler is parent-based (as Envoy and every OpenTelemetry SDK do by default): a request
//! whose `traceparent` says "sampled" is traced, one that says "not sampled" is not, and a request
//! without a parent starts a trace with probability `sample_ratio`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::FieldError;

/// Distributed tracing settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Where spans are sent.
    pub otlp: Otlp,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of requests without a sampled parent that start a trace, 0.0 to 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The batch span processor: spans wait in a bounded queue (dropped when it is full) and
    /// are exported from a background thread, never from the request path.
    #[serde(default)]
    pub batch: Batch,
}

/// An OTLP collector.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://host:port`. For `protocol: http` a URL without a path gets `/v1/traces`.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Bound on one export call.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

/// Batch span processor settings (the OpenTelemetry SDK's defaults).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    /// Spans waiting for export; more are dropped.
    pub max_queue_size: usize,
    /// Spans per export call.
    pub max_export_batch_size: usize,
    /// How long spans wait before a partial batch is exported.
    #[serde(with = "humantime_serde")]
    pub scheduled_delay: Duration,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
        }
    }
}

fn default_service_name() -> String {
    "switchyard".to_string()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Otlp {
    /// The URL exports go to: the endpoint as written, with `/v1/traces` added for OTLP/HTTP
    /// when it has no path (as the OpenTelemetry spec does for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn export_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        let has_path = base
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        match self.protocol {
            OtlpProtocol::Http if !has_path => format!("{base}/v1/traces"),
            _ => self.endpoint.clone(),
        }
    }
}

impl Tracing {
    /// Problems with these settings, as `("tracing.<key>", message)` pairs.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push((format!("tracing.{key}"), msg));
        if let Err(msg) = check_endpoint(&self.otlp.endpoint) {
            err("otlp.endpoint", msg);
        }
        if self.otlp.timeout.is_zero() {
            err(
                "otlp.timeout",
                "duration must be greater than zero".to_string(),
            );
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            err(
                "sample_ratio",
                format!("{} is outside 0.0..=1.0", self.sample_ratio),
            );
        }
        if self.service_name.is_empty() {
            err("service_name", "must not be empty".to_string());
        }
        let b = &self.batch;
        if b.max_queue_size == 0 {
            err("batch.max_queue_size", "must be at least 1".to_string());
        }
        if b.max_export_batch_size == 0 || b.max_export_batch_size > b.max_queue_size {
            err(
                "batch.max_export_batch_size",
                format!(
                    "must be between 1 and `max_queue_size` ({})",
                    b.max_queue_size
                ),
            );
        }
        if b.scheduled_delay.is_zero() {
            err(
                "batch.scheduled_delay",
                "duration must be greater than zero".to_string(),
            );
        }
        errors
    }
}

/// `http://host[:port][/path]`. TLS to the collector is not built in: a local collector or agent
/// is the usual hop, and it keeps rustls out of the exporter.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(if endpoint.starts_with("https://") {
            format!("`{endpoint}`: https is not supported; send to a local collector over http://")
        } else {
            format!("`{endpoint}` is not a URL of the form http://host:port")
        });
    };
    let authority = rest.split('/').next().unwrap_or("");
    // `[::1]:4317` (an IPv6 literal keeps its brackets) or `host:4317`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
            None => ("", None),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let bad_char = |c: char| c.is_whitespace() || matches!(c, '@' | '?' | '#');
    if host.is_empty() || host.contains(bad_char) {
        return Err(format!("`{endpoint}` has no valid host"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("`{endpoint}` has an invalid port `{p}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::parse;
    use std::path::Path;

    use crate::load::tests::errors;

    #[test]
    fn defaults_and_full_form() {
        let c = parse(
            "tracing:\n  otlp: {endpoint: 'http://127.0.0.1:4317'}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.service_name, "switchyard");
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(t.otlp.protocol, super::OtlpProtocol::Grpc);
        assert_eq!(t.otlp.export_url(), "http://127.0.0.1:4317");
        assert_eq!(t.batch, super::Batch::default());

        let c = parse(
            "tracing:\n  otlp: {endpoint: 'http://collector:4318', protocol: http, timeout: 2s}\n  service_name: gw\n  sample_ratio: 0.25\n  batch: {max_queue_size: 100, max_export_batch_size: 10, scheduled_delay: 50ms}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.otlp.export_url(), "http://collector:4318/v1/traces");
        assert_eq!(
            t.batch.scheduled_delay,
            std::time::Duration::from_millis(50)
        );
        assert!(parse("", Path::new("c.yaml")).unwrap().tracing.is_none());
    }

    #[test]
    fn http_endpoint_with_a_path_is_kept() {
        let o = super::Otlp {
            endpoint: "http://c:4318/custom/traces".into(),
            protocol: super::OtlpProtocol::Http,
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(o.export_url(), "http://c:4318/custom/traces");
    }

    #[test]
    fn ratio_and_endpoint_errors_point_at_the_key() {
        let e = errors("tracing:\n  otlp:\n    endpoint: 'localhost:4317'\n  sample_ratio: 1.5\n");
        assert_eq!(
            e,
            vec![
                "c.yaml:3:5: tracing.otlp.endpoint: `localhost:4317` is not a URL of the form http://host:port",
                "c.yaml:4:3: tracing.sample_ratio: 1.5 is outside 0.0..=1.0",
            ]
        );
        let e = errors("tracing:\n  otlp: {endpoint: 'https://c:4317'}\n");
        assert!(e[0].contains("https is not supported"), "{e:?}");
        let e = errors("tracing:\n  otlp: {endpoint: 'http://c:99999'}\n");
        assert!(e[0].contains("invalid port `99999`"), "{e:?}");
        let e = errors("tracing:\n  otlp: {endpoint: 'http://:4317'}\n");
        assert!(e[0].contains("no valid host"), "{e:?}");
        assert!(errors("tracing:\n  otlp: {endpoint: 'http://[::1]:4317'}\n").is_empty());
    }

    #[test]
    fn batch_and_timeout_errors() {
        let e = errors(
            "tracing:\n  otlp: {endpoint: 'http://c:4317', timeout: 0s}\n  batch: {max_queue_size: 4, max_export_batch_size: 8, scheduled_delay: 0s}\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("tracing.otlp.timeout"), "{e:?}");
        assert!(
            e[1].contains(
                "tracing.batch.max_export_batch_size: must be between 1 and `max_queue_size` (4)"
            ),
            "{e:?}"
        );
        assert!(e[2].contains("tracing.batch.scheduled_delay"), "{e:?}");
    }

    #[test]
    fn typos_and_unknown_protocol_suggest() {
        let e = errors("tracing:\n  otlp: {endpoint: 'http://c:4317'}\n  sample_rate: 0.5\n");
        assert!(e[0].starts_with("c.yaml:3:3: tracing"), "{e:?}");
        assert!(e[0].contains("(did you mean `sample_ratio`?)"), "{e:?}");
        let e = errors("tracing:\n  otlp: {endpoint: 'http://c:4317', protocol: grcp}\n");
        assert!(e[0].contains("(did you mean `grpc`?)"), "{e:?}");
        let e = errors("tracing:\n  service_name: x\n");
        assert!(e[0].contains("missing field `otlp`"), "{e:?}");
    }
}
