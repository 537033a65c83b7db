//! Shared harness for end-to-end tests: start the real `switchyard` binary on ephemeral ports
//! and real origin servers, wait on readiness (never a fixed sleep), stop everything on drop.
#![allow(dead_code)]

pub mod background;
pub mod client;
pub mod ext_proc;
pub mod fleet;
pub mod origin;
pub mod pki;
pub mod prometheus;
pub mod raw_h2;
pub mod redis;
pub mod static_model;
pub mod tcp;
pub mod tls_origin;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The Python for the interop tests: the project's `.venv/`, which `scripts/test` makes from
/// `tests/interop/requirements.txt`, when it exists; else `python3` from the PATH.
pub fn python3() -> PathBuf {
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv/bin/python3"
    ));
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// How long a test waits for a state it expects before failing: generous, so that a loaded
/// machine is slow rather than wrong.
pub const WAIT: Duration = Duration::from_secs(30);

/// Poll `done` until it holds; after [`WAIT`], fail saying what never happened. Async, so tasks
/// of the test's own runtime (requests it has in flight) keep running meanwhile.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Start with `yaml` as the config file. Listener and admin addresses may use port 0.
    pub fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("switchyard.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let args = ["--config".into(), config_path.clone().into_os_string()];
        Self::start_with(&args, dir, config_path)
    }

    /// Start `switchyard run` with `args`; `dir` lives as long as the gateway.
    pub fn start_with(
        args: &[std::ffi::OsString],
        dir: tempfile::TempDir,
        config_path: PathBuf,
    ) -> Gateway {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "run"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let out_lines = Arc::new(Mutex::new(Vec::new()));
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
        {
            let out_lines = out_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    out_lines.lock().unwrap().push(line);
                }
            });
        }
        let mut listeners = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(v) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "gateway did not become ready; logs: {:?}",
                    logs.lock().unwrap()
                );
            };
            match v["message"].as_str() {
                Some("listening") => {
                    listeners.insert(
                        v["listener"].as_str().unwrap().to_string(),
                        v["address"].as_str().unwrap().parse().unwrap(),
                    );
                }
                Some("admin listening") => {
                    admin = Some(v["address"].as_str().unwrap().parse().unwrap());
                }
                Some("ready") => break,
                _ => {}
            }
        }
        Gateway {
            child,
            listeners,
            admin: admin.expect("admin address logged"),
            config_path,
            _dir: dir,
            logs,
            stdout: out_lines,
        }
    }

    /// Address of the listener named `public`.
    pub fn addr(&self) -> SocketAddr {
        self.listeners["public"]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Count log lines whose message equals `message`.
    pub fn log_count(&self, message: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == message)
            .count()
    }

    /// The log lines whose message equals `message`, as JSON.
    pub fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect()
    }

    /// Wait until `count` log lines with `message` have been seen.
    pub fn wait_log(&self, message: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(message) < count {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for log `{message}` x{count}; logs: {:?}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stdout lines so far (the access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Rewrite the config and send SIGHUP; waits for the reload outcome log line.
    pub fn reload(&self, yaml: &str) {
        let before = self.log_count("config reloaded")
            + self.log_count("config reload rejected; keeping the previous config");
        std::fs::write(&self.config_path, yaml).expect("write config");
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_count("config reloaded")
            + self.log_count("config reload rejected; keeping the previous config")
            <= before
        {
            assert!(Instant::now() < deadline, "no reload outcome logged");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// GET a path on the admin listener; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        client::raw_get(self.admin, path)
    }

    /// Value of one metric series from `/metrics` (exact series text, e.g.
    /// `switchyard_requests_total{route="r",pool="p",code="200"}`).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal config: one listener on port 0, admin on port 0, one route `/` → pool `p`.
pub fn simple_config(endpoints: &[SocketAddr], extra_route: &str, extra_pool: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    access_log: true\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\n{extra_route}pools:\n  - name: p\n    endpoints: [{}]\n{extra_pool}",
        eps.join(", ")
    )
}

/// A child process killed (and reaped) when the test lets go of it.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `switchyard epp` on an ephemeral port with `config` (and `extra_args`); returns it and
/// the address it printed once listening.
pub fn start_epp(config: &std::path::Path, extra_args: &[&str]) -> (Kill, SocketAddr) {
    let (epp, mut lines) = spawn_epp(config, extra_args);
    (epp, printed_address(&mut lines))
}

/// [`start_epp`] with its admin API on an ephemeral port too: (the picker, its gRPC address,
/// its admin address).
pub fn start_epp_with_admin(config: &std::path::Path) -> (Kill, SocketAddr, SocketAddr) {
    let (epp, mut lines) = spawn_epp(config, &["--admin", "127.0.0.1:0"]);
    let grpc = printed_address(&mut lines);
    (epp, grpc, printed_address(&mut lines))
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// The address at the end of the next line the process printed.
fn printed_address(lines: &mut Lines) -> SocketAddr {
    let line = lines
        .next()
        .expect("epp printed its address")
        .expect("a line");
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address at the end of the line")
}

fn spawn_epp(config: &std::path::Path, extra_args: &[&str]) -> (Kill, Lines) {
    let mut epp = Kill(
        Command::new(BIN)
            .args(["epp", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switchyard epp"),
    );
    let lines = BufReader::new(epp.0.stdout.take().expect("piped stdout")).lines();
    (epp, lines)
}
