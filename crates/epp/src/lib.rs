//! `switchyard epp`: Switchyard's picker behind an existing Envoy (or Istio, Envoy Gateway) as an
//! `ext_proc` gRPC service speaking the Gateway API Inference Extension endpoint-picker protocol.
//!
//! Envoy sends each request's headers and (buffered) body over a bidirectional
//! `envoy.service.ext_proc.v3.ExternalProcessor/Process` stream. We pick an endpoint of the
//! configured pool exactly as the gateway would (the `inference` scorer on the OpenAI body, or
//! the pool's balancer) and answer with the picked `ip:port` in the request header
//! `x-gateway-destination-endpoint` and in dynamic metadata `envoy.lb`, which an `ORIGINAL_DST`
//! cluster with `use_http_header` routes to. No endpoint → 503; a sheddable request on a
//! saturated pool → 429; a malformed OpenAI body → 400, each as an immediate response.
//!
//! With a `predictor` on the pool, a request's `x-slo-ttft-ms` / `x-slo-tpot-ms` decide the pick
//! as in the gateway, and the model learns from the responses when Envoy's filter streams them
//! to the picker (`response_header_mode: SEND`, `response_body_mode: STREAMED`; `training.rs`).
//!
//! The gRPC layer is small and hand-rolled on hyper's HTTP/2 server (length-prefixed messages,
//! trailers with `grpc-status`), with prost-derived messages for the few ext_proc types used.
//!
//! The peer is trusted to route, not to size our memory: a message whose 5-byte prefix declares
//! more than `max_message_bytes` (gRPC's own default receive limit, 4 MiB) ends the stream with
//! `RESOURCE_EXHAUSTED` before any of it is buffered, and a request body streamed in many
//! messages is held only up to the same bound (past it the client gets an immediate 413, as
//! Envoy answers a body over its buffer limit).

// The request path never panics on a missing value: it answers or fails the request.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[doc(hidden)]
pub mod framing;
pub mod proto;
mod replies;
mod training;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use switchyard_config::{Config, Priority};
use switchyard_inference::parse_slo_ms;
use switchyard_proxy::trace::PickSpan;
use switchyard_proxy::GatewayHandle;
use switchyard_telemetry::Metrics;
use tokio::sync::mpsc;

use proto::{processing_request, processing_response};
use replies::{continue_body, continue_headers, error_json, immediate, lb_metadata, response};
use training::Picked;

/// Header (and `envoy.lb` metadata key) carrying the picked endpoint, per the Gateway API
/// Inference Extension.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Request header asking the model server for an ORCA load report, and the response header that
/// carries it.
const ORCA_FORMAT_HEADER: &str = "endpoint-load-metrics-format";
const ORCA_REPORT_HEADER: &str = "endpoint-load-metrics";
const METHOD: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
/// Largest gRPC message (and buffered request body) accepted unless configured otherwise: the
/// default receive limit of every gRPC implementation.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// gRPC status codes used here.
const GRPC_INVALID_ARGUMENT: u8 = 3;
const GRPC_RESOURCE_EXHAUSTED: u8 = 8;
const GRPC_UNIMPLEMENTED: u8 = 12;

/// The endpoint picker: the gateway state for one pool.
pub struct Epp {
    handle: Arc<GatewayHandle>,
    pool: usize,
    max_message_bytes: usize,
}

