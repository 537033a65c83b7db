//! HTTP/1 upgrades (WebSocket and friends) go through hyper's pooled client: the one transport
//! that hands the connection over once both sides switch protocols, which the inline HTTP/1
//! exchange does not do.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use switchyard_config::{Pool, Protocol};

use crate::body::RequestBody;

pub type UpgradeClient = Client<HttpConnector, RequestBody>;

/// The settings that decide whether an existing client can be kept across a reload.
pub fn client_key(p: &Pool) -> (Protocol, Duration, Duration) {
    (p.protocol, p.connect_timeout, p.idle_timeout)
}

pub fn build_client(p: &Pool) -> UpgradeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(p.connect_timeout));
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(p.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if p.protocol == Protocol::Http2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}
