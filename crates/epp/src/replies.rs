//! The ext_proc replies the picker sends Envoy: continue, an immediate (error) response, and
//! the chosen endpoint as `envoy.lb` dynamic metadata.

use std::collections::BTreeMap;

use crate::proto::{self, processing_response, value};
use crate::DESTINATION_HEADER;

pub(crate) fn response(r: processing_response::Response) -> proto::ProcessingResponse {
    proto::ProcessingResponse {
        response: Some(r),
        dynamic_metadata: None,
    }
}

pub(crate) fn continue_headers() -> proto::ProcessingResponse {
    response(processing_response::Response::RequestHeaders(
        proto::HeadersResponse::default(),
    ))
}

pub(crate) fn continue_body() -> proto::ProcessingResponse {
    response(processing_response::Response::RequestBody(
        proto::BodyResponse::default(),
    ))
}

pub(crate) fn immediate(code: u16, body: String) -> proto::ProcessingResponse {
    response(processing_response::Response::ImmediateResponse(
        proto::ImmediateResponse {
            status: Some(proto::HttpStatus {
                code: i32::from(code),
            }),
            headers: Some(proto::HeaderMutation {
                set_headers: vec![proto::set_header("content-type", "application/json")],
            }),
            body: body.into_bytes(),
            details: "switchyard_epp".into(),
        },
    ))
}

pub(crate) fn error_json(kind: &str, code: u16, message: &str) -> String {
    format!(r#"{{"error":{{"type":"{kind}","code":{code},"message":"{message}"}}}}"#)
}

/// `envoy.lb: { x-gateway-destination-endpoint: "ip:port" }`.
pub(crate) fn lb_metadata(target: &str) -> proto::Struct {
    let inner = proto::Struct {
        fields: BTreeMap::from([(
            DESTINATION_HEADER.to_string(),
            proto::Value {
                kind: Some(value::Kind::StringValue(target.to_string())),
            },
        )]),
    };
    proto::Struct {
        fields: BTreeMap::from([(
            "envoy.lb".to_string(),
            proto::Value {
                kind: Some(value::Kind::StructValue(inner)),
            },
        )]),
    }
}
