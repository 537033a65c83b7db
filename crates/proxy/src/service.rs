//! The request path: route, pick, rewrite, forward, stream back. One function reads top to
//! bottom in the order a request experiences it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderValue, CONNECTION, EXPECT, HOST, TE, UPGRADE};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use switchyard_telemetry::metrics::RejectLabels;
use tokio::time::Instant;

use crate::attempt::{
    pick_context, pick_untried, record_response, retry_decision, send_attempt, sleep_before_retry,
    Failure, DEFAULT_MAX_REPLAY_BODY,
};
use crate::body::{
    BodyTooLarge, ClientBody, InBody, InferenceUsage, RequestBody, ResponseBody, StreamTiming,
    UpstreamBody,
};
use crate::error::{has_source, GatewayError};
use crate::gateway::{Gateway, GatewayHandle};
use crate::headers::{self, RequestScan, ResponseScan, X_REQUEST_ID};
use crate::record::{AccessInfo, Finish};
use crate::request_model::{self, body_model, read_model, RequestedModel};
use crate::trace::{AttemptKind, RequestSpan};
use crate::upstream_h1::{InlineConn, SendError};
use switchyard_balance::parse_orca;
use switchyard_config::{Balancer, Priority};
use switchyard_health::Outcome;
use switchyard_resilience::{parse_retry_after, Attempt, Limit, TriedSet};

/// What the request path needs to know about the client connection.
pub struct ConnContext {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The client IP, preformatted for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    pub https: bool,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub access_log: bool,
    /// Set by the HTTP/1 framing guard on this connection's socket.
    pub framing: Arc<crate::framing_guard::FramingFlags>,
}

