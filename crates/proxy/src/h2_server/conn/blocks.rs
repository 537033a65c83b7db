//! Header blocks in: HEADERS and CONTINUATION, and what a whole block becomes (a new stream,
//! a request's trailers, or a refusal).

use bytes::BytesMut;
use http::{Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Block, Conn, ConnError, Result};
use crate::body::ClientBody;
use crate::h2_server::core::{reset_stream, H2Body, Stream};
use crate::h2_server::frame::{self, Head, Reason};
use crate::h2_server::hpack::{HeadError, HeadLimits, RequestHead};
use crate::h2_server::stream::{self, StreamCx};

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Conn<'a, T> {
    pub(super) fn on_headers(&mut self, head: Head, payload: &[u8]) -> Result {
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let Some(mut block) = frame::unpad(&head, payload) else {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "HEADERS padding over its length",
            ));
        };
        let mut self_dependent = false;
        if head.has(frame::PRIORITY_FLAG) {
            if block.len() < 5 {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "HEADERS priority cut short",
                ));
            }
            let dep = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) & 0x7fff_ffff;
            self_dependent = dep == head.stream;
            block = &block[5..];
        }
        let mut b = Block {
            stream: head.stream,
            end_stream: head.has(frame::END_STREAM),
            bytes: BytesMut::new(),
            self_dependent,
        };
        if head.has(frame::END_HEADERS) {
            return self.on_block(b, block);
        }
        b.bytes.extend_from_slice(block);
        self.block = Some(b);
        self.block_deadline = Some(Box::pin(tokio::time::sleep(
            self.settings.header_read_timeout,
        )));
        Ok(())
    }

    pub(super) fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result {
        let Some(mut b) = self.block.take() else {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            ));
        };
        if head.stream != b.stream {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION for another stream",
            ));
        }
        // Compressed, a block cannot need much more room than the list it decodes to; more is
        // a CONTINUATION flood (CVE-2024-27316), cut off before it is buffered.
        if b.bytes.len() + payload.len() > 2 * self.settings.max_header_bytes + 16 * 1024 {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        b.bytes.extend_from_slice(payload);
        if !head.has(frame::END_HEADERS) {
            self.block = Some(b);
            return Ok(());
        }
        self.block_deadline = None;
        let bytes = std::mem::take(&mut b.bytes);
        self.on_block(b, &bytes)
    }

    /// A whole header block: a new request, or a request's trailers.
    fn on_block(&mut self, b: Block, block: &[u8]) -> Result {
        let limits = HeadLimits {
            max_list_size: self.settings.max_header_bytes,
            max_headers: self.settings.max_headers,
        };
        let mut head = RequestHead::default();
        // Decoded in full even when the stream is refused: the table must stay in step.
        self.decoder
            .decode_with_cb(block, |name, value| head.field(&name, &value, limits))
            .map_err(|_| ConnError(Reason::COMPRESSION_ERROR, "HPACK decoding failed"))?;
        let id = b.stream;
        let mut core = self.shared.lock();
        if let Some(s) = core.streams.get_mut(&id) {
            if s.recv.end || s.reset {
                return Ok(());
            }
            // Trailers: they end the stream and carry no pseudo-headers.
            if !b.end_stream || !head.is_trailers() || head.error.is_some() {
                s.recv.error = Some("malformed trailers");
                reset_stream(&mut core, id, Reason::PROTOCOL_ERROR);
                drop(core);
                return self.local_reset();
            }
            if s.recv
                .content_length
                .is_some_and(|cl| cl != s.recv.received)
            {
                s.recv.error = Some("body length differs from content-length");
                reset_stream(&mut core, id, Reason::PROTOCOL_ERROR);
                drop(core);
                return self.local_reset();
            }
            s.recv.trailers = Some(std::mem::take(&mut head.headers));
            s.recv.end = true;
            if let Some(w) = s.recv.reader.take() {
                w.wake();
            }
            return Ok(());
        }
        if id <= self.last_id {
            // A stream already closed (a reset the peer had not seen): nothing to do.
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "client opened an even stream",
            ));
        }
        self.last_id = id;
        if self.draining {
            // Above the GOAWAY's last stream: the client retries it elsewhere.
            return Ok(());
        }
        if b.self_dependent {
            reset_stream(&mut core, id, Reason::PROTOCOL_ERROR);
            drop(core);
            return self.local_reset();
        }
        if core.streams.len() >= self.settings.max_concurrent_streams as usize {
            frame::put_rst(&mut core.out, id, Reason::REFUSED_STREAM);
            drop(core);
            return self.local_reset();
        }
        let (method, uri) = match head.finish() {
            Ok(m) => m,
            Err(HeadError::TooLarge) => {
                let max = core.peer_max_frame;
                stream::answer(
                    &mut core.out,
                    id,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    max,
                );
                if !b.end_stream {
                    frame::put_rst(&mut core.out, id, Reason::NO_ERROR);
                }
                return Ok(());
            }
            Err(HeadError::Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed HTTP/2 request");
                frame::put_rst(&mut core.out, id, Reason::PROTOCOL_ERROR);
                drop(core);
                return self.local_reset();
            }
        };
        if b.end_stream && head.content_length.is_some_and(|n| n != 0) {
            frame::put_rst(&mut core.out, id, Reason::PROTOCOL_ERROR);
            drop(core);
            return self.local_reset();
        }
        self.accepted_id = id;
        let window = core.peer_initial_window;
        let recv_window = core.stream_window;
        let stream = Stream::new(window, recv_window, b.end_stream, head.content_length);
        core.streams.insert(id, stream);
        drop(core);
        let body = if b.end_stream {
            ClientBody::Full(None)
        } else {
            ClientBody::H2(H2Body::new(self.shared.clone(), id, head.content_length))
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = head.headers;
        let scx = StreamCx {
            handle: self.handle,
            cx: self.cx,
            alt_svc: self.alt_svc,
        };
        let in_flight = self.activity.start();
        self.tasks
            .push(stream::start(&self.shared, id, req, scx, in_flight));
        Ok(())
    }
}
