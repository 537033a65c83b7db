//! A model server whose load never changes: it serves fixed vLLM metrics and answers every
//! completion at once, naming itself in `x-served-by`. Two routers scraping copies of the same
//! fleet then see the same state, whatever they send it, and their picks can be compared.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::background::Background;

/// What one replica reports.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub waiting: u32,
    pub running: u32,
    pub kv_usage: f64,
    /// A LoRA adapter it has loaded, if any.
    pub adapter: Option<&'static str>,
}

pub struct StaticModel {
    pub addr: SocketAddr,
    /// `/metrics` requests received.
    pub scrapes: Arc<AtomicUsize>,
    _server: Background,
}

impl StaticModel {
    pub fn start(model: &str, load: Load) -> StaticModel {
        let metrics = format!(
            "vllm:num_requests_waiting{{model_name=\"{model}\"}} {}\n\
             vllm:num_requests_running{{model_name=\"{model}\"}} {}\n\
             vllm:kv_cache_usage_perc{{model_name=\"{model}\"}} {}\n\
             vllm:cache_config_info{{block_size=\"16\",num_gpu_blocks=\"2000\"}} 1\n\
             vllm:lora_requests_info{{max_lora=\"2\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"\"}} 1\n",
            load.waiting,
            load.running,
            load.kv_usage,
            load.adapter.unwrap_or(""),
        );
        let metrics = Bytes::from(metrics);
        let scrapes = Arc::new(AtomicUsize::new(0));
        let counted = scrapes.clone();
        let server = Background::start(move |listener| async move {
            let addr = listener.local_addr().unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                let metrics = metrics.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, addr, metrics.clone(), counted.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        StaticModel {
            addr: server.addr,
            scrapes,
            _server: server,
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    metrics: Bytes,
    scrapes: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/metrics" {
        scrapes.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(Full::new(metrics)));
    }
    let _ = req.into_body().collect().await;
    let body = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-served-by", addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap())
}
