//! The ADS gRPC service on its accept loop: HTTP/2 only, TCP_NODELAY, each stream handled by a
//! task of its own ([`crate::sotw`] or [`crate::delta`]) that ends when the client goes.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::plane::ControlPlane;

/// Largest request message: an Envoy's subscription names and its NACK detail fit many times.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// ADS streams one connection may hold (Envoy opens one).
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Responses queued for a slow client before its stream task waits.
const RESPONSE_QUEUE: usize = 4;

struct Ads {
    plane: Arc<ControlPlane>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(crate::sotw::run(
            self.plane.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(crate::delta::run(
            self.plane.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Connections served at once (each Envoy holds one); past it, accepting waits for one to close.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Serve ADS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, plane: Arc<ControlPlane>) {
    let service = AggregatedDiscoveryServiceServer::new(Ads { plane })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "xds accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}
