//! The running gateway: current config generation, bound listeners, and the reload and drain
//! procedures that change them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_config::{Config, Listener};
use switchyard_telemetry::metrics::ListenerResultLabels;
use switchyard_telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::GatewayHandle;
use crate::listener::{self, AcceptLoop};
use crate::tls::ReloadableTls;

struct Running {
    spec: Listener,
    local_addr: SocketAddr,
    stop: CancellationToken,
    tls: Option<Arc<ReloadableTls>>,
    /// The QUIC endpoint of an `http3` listener; a reload at the same address keeps it, so its
    /// connections live on.
    quic: Option<quinn::Endpoint>,
}

/// A listener bound and ready to serve: its TCP accept loop, and its QUIC one for HTTP/3.
struct Prepared {
    tcp: AcceptLoop,
    quic: Option<crate::h3::QuicLoop>,
}

/// Listeners plus the shared gateway state.
pub struct Server {
    pub handle: Arc<GatewayHandle>,
    listeners: Mutex<HashMap<String, Running>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Server {
    /// Build the first generation and bind every listener. Must run inside a Tokio runtime.
    pub fn start(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let specs = config.listeners.clone();
        let handle = GatewayHandle::new(config, metrics)?;
        let server = Arc::new(Self {
            handle,
            listeners: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        server.reconcile_listeners(&specs)?;
        Ok(server)
    }

    /// Addresses actually bound, by listener name (port 0 in config resolves here).
    pub fn local_addrs(&self) -> HashMap<String, SocketAddr> {
        self.listeners
            .lock()
            .expect("listener lock")
            .iter()
            .map(|(n, r)| (n.clone(), r.local_addr))
            .collect()
    }

    /// Swap in a new config. New or changed listeners are bound first; if any bind fails the
    /// reload is refused and the old config keeps serving. Listeners left running re-read their
    /// certificates (a failed read keeps the old certificate and is logged, not fatal).
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let specs = config.listeners.clone();
        let old = self.handle.load();
        if old.config.runtime != config.runtime {
            tracing::warn!("`runtime` settings changed; they take effect after a restart");
        }
        if old.config.admin != config.admin {
            tracing::warn!("`admin` settings changed; they take effect after a restart");
        }
        // Bind before swapping so a failure leaves everything as it was.
        let prepared = self.prepare_listeners(&specs)?;
        let fresh: Vec<String> = prepared.iter().map(|a| a.tcp.spec.name.clone()).collect();
        self.handle.apply(config)?;
        self.commit_listeners(&specs, prepared);
        self.reload_certificates(|name| !fresh.iter().any(|f| f == name));
        Ok(())
    }

    /// Certificate, key and client CA files of the running TLS listeners (what a file watch
    /// should watch).
    pub fn certificate_files(&self) -> Vec<std::path::PathBuf> {
        let running = self.listeners.lock().expect("listener lock");
        let mut files: Vec<_> = running
            .values()
            .filter_map(|r| r.tls.as_ref())
            .flat_map(|t| {
                let spec = t.spec();
                [spec.cert.clone(), spec.key.clone()]
                    .into_iter()
                    .chain(spec.client_ca.clone())
            })
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Re-read the certificate and key of every running TLS listener that `which` selects.
    /// Returns how many reads failed; each failure keeps that listener's previous certificate.
    pub fn reload_certificates(&self, which: impl Fn(&str) -> bool) -> usize {
        let running: Vec<(String, Arc<ReloadableTls>)> = {
            let running = self.listeners.lock().expect("listener lock");
            running
                .iter()
                .filter(|(name, _)| which(name))
                .filter_map(|(name, r)| Some((name.clone(), r.tls.clone()?)))
                .collect()
        };
        let mut failed = 0;
        for (name, tls) in running {
            let result = tls.reload();
            let labels = ListenerResultLabels {
                listener: name.clone(),
                result: if result.is_ok() { "success" } else { "failure" },
            };
            self.handle
                .metrics
                .tls_certificate_reloads
                .get_or_create(&labels)
                .inc();
            match result {
                Ok(()) => tracing::info!(listener = %name, "TLS certificate reloaded"),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(
                        listener = %name,
                        error = %e,
                        "TLS certificate reload failed; keeping the previous certificate"
                    );
                }
            }
        }
        failed
    }

    fn reconcile_listeners(&self, specs: &[Listener]) -> Result<(), String> {
        let prepared = self.prepare_listeners(specs)?;
        self.commit_listeners(specs, prepared);
        Ok(())
    }

    /// Bind sockets for listeners that are new or whose settings changed.
    fn prepare_listeners(&self, specs: &[Listener]) -> Result<Vec<Prepared>, String> {
        let running = self.listeners.lock().expect("listener lock");
        let mut out = Vec::new();
        for spec in specs {
            if running.get(&spec.name).is_some_and(|r| r.spec == *spec) {
                continue;
            }
            // Rebinding an unchanged port 0 would move it; keep the bound port on reload.
            let address = match running.get(&spec.name) {
                Some(r) if r.spec.address == spec.address => r.local_addr,
                _ => spec.address,
            };
            let socket = listener::bind(address)
                .map_err(|e| format!("listener `{}`: cannot bind {}: {e}", spec.name, address))?;
            let tls = match &spec.tls {
                Some(t) => Some(Arc::new(
                    ReloadableTls::load(t).map_err(|e| format!("listener `{}`: {e}", spec.name))?,
                )),
                None => None,
            };
            let stop = CancellationToken::new();
            let quic = match (&tls, spec.http3) {
                (Some(tls), true) => {
                    let bound = socket.local_addr().unwrap_or(address);
                    // Same address and still HTTP/3: keep the endpoint and its connections.
                    let kept = running
                        .get(&spec.name)
                        .filter(|r| r.local_addr == bound)
                        .and_then(|r| r.quic.clone());
                    let endpoint = match kept {
                        Some(e) => e,
                        None => crate::h3::endpoint(bound, spec, tls)?,
                    };
                    Some(crate::h3::QuicLoop {
                        spec: spec.clone(),
                        endpoint,
                        handle: self.handle.clone(),
                        tracker: self.tracker.clone(),
                        tls: tls.clone(),
                        stop: stop.clone(),
                        shutdown: self.shutdown.clone(),
                    })
                }
                _ => None,
            };
            let tcp = AcceptLoop {
                spec: spec.clone(),
                socket,
                tls,
                handle: self.handle.clone(),
                tracker: self.tracker.clone(),
                stop,
                shutdown: self.shutdown.clone(),
            };
            out.push(Prepared { tcp, quic });
        }
        Ok(out)
    }

    fn commit_listeners(&self, specs: &[Listener], prepared: Vec<Prepared>) {
        let mut running = self.listeners.lock().expect("listener lock");
        for Prepared { tcp: accept, quic } in prepared {
            let local_addr = accept.socket.local_addr().unwrap_or(accept.spec.address);
            tracing::info!(listener = %accept.spec.name, address = %local_addr, tls = accept.tls.is_some(), tls_provider = accept.tls.is_some().then(crate::tls::provider_name), http3 = quic.is_some(), "listening");
            let entry = Running {
                spec: accept.spec.clone(),
                local_addr,
                stop: accept.stop.clone(),
                tls: accept.tls.clone(),
                quic: quic.as_ref().map(|q| q.endpoint.clone()),
            };
            if let Some(old) = running.insert(accept.spec.name.clone(), entry) {
                old.stop.cancel();
                close_unless_kept(old.quic, quic.as_ref().map(|q| &q.endpoint));
            }
            if accept.spec.is_tcp() {
                tokio::spawn(crate::l4::run(accept));
            } else {
                tokio::spawn(accept.run());
            }
            if let Some(quic) = quic {
                tokio::spawn(quic.run());
            }
        }
        running.retain(|name, r| {
            let keep = specs.iter().any(|s| &s.name == name);
            if !keep {
                tracing::info!(listener = %name, "listener removed");
                r.stop.cancel();
                close_unless_kept(r.quic.take(), None);
            }
            keep
        });
    }

    /// Stop accepting, let in-flight requests finish for up to `drain`, flush queued spans, and
    /// return whether everything drained in time.
    pub async fn shutdown(&self, drain: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok();
        // The drained requests' spans are queued; export them before the process exits.
        if let Some(t) = self.handle.load().tracing.clone() {
            t.shutdown().await;
        }
        drained
    }
}

/// A replaced listener's QUIC endpoint stops taking new connections (those open finish on
/// their own), unless the new generation kept it.
fn close_unless_kept(old: Option<quinn::Endpoint>, kept: Option<&quinn::Endpoint>) {
    let Some(old) = old else { return };
    let same = kept.is_some_and(|k| k.local_addr().ok() == old.local_addr().ok());
    if !same {
        old.set_server_config(None);
    }
}
