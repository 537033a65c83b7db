//! The downstream HTTP/1.1 fast path: keep-alive requests, over plain TCP or TLS, parsed once
//! and answered without a general-purpose server in between.
//!
//! Most proxied traffic is the same shape: an HTTP/1.1 request with no body or a small body of
//! known length, answered with a streamed response. This loop reads heads straight into one
//! buffer, parses them with `httparse`, hands the request to the service, and writes the
//! response head and the first body bytes in one `write`. Anything else (an HTTP/2 preface,
//! `Transfer-Encoding`, `Expect`, `Upgrade`, HTTP/1.0, large bodies, heads over the limits or
//! malformed) is handed, with the bytes already read, to hyper's server for the rest of the
//! connection, so every edge case keeps hyper's behaviour and the framing guard's checks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{ClientBody, ResponseBody};
use crate::deadline::LazyDeadline;
use crate::gateway::GatewayHandle;
use crate::h1_codec::{connection_tokens, encode_chunk, encode_last_chunk};
use crate::headers::parse_decimal;
use crate::pipeline::{self, ConnContext};

/// Request bodies of known length up to this size are read whole before the request is
/// dispatched (as NGINX's `client_body_buffer_size` does); larger ones stream through hyper.
const FAST_BODY_MAX: u64 = 64 * 1024;
/// Response body frames up to this size are copied next to the head and sent in one write.
const COALESCE: usize = 16 * 1024;
const READ_CHUNK: usize = 8 * 1024;
/// Room a response head is encoded into.
const HEAD_OUT: usize = 4 * 1024;
/// Most of the write buffer a response waiting for its next body frame keeps.
const IDLE_OUT: usize = 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the fast path ended.
pub enum Outcome<T> {
    /// The connection is finished (closed by either side, or after an error).
    Closed,
    /// Hand the connection to the general server, replaying `buffered` first.
    Fallback { stream: T, buffered: Bytes },
}

/// Per-listener settings the fast path enforces.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
}

/// Serve HTTP/1.1 requests on `stream` (plain TCP, or TLS once the handshake is done) until it
/// closes or needs the general server. `alt_svc` goes on every response (HTTP/3 advertised).
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    stream: T,
    handle: &GatewayHandle,
    cx: &ConnContext,
    limits: Limits,
    shutdown: &CancellationToken,
    alt_svc: Option<&HeaderValue>,
) -> Outcome<T> {
    let mut conn = Conn {
        io: stream,
        // Both grow on first use: a connection that waits holds neither (h1_codec::read_more).
        buf: BytesMut::new(),
        out: BytesMut::new(),
        deadline: LazyDeadline::new(Instant::now() + limits.header_read_timeout),
        stop: Box::pin(shutdown.clone().cancelled_owned()),
    };
    loop {
        let head = match conn.read_head(limits).await {
            Ok(Some(head)) => head,
            Ok(None) => return Outcome::Closed,
            Err(Fallback) => return conn.fallback(),
        };
        let (req, close_requested, is_head) = match conn.build_request(head).await {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::Closed,
            Err(Fallback) => return conn.fallback(),
        };
        // Boxed: the pipeline's state is done with once the head is back, and inline it would
        // stay part of the connection's task while a response streams (issue 19).
        let mut resp = Box::pin(pipeline::handle(
            handle,
            cx,
            req,
            pipeline::Downstream::Http1,
        ))
        .await;
        if let Some(v) = alt_svc {
            resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
        }
        let close = close_requested || shutdown.is_cancelled();
        match conn.write_response(resp, is_head, close).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = conn.io.shutdown().await;
                return Outcome::Closed;
            }
        }
    }
}

/// The request cannot take the fast path.
struct Fallback;

struct Conn<T> {
    io: T,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The response being written.
    out: BytesMut,
    /// When the head being read (or the body of a small request) must have arrived.
    deadline: LazyDeadline,
    /// Process shutdown, registered once for the connection's life.
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// Where a parsed head's parts sit in the read buffer.
struct Head {
    len: usize,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body_len: u64,
    close: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    fn fallback(self) -> Outcome<T> {
        Outcome::Fallback {
            stream: self.io,
            buffered: self.buf.freeze(),
        }
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::read_buf::read_more(&mut self.io, cx, &mut self.buf, READ_CHUNK)
    }

