//! An HTTP/3 request body as the request path reads it: DATA frames off the request stream, then
//! its trailers. A body that already ended (or whose first DATA already arrived) when the head
//! was resolved is handed over as such, so a plain GET is known empty up front and stays
//! replayable for retries and hedges, as on HTTP/1 and HTTP/2.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

pub(super) type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

/// The receiving half of a request stream, read as an `http_body::Body`.
pub struct H3Body {
    stream: RecvStream,
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

impl std::fmt::Debug for H3Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Body")
            .field("state", &self.state)
            .finish()
    }
}

/// What a request's body looks like right after its head.
pub(super) enum Probed {
    /// The stream ended with the head: no body.
    Empty,
    /// Still arriving (possibly with its first frame in hand).
    Streaming(Box<H3Body>),
}

impl H3Body {
    /// Look at the stream once without waiting: a client that sent its head with FIN has no
    /// body, and saying so up front lets the request path treat it as an empty one.
    pub(super) fn probe(mut stream: RecvStream) -> Result<Probed, h3::error::StreamError> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let first = match stream.poll_recv_data(&mut cx) {
            Poll::Ready(Ok(None)) => {
                // Trailers after no data are legal but odd; a body-less request has none.
                return Ok(Probed::Empty);
            }
            Poll::Ready(Ok(Some(mut buf))) => Some(buf.copy_to_bytes(buf.remaining())),
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

impl Body for H3Body {
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
                State::Data => match this.stream.poll_recv_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(mut buf))) => {
                        let bytes = buf.copy_to_bytes(buf.remaining());
                        if bytes.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Poll::Ready(Ok(None)) => this.state = State::Trailers,
                    Poll::Ready(Err(e)) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Trailers => {
                    let polled = this.stream.poll_recv_trailers(cx);
                    let Poll::Ready(r) = polled else {
                        return Poll::Pending;
                    };
                    this.state = State::Done;
                    return Poll::Ready(match r {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(Box::new(e))),
                    });
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
