//! `switchyard tap`: one line per finished request, live from the gateway's `/tap` stream.
//!
//! Filtering happens in the gateway (the flags become query parameters), so a quiet filter over
//! a busy gateway costs the admin connection nothing. The gateway sends at most `--max-rps` a
//! second (100 by default) and, when this reader falls behind, skips summaries rather than
//! queueing them; either way it says how many; the tap prints that, so a gap
//! in the output is never silent. A closed stdout (`| head`) ends the tap quietly.

use std::io::{self, Write};

use crate::client::{push_query, Admin};
use crate::format::{clock, latency};
use crate::model::{RequestSummary, TapEvent};

/// What to ask the gateway for and how to print it.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    pub route: Option<String>,
    pub pool: Option<String>,
    /// `5xx`, `4xx`, `2xx` or one status such as `503`.
    pub status: Option<String>,
    pub min_latency_ms: Option<u128>,
    /// Stop after this many requests (drop notices do not count).
    pub max: Option<u64>,
    /// Most summaries a second the gateway sends.
    pub max_rps: Option<u32>,
    pub json: bool,
}

impl TapOptions {
    /// `/tap` with the filters as query parameters.
    pub fn path(&self) -> String {
        let mut query = String::new();
        let text = [
            ("route", &self.route),
            ("pool", &self.pool),
            ("status", &self.status),
        ];
        for (key, value) in text {
            if let Some(value) = value {
                push_query(&mut query, key, value);
            }
        }
        if let Some(ms) = self.min_latency_ms {
            push_query(&mut query, "min_latency_ms", &ms.to_string());
        }
        if let Some(n) = self.max_rps {
            push_query(&mut query, "max_rps", &n.to_string());
        }
        format!("/tap{query}")
    }
}

