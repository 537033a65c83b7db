//! [`run_load`]: drives a [`LoadSpec`] inside the caller's tokio runtime.
//!
//! Open loop: one driver task walks the arrival schedule and spawns a task per request, so a
//! slow server never delays arrivals; an in-flight cap turns a hopeless overload into counted
//! drops instead of unbounded memory. Closed loop: `concurrency` workers each send, wait, repeat.
//! Either way, when a bound is reached no new request starts and in-flight requests finish (each
//! is bounded by the request timeout); cancelling the token aborts in-flight requests and still
//! returns a report of what completed.
//!
//! Shared state is behind `std::sync::Mutex`es held for a few instructions; on the recommended
//! current-thread runtime they are never contended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::Full;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::arrivals::Schedule;
use crate::client::{self, HttpClient};
use crate::report::{Collector, Report};
use crate::spec::{Load, LoadSpec, TargetOrder};
use crate::workload::{RequestPlan, Workload};

/// Live counters of a run, for progress displays. Cheap to read from another task.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent so far.
    pub sent: AtomicU64,
    /// Requests finished successfully.
    pub completed: AtomicU64,
    /// Requests that failed.
    pub failed: AtomicU64,
}

impl Progress {
    /// `(sent, completed, failed)` now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Runs `spec` until a bound is reached or `stop` is cancelled, and returns the report.
///
/// Must be called within a tokio runtime (current-thread or multi-thread). Errors only for an
/// invalid spec; request failures are counted in the report.
pub async fn run_load(spec: LoadSpec, stop: CancellationToken) -> anyhow::Result<Report> {
    run_load_with_progress(spec, stop, Arc::default()).await
}

/// [`run_load`] that also updates `progress` as requests go.
pub async fn run_load_with_progress(
    spec: LoadSpec,
    stop: CancellationToken,
    progress: Arc<Progress>,
) -> anyhow::Result<Report> {
    spec.validate()?;
    let states = if spec.spread { 1 } else { spec.targets.len() };
    let workload = Workload::new(&spec.workload, states, spec.seed)?;
    let uris = spec
        .targets
        .iter()
        .map(|t| t.uri(spec.endpoint))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let oracle = spec.prefix_oracle.clone().map(|uri| {
        let connect = spec.timeout.min(std::time::Duration::from_secs(10));
        (client::build_client(false, connect), uri)
    });
    let run = Arc::new(Run {
        oracle,
        client: HttpClient::for_spec(&spec)?,
        uris,
        picker: Mutex::new(Picker::new(
            spec.target_order,
            spec.targets.len(),
            spec.seed,
        )),
        workload: Mutex::new(workload),
        collector: Mutex::new(Collector::new(spec.targets.len(), spec.slo)),
        progress,
        issued: AtomicU64::new(0),
        spec,
    });
    let start = Instant::now();
    let deadline = start + run.spec.duration_bound();
    let mut tasks = JoinSet::new();
    let cancelled = match run.spec.load {
        Load::Open { rate, arrival } => {
            let schedule = match run.workload.lock().map_err(poisoned)?.arrival_times() {
                Some(times) => Schedule::fixed(times),
                None => Schedule::rate(rate, arrival, run.spec.seed),
            };
            drive_open(&run, schedule, start, deadline, &stop, &mut tasks).await
        }
        Load::Closed { concurrency } => {
            for _ in 0..concurrency {
                tasks.spawn(worker(run.clone(), deadline));
            }
            false
        }
    };
    let cancelled = cancelled
        || tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => false,
            _ = stop.cancelled() => true,
        };
    tasks.abort_all();
    let elapsed = start.elapsed();
    // Aborted tasks have dropped their clones by the time `abort_all` returns control here.
    while tasks.join_next().await.is_some() {}
    let names: Vec<(String, String)> = run
        .spec
        .targets
        .iter()
        .map(|t| (t.name.clone(), t.url.clone()))
        .collect();
    let config = serde_json::to_value(&run.spec)?;
    let collector = std::mem::replace(
        &mut *run.collector.lock().map_err(poisoned)?,
        Collector::new(0, Default::default()),
    );
    Ok(collector.finish(&names, elapsed, config, cancelled))
}

struct Run {
    spec: LoadSpec,
    /// `--prefix-oracle`: where each request's true cache state is asked for.
    oracle: Option<(PlainClient, http::Uri)>,
    client: HttpClient,
    uris: Vec<http::Uri>,
    picker: Mutex<Picker>,
    workload: Mutex<Workload>,
    collector: Mutex<Collector>,
    progress: Arc<Progress>,
    issued: AtomicU64,
}

fn poisoned<T>(_: T) -> anyhow::Error {
    anyhow::anyhow!("internal state lock poisoned")
}