impl Epp {
    /// Build gateway state from `config` (scrapers and health checks start) and pick from the
    /// pool named `pool`, or the first pool. Must run inside a Tokio runtime.
    /// `max_message_bytes` bounds one gRPC message and the request body buffered for a pick.
    pub fn new(
        config: Config,
        pool: Option<&str>,
        max_message_bytes: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let index = match pool {
            Some(name) => config
                .pools
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| anyhow::anyhow!("no pool named `{name}` in the config"))?,
            None if config.pools.is_empty() => anyhow::bail!("the config has no pools"),
            None => 0,
        };
        let handle = GatewayHandle::new(config, Metrics::new()).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Self {
            handle,
            pool: index,
            max_message_bytes,
        }))
    }

    /// Serve ext_proc streams on `listener` (h2c) until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let epp = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let epp = epp.clone();
                    async move { Ok::<_, Infallible>(epp.call(req)) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn call(self: Arc<Self>, req: Request<Incoming>) -> Response<GrpcBody> {
        let (tx, rx) = mpsc::channel(8);
        if req.uri().path() != METHOD {
            let _ = tx.try_send(Frame::trailers(grpc_status(
                GRPC_UNIMPLEMENTED,
                "unknown method",
            )));
            return grpc_response(rx);
        }
        tokio::spawn(self.process(req.into_body(), tx));
        grpc_response(rx)
    }

    /// One HTTP request's worth of ext_proc messages.
    async fn process(self: Arc<Self>, mut body: Incoming, tx: mpsc::Sender<Frame<Bytes>>) {
        let mut buf = BytesMut::new();
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut request_body = Vec::new();
        let mut picked: Option<Picked> = None;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            loop {
                let msg = match next_message(&mut buf, self.max_message_bytes) {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(Refused::Compressed) => {
                        let _ = tx
                            .send(Frame::trailers(grpc_status(
                                GRPC_UNIMPLEMENTED,
                                "compressed messages are not supported (grpc-accept-encoding: identity)",
                            )))
                            .await;
                        return;
                    }
                    Err(Refused::TooLarge(declared)) => {
                        // Dropping the request body on return resets the stream: nothing more
                        // of the oversized message is read.
                        tracing::debug!(
                            declared,
                            limit = self.max_message_bytes,
                            "gRPC message over the limit"
                        );
                        let message = format!(
                            "message of {declared} bytes exceeds the limit of {}",
                            self.max_message_bytes
                        );
                        let _ = tx
                            .send(Frame::trailers(grpc_status(
                                GRPC_RESOURCE_EXHAUSTED,
                                &message,
                            )))
                            .await;
                        return;
                    }
                };
                let Ok(msg) = proto::ProcessingRequest::decode(msg) else {
                    let _ = tx
                        .send(Frame::trailers(grpc_status(
                            GRPC_INVALID_ARGUMENT,
                            "bad message",
                        )))
                        .await;
                    return;
                };
                let reply = match msg.request {
                    Some(processing_request::Request::RequestHeaders(h)) => {
                        headers = h
                            .headers
                            .map(|m| {
                                m.headers
                                    .into_iter()
                                    .map(|v| {
                                        let value = if v.raw_value.is_empty() {
                                            v.value
                                        } else {
                                            String::from_utf8_lossy(&v.raw_value).into_owned()
                                        };
                                        (v.key.to_ascii_lowercase(), value)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if h.end_of_stream {
                            self.decide(&headers, &[], &mut picked, true)
                        } else {
                            continue_headers()
                        }
                    }
                    Some(processing_request::Request::RequestBody(b)) => {
                        if request_body.len() + b.body.len() > self.max_message_bytes {
                            // The body would outgrow the bound: answer the client and stop.
                            let reply = immediate(
                                413,
                                error_json("body_too_large", 413, "the request body is too large"),
                            );
                            let _ = tx.send(Frame::data(encode(&reply))).await;
                            let _ = tx.send(Frame::trailers(grpc_status(0, ""))).await;
                            return;
                        }
                        request_body.extend_from_slice(&b.body);
                        if b.end_of_stream
                            && request_body.len() > switchyard_inference::INLINE_PARSE_BYTES
                        {
                            // A large body is parsed and scored on the blocking pool, so the
                            // other streams on this worker keep moving.
                            let this = self.clone();
                            let h = std::mem::take(&mut headers);
                            let body = std::mem::take(&mut request_body);
                            let decided = tokio::task::spawn_blocking(move || {
                                let mut picked = None;
                                let reply = this.decide(&h, &body, &mut picked, false);
                                (reply, picked)
                            })
                            .await;
                            match decided {
                                Ok((reply, p)) => {
                                    picked = p;
                                    reply
                                }
                                Err(_) => immediate(
                                    500,
                                    error_json("internal", 500, "the pick did not complete"),
                                ),
                            }
                        } else if b.end_of_stream {
                            self.decide(&headers, &request_body, &mut picked, false)
                        } else {
                            continue_body()
                        }
                    }
                    Some(processing_request::Request::ResponseHeaders(h)) => {
                        // The upstream's ORCA load report, when it sent one, is fresher than
                        // the last scrape.
                        if let Some(p) = &picked {
                            let report = h
                                .headers
                                .iter()
                                .flat_map(|m| &m.headers)
                                .find(|v| v.key.eq_ignore_ascii_case(ORCA_REPORT_HEADER));
                            if let Some(v) = report {
                                let raw = if v.raw_value.is_empty() {
                                    v.value.as_bytes()
                                } else {
                                    &v.raw_value
                                };
                                p.picker.apply_load_report_header(p.index, raw);
                            }
                        }
                        response(processing_response::Response::ResponseHeaders(
                            proto::HeadersResponse::default(),
                        ))
                    }
                    Some(processing_request::Request::ResponseBody(b)) => {
                        // Streamed to us when Envoy's filter asks for it: the predictor's
                        // training data (training.rs).
                        if let Some(p) = &mut picked {
                            p.on_body(&b.body, b.end_of_stream);
                        }
                        response(processing_response::Response::ResponseBody(
                            proto::BodyResponse::default(),
                        ))
                    }
                    None => continue,
                };
                if tx.send(Frame::data(encode(&reply))).await.is_err() {
                    return;
                }
            }
        }
        drop(picked);
        let _ = tx.send(Frame::trailers(grpc_status(0, ""))).await;
    }

    /// Pick for a request whose headers (and body, if any) are known.
    fn decide(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        picked: &mut Option<Picked>,
        at_headers: bool,
    ) -> proto::ProcessingResponse {
        let gateway = self.handle.load();
        let pool = &gateway.pools[self.pool];
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let priority = header("x-switchyard-priority")
            .and_then(Priority::parse)
            .unwrap_or_default();
        // With `tracing`: a span per pick, in the trace of Envoy's `traceparent`.
        let mut span = gateway
            .tracing
            .as_ref()
            .map(|t| t.start_pick(headers, pool.name(), pool.spec.balancer.kind()));
        let end_span = |span: Option<PickSpan>, at, error| {
            if let Some(s) = span {
                s.end(at, error);
            }
        };
        let mut late_body = None;
        let index = match &pool.inference {
            Some(picker) if !body.is_empty() => {
                let path = header(":path").unwrap_or("/v1/chat/completions");
                let path = path.split('?').next().unwrap_or(path);
                let parsed = match switchyard_inference::parse_openai(path, body) {
                    Ok(p) => p,
                    Err(e) => {
                        end_span(span, None, Some("bad_inference_request"));
                        return immediate(e.status(), e.to_openai_json());
                    }
                };
                let debug = span.as_ref().is_some_and(PickSpan::recording);
                let sheddable = priority == Priority::Sheddable;
                let slo_header = |name| header(name).and_then(|v| parse_slo_ms(v.as_bytes()));
                let slo = switchyard_inference::Slo {
                    ttft_ms: slo_header("x-slo-ttft-ms"),
                    tpot_ms: slo_header("x-slo-tpot-ms"),
                };
                let pick = picker.pick_request_slo(&pool.endpoints, &parsed, sheddable, debug, slo);
                if pick.index().is_some() && !pick.shed {
                    pool.count_prefix_pick(pick.decision.prefix);
                }
                if let Some(s) = span.as_mut().filter(|s| s.recording()) {
                    s.explain(
                        &switchyard_inference::InferencePicker::debug_header(&pick.decision),
                        &pick.decision,
                    );
                }
                if pick.shed {
                    pool.count_overflow("shed");
                    end_span(span, None, Some("shed"));
                    return immediate(
                        429,
                        error_json("shed", 429, "the pool is saturated; retry later"),
                    );
                }
                // A request late everywhere carries the engine priority that lets on-time ones
                // go first, as through the gateway.
                late_body = picker
                    .late_priority(&pick.decision)
                    .and_then(|p| switchyard_inference::add_priority(body, p));
                if let Some(i) = pick.index() {
                    *picked = Some(Picked::new(
                        picker.clone(),
                        i,
                        (pick.est_tokens, parsed.prompt_tokens),
                        pick.decision.ticket,
                        parsed.stream,
                    ));
                }
                pick.index()
            }
            _ => pool.picker.pick(&pool.endpoints),
        };
        let Some(index) = index else {
            end_span(span, None, Some("no_endpoint"));
            return immediate(
                503,
                error_json("no_endpoint", 503, "the pool has no available endpoint"),
            );
        };
        end_span(span, Some(pool.endpoints[index].address()), None);
        let target = pool.endpoints[index].address().to_string();
        let mut set_headers = vec![proto::set_header(DESTINATION_HEADER, &target)];
        if pool.inference.as_ref().is_some_and(|p| p.config().orca) {
            // Ask the model server for an ORCA load report on its response.
            set_headers.push(proto::set_header(ORCA_FORMAT_HEADER, "TEXT"));
        }
        if let Some(b) = &late_body {
            set_headers.push(proto::set_header("content-length", &b.len().to_string()));
        }
        let common = Some(proto::CommonResponse {
            status: 0,
            header_mutation: Some(proto::HeaderMutation { set_headers }),
            body_mutation: late_body.map(|b| proto::BodyMutation {
                mutation: Some(proto::body_mutation::Mutation::Body(b)),
            }),
            clear_route_cache: false,
        });
        let mut reply = if at_headers {
            response(processing_response::Response::RequestHeaders(
                proto::HeadersResponse { response: common },
            ))
        } else {
            response(processing_response::Response::RequestBody(
                proto::BodyResponse { response: common },
            ))
        };
        reply.dynamic_metadata = Some(lb_metadata(&target));
        reply
    }
}

/// Why a message prefix was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// It declared this many bytes, over the limit.
    TooLarge(usize),
    /// Its compressed flag is set: the picker accepts only `identity`, as its
    /// `grpc-accept-encoding` says, so the bytes are not a protobuf message to decode.
    Compressed,
}

/// Take one length-prefixed gRPC message off the front of `buf`, if complete. The prefix is
/// checked as soon as its 5 bytes are in, so `buf` never holds more than one message of at most
/// `max` bytes plus one read.
fn next_message(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, Refused> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(Refused::Compressed);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(Refused::TooLarge(len));
    }
    if buf.len() < 5 + len {
        // No reserving ahead for the declared length: memory follows bytes actually received.
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

fn encode(msg: &proto::ProcessingResponse) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut out).expect("buffer has capacity");
    out.freeze()
}

fn grpc_status(code: u8, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", u16::from(code).into());
    if let Ok(v) = http::HeaderValue::from_str(message) {
        if !message.is_empty() {
            t.insert("grpc-message", v);
        }
    }
    t
}

/// A response body fed from a channel: gRPC messages, then trailers.
pub type GrpcBody = switchyard_proxy::body::ChannelBody;

fn grpc_response(rx: mpsc::Receiver<Frame<Bytes>>) -> Response<GrpcBody> {
    let mut r = Response::new(GrpcBody::new(rx));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    r.headers_mut().insert(
        "grpc-accept-encoding",
        http::HeaderValue::from_static("identity"),
    );
    r
}

/// Bind `listen` and serve until Ctrl-C; with `admin`, the gateway's admin API there too
/// (`/metrics` with the pool's scrape, KV-event and pick counters, `/pools`, `/ready`), as an
/// llm-d EPP serves its metrics.
pub async fn run(
    config: Config,
    listen: SocketAddr,
    pool: Option<String>,
    max_message_bytes: usize,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let epp = Epp::new(config, pool.as_deref(), max_message_bytes)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "endpoint picker listening");
    println!("switchyard epp listening on {addr}");
    let handle = epp.handle.clone();
    if let Some(address) = admin {
        let listener = switchyard_admin::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind admin listener {address}: {e}"))?;
        let address = listener.local_addr()?;
        let admin = switchyard_admin::Admin::new(handle.clone());
        tokio::spawn(admin.clone().serve(listener));
        println!("switchyard epp admin listening on {address}");
        // Ready as the gateway is: once the picker has seen its endpoints' first scrapes.
        let gateway = handle.clone();
        tokio::spawn(async move {
            gateway.first_scrapes_done().await;
            admin.set_ready(true);
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = epp.serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Export the picks' queued spans before exiting.
    if let Some(t) = handle.load().tracing.clone() {
        t.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msg = continue_headers();
        let mut buf = BytesMut::from(&encode(&msg)[..]);
        let got = next_message(&mut buf, 1024).unwrap().unwrap();
        let back = proto::ProcessingResponse::decode(got).unwrap();
        assert_eq!(back, msg);
        assert!(buf.is_empty());
        let mut partial = BytesMut::from(&encode(&msg)[..3]);
        assert_eq!(next_message(&mut partial, 1024), Ok(None));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_from_the_prefix_alone() {
        // 4 GiB - 1 declared, nothing of it sent: refused before any buffering.
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            next_message(&mut buf, 4 << 20),
            Err(Refused::TooLarge(u32::MAX as usize))
        );
        // Exactly at the limit is fine; one over is not.
        let mut at = BytesMut::from(&[0u8, 0, 0, 0, 4][..]);
        at.extend_from_slice(b"abcd");
        assert_eq!(
            next_message(&mut at, 4).unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
        let mut over = BytesMut::from(&[0u8, 0, 0, 0, 5][..]);
        assert_eq!(next_message(&mut over, 4), Err(Refused::TooLarge(5)));
    }

    #[test]
    fn metadata_names_the_destination() {
        let m = lb_metadata("127.0.0.1:9");
        let Some(proto::value::Kind::StructValue(inner)) = &m.fields["envoy.lb"].kind else {
            panic!("not a struct");
        };
        assert_eq!(
            inner.fields[DESTINATION_HEADER].kind,
            Some(proto::value::Kind::StringValue("127.0.0.1:9".into()))
        );
    }
}
