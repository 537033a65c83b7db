//! Responses the gateway makes itself. Each failure has a short snake_case `type`, an HTTP status,
//! and for gRPC callers the matching `grpc-status` in a trailers-only response, so clients can
//! tell a gateway failure from an upstream one and react in the right protocol.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    NoRoute,
    NoEndpoint,
    ConnectFailed,
    /// TLS with the upstream failed; the cause says why (type `upstream_tls_error`).
    UpstreamTls(crate::tls::TlsCause),
    UpstreamReset,
    Timeout,
    HeadersTooLarge,
    BodyTooLarge,
    /// The client did not send the body the gateway reads whole within `body_read_timeout`.
    BodyTimeout,
    BadRequest(&'static str),
    /// A request that arrived in TLS early data (0-RTT) and is not safe to replay (425,
    /// RFC 8470): the client sends it again once its handshake is done.
    TooEarly,
    /// A method or transfer coding the gateway does not forward (501).
    NotImplemented(&'static str),
    /// A circuit breaker or the concurrency limit refused the request; names which.
    Overflow(&'static str),
    /// A sheddable request met a saturated pool.
    Shed,
    /// A sheddable request with a latency SLO no endpoint is predicted to meet.
    SloUnattainable,
    /// The pool is at its concurrency limit and the request's tenant already holds its share
    /// of the queue.
    TenantQueueFull,
    /// Over a rate limit: its `limit` per `window_secs`, and when to retry.
    RateLimited {
        limit: u64,
        window_secs: u64,
        retry_after_secs: u64,
    },
}

impl GatewayError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoint | Self::Overflow(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Shed
            | Self::SloUnattainable
            | Self::TenantQueueFull
            | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ConnectFailed | Self::UpstreamTls(_) | Self::UpstreamReset => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::TooEarly => StatusCode::TOO_EARLY,
        }
    }

    /// The `type` field of the JSON body and the `reason` metric label.
    pub fn kind(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoEndpoint => "no_endpoint",
            Self::ConnectFailed => "upstream_connect_failure",
            Self::UpstreamTls(_) => "upstream_tls_error",
            Self::UpstreamReset => "upstream_reset",
            Self::Timeout => "upstream_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BadRequest(_) => "bad_request",
            Self::NotImplemented(_) => "not_implemented",
            Self::TooEarly => "too_early",
            Self::Overflow(_) => "overflow",
            Self::Shed => "shed",
            Self::SloUnattainable => "slo_unattainable",
            Self::TenantQueueFull => "tenant_queue_full",
            // OpenAI's own code for the same answer.
            Self::RateLimited { .. } => "rate_limit_exceeded",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::NoRoute => "no route matches this request",
            Self::NoEndpoint => "the pool has no available endpoint",
            Self::ConnectFailed => "could not connect to an upstream endpoint",
            Self::UpstreamTls(cause) => cause.message(),
            Self::UpstreamReset => "the upstream closed or reset the connection",
            Self::Timeout => "the upstream did not respond in time",
            Self::HeadersTooLarge => "request headers exceed the listener's limits",
            Self::BodyTooLarge => "request body exceeds the route's max_request_body",
            Self::BodyTimeout => {
                "the request body did not arrive within the route's body_read_timeout"
            }
            Self::BadRequest(why) | Self::NotImplemented(why) => why,
            Self::TooEarly => {
                "sent in early data and not safe to replay; retry after the handshake"
            }
            Self::Overflow(_) => "the pool is at its configured limit",
            Self::Shed => "the pool is saturated and this request is sheddable; retry later",
            Self::SloUnattainable => {
                "no endpoint is predicted to meet this request's latency SLO (x-slo-ttft-ms, \
                 x-slo-tpot-ms) and it is sheddable; retry later or relax the SLO"
            }
            Self::TenantQueueFull => {
                "the pool is at its limit and this tenant already has its share of requests \
                 queued; retry later"
            }
            Self::RateLimited { .. } => "rate limit reached; retry after the Retry-After delay",
        }
    }

    /// gRPC status code (as in `grpc/status.proto`) for gRPC callers.
    pub fn grpc_status(self) -> u8 {
        match self {
            Self::NoRoute => 12, // UNIMPLEMENTED
            Self::NoEndpoint
            | Self::TooEarly
            | Self::ConnectFailed
            | Self::UpstreamTls(_)
            | Self::UpstreamReset
            | Self::Overflow(_) => 14, // UNAVAILABLE
            Self::Timeout | Self::BodyTimeout => 4, // DEADLINE_EXCEEDED
            Self::HeadersTooLarge
            | Self::BodyTooLarge
            | Self::Shed
            | Self::SloUnattainable
            | Self::TenantQueueFull
            | Self::RateLimited { .. } => 8, // RESOURCE_EXHAUSTED
            Self::BadRequest(_) => 13, // INTERNAL
            Self::NotImplemented(_) => 12, // UNIMPLEMENTED
        }
    }

    /// The same error in the OpenAI API's shape (`{"error":{"message","type","param","code"}}`),
    /// for clients of `inference` pools whose SDKs parse that shape.
    pub fn openai_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let kind = match self.status().as_u16() {
            400 | 408 | 413 | 431 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        let body = serde_json::json!({
            "error": {
                "message": self.message(),
                "type": kind,
                "param": null,
                "code": self.kind(),
            }
        });
        let mut builder = Response::builder()
            .status(self.status())
            .header(CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id.clone());
        builder = self.limit_headers(builder);
        if let Self::Overflow(which) = self {
            builder = builder.header("x-switchyard-overflow", which);
        }
        builder
            .body(ResponseBody::full(Bytes::from(body.to_string() + "\n")))
            .expect("static parts are valid")
    }

    /// `Retry-After` on a 429, and for a rate limit the IETF `RateLimit-Policy` and `RateLimit`
    /// fields (draft-ietf-httpapi-ratelimit-headers).
    fn limit_headers(self, builder: http::response::Builder) -> http::response::Builder {
        match self {
            Self::RateLimited {
                limit,
                window_secs,
                retry_after_secs,
            } => builder
                .header(http::header::RETRY_AFTER, retry_after_secs.to_string())
                .header("ratelimit-policy", format!("{limit};w={window_secs}"))
                .header(
                    "ratelimit",
                    format!("limit={limit}, remaining=0, reset={retry_after_secs}"),
                ),
            _ if self.status() == StatusCode::TOO_MANY_REQUESTS => {
                builder.header(http::header::RETRY_AFTER, "1")
            }
            _ => builder,
        }
    }

    /// Build the response: JSON for HTTP callers, trailers-only for gRPC callers.
    pub fn response(self, request_id: &HeaderValue, grpc: bool) -> Response<ResponseBody> {
        let mut builder = Response::builder().header("x-request-id", request_id.clone());
        if let Self::Overflow(which) = self {
            builder = builder.header("x-switchyard-overflow", which);
        }
        builder = self.limit_headers(builder);
        if grpc {
            builder = builder
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/grpc")
                .header("grpc-status", self.grpc_status().to_string())
                .header("grpc-message", percent_encode(self.message()));
            return builder
                .body(ResponseBody::empty())
                .expect("static parts are valid");
        }
        let body = ErrorBody {
            error: ErrorFields {
                kind: self.kind(),
                code: self.status().as_u16(),
                message: self.message(),
                request_id: request_id.to_str().unwrap_or(""),
            },
        };
        let mut bytes = serde_json::to_vec(&body).expect("plain strings serialize");
        bytes.push(b'\n');
        builder
            .status(self.status())
            .header(CONTENT_TYPE, "application/json")
            .body(ResponseBody::full(Bytes::from(bytes)))
            .expect("static parts are valid")
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(serde::Serialize)]
struct ErrorFields<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: u16,
    message: &'static str,
    request_id: &'a str,
}

/// gRPC's percent-encoding for `grpc-message` (spec: PROTOCOL-HTTP2, "Responses").
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `e` or any error in its source chain is an `E`.
pub(crate) fn has_source<E: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn json_body_has_type_code_and_request_id() {
        let id = HeaderValue::from_static("abc");
        let resp = GatewayError::NoRoute.response(&id, false);
        assert_eq!(resp.status(), 404);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "no_route");
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["request_id"], "abc");
    }

    #[test]
    fn grpc_is_trailers_only_with_status() {
        let id = HeaderValue::from_static("abc");
        let resp = GatewayError::Timeout.response(&id, true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "4");
        assert!(http_body::Body::is_end_stream(resp.body()));
    }
}