/// Serve one request. Never fails: every problem becomes a gateway response.
pub async fn handle(
    handle: &GatewayHandle,
    cx: &ConnContext,
    req: Request<ClientBody>,
    downstream: Downstream,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let gateway = handle.load();
    // Everything the path reads from the request headers, in one pass.
    let scan = RequestScan::new(req.headers());
    let request_id = scan.request_id();
    let grpc = scan.grpc;
    let access = cx.access_log.then(|| {
        Box::new(AccessInfo {
            log: handle.access_log().clone(),
            listener: cx.listener.clone(),
            request_id: request_id.clone(),
            client: cx.client,
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            version: req.version(),
        })
    });
    let trace = gateway.tracing.as_ref().map(|t| {
        Box::new(t.start_request(
            req.method(),
            req.uri().path(),
            req.version(),
            req.headers(),
            cx.client,
            &request_id,
        ))
    });
    let finish = Finish::new(start, gateway.clone(), access, trace);
    match forward(&gateway, cx, req, scan, &request_id, finish, downstream).await {
        Ok(resp) => resp,
        Err((err, mut finish, close)) => {
            // Clients of an `inference` pool speak the OpenAI API: answer in its error shape.
            let openai = finish.target().is_some_and(|t| t.pool.inference.is_some());
            let mut resp = if openai && !grpc {
                err.openai_response(&request_id)
            } else {
                err.response(&request_id, grpc)
            };
            if close {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            finish.set_status(resp.status().as_u16());
            finish.error(err.kind());
            handle
                .metrics
                .rejected
                .get_or_create(&RejectLabels {
                    listener: cx.listener.to_string(),
                    reason: err.kind(),
                })
                .inc();
            resp
        }
    }
}

/// Error, the request's bookkeeping, and whether to close the client connection.
type Rejection = (GatewayError, Finish, bool);

async fn forward(
    gateway: &Gateway,
    cx: &ConnContext,
    req: Request<ClientBody>,
    scan: RequestScan,
    request_id: &HeaderValue,
    mut finish: Finish,
    downstream: Downstream,
) -> Result<Response<ResponseBody>, Rejection> {
    let start = finish.start();
    let grpc = scan.grpc;
    // 1. Limits and request shape. HTTP/1 limits are mostly enforced by the codec; this also
    //    covers HTTP/2, whose header block arrives already decoded.
    let conflicting_framing =
        req.version() < Version::HTTP_2 && cx.framing.next_request_conflicts();
    if req.headers().len() > cx.max_headers
        || scan.bytes + headers::uri_len(req.uri()) > cx.max_header_bytes
    {
        return Err((GatewayError::HeadersTooLarge, finish, false));
    }
    if conflicting_framing {
        // Request smuggling shape (RFC 9112 §6.3): refuse and close, forward nothing.
        return Err((
            GatewayError::BadRequest("both Content-Length and Transfer-Encoding are present"),
            finish,
            true,
        ));
    }
    let content_length = match scan.content_length {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => {
            return Err((
                GatewayError::BadRequest("invalid Content-Length"),
                finish,
                true,
            ))
        }
    };

    // 2. Route. Routes that match on the model need it before anything else: from the JSON
    //    body (read once, bounded, then forwarded byte for byte) or the `x-model` header.
    let (mut req, mut model) = if gateway.needs_model {
        match read_model(gateway, req, content_length).await {
            Ok(pair) => pair,
            Err(e) => return Err((e, finish, true)),
        }
    } else {
        (req.map(InBody::Incoming), None)
    };
    let Some((route_index, route)) = gateway.routes.iter().enumerate().find(|(_, r)| {
        r.matcher.matches(&req) && r.matcher.model_matches(model.as_ref().map(|m| m.name()))
    }) else {
        return Err((GatewayError::NoRoute, finish, false));
    };
    // A weighted split picks its target once; retries and hedges stay on it.
    let target_index = route.pick_target();
    let target = &route.targets[target_index];
    finish.set_route(route_index, target_index);
    if content_length.is_some_and(|n| n > route.max_request_body) {
        return Err((GatewayError::BodyTooLarge, finish, true));
    }

    // 3. Admission: circuit breaker, then the concurrency limit (which may queue).
    let pool = &target.pool;
    let _admitted = match pool.breaker.try_acquire(Limit::Requests) {
        Ok(g) => g,
        Err(overflow) => {
            pool.count_overflow(overflow.limit.as_str());
            return Err((
                GatewayError::Overflow(overflow.limit.as_str()),
                finish,
                false,
            ));
        }
    };
    let priority = scan.priority.unwrap_or(route.priority);
    // Sheddable requests never queue; the others wait by priority, tenants taking turns.
    let mut permit = match (&pool.limiter, &pool.admission) {
        (Some(limiter), Some(admission)) => {
            match admission.admit(limiter, priority, req.headers()).await {
                Ok(p) => Some(p),
                Err(refused) => {
                    pool.count_overflow(refused.reason);
                    return Err((refused.error, finish, false));
                }
            }
        }
        _ => None,
    };
    let in_budget = route.retry.as_ref().map(|r| r.budget.start_request());

    // 4. Rewrite for the upstream hop.
    let upgrade = if req.version() < Version::HTTP_2 && scan.upgrade {
        let protocol = req.headers().get(UPGRADE).cloned();
        protocol.map(|p| (p, hyper::upgrade::on(&mut req)))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    if scan.hop_by_hop {
        headers::strip_present_hop_by_hop(&mut parts.headers);
    }
    if scan.expect {
        // The gateway answers `Expect: 100-continue` itself when it starts reading the body.
        parts.headers.remove(EXPECT);
    }
    if let Some((protocol, _)) = &upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol.clone());
    }
    if pool.http2() && scan.trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    if !scan.host {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    headers::set_forwarded(&mut parts.headers, &scan, &cx.client_ip, cx.https);
    // A sane id of the client's is already there (the scan only keeps a lone one), unless the
    // hop-by-hop stripping could have taken it.
    if scan.request_id.is_none() || scan.hop_by_hop {
        let maybe_present = scan.request_id_present || scan.hop_by_hop;
        headers::put(
            &mut parts.headers,
            &X_REQUEST_ID,
            request_id.clone(),
            maybe_present,
        );
    }
    if matches!(
        pool.spec.balancer,
        Balancer::WeightedLeastUtilization { .. } | Balancer::Inference { orca: true, .. }
    ) {
        // Ask the backend for an ORCA load report on the response (gRFC A51).
        static FORMAT: http::HeaderName =
            http::HeaderName::from_static("endpoint-load-metrics-format");
        parts
            .headers
            .insert(FORMAT.clone(), HeaderValue::from_static("TEXT"));
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.version = if pool.http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let deadline = if grpc {
        scan.grpc_timeout.map(|d| start + d)
    } else {
        None
    };
    let headers_by = match deadline {
        Some(d) => d.min(start + route.timeout),
        None => start + route.timeout,
    };

    // 5. The body: streamed once, or kept (bounded) so the request can be sent again.
    let retry = route.retry.as_ref().filter(|r| r.policy.attempts > 1);
    let replay_cap = retry.map_or(DEFAULT_MAX_REPLAY_BODY, |r| r.policy.max_replay_body);
    // An `inference` pool reads the (bounded) body to route on it; a model rewrite reads it to
    // change it.
    let inference = pool.inference.as_ref().filter(|_| upgrade.is_none());
    let rewrite = target.model.as_ref().filter(|_| upgrade.is_none());
    let body = match body {
        // Already read for model-based routing.
        InBody::Buffered(bytes) => {
            if bytes.len() as u64 > route.max_request_body {
                return Err((GatewayError::BodyTooLarge, finish, true));
            }
            InBody::Buffered(bytes)
        }
        incoming => incoming,
    };
    let empty_body = match &body {
        InBody::Incoming(i) => http_body::Body::is_end_stream(i),
        InBody::Buffered(b) => b.is_empty(),
    };
    let mut body = if let InBody::Buffered(bytes) = body {
        Some(RequestBody::Buffered(Some(bytes)))
    } else if inference.is_some()
        || rewrite.is_some() && !empty_body
        || (retry.is_some() || route.hedger.is_some())
            && upgrade.is_none()
            && (empty_body || content_length.is_some_and(|n| n <= replay_cap))
    {
        match RequestBody::buffer(body.into_incoming(), route.max_request_body).await {
            Ok(b) => Some(b),
            Err(e) if has_source::<BodyTooLarge>(e.as_ref()) => {
                return Err((GatewayError::BodyTooLarge, finish, true));
            }
            Err(_) => {
                return Err((
                    GatewayError::BadRequest("request body aborted"),
                    finish,
                    true,
                ));
            }
        }
    } else {
        Some(RequestBody::new(
            body.into_incoming(),
            route.max_request_body,
        ))
    };

    // 5b. The OpenAI body of an `inference` pool, parsed once (malformed → 400 in its shape).
    let mut parsed = None;
    if inference.is_some() {
        let bytes = body
            .as_ref()
            .and_then(RequestBody::buffered)
            .unwrap_or_default();
        match switchyard_inference::parse_openai(path_and_query.path(), &bytes) {
            Ok(p) => {
                model = Some(RequestedModel::Body(p.model.clone()));
                parsed = Some(p);
            }
            Err(e) => {
                let resp = request_model::openai_error(&e, request_id);
                finish.set_status(resp.status().as_u16());
                finish.error("bad_inference_request");
                return Ok(resp);
            }
        }
    } else if rewrite.is_some() && !matches!(model, Some(RequestedModel::Body(_))) {
        // A rewrite reads the model from the body even when the route did not need it.
        let from_body = body.as_ref().and_then(RequestBody::buffered);
        model = from_body
            .and_then(|b| body_model(&b))
            .map(RequestedModel::Body)
            .or(model);
    }

    // 5c. Model rewrite (alias, version split): only the body's top-level `model` value changes.
    if let Some(model) = model.take() {
        let request_model = request_model::rewrite(
            model,
            rewrite,
            &mut body,
            &mut parts.headers,
            parsed.as_mut(),
        );
        finish.set_model(request_model);
    }

    // 5d. Inference-aware first pick: score endpoints on queue, KV cache, prefix affinity, LoRA
    //     and in-flight tokens.
    let mut preset = None;
    let mut pick_debug = None;
    if let (Some(picker), Some(parsed)) = (inference, parsed.as_ref()) {
        let hashes = switchyard_inference::prompt_block_hashes_seeded(
            switchyard_inference::seed_for(&parsed.model),
            &parsed.prompt,
            picker.config().block_tokens,
        );
        let est_tokens = parsed
            .prompt_tokens
            .saturating_add(parsed.max_tokens.unwrap_or(DEFAULT_EXPECTED_OUTPUT));
        let debug_header = scan.debug;
        // A sampled trace carries the explanation whether or not the client asked for it.
        let debug = debug_header || finish.trace().is_some_and(RequestSpan::recording);
        let req_cx = switchyard_inference::RequestContext {
            block_hashes: &hashes,
            // An explicit `lora` field, else the model itself when the servers' metrics say it
            // is an adapter (vLLM serves adapters under their own model names).
            adapter: parsed.adapter(|m| !picker.is_adapter(m)),
            est_tokens,
            debug,
        };
        let decision = picker.pick(&pool.endpoints, &req_cx);
        if decision.saturated && priority == Priority::Sheddable {
            pool.count_overflow("shed");
            return Err((GatewayError::Shed, finish, false));
        }
        if let Some(i) = decision.index {
            picker.record(i, &req_cx);
            finish.set_inference(picker.clone(), i, est_tokens);
            preset = Some(i);
        }
        if debug {
            let explanation = switchyard_inference::InferencePicker::debug_header(&decision);
            if let Some(t) = finish.trace() {
                t.set_pick(&explanation, &decision);
            }
            if debug_header {
                pick_debug = HeaderValue::from_str(&explanation).ok();
            }
        }
    }

    // 6. Attempts: pick an endpoint not tried yet, send, and retry what the policy allows.
    let ctx = pick_context(pool, &parts.headers, cx.client);
    let mut tried = TriedSet::new();
    let mut tries = 0u32;
    let mut retry_guards = Vec::new();
    let hedger = route.hedger.as_ref();
    if let Some(h) = hedger {
        h.start_request();
    }
    let (resp, rscan, raw, conn, in_flight, index) = loop {
        tries += 1;
        let Some(first_index) = preset.take().or_else(|| pick_untried(pool, &tried, &ctx)) else {
            return Err((GatewayError::NoEndpoint, finish, false));
        };
        tried.insert(first_index);
        let attempt_by = retry
            .and_then(|r| r.policy.per_try_timeout)
            .map_or(headers_by, |t| headers_by.min(Instant::now() + t));
        let replayable = body.as_ref().is_some_and(RequestBody::is_replayable);
        let this_body = match &body {
            Some(b) if b.is_replayable() => b.replay(),
            _ => body.take().expect("a streamed body is only sent once"),
        };
        let first_in_flight = pool.endpoints[first_index].state.begin();
        pool.picks[first_index].inc();
        // A streamed body goes out once, so its head can be moved rather than copied.
        let mut head = if replayable {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        let kind = if tries == 1 {
            AttemptKind::First
        } else {
            AttemptKind::Retry
        };
        let mut span = finish
            .trace()
            .map(|t| t.attempt(kind, pool, first_index, &mut head));
        let mut hedge_span = None;
        let hedge_after = hedger
            .filter(|_| tries == 1 && replayable && pool.endpoints.len() > 1)
            .and_then(|h| h.delay());
        // An inline HTTP/1 exchange bounds itself on its connection's timer, which costs no
        // timer registration per request; a hedged race or any other path is timed here.
        let self_timed =
            hedge_after.is_none() && upgrade.is_none() && pool.h1.get(first_index).is_some();
        // Boxed once: the attempt future is large, and the hedging race and the timeout below
        // would otherwise copy it as they wrap it.
        let mut first = Box::pin(send_attempt(
            pool,
            first_index,
            &parts,
            head,
            this_body,
            upgrade.is_some(),
            self_timed.then_some(attempt_by),
        ));
        let attempt_start = Instant::now();
        let raced = async {
            let Some(delay) = hedge_after else {
                return (first.await, None);
            };
            // Hedging ("The Tail at Scale"): if the first attempt is slow, send a second one to
            // another endpoint and take whichever answers first; the other is dropped.
            tokio::select! {
                r = &mut first => return (r, None),
                _ = tokio::time::sleep(delay) => {}
            }
            let counters = route
                .hedge_metrics
                .as_ref()
                .expect("hedging routes have counters");
            let Some(second_index) =
                pick_untried(pool, &tried, &ctx).filter(|i| !tried.contains(*i))
            else {
                counters.refused_no_endpoint.inc();
                return (first.await, None);
            };
            let Some(_hedge) = hedger.and_then(|h| h.try_acquire_hedge()) else {
                counters.refused_budget.inc();
                return (first.await, None);
            };
            counters.sent.inc();
            let second_in_flight = pool.endpoints[second_index].state.begin();
            pool.picks[second_index].inc();
            let second_body = body.as_ref().expect("hedged bodies are buffered").replay();
            let mut second_head = parts.headers.clone();
            hedge_span = finish
                .trace()
                .map(|t| t.attempt(AttemptKind::Hedge, pool, second_index, &mut second_head));
            let second = Box::pin(send_attempt(
                pool,
                second_index,
                &parts,
                second_head,
                second_body,
                false,
                None,
            ));
            tokio::select! {
                r = &mut first => (r, None),
                r = second => match r {
                    Ok(resp) => {
                        counters.won.inc();
                        (Ok(resp), Some((second_index, second_in_flight)))
                    }
                    // A hedge that failed before headers loses the race: the first attempt
                    // goes on. Its failure still counts against its endpoint.
                    Err(failure) => {
                        if let Some(s) = hedge_span.take() {
                            s.fail(failure.kind());
                        }
                        if failure.is_upstream() {
                            pool.endpoints[second_index].state.record_failure();
                            pool.record_outcome(second_index, failure.outcome());
                        }
                        drop(second_in_flight);
                        (first.await, None)
                    }
                },
            }
        };
        let timed = if self_timed {
            Ok(raced.await)
        } else {
            tokio::time::timeout_at(attempt_by, raced)
                .await
                .map_err(|_elapsed| ())
        };
        let (outcome, index, in_flight) = match timed {
            Ok((Err(Failure::Inline(SendError::Timeout)), None)) | Err(()) => {
                (Err(()), first_index, first_in_flight)
            }
            Ok((r, None)) => (Ok(r), first_index, first_in_flight),
            Ok((r, Some((i, f)))) => {
                tried.insert(i);
                // The hedge won: its span is the one that goes on.
                std::mem::swap(&mut span, &mut hedge_span);
                (Ok(r), i, f)
            }
        };
        if let Some(lost) = hedge_span {
            lost.cancel();
        }
        let endpoint = &pool.endpoints[index];
        // One clock read serves every latency record of this attempt.
        let attempt_end = Instant::now();
        let attempt_rtt = attempt_end.duration_since(attempt_start);
        endpoint
            .state
            .record_latency_at(attempt_rtt, attempt_end.into_std());
        if let (Some(h), Ok(Ok(_))) = (hedger, &outcome) {
            h.record_latency(attempt_rtt);
        }
        let (attempt, error) = match outcome {
            Ok(Ok((resp, mut conn))) => {
                // An inline HTTP/1 exchange keeps the headers raw, scanned as they were parsed.
                let mut raw = conn.as_mut().and_then(InlineConn::take_raw_head);
                let rscan = match raw.as_mut() {
                    Some(raw) => std::mem::take(&mut raw.scan),
                    None => ResponseScan::new(resp.headers()),
                };
                record_response(pool, index, resp.status(), rscan.event_stream, &mut finish);
                if let Some(s) = span.as_mut() {
                    s.response(resp.status().as_u16());
                }
                if let Some(report) = &rscan.load_report {
                    if let Ok(r) = parse_orca(report.as_bytes()) {
                        if let Some(picker) = inference {
                            picker.apply_load_report(index, &r);
                        }
                        endpoint.state.record_load_report(r);
                    }
                }
                if retry.is_some() {
                    let attempt = Attempt::Response {
                        status: resp.status(),
                        grpc_status: rscan.grpc_status,
                        // The wall clock only matters for an HTTP-date `Retry-After`.
                        retry_after: rscan
                            .retry_after
                            .as_ref()
                            .and_then(|v| parse_retry_after(v.as_bytes(), SystemTime::now())),
                    };
                    if let Some((delay, guards)) =
                        retry_decision(route, pool, retry, tries, &tried, &attempt, body.is_some())
                    {
                        retry_guards.push(guards);
                        drop((resp, conn));
                        sleep_before_retry(delay, headers_by).await;
                        continue;
                    }
                }
                if let (Some(t), Some(s)) = (finish.trace_mut(), span) {
                    t.set_upstream(s);
                }
                break (resp, rscan, raw, conn, in_flight, index);
            }
            Ok(Err(failure)) => {
                let (connect, err): (bool, Option<&(dyn std::error::Error + 'static)>) =
                    match &failure {
                        Failure::Inline(SendError::Connect(e)) => (true, Some(e)),
                        Failure::Inline(SendError::ConnectTimeout) => (true, None),
                        Failure::Inline(SendError::Overflow(o)) => {
                            pool.count_overflow(o.limit.as_str());
                            return Err((GatewayError::Overflow(o.limit.as_str()), finish, false));
                        }
                        Failure::Inline(e) => (false, e.source_error()),
                        Failure::Pooled(e) => (e.is_connect(), Some(e)),
                    };
                if err.is_some_and(has_source::<BodyTooLarge>) {
                    return Err((GatewayError::BodyTooLarge, finish, true));
                }
                endpoint.state.record_failure();
                pool.record_outcome(index, failure.outcome());
                if connect {
                    pool.connect_errors.inc();
                    (Attempt::ConnectFailure, GatewayError::ConnectFailed)
                } else {
                    tracing::debug!(error = ?failure, upstream = %endpoint.address(), "upstream request failed");
                    pool.resets.inc();
                    (Attempt::Reset, GatewayError::UpstreamReset)
                }
            }
            Err(_) => {
                endpoint.state.record_failure();
                pool.record_outcome(index, Outcome::GatewayError);
                pool.timeouts.inc();
                (Attempt::Timeout, GatewayError::Timeout)
            }
        };
        if let Some(s) = span {
            s.fail(error.kind());
        }
        if Instant::now() < headers_by {
            if let Some((delay, guards)) =
                retry_decision(route, pool, retry, tries, &tried, &attempt, body.is_some())
            {
                retry_guards.push(guards);
                sleep_before_retry(delay, headers_by).await;
                continue;
            }
        }
        if let Some(p) = permit.as_mut() {
            p.discard_sample();
        }
        return Err((error, finish, false));
    };
    if let Some(p) = permit.as_mut() {
        p.record_sample();
    }
    finish.set_upstream(in_flight, index);
    finish.hold_budget(in_budget, retry_guards);
    let mut resp = resp;

    // 7. Stream the response back.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some((_, client_side)) = upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_side, upstream_side));
        }
    }
    let (mut parts, body) = resp.into_parts();
    // Raw headers go back as they came, with the gateway's added, when the client's connection
    // writes HTTP/1 itself; any other writer gets a map.
    let raw = match raw {
        Some(mut raw) if downstream == Downstream::Http1 && !rscan.request_id => {
            raw.added.push((X_REQUEST_ID.clone(), request_id.clone()));
            if let Some(v) = pick_debug.take() {
                raw.added.push((X_SWITCHYARD_PICK.clone(), v));
            }
            Some(raw)
        }
        Some(raw) => {
            parts.headers = raw.to_map();
            None
        }
        None => None,
    };
    if raw.is_none() {
        if rscan.hop_by_hop && parts.status != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_present_hop_by_hop(&mut parts.headers);
        }
        headers::put(
            &mut parts.headers,
            &X_REQUEST_ID,
            request_id.clone(),
            rscan.request_id,
        );
        if let Some(v) = pick_debug {
            parts.headers.insert(X_SWITCHYARD_PICK.clone(), v);
        }
    }
    finish.set_status(parts.status.as_u16());
    let is_event_stream = rscan.event_stream;
    // Requests whose model the gateway read: usage per model, and per-model stream timing. A
    // compressed body is passed through unread.
    let usage = finish
        .model()
        .filter(|_| parts.status.is_success() && !rscan.content_encoding)
        .and_then(|m| {
            let id = gateway.models.intern(&m.model);
            let tokens = target.metrics.model_tokens(id, &gateway.models).clone();
            if is_event_stream {
                let stream = pool.model_metrics.get(index, id, &gateway.models).clone();
                Some(InferenceUsage::streamed(tokens, stream, start))
            } else if rscan.json {
                Some(InferenceUsage::json(tokens))
            } else {
                None
            }
        });
    let usage_counted = usage.is_some();
    // Boxed before it is filled in: the body is large, and every move copies it.
    let mut body = Box::new(UpstreamBody::new(
        body,
        route.idle_timeout,
        deadline,
        grpc,
        finish,
    ));
    if let Some(conn) = conn {
        body.set_connection(conn);
    }
    if let Some(raw) = raw {
        body.set_raw_head(raw);
    }
    if let Some(u) = usage {
        body.set_usage(u);
    }
    let metrics = &target.metrics;
    if is_event_stream {
        let mut timing = StreamTiming::new(
            start,
            metrics.stream_first_chunk.clone(),
            metrics.stream_chunk_gap.clone(),
        );
        if !usage_counted {
            timing.tokens = Some(metrics.tokens.clone());
        }
        body.set_stream_timing(timing);
    }
    Ok(Response::from_parts(parts, ResponseBody::Upstream(body)))
}

/// Output tokens assumed for a request without `max_tokens`, when estimating its load.
const DEFAULT_EXPECTED_OUTPUT: u32 = 256;

static X_SWITCHYARD_PICK: http::HeaderName = http::HeaderName::from_static("x-switchyard-pick");

/// Who writes the response to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// The HTTP/1.1 fast path (`h1_server`), which writes raw upstream heads as they came.
    Http1,
    /// hyper's server (HTTP/2, TLS, the HTTP/1 fallback): responses carry a header map.
    Hyper,
}

/// Splice an upgraded connection (WebSocket and friends) once both sides have switched.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    match (client, upstream) {
        (Ok(c), Ok(u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded tunnel closed with error");
            }
        }
        (c, u) => tracing::debug!(client = c.is_ok(), upstream = u.is_ok(), "upgrade failed"),
    }
}