/// Walks the schedule; returns true if cancelled.
async fn drive_open(
    run: &Arc<Run>,
    schedule: Schedule,
    start: Instant,
    deadline: Instant,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> bool {
    let bound = run.spec.request_bound();
    for offset in schedule {
        let at = start + offset;
        if at >= deadline || run.issued.load(Ordering::Relaxed) >= bound {
            break;
        }
        if at > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stop.cancelled() => return true,
            }
        } else {
            // Behind schedule: let request tasks run before issuing the backlog.
            tokio::task::yield_now().await;
            if stop.is_cancelled() {
                return true;
            }
        }
        while tasks.try_join_next().is_some() {}
        let Some(target) = run.picker.lock().ok().map(|mut p| p.next()) else {
            break;
        };
        let Some(plan) = run.next_plan(target) else {
            break;
        };
        if tasks.len() >= run.spec.max_in_flight {
            // The plan is consumed anyway so trace lines stay aligned with their timestamps and
            // every target keeps seeing the same prompt sequence.
            if let (Some(session), Ok(mut w)) = (plan.session, run.workload.lock()) {
                w.complete(run.state_of(target), session, None);
            }
            if let Ok(mut c) = run.collector.lock() {
                c.dropped(target);
            }
            continue;
        }
        run.issued.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(send(run.clone(), plan));
    }
    false
}

impl Run {
    /// Whose workload state serves `target`: its own, or with `spread` the one all share.
    fn state_of(&self, target: usize) -> usize {
        if self.spec.spread {
            0
        } else {
            target
        }
    }

    /// The next request for `target`.
    fn next_plan(&self, target: usize) -> Option<RequestPlan> {
        let mut plan = self.workload.lock().ok()?.next(self.state_of(target))?;
        plan.target = target;
        Some(plan)
    }
}

/// A closed-loop virtual user.
async fn worker(run: Arc<Run>, deadline: Instant) {
    let bound = run.spec.request_bound();
    while Instant::now() < deadline {
        if run.issued.fetch_add(1, Ordering::Relaxed) >= bound {
            break;
        }
        let Some(target) = run.picker.lock().ok().map(|mut p| p.next()) else {
            break;
        };
        let Some(plan) = run.next_plan(target) else {
            break;
        };
        send(run.clone(), plan).await;
    }
}

/// Sends one planned request and records it.
async fn send(run: Arc<Run>, plan: RequestPlan) {
    run.progress.sent.fetch_add(1, Ordering::Relaxed);
    let body = client::request_body(
        run.spec.endpoint,
        &plan,
        run.spec.model.as_deref(),
        run.spec.stream,
        run.spec.prompt_ids.as_ref(),
    );
    let truth = match &run.oracle {
        Some((c, uri)) => oracle_cached(c, uri, body.clone()).await,
        None => None,
    };
    let m = match build_request(&run, &plan, body, truth) {
        Ok(req) => {
            client::execute(
                &run.client,
                req,
                plan.session.is_some(),
                run.spec.timeout,
                run.spec.stream,
            )
            .await
        }
        Err(_) => client::Measurement {
            error: Some(client::ErrorKind::ConnectionClosed),
            ..Default::default()
        },
    };
    let counter = if m.error.is_none() {
        &run.progress.completed
    } else {
        &run.progress.failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(session) = plan.session {
        if let Ok(mut w) = run.workload.lock() {
            w.complete(run.state_of(plan.target), session, m.reply.as_deref());
        }
    }
    if let Ok(mut c) = run.collector.lock() {
        c.record(plan.target, m);
    }
}

type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<bytes::Bytes>,
>;

/// The simulator's answer to `body` (`ADDRESS=BLOCKS,...`); `None` if it could not be had
/// (the request is then routed without it, as the gateway ignores a missing header).
async fn oracle_cached(
    client: &PlainClient,
    uri: &http::Uri,
    body: bytes::Bytes,
) -> Option<String> {
    use http_body_util::BodyExt;
    let req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .ok()?
        .to_bytes();
    String::from_utf8(bytes.to_vec()).ok()
}

fn build_request(
    run: &Run,
    plan: &RequestPlan,
    body: bytes::Bytes,
    truth: Option<String>,
) -> Result<http::Request<Full<bytes::Bytes>>, http::Error> {
    let accept = if run.spec.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut b = http::Request::post(run.uris[plan.target].clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, accept);
    for (k, v) in run.spec.headers.iter().chain(&plan.headers) {
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(t) = truth {
        b = b.header("x-switchyard-oracle-cached", t);
    }
    b.body(Full::new(body))
}

/// Chooses the target of each arrival.
#[derive(Debug)]
struct Picker {
    order: TargetOrder,
    n: usize,
    next: usize,
    rng: fastrand::Rng,
}

impl Picker {
    fn new(order: TargetOrder, n: usize, seed: u64) -> Self {
        Self {
            order,
            n,
            next: 0,
            rng: fastrand::Rng::with_seed(seed ^ 0x7a9),
        }
    }

    fn next(&mut self) -> usize {
        match self.order {
            TargetOrder::RoundRobin => {
                let t = self.next;
                self.next = (self.next + 1) % self.n;
                t
            }
            TargetOrder::Random => self.rng.usize(..self.n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picker_round_robin_and_random() {
        let mut p = Picker::new(TargetOrder::RoundRobin, 3, 0);
        assert_eq!(
            (0..6).map(|_| p.next()).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2]
        );
        let mut r = Picker::new(TargetOrder::Random, 2, 0);
        let ones = (0..1000).filter(|_| r.next() == 1).count();
        assert!((400..600).contains(&ones));
    }
}
