//! HTTP/1 upgrades (WebSocket and friends) go through hyper's pooled client: the one transport
//! that hands the connection over once both sides switch protocols, which the inline HTTP/1
//! exchange does not do. Its connector opens TCP, then TLS for pools with `tls`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard_config::{Pool, Protocol};

use super::io::UpstreamIo;
use crate::body::RequestBody;
use crate::tls::UpstreamConnector;

pub type UpgradeClient = Client<UpstreamConnect, RequestBody>;

/// The settings that decide whether an existing client can be kept across a reload (the
/// caller gives a pool with `tls` a new one: its files may have changed).
pub fn client_key(p: &Pool) -> (Protocol, Duration, Duration, bool) {
    (
        p.protocol,
        p.connect_timeout,
        p.idle_timeout,
        p.tls.is_none(),
    )
}

pub fn build_client(p: &Pool, tls: Option<Arc<UpstreamConnector>>) -> UpgradeClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(p.connect_timeout));
    http.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(p.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if p.protocol == Protocol::Http2 {
        builder.http2_only(true);
    }
    builder.build(UpstreamConnect {
        http,
        tls,
        timeout: p.connect_timeout,
    })
}

/// TCP from hyper-util's connector, then the pool's TLS handshake when it has one.
#[derive(Clone)]
pub struct UpstreamConnect {
    http: HttpConnector,
    tls: Option<Arc<UpstreamConnector>>,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for UpstreamConnect {
    type Response = TokioIo<UpstreamIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let address = uri
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(UpstreamIo::Plain(tcp)));
            };
            let address = address.ok_or("an upstream URI names an IP:port")?;
            let stream = tokio::time::timeout(timeout, tls.handshake(tcp, address))
                .await
                .map_err(|_| "upstream TLS handshake timed out")??;
            Ok(TokioIo::new(UpstreamIo::Tls(Box::new(stream))))
        })
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let negotiated_h2 = match self {
            UpstreamIo::Plain(_) => false,
            UpstreamIo::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        };
        if negotiated_h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}
