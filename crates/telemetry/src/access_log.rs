//! JSON access log: one line per request on stdout. Lines are handed to a writer task through a
//! bounded channel so a slow stdout never stalls the request path; when the channel is full the
//! line is dropped and counted.

use std::io::Write;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

/// One finished request.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub listener: &'a str,
    pub request_id: &'a str,
    pub client: String,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub route: &'a str,
    pub pool: &'a str,
    pub upstream: Option<String>,
    /// The model the upstream was asked for, when the gateway read it (else null).
    pub model: Option<&'a str>,
    /// The model the client named, when a rewrite changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_model: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub response_bytes: u64,
    pub error: Option<&'a str>,
    /// The OpenTelemetry trace this request was recorded in, when it was sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// The subject of the client certificate verified on the connection (mTLS listeners).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<&'a str>,
    /// Its subject alternative names (URIs, DNS names, emails, IPs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_san: Vec<String>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Cheap-to-clone handle for emitting access log lines.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Vec<u8>>,
    dropped: Counter,
}

impl AccessLog {
    /// Start the writer task on the current runtime.
    pub fn spawn(dropped: Counter) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8192);
        tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            while let Some(line) = rx.blocking_recv() {
                let mut out = stdout.lock();
                let _ = out.write_all(&line);
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(&more);
                }
                let _ = out.flush();
            }
        });
        Self { tx, dropped }
    }

    pub fn log(&self, record: &AccessRecord<'_>) {
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, record).is_ok() {
            line.push(b'\n');
            if self.tx.try_send(line).is_err() {
                self.dropped.inc();
            }
        }
    }
}
