//! One simulated server: its static description, its per-life state, and its supervisor.
//!
//! A replica lives through *incarnations*. An incarnation is a fresh engine (empty queue, empty KV
//! cache, zeroed metrics, as after a vLLM restart) plus the connections accepted while it lives.
//! The crash fault ends an incarnation: the listener and every connection close, the engine stops
//! (in-flight requests are cut off), and after the crash period the supervisor binds the same
//! port again and starts a new incarnation. Faults live on the [`Replica`], so they survive.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ReplicaConfig;
use crate::cost_model::Profile;
use crate::engine::{self, EngineConfig, EngineHandle};
use crate::faults::FaultConfig;
use crate::metrics::{EngineMetrics, MetricsInfo};
use crate::oracle::{CacheView, FleetTruth};
use crate::scheduler::SchedulerConfig;
use switchyard_kv_events::{Publisher, PublisherConfig};

use crate::prompt_tokenizer::PromptTokenizer;

/// A replica's KV-event sockets: what it publishes like, and where (kept across crashes).
#[derive(Debug)]
pub struct KvEventSockets {
    pub publisher: PublisherConfig,
    pub events: SocketAddr,
    pub replay: SocketAddr,
}

/// What stays the same across a replica's incarnations.
#[derive(Debug)]
pub struct Replica {
    /// Position in the fleet.
    pub index: usize,
    /// Served base model.
    pub model: String,
    /// The replica's spec.
    pub cfg: ReplicaConfig,
    /// Cost model (with overrides applied).
    pub profile: Profile,
    /// Context limit.
    pub max_model_len: usize,
    /// Current faults.
    pub faults: Arc<Mutex<FaultConfig>>,
    /// Facts shown in metrics.
    pub info: MetricsInfo,
    /// Bound address (the port is kept across crashes).
    pub addr: SocketAddr,
    /// KV-event sockets, when publishing.
    pub kv_events: Option<KvEventSockets>,
    /// How completions prompts become tokens.
    pub tokenizer: PromptTokenizer,
    /// Every replica's true cache, for `/sim/oracle/cached` (this one's is at `index`).
    pub truth: Arc<FleetTruth>,
    crash_tx: mpsc::UnboundedSender<Duration>,
}

impl Replica {
    /// Asks the supervisor to crash this replica for `down`.
    pub fn crash(&self, down: Duration) {
        let _ = self.crash_tx.send(down);
    }

    /// This replica's entry in [`Replica::truth`].
    pub fn own_view(&self) -> Option<Arc<CacheView>> {
        self.truth.replicas.get(self.index).map(|(_, v)| v.clone())
    }

    /// The adapter id of `name`, if this replica serves it.
    pub fn adapter_id(&self, name: &str) -> Option<u16> {
        self.cfg
            .lora_adapters
            .iter()
            .position(|a| a == name)
            .map(|i| i as u16)
    }
}

/// One life of a replica: the engine and its metrics.
#[derive(Debug)]
pub struct Incarnation {
    /// The replica.
    pub replica: Arc<Replica>,
    /// Submits requests to this life's engine.
    pub engine: EngineHandle,
    /// This life's KV-event publisher (a new process publishes from seq 0).
    pub kv_publisher: Option<Arc<Publisher>>,
    /// This life's metrics.
    pub metrics: Arc<Mutex<EngineMetrics>>,
}

