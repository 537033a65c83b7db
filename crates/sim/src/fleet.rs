//! Starting and stopping a fleet of replicas inside the caller's tokio runtime.
//!
//! All replicas share one process and one runtime: each is a supervisor task (accept loop and
//! connections) plus an engine task. Listeners are bound before anything is spawned, so
//! [`start_fleet`] either returns a fleet whose every port accepts connections, or an error and
//! no tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::FleetConfig;
use crate::faults::FaultConfig;
use crate::oracle::FleetTruth;
use crate::prompt_tokenizer::PromptTokenizer;
use crate::replica::{self, Replica};

/// A running fleet. Dropping it stops the replicas without waiting; [`Fleet::shutdown`] waits.
#[derive(Debug)]
pub struct Fleet {
    replicas: Vec<Arc<Replica>>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

/// Binds and starts every replica of `cfg`. Must be called inside a tokio runtime (with the
/// time and IO drivers enabled). Replica `i` listens on `host:(base_port + i)`, or an ephemeral
/// port when `base_port` is 0, or its own `port` when set.
pub async fn start_fleet(cfg: FleetConfig) -> anyhow::Result<Fleet> {
    cfg.validate()?;
    let tokenizer = match &cfg.tokenizer {
        Some(path) => PromptTokenizer::load(path).map_err(anyhow::Error::msg)?,
        None => PromptTokenizer::Sim,
    };
    let specs = cfg.expanded();
    let mut listeners = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let port = match (spec.port, cfg.base_port) {
            (Some(p), _) => p,
            (None, 0) => 0,
            (None, base) => base + i as u16,
        };
        let addr = SocketAddr::new(cfg.host, port);
        listeners.push(
            replica::bind(addr).with_context(|| format!("replica {i}: cannot listen on {addr}"))?,
        );
    }
    let mut kv_listeners = Vec::with_capacity(specs.len());
    for i in 0..specs.len() {
        let Some(kv) = &cfg.kv_events else {
            kv_listeners.push(None);
            continue;
        };
        let port = |k: usize| match kv.base_port {
            0 => 0,
            base => base + (2 * i + k) as u16,
        };
        let events = SocketAddr::new(cfg.host, port(0));
        let replay = SocketAddr::new(cfg.host, port(1));
        kv_listeners.push(Some((
            kv.publisher(),
            replica::bind(events)
                .with_context(|| format!("replica {i}: cannot publish kv events on {events}"))?,
            replica::bind(replay)
                .with_context(|| format!("replica {i}: cannot serve kv replay on {replay}"))?,
        )));
    }
    let truth = Arc::new(FleetTruth {
        replicas: listeners
            .iter()
            .map(|l| Ok((l.local_addr()?, Arc::default())))
            .collect::<std::io::Result<_>>()?,
    });
    let shutdown = CancellationToken::new();
    let mut replicas = Vec::with_capacity(specs.len());
    let mut tasks = Vec::with_capacity(specs.len());
    for (i, ((spec, listener), kv)) in specs
        .into_iter()
        .zip(listeners)
        .zip(kv_listeners)
        .enumerate()
    {
        let (replica, supervisor) = replica::start(
            i,
            &cfg.model,
            spec,
            (listener, kv),
            tokenizer.clone(),
            truth.clone(),
            shutdown.child_token(),
        )?;
        replicas.push(replica);
        tasks.push(tokio::spawn(supervisor));
    }
    Ok(Fleet {
        replicas,
        tasks,
        shutdown,
    })
}

impl Fleet {
    /// Listening address of each replica, in replica order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// KV-event (PUB) and replay (ROUTER) addresses of each replica, when publishing.
    pub fn kv_event_addresses(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.replicas
            .iter()
            .filter_map(|r| r.kv_events.as_ref().map(|k| (k.events, k.replay)))
            .collect()
    }

    /// Replaces the faults of replica `index` (as `POST /sim/faults` would, minus crashes).
    pub fn set_faults(&self, index: usize, faults: FaultConfig) -> anyhow::Result<()> {
        faults.validate().map_err(anyhow::Error::msg)?;
        let r = self.replicas.get(index).context("no such replica")?;
        *r.faults.lock().expect("faults lock") = FaultConfig {
            crash_for_ms: None,
            ..faults
        };
        Ok(())
    }

    /// Stops every replica: listeners close, connections and in-flight requests are dropped.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
