//! A response body fed by a task through a bounded channel: the admin API's event streams and
//! `switchyard epp`'s gRPC responses. When the client goes away the body is dropped, the
//! sender's next send fails, and the task ends.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

pub struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Frame<Bytes>>) -> Self {
        Self(rx)
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}