/// A `--status` value: a class (`5xx`) or one code (`503`).
pub fn parse_status(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let class = bytes.len() == 3
        && (b'1'..=b'5').contains(&bytes[0])
        && (bytes[1..].iter().all(u8::is_ascii_digit) || bytes[1..].eq_ignore_ascii_case(b"xx"));
    if class {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{text}` is not a status: use 5xx, 4xx, 2xx or a code such as 503"
        ))
    }
}

/// Streams summaries to `out` until `--max`, the end of the stream or a closed `out`.
pub async fn tap(admin: &Admin, options: &TapOptions, out: &mut impl Write) -> anyhow::Result<()> {
    let path = options.path();
    let mut events = admin.stream(&path).await?;
    let mut printed = 0u64;
    while options.max.is_none_or(|max| printed < max) {
        let Some(data) = events.next_event().await? else {
            anyhow::bail!("admin {}, GET {path}: the stream ended", admin.as_str());
        };
        let event = TapEvent::parse(&data).map_err(|e| {
            anyhow::anyhow!(
                "admin {}, GET {path}: not a request summary: {e}",
                admin.as_str()
            )
        })?;
        let text = match (&event, options.json) {
            (_, true) => data,
            (TapEvent::Dropped(n), false) => {
                format!("... {n} requests not shown (over --max-rps, or this reader fell behind)")
            }
            (TapEvent::Request(summary), false) => line(summary),
        };
        if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
        if matches!(event, TapEvent::Request(_)) {
            printed += 1;
        }
    }
    Ok(())
}

/// `time status method path route→pool@endpoint latency [ttft=] [model=] [retries=] [hedged]
/// [pick=] [error=]`: the fixed fields first so columns line up, the optional ones after.
pub fn line(s: &RequestSummary) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let status = s.status.map_or_else(|| "---".to_owned(), |s| s.to_string());
    let mut text = format!(
        "{} {status} {} {} {}\u{2192}{}@{} {}",
        clock(s.time_ms),
        or_dash(&s.method),
        or_dash(&s.path),
        dash(&s.route),
        dash(&s.pool),
        dash(&s.endpoint),
        latency(s.duration_ms),
    );
    if s.ttft_ms.is_some() {
        text.push_str(&format!(" ttft={}", latency(s.ttft_ms)));
    }
    if let Some(model) = &s.model {
        text.push_str(&format!(" model={model}"));
    }
    if let Some(retries) = s.retries.filter(|&r| r > 0) {
        text.push_str(&format!(" retries={retries}"));
    }
    if s.hedged == Some(true) {
        text.push_str(" hedged");
    }
    match &s.pick {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(pick)) => text.push_str(&format!(" pick={pick:?}")),
        Some(pick) => text.push_str(&format!(" pick={pick}")),
    }
    if let Some(error) = &s.error {
        text.push_str(&format!(" error={error:?}"));
    }
    text
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_server::{events, Canned, TestServer};

    const FULL: &str = r#"{"time_ms": 1764780000123, "id": "r-1", "method": "POST",
        "path": "/v1/chat/completions", "route": "chat", "pool": "gpu-a",
        "endpoint": "10.0.0.1:8000", "status": 200, "duration_ms": 2875.5, "ttft_ms": 95.4,
        "model": "llama-3-8b", "retries": 1, "hedged": true,
        "pick": "prefix hit 87%, queue 2", "error": null, "bytes": 5120}"#;
    const SPARSE: &str = r#"{"time_ms": 1764780000200, "method": "GET", "path": "/v1/models",
        "route": null, "pool": null, "endpoint": null, "status": 503, "duration_ms": 0.4,
        "ttft_ms": null, "model": null, "retries": 0, "hedged": false, "pick": null,
        "error": "no healthy endpoint"}"#;

    fn summary(json: &str) -> RequestSummary {
        match TapEvent::parse(json).unwrap() {
            TapEvent::Request(s) => *s,
            TapEvent::Dropped(_) => panic!("dropped"),
        }
    }

    #[test]
    fn lines() {
        assert_eq!(
            line(&summary(FULL)),
            "16:40:00.123 200 POST /v1/chat/completions chat\u{2192}gpu-a@10.0.0.1:8000 2.88s \
             ttft=95ms model=llama-3-8b retries=1 hedged pick=\"prefix hit 87%, queue 2\""
        );
        assert_eq!(
            line(&summary(SPARSE)),
            "16:40:00.200 503 GET /v1/models -\u{2192}-@- 0.4ms error=\"no healthy endpoint\""
        );
        assert_eq!(
            line(&summary(r#"{"pick": {"score": 0.5}}"#)),
            "--:--:--.--- --- - - -\u{2192}-@- - pick={\"score\":0.5}"
        );
    }

    #[test]
    fn filters_become_query_parameters() {
        assert_eq!(TapOptions::default().path(), "/tap");
        let options = TapOptions {
            route: Some("chat".into()),
            pool: Some("gpu a".into()),
            status: Some("5xx".into()),
            min_latency_ms: Some(100),
            ..TapOptions::default()
        };
        assert_eq!(
            options.path(),
            "/tap?route=chat&pool=gpu%20a&status=5xx&min_latency_ms=100"
        );
    }

    #[test]
    fn statuses() {
        for good in ["5xx", "4XX", "2xx", "503", "429"] {
            assert_eq!(parse_status(good), Ok(good.to_ascii_lowercase()));
        }
        for bad in ["5x", "6xx", "50x", "server", "5000"] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
    }

    async fn run(server: &TestServer, options: &TapOptions) -> (anyhow::Result<()>, String) {
        let admin = Admin::parse(&server.addr.to_string()).unwrap();
        let mut out = Vec::new();
        let result = tokio::time::timeout(Duration::from_secs(10), tap(&admin, options, &mut out))
            .await
            .unwrap();
        (result, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn prints_requests_and_drops_until_max() {
        let stream = events(&[FULL, r#"{"dropped": 12}"#, SPARSE, FULL]);
        let server = TestServer::start(vec![("/tap", Canned::Events(vec![stream]))]).await;
        let options = TapOptions {
            status: Some("5xx".into()),
            max: Some(2),
            ..TapOptions::default()
        };
        let (result, out) = run(&server, &options).await;
        result.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("16:40:00.123 200 POST"));
        assert_eq!(
            lines[1],
            "... 12 requests not shown (over --max-rps, or this reader fell behind)"
        );
        assert!(lines[2].starts_with("16:40:00.200 503 GET"));
        assert_eq!(*server.requests.lock().unwrap(), ["/tap?status=5xx"]);
    }

    #[tokio::test]
    async fn json_prints_the_events_as_sent_and_a_closed_stream_is_an_error() {
        let stream = events(&[r#"{"dropped": 1}"#, r#"{"status": 200}"#]);
        let server = TestServer::start(vec![("/tap", Canned::Events(vec![stream]))]).await;
        let options = TapOptions {
            json: true,
            ..TapOptions::default()
        };
        let (result, out) = run(&server, &options).await;
        assert_eq!(out, "{\"dropped\": 1}\n{\"status\": 200}\n");
        let err = result.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("admin {}, GET /tap: the stream ended", server.addr)
        );
    }

    /// A writer whose reader has gone, like stdout into `head` after it exits.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_closed_pipe_ends_the_tap_cleanly() {
        let stream = events(&[FULL, FULL]);
        let server = TestServer::start(vec![("/tap", Canned::Events(vec![stream]))]).await;
        let admin = Admin::parse(&server.addr.to_string()).unwrap();
        let (options, mut out) = (TapOptions::default(), ClosedPipe);
        let done = tokio::time::timeout(Duration::from_secs(10), tap(&admin, &options, &mut out));
        done.await.unwrap().unwrap();
    }
}
