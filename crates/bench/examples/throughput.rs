//! How many streaming requests per second can one core of the load generator drive?
//!
//! Starts a minimal SSE server on other threads (it answers every request with `TOKENS` token
//! events, each its own body frame, without delay), then runs the load generator on a
//! current-thread runtime on this thread, open loop at `RATE` for `SECS` seconds, and prints
//! offered vs achieved rate. Run in release:
//!
//! ```text
//! cargo run --release -p switchyard-bench --example throughput -- 2000 5 16 [server_threads]
//! ```

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_bench::{
    run_load, Arrival, Distribution, Load, LoadSpec, SyntheticSpec, Target, WorkloadSpec,
};
use tokio_util::sync::CancellationToken;

/// Yields a role chunk, `left` token chunks, a usage chunk and `[DONE]`, one frame each.
struct TokenBody {
    left: u32,
    total: u32,
    stage: u8,
}

impl http_body::Body for TokenBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let b: Bytes = match self.stage {
            0 => {
                self.stage = 1;
                Bytes::from_static(b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n")
            }
            1 if self.left > 0 => {
                self.left -= 1;
                Bytes::from_static(b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"},\"finish_reason\":null}]}\n\n")
            }
            1 => {
                self.stage = 2;
                Bytes::from(format!(
                    "data: {{\"id\":\"x\",\"choices\":[],\"usage\":{{\"prompt_tokens\":64,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                    self.total,
                    self.total + 64
                ))
            }
            2 => {
                self.stage = 3;
                Bytes::from_static(b"data: [DONE]\n\n")
            }
            _ => return Poll::Ready(None),
        };
        Poll::Ready(Some(Ok(Frame::data(b))))
    }
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: f64| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (rate, secs, tokens, server_threads) = (
        arg(1, 2000.0),
        arg(2, 5.0),
        arg(3, 16.0) as u32,
        arg(4, 2.0) as usize,
    );
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .enable_all()
        .build()?;
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    server_rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut r = hyper::Response::new(TokenBody {
                            left: tokens,
                            total: tokens,
                            stage: 0,
                        });
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            "text/event-stream".parse().unwrap(),
                        );
                        Ok::<_, Infallible>(r)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let mut spec = LoadSpec::new(
        vec![Target::new("local", format!("http://{addr}"))],
        WorkloadSpec::Synthetic(SyntheticSpec {
            prompt_tokens: Distribution::Fixed { value: 64 },
            output_tokens: Distribution::Fixed { value: tokens },
        }),
    );
    spec.load = Load::Open {
        rate,
        arrival: Arrival::Poisson,
    };
    spec.duration = Some(Duration::from_secs_f64(secs));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let report = rt.block_on(run_load(spec, CancellationToken::new()))?;
    let t = &report.targets[0];
    println!(
        "offered {rate:.0} req/s for {secs} s, {tokens} tokens each: completed {} ({:.0} req/s, {:.0} tok/s), failed {}, dropped {}, wall {:.2}s",
        t.completed,
        t.request_throughput,
        t.output_token_throughput,
        t.failed,
        t.dropped,
        started.elapsed().as_secs_f64()
    );
    println!(
        "ttft p50 {:.2} ms p99 {:.2} ms, e2e p50 {:.2} ms p99 {:.2} ms",
        t.ttft_ms.p50, t.ttft_ms.p99, t.e2e_ms.p50, t.e2e_ms.p99
    );
    println!("{}", report.to_table());
    Ok(())
}
