//! `switchyard run --config-source etcd://...`: start from etcd (or, when it is down, from the
//! local cache of the last good config) and apply every newer revision the follower reads
//! ([`switchyard_fleet::watch`]). A revision that does not validate is refused, reported in
//! `/config` and `switchyard_config_source_errors_total{reason="invalid"}`, and the gateway keeps
//! serving the last good one.

use std::path::PathBuf;
use std::process::ExitCode;

use switchyard_config::{source::now_ms, Config, Refused, SourceStatus};
use switchyard_fleet::cache::{self, Cached};
use switchyard_fleet::layout::assemble;
use switchyard_fleet::watch::{self, Snapshot, Update};
use switchyard_fleet::EtcdUrl;
use switchyard_proxy::Server;
use switchyard_telemetry::metrics::SourceReasonLabels;
use tokio::sync::mpsc;

use crate::run::{build_runtime, count_reload, serve, set_status, Overrides, Source};

/// A gateway following its config in etcd.
pub struct Following {
    pub url: EtcdUrl,
    pub updates: mpsc::Receiver<Update>,
    cache: Option<PathBuf>,
    /// The assembled text last applied: a revision that changes nothing is not reloaded.
    applied_text: String,
    status: SourceStatus,
    /// What it started with, cached by [`Following::started`].
    first: Option<Snapshot>,
}

/// The config a gateway starts with.
struct Start {
    snapshot: Snapshot,
    text: String,
    config: Config,
    from_cache: bool,
    refused: Option<Refused>,
}

pub fn run(url: EtcdUrl, cache: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    // The runtime's shape is in the config, so the first read runs on a runtime of its own.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
        .and_then(|rt| rt.block_on(first_config(&url, cache.as_deref())));
    let Start {
        snapshot,
        text,
        mut config,
        from_cache,
        refused,
    } = match first {
        Ok(start) => start,
        Err(e) => {
            eprintln!("{e}");
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
    runtime.block_on(async move {
        let (tx, updates) = mpsc::channel(16);
        tokio::spawn(watch::follow(url.clone(), snapshot.read_at, from_cache, tx));
        let status = SourceStatus {
            kind: "etcd",
            location: url.to_string(),
            revision: snapshot.revision,
            applied_unix_ms: now_ms(),
            from_cache,
            reachable: !from_cache,
            refused,
        };
        let following = Following {
            url,
            updates,
            cache,
            applied_text: text,
            status,
            first: Some(snapshot),
        };
        serve(Source::Etcd(following), config, overrides).await
    })
}

async fn first_config(url: &EtcdUrl, cache: Option<&std::path::Path>) -> Result<Start, String> {
    let read = async {
        let mut client = watch::connect(url).await?;
        watch::read(&mut client, url).await
    };
    let from_etcd = match tokio::time::timeout(watch::CALL_TIMEOUT * 2, read).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{url}: no answer within {:?}",
            watch::CALL_TIMEOUT * 2
        )),
    };
    let refused = match from_etcd {
        Ok(snapshot) => match parse(url, &snapshot) {
            Ok((text, config)) => {
                return Ok(Start {
                    snapshot,
                    text,
                    config,
                    from_cache: false,
                    refused: None,
                })
            }
            Err(error) => {
                tracing::error!(%error, "the config in etcd is invalid");
                Some(Refused {
                    revision: snapshot.revision,
                    error,
                })
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the config from etcd");
            if cache.is_none() {
                return Err(format!("{e}\n(no --config-cache to start from)"));
            }
            None
        }
    };
    let Some(path) = cache else {
        return Err(refused.map(|r| r.error).unwrap_or_default());
    };
    let cached = cache::load(path, &url.to_string()).map_err(|e| {
        let why = refused
            .as_ref()
            .map_or("etcd is unreachable", |_| "the config in etcd is invalid");
        format!("{why}, and the local cache cannot be used: {e}")
    })?;
    let snapshot = cached.snapshot();
    let (text, config) = parse(url, &snapshot)?;
    tracing::warn!(revision = snapshot.revision, cache = %path.display(), "starting from the local cache of the last good config");
    Ok(Start {
        snapshot,
        text,
        config,
        from_cache: true,
        refused,
    })
}

fn parse(url: &EtcdUrl, snapshot: &Snapshot) -> Result<(String, Config), String> {
    let label = |key: &str| url.label(key);
    let doc = assemble(&url.key, snapshot.entries.clone(), label)?;
    let config = doc.parse(label).map_err(|e| e.to_string())?;
    Ok((doc.text, config))
}

impl Following {
    /// Record the state the gateway started with; a config read from etcd is cached at once,
    /// so a replica restarted during an etcd outage has it even if no change came since.
    pub fn started(&mut self, server: &Server) {
        if let Some(snapshot) = self.first.take() {
            if !self.status.from_cache && self.status.refused.is_none() {
                self.store(&snapshot);
            }
        }
        self.publish(server);
    }

    fn store(&self, snapshot: &Snapshot) {
        if let Some(path) = &self.cache {
            if let Err(e) = cache::store(path, &Cached::new(self.url.to_string(), snapshot)) {
                tracing::warn!(cache = %path.display(), error = %e, "cannot write the config cache");
            }
        }
    }

    /// Act on one update; true when a new config was applied.
    pub fn update(&mut self, server: &Server, update: Update, overrides: &Overrides) -> bool {
        let metrics = &server.handle.metrics.config_source;
        let error = |reason| {
            metrics
                .errors
                .get_or_create(&SourceReasonLabels { reason })
                .inc();
        };
        let applied = match update {
            Update::Changed(snapshot) => self.apply(server, snapshot, overrides, error),
            Update::Unreachable(_) => {
                error("unreachable");
                self.status.reachable = false;
                false
            }
            Update::Compacted => {
                error("compacted");
                false
            }
            Update::Reconnected => {
                self.status.reachable = true;
                self.status.from_cache = false;
                false
            }
        };
        self.publish(server);
        applied
    }

    fn apply(
        &mut self,
        server: &Server,
        snapshot: Snapshot,
        overrides: &Overrides,
        error: impl Fn(&'static str),
    ) -> bool {
        self.status.reachable = true;
        let parsed = parse(&self.url, &snapshot).and_then(|(text, mut config)| {
            if text == self.applied_text {
                return Ok((text, None));
            }
            overrides.apply(&mut config);
            server.reload(config).map(|()| (text, Some(())))
        });
        match parsed {
            Ok((text, reloaded)) => {
                if reloaded.is_some() {
                    count_reload(server, true);
                    tracing::info!(revision = snapshot.revision, "config from etcd applied");
                }
                self.applied_text = text;
                self.status.revision = snapshot.revision;
                self.status.applied_unix_ms = now_ms();
                self.status.from_cache = false;
                self.status.refused = None;
                self.store(&snapshot);
                reloaded.is_some()
            }
            Err(e) => {
                error("invalid");
                count_reload(server, false);
                tracing::error!(revision = snapshot.revision, error = %e, "config from etcd refused; keeping the last good revision");
                self.status.refused = Some(Refused {
                    revision: snapshot.revision,
                    error: e,
                });
                false
            }
        }
    }

    fn publish(&self, server: &Server) {
        server
            .handle
            .metrics
            .config_source
            .revision
            .set(self.status.revision);
        set_status(server, self.status.clone());
    }
}
