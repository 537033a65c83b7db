//! A real etcd (Debian's `etcd-server`) for tests: its own data directory, ports chosen by the
//! kernel and read back from its log, stopped on drop. `kill` and `restart` model an outage: the
//! restart keeps the data and the client port, as a restarted member would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl EtcdServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, port) = spawn(dir.path().join("data"), "127.0.0.1:0");
        Self {
            child: Some(child),
            dir,
            port,
        }
    }

    /// `etcd://127.0.0.1:PORT/KEY`
    pub fn url(&self, key: &str) -> String {
        format!("etcd://127.0.0.1:{}{key}", self.port)
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        let (child, port) = spawn(
            self.dir.path().join("data"),
            &format!("127.0.0.1:{}", self.port),
        );
        assert_eq!(port, self.port);
        self.child = Some(child);
    }

    /// Run `etcdctl` against this server; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()
            .expect("run etcdctl (Debian package etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("revision in endpoint status")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(data: PathBuf, client: &str) -> (Child, u16) {
    let mut child = Command::new("etcd")
        .arg("--data-dir")
        .arg(&data)
        .args([
            &format!("--listen-client-urls=http://{client}"),
            &format!("--advertise-client-urls=http://{client}"),
            "--listen-peer-urls=http://127.0.0.1:0",
            "--initial-advertise-peer-urls=http://127.0.0.1:0",
            "--initial-cluster=default=http://127.0.0.1:0",
            "--log-level=info",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcd (Debian package etcd-server)");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let marker = "serving insecure client requests on ";
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(marker).nth(1) {
                let port = rest
                    .split(',')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.trim().parse::<u16>().ok());
                let _ = tx.send(port);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(port)) => (child, port),
        other => {
            let _ = child.kill();
            panic!("etcd did not say where it serves: {other:?}");
        }
    }
}
