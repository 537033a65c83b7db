//! `switchyard run`: load config, start the runtime, listeners and admin, then react to signals
//! (SIGHUP and file changes reload; SIGTERM and SIGINT drain and exit).
//!
//! The watch polls the config file and the TLS listeners' certificate and key files once a
//! second and acts on a change only once the files have stopped changing
//! ([`crate::file_watch`]). A changed certificate or key is re-read without a config reload.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use switchyard_admin::Admin;
use switchyard_config::Config;
use switchyard_proxy::Server;
use switchyard_telemetry::metrics::ResultLabels;
use switchyard_telemetry::Metrics;
use tokio::signal::unix::{signal, SignalKind};

use crate::file_watch::{self, read_settled, SETTLE, SETTLE_READS};

pub fn run(path: PathBuf, overrides: Overrides) -> ExitCode {
    // Keep the exact text that was loaded: the file watcher compares against it, so an edit
    // made while we start up is still noticed.
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read config file: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let mut config = match switchyard_config::parse(&text, &path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    overrides.apply(&mut config);
    let runtime = match build_runtime(config.runtime.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let source = Source::File {
        last_text: Some(text.into_bytes()),
        path,
    };
    runtime.block_on(serve(source, config, overrides))
}

/// What `run` changes in every config it loads, from the command line: settings that differ
/// per replica while the config is shared by a fleet (its admin address, its locality).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub admin: Option<std::net::SocketAddr>,
    pub zone: Option<String>,
    pub region: Option<String>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(admin) = self.admin {
            config.admin.address = admin;
        }
        if self.zone.is_some() || self.region.is_some() {
            let here = config.runtime.locality.get_or_insert_with(Default::default);
            if let Some(zone) = &self.zone {
                here.zone = Some(zone.clone());
            }
            if let Some(region) = &self.region {
                here.region = Some(region.clone());
            }
        }
    }
}

pub fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// Where reloads come from.
pub enum Source {
    /// A local file, polled (with `runtime.watch_config`) and re-read on SIGHUP.
    File {
        path: PathBuf,
        last_text: Option<Vec<u8>>,
    },
    /// etcd, followed by a watch ([`crate::etcd_source`]).
    Etcd(crate::etcd_source::Following),
}

/// A started gateway: listeners bound, admin serving, ready.
pub struct Started {
    pub server: Arc<Server>,
    pub admin: Arc<Admin>,
    pub admin_address: std::net::SocketAddr,
}

/// Bind listeners and the admin API for `config` and mark the gateway ready. Must run inside the
/// runtime.
pub async fn start(config: Config) -> Result<Started, String> {
    let metrics = Metrics::new();
    let admin_address = config.admin.address;
    let server = Server::start(config, metrics)?;
    let admin = Admin::new(server.handle.clone());
    let listener = switchyard_admin::bind(admin_address)
        .await
        .map_err(|e| format!("cannot bind admin listener {admin_address}: {e}"))?;
    let admin_address = listener.local_addr().unwrap_or(admin_address);
    tracing::info!(address = %admin_address, "admin listening");
    tokio::spawn(admin.clone().serve(listener));
    server.handle.first_scrapes_done().await;
    admin.set_ready(true);
    Ok(Started {
        server,
        admin,
        admin_address,
    })
}