    /// Read until a whole head is buffered. `Ok(None)`: the client went away (or stayed silent
    /// past the header-read timeout, or the gateway is draining an idle connection).
    async fn read_head(&mut self, limits: Limits) -> Result<Option<Head>, Fallback> {
        let mut armed = false;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&self.buf, limits)? {
                    return Ok(Some(head));
                }
            }
            if !armed {
                armed = true;
                self.deadline
                    .set(Some(Instant::now() + limits.header_read_timeout));
            }
            enum Next {
                Read(io::Result<usize>),
                Stop,
            }
            // Draining: an idle connection closes now; one mid-head gets its request served.
            let idle = self.buf.is_empty();
            let next = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_read_more(cx) {
                    return Poll::Ready(Next::Read(r));
                }
                if self.deadline.poll(cx).is_ready() {
                    return Poll::Ready(Next::Stop);
                }
                if idle && self.stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Stop);
                }
                Poll::Pending
            })
            .await;
            match next {
                Next::Read(Ok(0) | Err(_)) | Next::Stop => return Ok(None),
                Next::Read(Ok(_)) => {}
            }
        }
    }

    /// Consume the head (and a small body) from the buffer and make the service's request.
    async fn build_request(
        &mut self,
        head: Head,
    ) -> Result<Option<(Request<ClientBody>, bool, bool)>, Fallback> {
        // Read the whole body first: it is small and of known length.
        while (self.buf.len() as u64) < head.len as u64 + head.body_len {
            let read = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_read_more(cx) {
                    return Poll::Ready(Some(r));
                }
                if self.deadline.poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match read {
                Some(Ok(0) | Err(_)) | None => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
        self.buf.advance(head.len);
        let body = if head.body_len == 0 {
            ClientBody::Full(None)
        } else {
            ClientBody::Full(Some(self.buf.split_to(head.body_len as usize).freeze()))
        };
        let is_head = head.method == Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers;
        Ok(Some((req, head.close, is_head)))
    }

    /// Write the response; returns whether the connection can take another request.
    async fn write_response(
        &mut self,
        resp: Response<ResponseBody>,
        is_head: bool,
        mut close: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = resp.into_parts();
        close |= has_close(&parts.headers);
        let raw = match &mut body {
            ResponseBody::Upstream(u) => u.take_raw_head(),
            ResponseBody::Full(_) => None,
        };
        let status = parts.status;
        let no_body = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let out = &mut self.out;
        out.clear();
        out.reserve(HEAD_OUT);
        put_status_line(out, status);
        // One pass over the headers also finds what the framing needs (no hashed lookups).
        let (mut has_date, mut has_length) = (false, false);
        if let Some(raw) = raw {
            // The upstream's headers as they came (hop-by-hop ones already left out).
            has_date = raw.has_date;
            has_length = raw.has_length;
            for (name, value) in raw.iter() {
                put_header(out, name, value);
            }
        }
        for (name, value) in &parts.headers {
            if name == TRANSFER_ENCODING || name == CONNECTION {
                continue;
            }
            has_date |= name == DATE;
            has_length |= name == CONTENT_LENGTH;
            put_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !has_date {
            put_header(out, b"date", &date_now());
        }
        let chunked = if has_length || no_body {
            false
        } else if let Some(n) = body.size_hint().exact() {
            out.put_slice(b"content-length: ");
            out.put_slice(n.to_string().as_bytes());
            out.put_slice(b"\r\n");
            false
        } else {
            out.put_slice(b"transfer-encoding: chunked\r\n");
            true
        };
        if close {
            out.put_slice(b"connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        if no_body {
            drop(body);
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            return Ok(!close);
        }
        // Body frames: those ready now join the head in one write; later ones go out as they
        // arrive, so a streamed event reaches the client as soon as the upstream sends it.
        loop {
            let ready =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match ready {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    if !self.out.is_empty() {
                        self.io.write_all(&self.out).await?;
                        self.out.clear();
                    }
                    // Under TLS, records can sit in the session until flushed (a no-op on TCP).
                    self.io.flush().await?;
                    // A stream waiting for its next token keeps no head-sized buffer; a
                    // token's chunk needs a small one (issue 19).
                    if self.out.capacity() > IDLE_OUT {
                        self.out = BytesMut::new();
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            match frame {
                None => {
                    if chunked {
                        encode_last_chunk(&mut self.out, None);
                    }
                    break;
                }
                Some(Err(_)) => {
                    // The upstream broke off mid-body: the client must see the message end
                    // early, which only closing the connection says.
                    if !self.out.is_empty() {
                        let _ = self.io.write_all(&self.out).await;
                    }
                    let _ = self.io.flush().await;
                    return Ok(false);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.put_data(data, chunked).await?,
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                            encode_last_chunk(&mut self.out, Some(&trailers));
                            break;
                        }
                    }
                },
            }
        }
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await?;
        Ok(!close)
    }

    async fn put_data(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() <= COALESCE {
            if chunked {
                encode_chunk(&mut self.out, &data);
            } else {
                self.out.put_slice(&data);
            }
            return Ok(());
        }
        if chunked {
            self.out
                .put_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        self.io.write_all(&self.out).await?;
        self.out.clear();
        self.io.write_all(&data).await?;
        if chunked {
            self.out.put_slice(b"\r\n");
        }
        Ok(())
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Parse a request head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Err(Fallback)` when the request is not one the fast path takes.
fn parse_head(buf: &[u8], limits: Limits) -> Result<Option<Head>, Fallback> {
    if buf.len() >= 3 && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
        return Err(Fallback);
    }
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 64];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(Fallback);
            }
            return Ok(None);
        }
        Err(_) => return Err(Fallback),
    };
    if len > limits.max_header_bytes
        || req.headers.len() > limits.max_headers
        || req.version != Some(1)
    {
        return Err(Fallback);
    }
    let method =
        Method::from_bytes(req.method.ok_or(Fallback)?.as_bytes()).map_err(|_| Fallback)?;
    let uri = http::Uri::try_from(req.path.ok_or(Fallback)?).map_err(|_| Fallback)?;
    // Room for what the gateway adds on the way up (x-forwarded-for, x-forwarded-proto,
    // x-request-id, a load-report request): growing a map rehashes it.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    let mut body_len = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = crate::h1_codec::header_name(h.name.as_bytes()).ok_or(Fallback)?;
        if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
            return Err(Fallback);
        }
        if name == CONTENT_LENGTH {
            let n = parse_decimal(h.value).ok_or(Fallback)?;
            if body_len.is_some() || n > FAST_BODY_MAX {
                return Err(Fallback);
            }
            body_len = Some(n);
        } else if name == CONNECTION {
            let (c, _, others) = connection_tokens(h.value);
            close |= c;
            if others {
                // `upgrade`, or headers named as hop-by-hop: hyper and the service's
                // hop-by-hop stripping handle those.
                return Err(Fallback);
            }
            // Only `close`/`keep-alive`: consumed here, never forwarded.
            continue;
        } else if name == KEEP_ALIVE || name == PROXY_CONNECTION {
            continue;
        }
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Fallback)?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        len,
        method,
        uri,
        headers,
        body_len: body_len.unwrap_or(0),
        close,
    }))
}

fn has_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| connection_tokens(v.as_bytes()).0)
}

fn put_status_line(out: &mut BytesMut, status: StatusCode) {
    if status == StatusCode::OK {
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// The `Date` header value, formatted once per second per thread.
pub(crate) fn date_now() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, value) = c.get();
        if at == secs {
            return value;
        }
        let mut v = [0u8; 29];
        let s = httpdate::fmt_http_date(now);
        v.copy_from_slice(&s.as_bytes()[..29]);
        c.set((secs, v));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 8192,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn plain_requests_take_the_fast_path() {
        let h = parse_head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", limits())
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b=1");
        assert_eq!(h.body_len, 0);
        assert!(!h.close);
        let h = parse_head(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            limits(),
        )
        .ok()
        .flatten()
        .unwrap();
        assert_eq!((h.body_len, h.close, h.len), (5, true, 57));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n", limits()),
            Ok(None)
        ));
    }

    #[test]
    fn everything_else_falls_back() {
        for raw in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"PRI * HT",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                parse_head(raw, limits()).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(parse_head(big.as_bytes(), limits()).is_err());
    }

    #[test]
    fn date_is_an_http_date() {
        let d = date_now();
        let s = std::str::from_utf8(&d).unwrap();
        assert!(s.ends_with(" GMT"), "{s}");
        assert!(httpdate::parse_http_date(s).is_ok());
    }
}
