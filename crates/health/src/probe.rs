//! One health probe against one address: HTTP/1.1 `GET`, the gRPC health protocol over h2c, or
//! a bare TCP connect.
//!
//! Every probe opens a fresh connection. Envoy reuses one by default, but a fresh connection
//! also tests what real traffic needs first (that the endpoint still accepts connections), and
//! one connection per interval per endpoint is negligible next to inference traffic.
//!
//! A probe reads at most [`MAX_RESPONSE_BODY`] of a response body. An HTTP check is decided by
//! the status, so past the bound it stops reading and closes the connection (the endpoint may be
//! broken, but it must not make a health check hold memory or time); a gRPC health response is a
//! few bytes, so one over the bound is a protocol failure.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What a probe sends and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` over HTTP/1.1; passes when the status lies in one of the inclusive ranges.
    Http {
        path: String,
        expect: Vec<(u16, u16)>,
    },
    /// `grpc.health.v1.Health/Check` for `service` (empty: the whole server); passes on SERVING.
    Grpc { service: String },
    /// Passes when a TCP connection opens.
    Tcp,
}

/// TLS for the probes of a pool with `tls`: the same trust and client certificate as its
/// traffic, so a certificate the gateway would refuse fails the probe too.
#[derive(Clone)]
pub struct ProbeTls {
    pub connector: TlsConnector,
    /// `None`: the endpoint's IP address.
    pub server_name: Option<ServerName<'static>>,
    /// Tells one set of settings and files from another (a reload that changes them restarts
    /// the probes).
    pub digest: u64,
}

impl PartialEq for ProbeTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.server_name == other.server_name
    }
}