/// Binds `addr` with `SO_REUSEADDR` (so a crashed replica can rebind while old connections sit
/// in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Builds the replica for `cfg`, bound to `listener` (and to `kv`'s event and replay
/// listeners when publishing), and returns it with its supervisor future.
pub fn start(
    index: usize,
    model: &str,
    cfg: ReplicaConfig,
    (listener, kv): (
        TcpListener,
        Option<(PublisherConfig, TcpListener, TcpListener)>,
    ),
    tokenizer: PromptTokenizer,
    truth: Arc<FleetTruth>,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<Replica>, impl std::future::Future<Output = ()>)> {
    let (kv_events, kv_listeners) = match kv {
        Some((publisher, events, replay)) => (
            Some(KvEventSockets {
                publisher,
                events: events.local_addr()?,
                replay: replay.local_addr()?,
            }),
            Some((events, replay)),
        ),
        None => (None, None),
    };
    let profile = cfg.resolved_profile()?;
    let max_model_len = cfg.resolved_max_model_len(&profile);
    let (crash_tx, crash_rx) = mpsc::unbounded_channel();
    let replica = Arc::new(Replica {
        index,
        model: model.to_string(),
        info: MetricsInfo {
            model: model.to_string(),
            num_gpu_blocks: profile.num_gpu_blocks,
            max_loras: cfg.max_loras,
            max_num_seqs: cfg.max_num_seqs,
        },
        faults: Arc::new(Mutex::new(FaultConfig {
            crash_for_ms: None,
            ..cfg.faults.clone()
        })),
        addr: listener.local_addr()?,
        kv_events,
        tokenizer,
        truth,
        profile,
        max_model_len,
        cfg,
        crash_tx,
    });
    Ok((
        replica.clone(),
        supervise(replica, listener, kv_listeners, crash_rx, shutdown),
    ))
}

async fn supervise(
    replica: Arc<Replica>,
    mut listener: TcpListener,
    mut kv_listeners: Option<(TcpListener, TcpListener)>,
    mut crash_rx: mpsc::UnboundedReceiver<Duration>,
    shutdown: CancellationToken,
) {
    loop {
        let life = shutdown.child_token();
        let kv_publisher = match (&replica.kv_events, kv_listeners.take()) {
            (Some(kv), Some((events, replay))) => {
                match Publisher::start(kv.publisher.clone(), events, replay, life.clone()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(replica = replica.index, error = %e, "kv events publisher failed");
                        None
                    }
                }
            }
            _ => None,
        };
        let metrics = Arc::new(Mutex::new(EngineMetrics::default()));
        let engine_cfg = EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: replica.cfg.max_num_seqs,
                max_num_batched_tokens: replica.cfg.max_num_batched_tokens,
                num_gpu_blocks: replica.profile.num_gpu_blocks,
                max_loras: replica.cfg.max_loras,
                policy: replica.cfg.scheduling_policy,
            },
            profile: replica.profile.clone(),
            speed: replica.cfg.speed,
            adapter_names: replica.cfg.lora_adapters.clone(),
            kv_events: kv_publisher.clone(),
            truth: replica.own_view(),
        };
        let (engine, engine_task) = engine::spawn(
            engine_cfg,
            replica.faults.clone(),
            metrics.clone(),
            life.clone(),
        );
        let inc = Arc::new(Incarnation {
            replica: replica.clone(),
            engine,
            kv_publisher,
            metrics,
        });
        let crash = accept_loop(&listener, inc, &life, &mut crash_rx).await;
        life.cancel();
        drop(listener);
        let _ = engine_task.await;
        // The process is gone and its cache with it.
        if let Some(view) = replica.own_view() {
            view.clear();
        }
        let Some(down) = crash else { return };
        tracing::warn!(
            replica = replica.index,
            down_ms = down.as_millis() as u64,
            "simulated crash"
        );
        tokio::select! {
            _ = tokio::time::sleep(down) => {}
            _ = shutdown.cancelled() => return,
        }
        listener = loop {
            let kv = match &replica.kv_events {
                Some(kv) => match (bind(kv.events), bind(kv.replay)) {
                    (Ok(e), Ok(r)) => Some((e, r)),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(replica = replica.index, error = %e, "rebinding kv event sockets after crash failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        continue;
                    }
                },
                None => None,
            };
            kv_listeners = kv;
            match bind(replica.addr) {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(replica = replica.index, error = %e, "rebind after crash failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        tracing::info!(replica = replica.index, addr = %replica.addr, "replica restarted");
    }
}

/// Accepts and serves connections until shutdown (`None`) or a crash request (`Some(down)`).
async fn accept_loop(
    listener: &TcpListener,
    inc: Arc<Incarnation>,
    life: &CancellationToken,
    crash_rx: &mut mpsc::UnboundedReceiver<Duration>,
) -> Option<Duration> {
    loop {
        tokio::select! {
            _ = life.cancelled() => return None,
            down = crash_rx.recv() => return down,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let inc = inc.clone();
                let life = life.clone();
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let service = service_fn(move |req| crate::api::handle(inc.clone(), req));
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = life.cancelled() => {}
                    }
                });
            }
        }
    }
}
