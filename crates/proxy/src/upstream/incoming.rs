//! An upstream response body, whichever transport carried it: hyper's (HTTP/2, upgrades) or an
//! HTTP/3 request stream. (Inline HTTP/1 bodies come off their connection instead.)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::h3::H3ResponseBody;
use crate::body::BoxError;

#[derive(Debug)]
pub enum UpstreamIncoming {
    Hyper(hyper::body::Incoming),
    H3(Box<H3ResponseBody>),
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H3(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::H3(b) => b.size_hint(),
        }
    }
}
