//! A real Prometheus (Debian package `prometheus`) scraping a gateway every second and
//! evaluating rule files every second, with its TSDB in a temporary directory; stopped when
//! dropped. Plus `promtool check rules`, and the few HTTP API calls the tests make.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::client::{self, TestClient};

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy"))
}

/// `promtool check rules FILES`: panics with promtool's output unless every file is valid.
pub fn check_rules(files: &[PathBuf]) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .args(files)
        .output()
        .expect("promtool (Debian package prometheus) runs");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    http: TestClient,
}

impl Prometheus {
    /// Start Prometheus scraping `target`'s `/metrics` and evaluating `rule_files`, both every
    /// second; returns once it answers `/-/ready`.
    pub fn start(target: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|f| format!("  - {:?}\n", f.canonicalize().expect("rule file exists")))
            .collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\nrule_files:\n{}scrape_configs:\n  - job_name: switchyard\n    static_configs: [{{targets: [\"{target}\"]}}]\n",
            rules.concat()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        // Prometheus cannot be handed a bound socket, and logs the configured address rather
        // than the bound one: take a free port from the kernel and give it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus) runs");
        let mut p = Prometheus {
            addr,
            child,
            dir,
            http: client::http1(),
        };
        let deadline = Instant::now() + super::WAIT;
        loop {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            if ready(addr) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// What Prometheus has logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path (with its query string, already encoded): HTTP status and JSON body.
    pub async fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let req = http::Request::get(format!("http://{}{path_and_query}", self.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.http.request(req).await.expect("prometheus answers");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{path_and_query}: {e}: {}", String::from_utf8_lossy(&body))
        });
        (status, json)
    }

    /// An instant query: `Ok(result vector)`, or `Err(Prometheus' error)` for an invalid one.
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let (status, v) = self
            .get(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {} {}", v["errorType"], v["error"]));
        }
        let result = &v["data"]["result"];
        Ok(match v["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => result.as_array().cloned().unwrap_or_default(),
            // A scalar or string: one value.
            _ => vec![serde_json::json!({ "metric": {}, "value": result })],
        })
    }

    /// Series matching `selector`, over all stored time.
    pub async fn series(&self, selector: &str) -> Vec<serde_json::Value> {
        let (status, v) = self
            .get(&format!("/api/v1/series?match[]={}", encode(selector)))
            .await;
        assert_eq!(status, 200, "series {selector}: {v}");
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// Values of `label` on series of `metric` (what Grafana's `label_values(metric, label)`
    /// asks).
    pub async fn label_values(&self, metric: &str, label: &str) -> Vec<String> {
        let (status, v) = self
            .get(&format!(
                "/api/v1/label/{label}/values?match[]={}",
                encode(metric)
            ))
            .await;
        assert_eq!(status, 200, "label values {metric} {label}: {v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Prometheus answers `/-/ready` with 200.
fn ready(addr: SocketAddr) -> bool {
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        return false;
    }
    client::raw_get(addr, "/-/ready").0 == 200
}

/// Percent-encode a query string value (everything but RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The rule files in `deploy/prometheus/`.
pub fn rule_files() -> Vec<PathBuf> {
    let dir = deploy_dir().join("prometheus");
    vec![dir.join("recording.yaml"), dir.join("alerts.yaml")]
}

/// How many rules (`- alert:` or `- record:` entries) `file` declares.
pub fn declared_rules(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .expect("rule file")
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("- alert:") || l.starts_with("- record:"))
        .count()
}
