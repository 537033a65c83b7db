//! An HTTP/3 message body read as an `http_body::Body`: DATA frames off a request stream, then
//! its trailers. One type for both sides: a client's request body (a server request stream)
//! and an HTTP/3 upstream's response body (a client request stream).
//!
//! A request body that already ended (or whose first DATA already arrived) when the head was
//! resolved is handed over as such, so a plain GET is known empty up front and stays replayable
//! for retries and hedges, as on HTTP/1 and HTTP/2.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

pub(super) type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The receiving half of an HTTP/3 request stream, on either side.
pub trait RecvHalf: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>>;
    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, BoxError>>;
}

macro_rules! recv_half {
    ($t:ty) => {
        impl RecvHalf for $t {
            fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
                self.poll_recv_data(cx).map(|r| match r {
                    Ok(Some(mut buf)) => Ok(Some(buf.copy_to_bytes(buf.remaining()))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(Box::new(e) as BoxError),
                })
            }
            fn poll_trailers(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<HeaderMap>, BoxError>> {
                self.poll_recv_trailers(cx)
                    .map_err(|e| Box::new(e) as BoxError)
            }
        }
    };
}

recv_half!(h3::server::RequestStream<h3_quinn::RecvStream, Bytes>);
recv_half!(h3::client::RequestStream<h3_quinn::RecvStream, Bytes>);

/// The receiving half of a request stream, read as an `http_body::Body`.
pub struct H3Body<S = RecvStream> {
    stream: S,
    /// A first DATA frame read while probing for an empty body.
    first: Option<Bytes>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

impl<S> std::fmt::Debug for H3Body<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Body")
            .field("state", &self.state)
            .finish()
    }
}

/// What a request's body looks like right after its head.
pub(super) enum Probed<S> {
    /// The stream ended with the head: no body.
    Empty,
    /// Still arriving (possibly with its first frame in hand).
    Streaming(Box<H3Body<S>>),
}

impl<S: RecvHalf> H3Body<S> {
    /// A body read from its first frame on.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            first: None,
            state: State::Data,
        }
    }

    /// Look at the stream once without waiting: a client that sent its head with FIN has no
    /// body, and saying so up front lets the request path treat it as an empty one.
    pub(super) fn probe(mut stream: S) -> Result<Probed<S>, BoxError> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let first = match stream.poll_data(&mut cx) {
            // Trailers after no data are legal but odd; a body-less request has none.
            Poll::Ready(Ok(None)) => return Ok(Probed::Empty),
            Poll::Ready(Ok(Some(bytes))) => Some(bytes),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => None,
        };
        Ok(Probed::Streaming(Box::new(Self {
            stream,
            first,
            state: State::Data,
        })))
    }
}

impl<S: RecvHalf> Body for H3Body<S> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            match this.state {
                State::Data => match this.stream.poll_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(bytes))) => {
                        if bytes.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Poll::Ready(Ok(None)) => this.state = State::Trailers,
                    Poll::Ready(Err(e)) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                State::Trailers => {
                    let Poll::Ready(r) = this.stream.poll_trailers(cx) else {
                        return Poll::Pending;
                    };
                    this.state = State::Done;
                    return Poll::Ready(r.transpose().map(|r| r.map(Frame::trailers)));
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
