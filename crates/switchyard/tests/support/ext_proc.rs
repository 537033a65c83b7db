//! A raw ext_proc client for `switchyard epp`: gRPC messages over one h2 stream, as Envoy sends
//! them, without Envoy.

use std::net::SocketAddr;

use bytes::Bytes;
use prost::Message;
use switchyard_epp::proto;

use super::WAIT;

/// Open an ext_proc stream; returns the request body sender, the response, and the connection's
/// driver.
pub async fn stream(
    addr: SocketAddr,
) -> (
    h2::SendStream<Bytes>,
    h2::client::ResponseFuture,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::post(format!(
        "http://{addr}/envoy.service.ext_proc.v3.ExternalProcessor/Process"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, send) = h2.send_request(req, false).unwrap();
    (send, resp, driver)
}

/// One message, gRPC-framed.
pub fn message(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Read the whole response: the gRPC messages' bytes and `grpc-status`.
pub async fn reply(resp: h2::client::ResponseFuture) -> (Vec<u8>, Option<String>) {
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("no response")
        .unwrap();
    let status = resp.headers().get("grpc-status").cloned();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = tokio::time::timeout(WAIT, body.trailers())
        .await
        .unwrap()
        .unwrap();
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or(status.as_ref())
        .map(|v| v.to_str().unwrap().to_string());
    (data, status)
}

/// The messages of a response body read by [`reply`].
pub fn decode(mut data: &[u8]) -> Vec<proto::ProcessingResponse> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        out.push(proto::ProcessingResponse::decode(&data[5..5 + len]).unwrap());
        data = &data[5 + len..];
    }
    out
}

/// Request headers as Envoy sends them (`raw_value`, lowercase names).
pub fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> proto::ProcessingRequest {
    proto::ProcessingRequest {
        request: Some(proto::processing_request::Request::RequestHeaders(
            proto::HttpHeaders {
                headers: Some(proto::HeaderMap {
                    headers: pairs
                        .iter()
                        .map(|(k, v)| proto::HeaderValue {
                            key: (*k).into(),
                            value: String::new(),
                            raw_value: v.as_bytes().to_vec(),
                        })
                        .collect(),
                }),
                end_of_stream,
            },
        )),
    }
}

/// A request body message.
pub fn body(bytes: &[u8], end_of_stream: bool) -> proto::ProcessingRequest {
    proto::ProcessingRequest {
        request: Some(proto::processing_request::Request::RequestBody(
            proto::HttpBody {
                body: bytes.to_vec(),
                end_of_stream,
            },
        )),
    }
}
