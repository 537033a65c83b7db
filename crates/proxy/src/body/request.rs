//! A client's request body on its way in and upstream: streamed with the route's size limit, or
//! held (bounded) so it can be replayed for a retry or a hedge.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_request_body`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body exceeds max_request_body")
    }
}
impl std::error::Error for BodyTooLarge {}

/// A client's request body as the listener hands it over: hyper's stream, an HTTP/2 or HTTP/3
/// request stream, or a small body the HTTP/1 fast path (`h1_server.rs`) read whole with the
/// head.
#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    H2(crate::h2_server::H2Body),
    H3(Box<crate::h3::H3Body>),
    Full(Option<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(i) => Pin::new(i).poll_frame(cx).map_err(Into::into),
            Self::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H3(b) => Pin::new(b.as_mut()).poll_frame(cx),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(i) => i.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
            Self::H3(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(i) => i.size_hint(),
            Self::H2(b) => b.size_hint(),
            Self::H3(b) => b.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A client's body as it reaches the request path: still streaming, or already read (to route
/// on the model it names).
#[derive(Debug)]
pub enum InBody {
    Incoming(ClientBody),
    Buffered(Bytes),
}

impl InBody {
    /// The streaming body; only called on the `Incoming` variant.
    pub fn into_incoming(self) -> ClientBody {
        match self {
            Self::Incoming(i) => i,
            Self::Buffered(_) => unreachable!("buffered bodies are handled before streaming"),
        }
    }
}

/// A client's request body on its way upstream: streamed (and cut off at the route's limit),
/// or held in memory so it can be sent again on a retry.
#[derive(Debug)]
pub enum RequestBody {
    Stream { inner: ClientBody, remaining: u64 },
    Buffered(Option<Bytes>),
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: u64) -> Self {
        Self::Stream {
            inner,
            remaining: limit,
        }
    }

    /// Read the whole body (at most `limit` bytes) so it can be replayed. Only for bodies the
    /// retry policy allows to keep (small and of known size).
    pub async fn buffer(inner: ClientBody, limit: u64) -> Result<Self, BoxError> {
        use http_body_util::BodyExt;
        let bytes = Self::new(inner, limit).collect().await?.to_bytes();
        Ok(Self::Buffered(Some(bytes)))
    }

    /// The whole body, when it was buffered.
    pub fn buffered(&self) -> Option<Bytes> {
        match self {
            Self::Buffered(b) => Some(b.clone().unwrap_or_default()),
            Self::Stream { .. } => None,
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    /// A fresh copy of a buffered body (cheap: `Bytes` is reference-counted).
    pub fn replay(&self) -> Self {
        match self {
            Self::Buffered(b) => Self::Buffered(b.clone()),
            Self::Stream { .. } => unreachable!("only buffered bodies are replayed"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream { inner, remaining } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                Poll::Ready(match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                            *remaining -= len;
                        }
                        Some(Ok(frame))
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Self::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream { inner, .. } => inner.size_hint(),
        }
    }
}