impl fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeTls")
            .field("server_name", &self.server_name)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Why a probe failed. `Display` gives the reason carried by [`crate::HealthEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    Timeout,
    Connect(std::io::ErrorKind),
    /// The HTTP status was not an expected one.
    Status(u16),
    /// The gRPC call failed with this `grpc-status`.
    GrpcStatus(u32),
    /// The health service answered with this status other than SERVING (2 = NOT_SERVING).
    NotServing(u64),
    /// The connection or the response was malformed.
    Protocol(String),
    /// The TLS handshake failed (an untrusted, expired or misnamed certificate...).
    Tls(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Timeout => write!(f, "probe timed out"),
            ProbeFailure::Connect(kind) => write!(f, "connect failed: {kind}"),
            ProbeFailure::Status(code) => write!(f, "unexpected status {code}"),
            ProbeFailure::GrpcStatus(code) => write!(f, "grpc-status {code}"),
            ProbeFailure::NotServing(2) => write!(f, "health service says NOT_SERVING"),
            ProbeFailure::NotServing(s) => write!(f, "health service status {s}"),
            ProbeFailure::Protocol(msg) => write!(f, "protocol error: {msg}"),
            ProbeFailure::Tls(msg) => write!(f, "TLS handshake failed: {msg}"),
        }
    }
}

impl Probe {
    /// Run the probe against `addr`, failing if it takes longer than `timeout`.
    pub async fn run(&self, addr: SocketAddr, timeout: Duration) -> Result<(), ProbeFailure> {
        self.run_tls(addr, timeout, None).await
    }

    /// As [`Probe::run`], over TLS when `tls` is set (a `Tcp` probe then passes once the
    /// handshake does).
    pub async fn run_tls(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&ProbeTls>,
    ) -> Result<(), ProbeFailure> {
        match tokio::time::timeout(timeout, self.run_unbounded(addr, tls)).await {
            Ok(result) => result,
            Err(_) => Err(ProbeFailure::Timeout),
        }
    }

    async fn run_unbounded(
        &self,
        addr: SocketAddr,
        tls: Option<&ProbeTls>,
    ) -> Result<(), ProbeFailure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeFailure::Connect(e.kind()))?;
        // Probes are tiny request/response exchanges; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return self.exchange(stream, addr).await;
        };
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = tls
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| ProbeFailure::Tls(tls_reason(&e)))?;
        self.exchange(stream, addr).await
    }

    async fn exchange<S>(&self, stream: S, addr: SocketAddr) -> Result<(), ProbeFailure>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match self {
            Probe::Tcp => Ok(()),
            Probe::Http { path, expect } => http(stream, addr, path, expect).await,
            Probe::Grpc { service } => grpc(stream, addr, service).await,
        }
    }
}

/// rustls' own words for a failed handshake (tokio-rustls wraps its error in an `io::Error`).
fn tls_reason(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or_else(|| e.to_string(), |tls| tls.to_string())
}

fn protocol(e: impl fmt::Display) -> ProbeFailure {
    ProbeFailure::Protocol(e.to_string())
}

async fn http<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    expect: &[(u16, u16)],
) -> Result<(), ProbeFailure> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(protocol)?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "switchyard-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(protocol)?;
    let response = sender.send_request(request).await.map_err(protocol)?;
    let status = response.status().as_u16();
    // Read the body (bounded) so the server sees a complete exchange, but ignore its content.
    let _ = read_bounded(response.into_body(), MAX_RESPONSE_BODY).await;
    if expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status))
    }
}

async fn grpc<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    stream: S,
    addr: SocketAddr,
    service: &str,
) -> Result<(), ProbeFailure> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(protocol)?;
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "switchyard-health")
        .body(Full::new(encode_check_request(service)))
        .map_err(protocol)?;
    let response = sender.send_request(request).await.map_err(protocol)?;
    if response.status() != http::StatusCode::OK {
        return Err(ProbeFailure::Status(response.status().as_u16()));
    }
    let (parts, body) = response.into_parts();
    let (data, trailers) = match read_bounded(body, MAX_RESPONSE_BODY).await? {
        Bounded::Complete { data, trailers } => (data, trailers),
        Bounded::Truncated => {
            return Err(protocol(format_args!(
                "health response over {MAX_RESPONSE_BODY} bytes"
            )))
        }
    };
    // A trailers-only response carries grpc-status in the headers.
    let trailers = trailers.unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        .ok_or_else(|| protocol("response without grpc-status"))?;
    if grpc_status != 0 {
        return Err(ProbeFailure::GrpcStatus(grpc_status));
    }
    match decode_check_response(data).map_err(protocol)? {
        SERVING => Ok(()),
        other => Err(ProbeFailure::NotServing(other)),
    }
}

/// The most of a response body a probe reads.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// A response body read up to a bound.
enum Bounded {
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// More than the bound arrived; reading stopped there.
    Truncated,
}

/// Read `body` to its end or until more than `limit` bytes of data arrived, whichever is first.
async fn read_bounded<B>(mut body: B, limit: usize) -> Result<Bounded, ProbeFailure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(protocol)?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > limit {
                    return Ok(Bounded::Truncated);
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Bounded::Complete {
        data: data.freeze(),
        trailers,
    })
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
pub const SERVING: u64 = 1;

/// A gRPC-framed `HealthCheckRequest { string service = 1; }`.
pub fn encode_check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, wire type 2 (length-delimited)
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    grpc_frame(&message)
}

/// A gRPC-framed `HealthCheckResponse { ServingStatus status = 1; }`; used by tests' servers.
pub fn encode_check_response(status: u64) -> Bytes {
    let mut message = BytesMut::new();
    message.put_u8(0x08); // field 1, wire type 0 (varint)
    put_varint(&mut message, status);
    grpc_frame(&message)
}

/// The `service` of a gRPC-framed `HealthCheckRequest`.
pub fn decode_check_request(frame: Bytes) -> Result<String, String> {
    let mut service = String::new();
    for_each_field(unframe(frame)?, |field, value| {
        if let (1, Field::Bytes(b)) = (field, value) {
            service = String::from_utf8(b.to_vec()).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    Ok(service)
}

/// The status of a gRPC-framed `HealthCheckResponse`; absent means UNKNOWN (0).
pub fn decode_check_response(frame: Bytes) -> Result<u64, String> {
    let mut status = 0;
    for_each_field(unframe(frame)?, |field, value| {
        if let (1, Field::Varint(v)) = (field, value) {
            status = v;
        }
        Ok(())
    })?;
    Ok(status)
}

fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0); // not compressed
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

fn unframe(mut frame: Bytes) -> Result<Bytes, String> {
    if frame.len() < 5 {
        return Err(format!("gRPC frame of {} bytes", frame.len()));
    }
    if frame.get_u8() != 0 {
        return Err("compressed gRPC message".to_string());
    }
    let len = frame.get_u32() as usize;
    if frame.len() < len {
        return Err(format!("gRPC frame says {len} bytes, has {}", frame.len()));
    }
    Ok(frame.split_to(len))
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn get_varint(buf: &mut Bytes) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("truncated varint".to_string());
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".to_string())
}

enum Field {
    Varint(u64),
    Bytes(Bytes),
}

/// Walk a protobuf message, handing known wire types to `visit` and skipping fixed-width ones.
fn for_each_field(
    mut msg: Bytes,
    mut visit: impl FnMut(u64, Field) -> Result<(), String>,
) -> Result<(), String> {
    while msg.has_remaining() {
        let key = get_varint(&mut msg)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => visit(field, Field::Varint(get_varint(&mut msg)?))?,
            2 => {
                let len = get_varint(&mut msg)? as usize;
                if msg.remaining() < len {
                    return Err("truncated length-delimited field".to_string());
                }
                visit(field, Field::Bytes(msg.split_to(len)))?;
            }
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                if msg.remaining() < width {
                    return Err("truncated fixed-width field".to_string());
                }
                msg.advance(width);
            }
            other => return Err(format!("unsupported wire type {other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_matches_protobuf() {
        // protoc --encode: service: "llm" → 0a 03 6c 6c 6d
        let frame = encode_check_request("llm");
        assert_eq!(&frame[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'l', b'l', b'm']);
        assert_eq!(decode_check_request(frame).unwrap(), "llm");
        // An empty service is the default value and is not encoded at all.
        assert_eq!(&encode_check_request("")[..], &[0, 0, 0, 0, 0]);
        let long = "s".repeat(200);
        assert_eq!(
            decode_check_request(encode_check_request(&long)).unwrap(),
            long
        );
    }

    #[test]
    fn response_decoding_handles_defaults_and_unknown_fields() {
        assert_eq!(decode_check_response(encode_check_response(1)), Ok(SERVING));
        assert_eq!(decode_check_response(encode_check_response(2)), Ok(2));
        assert_eq!(decode_check_response(grpc_frame(&[])), Ok(0));
        // field 2 varint, field 3 fixed32, then status.
        let msg = [0x10, 0x05, 0x1d, 1, 2, 3, 4, 0x08, 0x01];
        assert_eq!(decode_check_response(grpc_frame(&msg)), Ok(SERVING));
        assert!(decode_check_response(Bytes::from_static(&[0, 0, 0])).is_err());
        assert!(decode_check_response(grpc_frame(&[0x08])).is_err());
        assert!(decode_check_response(Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
    }

    /// A target that answers 200 with a body that never ends: the probe still decides (on the
    /// status) instead of reading until its timeout, and closes the connection.
    #[tokio::test]
    async fn an_endless_body_still_yields_a_result() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            let mut sent = 0usize;
            // Until the probe hangs up.
            while s.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 0x4000;
            }
            sent
        });
        let probe = Probe::Http {
            path: "/health".into(),
            expect: vec![(200, 299)],
        };
        // The timeout is far beyond what the probe needs; hitting it is the failure.
        let result = probe.run(addr, Duration::from_secs(60)).await;
        assert_eq!(result, Ok(()));
        let sent = server.await.unwrap();
        assert!(sent >= MAX_RESPONSE_BODY, "{sent}");
    }

    #[tokio::test]
    async fn read_bounded_stops_past_the_limit() {
        let small = Full::new(Bytes::from_static(b"abc"));
        assert!(matches!(
            read_bounded(small, 3).await,
            Ok(Bounded::Complete { data, .. }) if &data[..] == b"abc"
        ));
        let big = Full::new(Bytes::from(vec![0u8; 4]));
        assert!(matches!(read_bounded(big, 3).await, Ok(Bounded::Truncated)));
    }

    #[tokio::test]
    async fn tcp_probe_against_a_closed_port_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Probe::Tcp
            .run(addr, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeFailure::Connect(_)), "{err}");
    }
}
