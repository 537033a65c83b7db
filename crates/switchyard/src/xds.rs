//! `switchyard xds`: load the config, serve ADS and the control plane's admin port, and reload
//! on SIGHUP or when the config file changes (settled as `switchyard run` does,
//! [`crate::file_watch`]). SIGTERM and SIGINT exit; Envoys keep their last config and resume
//! when a control plane is back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use switchyard_xds::ControlPlane;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::file_watch::{self, read_settled, SETTLE, SETTLE_READS};

pub fn run(path: PathBuf, listen: SocketAddr, admin: SocketAddr) -> ExitCode {
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read config file: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let config = match parse(&path, text.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(path, text, config, listen, admin))
}

fn parse(path: &Path, bytes: Vec<u8>) -> Result<switchyard_config::Config, String> {
    let text = String::from_utf8(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    switchyard_config::parse(&text, path).map_err(|e| e.to_string())
}

async fn serve(
    path: PathBuf,
    loaded: Vec<u8>,
    config: switchyard_config::Config,
    listen: SocketAddr,
    admin: SocketAddr,
) -> ExitCode {
    let watch = config.runtime.watch_config;
    let plane = ControlPlane::new(config);
    let (ads, admin) = match (
        TcpListener::bind(listen).await,
        TcpListener::bind(admin).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) => {
            tracing::error!(address = %listen, error = %e, "cannot bind the xds listener");
            return ExitCode::from(1);
        }
        (_, Err(e)) => {
            tracing::error!(address = %admin, error = %e, "cannot bind the xds admin listener");
            return ExitCode::from(1);
        }
    };
    let (Ok(ads_address), Ok(admin_address)) = (ads.local_addr(), admin.local_addr()) else {
        tracing::error!("cannot read the bound addresses");
        return ExitCode::from(1);
    };
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::from(1);
    };
    let capacity = switchyard_xds::capacity::Capacity::start(plane.clone());
    tokio::spawn(switchyard_xds::server::serve(ads, plane.clone()));
    tokio::spawn(switchyard_xds::admin::serve(admin, plane.clone()));
    tracing::info!(address = %admin_address, "xds admin listening");
    tracing::info!(address = %ads_address, "xds listening");
    tracing::info!(config = %path.display(), "ready");
    let mut last_text = Some(loaded);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let text = read_settled(|| file_watch::content(&path), SETTLE, SETTLE_READS).await;
                last_text = text.clone().flatten();
                reload(&plane, &capacity, &path, text);
            }
            _ = poll.tick(), if watch => {
                let now = file_watch::content(&path);
                if now.is_some() && now != last_text {
                    match read_settled(|| file_watch::content(&path), SETTLE, SETTLE_READS).await {
                        Some(Some(text)) if Some(&text) != last_text.as_ref() => {
                            tracing::info!("config file changed: reloading");
                            last_text = Some(text.clone());
                            reload(&plane, &capacity, &path, Some(Some(text)));
                        }
                        Some(_) => {}
                        None => tracing::warn!("config file keeps changing; waiting for it to settle"),
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("exiting");
    ExitCode::SUCCESS
}

fn reload(
    plane: &Arc<ControlPlane>,
    capacity: &switchyard_xds::capacity::Capacity,
    path: &Path,
    text: Option<Option<Vec<u8>>>,
) {
    let result = match text {
        None => Err(format!(
            "{}: the file kept changing; not loading it half-written",
            path.display()
        )),
        Some(None) => Err(format!("{}: cannot read config file", path.display())),
        Some(Some(bytes)) => parse(path, bytes),
    };
    match result {
        Ok(config) => {
            plane.reload(config);
            capacity.reload();
            tracing::info!("config reloaded");
        }
        Err(e) => {
            plane.reload_failed();
            tracing::error!(error = %e, "config reload rejected; keeping the previous config");
        }
    }
}
