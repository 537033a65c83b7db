//! The `switchyard bench` command: runs the plan, shows progress, prints and writes results.
//!
//! Ctrl-C cancels the run but still prints and writes what finished, because a partial
//! benchmark of a server that fell over is often the interesting one.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::args::CliPlan;
use crate::chart;
use crate::runner::{run_load_with_progress, Progress};
use crate::sweep::run_sweep;

/// Progress appears only on runs that last longer than this.
const PROGRESS_AFTER: Duration = Duration::from_secs(3);

pub(crate) async fn run(mut plan: CliPlan) -> anyhow::Result<()> {
    if plan.spec.model.is_none() {
        // As vLLM's benchmark_serving does: without --model, use the first model the (first)
        // target serves.
        if let Some(target) = plan.spec.targets.first() {
            plan.spec.model = discover_model(&target.url).await;
            if let Some(m) = &plan.spec.model {
                eprintln!(
                    "model: {m} (from {}/v1/models; set --model to override)",
                    target.url
                );
            }
        }
    }
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: finishing with the requests completed so far");
            on_signal.cancel();
        }
    });
    let progress = Arc::new(Progress::default());
    let done = CancellationToken::new();
    if !plan.quiet {
        tokio::spawn(show_progress(progress.clone(), done.clone()));
    }
    let result = match &plan.sweep {
        None => run_load_with_progress(plan.spec.clone(), stop, progress)
            .await
            .map(|r| {
                finish_line(&done);
                println!("{}", r.to_table());
                serde_json::to_value(&r)
            }),
        Some(sweep) => {
            let kind = match sweep.kind {
                crate::SweepKind::Rate => "rate",
                crate::SweepKind::Concurrency => "concurrency",
            };
            let report = run_sweep(&plan.spec, sweep, stop, progress, |level, r| {
                clear_line();
                println!("=== {kind} {level} ===\n{}", r.to_table());
            })
            .await;
            finish_line(&done);
            report.and_then(|s| {
                if let Some(path) = &plan.chart {
                    std::fs::write(path, chart::render(&s))
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("chart written to {}", path.display());
                }
                Ok(serde_json::json!({ "config": serde_json::to_value(&plan.spec)?, "sweep": s }))
            })
        }
        .map(Ok),
    };
    let value = result??;
    if let Some(path) = &plan.out {
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn finish_line(done: &CancellationToken) {
    done.cancel();
    clear_line();
}

fn clear_line() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

/// Prints `sent/ok/failed/in-flight` on stderr: a self-overwriting line on a terminal, a line
/// every 10 s otherwise (logs).
async fn show_progress(progress: Arc<Progress>, done: CancellationToken) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_AFTER, every);
    let mut last = (0u64, Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.cancelled() => return,
        }
        let (sent, ok, failed) = progress.snapshot();
        let now = Instant::now();
        let rate = (ok + failed).saturating_sub(last.0) as f64
            / now.duration_since(last.1).as_secs_f64().max(1e-9);
        last = (ok + failed, now);
        let line = format!(
            "[{:>7.1}s] sent {sent}  ok {ok}  failed {failed}  in flight {}  {rate:.1} done/s",
            start.elapsed().as_secs_f64(),
            sent.saturating_sub(ok + failed),
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// The first model id listed at `{base}/v1/models`, if the target answers in OpenAI format.
async fn discover_model(base: &str) -> Option<String> {
    use http_body_util::{BodyExt, Empty};
    let uri: http::Uri = format!("{}/v1/models", base.trim_end_matches('/'))
        .parse()
        .ok()?;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["data"][0]["id"].as_str().map(str::to_string)
}
