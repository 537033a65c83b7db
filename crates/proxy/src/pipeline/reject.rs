//! The gateway's own answers: a [`Reject`] becomes a response in the client's protocol (JSON,
//! the OpenAI error shape for `inference` pools, or a trailers-only gRPC response), counted as a
//! rejection; a stage's own answer ([`super::Stop::Respond`]) is recorded as it is.

use http::header::{HeaderValue, CONNECTION};
use http::Response;
use switchyard_telemetry::metrics::RejectLabels;

use super::exchange::{Exchange, Reject};
use crate::body::ResponseBody;
use crate::gateway::{Gateway, GatewayHandle};

pub fn respond(
    handle: &GatewayHandle,
    gateway: &Gateway,
    mut rx: Exchange<'_>,
    reject: Reject,
) -> Response<ResponseBody> {
    let Reject { error, close } = reject;
    let grpc = rx.scan.grpc;
    // Clients of an `inference` pool speak the OpenAI API: answer in its error shape.
    let mut resp = if rx.finish.openai() && !grpc {
        error.openai_response(&rx.request_id)
    } else {
        error.response(&rx.request_id, grpc)
    };
    if close {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    rx.finish.set_unrouted(&gateway.unrouted);
    rx.finish.set_status(resp.status().as_u16());
    rx.finish.error(error.kind());
    handle
        .metrics
        .rejected
        .get_or_create(&RejectLabels {
            listener: rx.conn.listener.to_string(),
            reason: error.kind(),
        })
        .inc();
    resp
}

pub fn answered(
    mut rx: Exchange<'_>,
    resp: Response<ResponseBody>,
    error: Option<&'static str>,
) -> Response<ResponseBody> {
    rx.finish.set_status(resp.status().as_u16());
    if let Some(e) = error {
        rx.finish.error(e);
    }
    resp
}