pub async fn serve(mut source: Source, config: Config, overrides: Overrides) -> ExitCode {
    let drain_timeout = config.runtime.drain_timeout;
    let watch = config.runtime.watch_config;
    let Started { server, admin, .. } = match start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    // Handlers before "ready": a SIGHUP sent as soon as the gateway says it is ready must
    // reload it, not kill it (the default action).
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::from(1);
    };
    match &mut source {
        Source::File { path, .. } => {
            set_status(&server, switchyard_config::SourceStatus::file(path));
            tracing::info!(config = %path.display(), "ready");
        }
        Source::Etcd(following) => {
            following.started(&server);
            tracing::info!(config = %following.url, "ready");
        }
    }
    let mut following_alive = true;
    let mut cert_files = server.certificate_files();
    let mut last_certs = file_watch::contents(&cert_files);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let etcd_update = async {
            match &mut source {
                Source::Etcd(following) => following.updates.recv().await,
                Source::File { .. } => std::future::pending().await,
            }
        };
        tokio::select! {
            update = etcd_update, if following_alive => {
                let (Some(update), Source::Etcd(following)) = (update, &mut source) else {
                    // Keeps serving the last config; a closed channel would wake this loop
                    // at once, forever.
                    tracing::error!("the config source follower stopped; no more config updates");
                    following_alive = false;
                    continue;
                };
                if following.update(&server, update, &overrides) {
                    cert_files = server.certificate_files();
                    last_certs = file_watch::contents(&cert_files);
                }
            }
            _ = hup.recv() => {
                let Source::File { path, last_text } = &mut source else {
                    tracing::info!("SIGHUP: the config follows etcd; re-reading TLS certificates");
                    server.reload_certificates(|_| true);
                    continue;
                };
                tracing::info!("SIGHUP: reloading");
                let text = read_settled(|| file_watch::content(path), SETTLE, SETTLE_READS).await;
                *last_text = text.clone().flatten();
                reload(&server, path, text, &overrides);
                // The reload re-read the certificates; the watch starts from what it read.
                cert_files = server.certificate_files();
                last_certs = file_watch::contents(&cert_files);
            }
            _ = poll.tick(), if watch => {
                if let Source::File { path, last_text } = &mut source {
                    let now = file_watch::content(path);
                    if now.is_some() && now != *last_text {
                        let text = read_settled(|| file_watch::content(path), SETTLE, SETTLE_READS).await;
                        match text {
                            Some(Some(text)) if Some(&text) != last_text.as_ref() => {
                                tracing::info!("config file changed: reloading");
                                *last_text = Some(text.clone());
                                reload(&server, path, Some(Some(text)), &overrides);
                                cert_files = server.certificate_files();
                                last_certs = file_watch::contents(&cert_files);
                            }
                            Some(_) => {}
                            None => tracing::warn!("config file keeps changing; waiting for it to settle"),
                        }
                        continue;
                    }
                }
                if file_watch::contents(&cert_files) != last_certs {
                    let files = cert_files.clone();
                    match read_settled(|| file_watch::contents(&files), SETTLE, SETTLE_READS).await {
                        Some(settled) => {
                            tracing::info!("TLS certificate or key file changed: reloading certificates");
                            last_certs = settled;
                            server.reload_certificates(|_| true);
                        }
                        None => tracing::warn!("TLS certificate files keep changing; waiting for them to settle"),
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(timeout = ?drain_timeout, "draining");
    admin.set_ready(false);
    if server.shutdown(drain_timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout passed with requests still in flight; exiting");
    }
    ExitCode::SUCCESS
}

pub fn set_status(server: &Server, status: switchyard_config::SourceStatus) {
    if let Ok(mut s) = server.handle.source.lock() {
        *s = status;
    }
}

/// Count a reload attempt's result.
pub fn count_reload(server: &Server, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    server
        .handle
        .metrics
        .config_reloads
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// Reload from `text`, the settled contents of the config file (`Some(None)`: unreadable;
/// `None`: it never stopped changing).
fn reload(server: &Arc<Server>, path: &Path, text: Option<Option<Vec<u8>>>, overrides: &Overrides) {
    let result = match text {
        None => Err(format!(
            "{}: the file kept changing; not loading it half-written",
            path.display()
        )),
        Some(None) => Err(format!("{}: cannot read config file", path.display())),
        Some(Some(bytes)) => String::from_utf8(bytes)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|text| switchyard_config::parse(&text, path).map_err(|e| e.to_string())),
    }
    .and_then(|mut config| {
        overrides.apply(&mut config);
        server.reload(config)
    });
    count_reload(server, result.is_ok());
    match result {
        Ok(()) => {
            set_status(server, switchyard_config::SourceStatus::file(path));
            tracing::info!("config reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; keeping the previous config");
        }
    }
}
