//! The HTTP/1.1 wire format for upstream exchanges: request heads out, response heads and
//! bodies in.
//!
//! A proxy forwards heads it has already parsed, so it needs no general-purpose client: this
//! writes the head in one buffer, parses the response head once with `httparse`, and decodes
//! the body (length, chunked or close-delimited) straight out of the read buffer as `Bytes`
//! slices of it, with no copy and no task or channel between the socket and the request.

use std::fmt;
use std::io;

use crate::headers::parse_decimal;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// Response heads larger than this are refused (NGINX's and Envoy's defaults are 4–64 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers a response head or trailer block may carry.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;

/// The upstream broke the protocol; the connection is not reused.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid upstream response: {}", self.0)
    }
}
impl std::error::Error for ProtocolError {}

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body and no framing header (GET and friends).
    None,
    Length(u64),
    Chunked,
}

/// Write a request head. `content-length` and `transfer-encoding` from `headers` are replaced
/// by `framing`. `host` is already in `headers`: the request-rewrite stage puts an HTTP/2
/// client's `:authority` there.
pub fn encode_request_head(
    out: &mut BytesMut,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: ReqFraming,
) {
    out.reserve(64 + target.len() + headers.len() * 32);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.put_slice(b"content-length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

/// Append `n` in decimal without going through `fmt`.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// Write one chunk of a chunked body: size line, data, CRLF.
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 20);
    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Write the last chunk, with trailers if any.
pub fn encode_last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Empty when the headers are kept raw (`raw`).
    pub headers: HeaderMap,
    /// The headers as they came, without a map: every response except one whose `Connection`
    /// names other headers. `head` is set by the caller once it splits the head off its buffer.
    pub raw: Option<Box<RawHeaders>>,
    /// Bytes of the read buffer the head took.
    pub len: usize,
    /// `Connection` tokens. A `Connection` header that names only these is consumed here and
    /// left out of `headers` (it is hop-by-hop), as are `Keep-Alive` and `Proxy-Connection`.
    pub close: bool,
    pub keep_alive: bool,
    /// A `Transfer-Encoding` header is present.
    pub transfer_encoding: bool,
    /// The last `Transfer-Encoding` coding is `chunked`.
    pub chunked: bool,
    /// The `Content-Length` values, read as they were parsed: absent, one length, or an error
    /// for a malformed or conflicting value (which only matters without `Transfer-Encoding`).
    pub content_length: Result<Option<u64>, ProtocolError>,
}

/// Parse a response head from the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialised slots: zeroing 128 of them would cost more than parsing a typical head.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(ProtocolError("response head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProtocolError("too many response headers"))
        }
        Err(_) => return Err(ProtocolError("malformed response head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(ProtocolError("response head too large"));
    }
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ProtocolError("bad status code"))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut close = false;
    let mut keep_alive = false;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut other_tokens = false;
    let mut content_length = Ok(None);
    // Boxed: the head moves through several futures on its way to the client.
    let mut raw = Box::new(RawHeaders {
        spans: Vec::with_capacity(resp.headers.len()),
        ..RawHeaders::default()
    });
    // Offsets into `buf`: the head is later split off the read buffer as it is.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = content_length.and_then(|prev| add_length(prev, h.value));
            raw.has_length = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let (c, k, others) = connection_tokens(h.value);
            close |= c;
            keep_alive |= k;
            other_tokens |= others;
            continue;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        } else if is_hop_by_hop_name(name) {
            continue;
        } else {
            raw.has_date |= name.eq_ignore_ascii_case(b"date");
            raw.scan.observe(name, h.value);
        }
        let (n, v) = (offset(name), offset(h.value));
        raw.spans.push(HeaderSpan {
            name: (n, n + name.len() as u32),
            value: (v, v + h.value.len() as u32),
        });
    }
    if transfer_encoding {
        // The body is re-framed downstream; a length next to chunked coding is a smuggler's.
        raw.spans.retain(|s| {
            !buf[s.name.0 as usize..s.name.1 as usize].eq_ignore_ascii_case(b"content-length")
        });
        raw.has_length = false;
    }
    // `Connection` naming other headers makes them hop-by-hop too: those responses get a map,
    // and the request path's hop-by-hop stripping.
    let (headers, raw) = if other_tokens {
        (header_map(resp.headers)?, None)
    } else {
        (HeaderMap::new(), Some(raw))
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        raw,
        len,
        close,
        keep_alive,
        transfer_encoding,
        chunked,
        content_length,
    }))
}

fn is_hop_by_hop_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"keep-alive")
        || name.eq_ignore_ascii_case(b"proxy-connection")
        || name.eq_ignore_ascii_case(b"te")
        || name.eq_ignore_ascii_case(b"upgrade")
}

/// Where one header's name and value sit in a raw head.
#[derive(Debug, Clone, Copy)]
struct HeaderSpan {
    name: (u32, u32),
    value: (u32, u32),
}

/// A response's headers as the upstream sent them, hop-by-hop ones left out. A downstream
/// HTTP/1 connection writes them back as they are, so no header map is built (nor hashed, nor
/// dropped) for a response nothing on the way reads header by header; other writers get one
/// from [`RawHeaders::to_map`].
#[derive(Debug, Default)]
pub struct RawHeaders {
    /// The response head as read (status line included), once split off the read buffer.
    head: Bytes,
    spans: Vec<HeaderSpan>,
    pub has_date: bool,
    pub has_length: bool,
    /// What the request path reads from these headers, gathered while parsing.
    pub scan: crate::headers::ResponseScan,
    /// Headers the gateway adds on the way down.
    pub added: Vec<(HeaderName, HeaderValue)>,
}

impl RawHeaders {
    /// The head the spans point into, as split off the read buffer.
    pub fn set_head(&mut self, head: Bytes) {
        self.head = head;
    }

    /// The forwarded headers, then the added ones, as (name, value) bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let head = &self.head[..];
        self.spans
            .iter()
            .map(move |s| {
                (
                    &head[s.name.0 as usize..s.name.1 as usize],
                    &head[s.value.0 as usize..s.value.1 as usize],
                )
            })
            .chain(
                self.added
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            )
    }

    /// Drops every header of this name, forwarded or added (a route's response filter).
    pub fn remove_all(&mut self, name: &HeaderName) {
        let head = &self.head;
        let want = name.as_str().as_bytes();
        self.spans
            .retain(|s| !head[s.name.0 as usize..s.name.1 as usize].eq_ignore_ascii_case(want));
        self.added.retain(|(n, _)| n != name);
        if *name == http::header::DATE {
            self.has_date = false;
        }
    }

    /// Adds a header after the forwarded ones.
    pub fn push(&mut self, name: HeaderName, value: HeaderValue) {
        if name == http::header::DATE {
            self.has_date = true;
        }
        self.added.push((name, value));
    }

    /// The same headers as a map, for writers that need one (HTTP/2, hyper's server).
    pub fn to_map(&self) -> HeaderMap {
        // Room for the request id and a few more the gateway adds afterwards: no regrowth.
        let mut map = HeaderMap::with_capacity(self.spans.len() + self.added.len() + 4);
        for s in &self.spans {
            let name = &self.head[s.name.0 as usize..s.name.1 as usize];
            // A slice of the head, not a copy: no allocation per value (h2 responses build
            // this map for every request).
            let value = self.head.slice(s.value.0 as usize..s.value.1 as usize);
            // Both were checked by the parser; a name or value `http` refuses is left out.
            if let (Some(name), Ok(value)) =
                (header_name(name), HeaderValue::from_maybe_shared(value))
            {
                map.append(name, value);
            }
        }
        for (name, value) in &self.added {
            map.append(name.clone(), value.clone());
        }
        map
    }
}

/// Fold one `Content-Length` value (a list, as some servers send) into the length so far.
fn add_length(prev: Option<u64>, value: &[u8]) -> Result<Option<u64>, ProtocolError> {
    let mut length = prev;
    for part in value.split(|b| *b == b',') {
        let n = parse_decimal(part).ok_or(ProtocolError("content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ProtocolError("conflicting content-length"));
        }
        length = Some(n);
    }
    Ok(length)
}

/// The tokens of a `Connection` value: (`close`, `keep-alive`, anything else).
pub fn connection_tokens(value: &[u8]) -> (bool, bool, bool) {
    // The usual values, without splitting.
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return (false, true, false);
    }
    if value.eq_ignore_ascii_case(b"close") {
        return (true, false, false);
    }
    let (mut close, mut keep_alive, mut others) = (false, false, false);
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        } else if !token.is_empty() {
            others = true;
        }
    }
    (close, keep_alive, others)
}

/// A header name from raw bytes, through a small per-thread cache: a proxy sees the same few
/// dozen names over and over, and parsing one (case folding, the standard-name table, an
/// allocation for custom names) costs several times a cache probe.
pub fn header_name(raw: &[u8]) -> Option<HeaderName> {
    use std::cell::RefCell;
    const SLOTS: usize = 256;
    const MAX_CACHED: usize = 48;
    /// Raw name bytes and the parsed name, in slots by a cheap hash of the bytes.
    type Slots = [Option<(Box<[u8]>, HeaderName)>; SLOTS];
    thread_local! {
        static CACHE: RefCell<Slots> = const { RefCell::new([const { None }; SLOTS]) };
    }
    let (&first, &last) = (raw.first()?, raw.last()?);
    if raw.len() > MAX_CACHED {
        return HeaderName::from_bytes(raw).ok();
    }
    let slot = (raw.len() * 31 + usize::from(first) * 7 + usize::from(last) * 3) % SLOTS;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((key, name)) = &cache[slot] {
            if **key == *raw {
                return Some(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        cache[slot] = Some((raw.into(), name.clone()));
        Some(name)
    })
}

fn header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, ProtocolError> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = header_name(h.name.as_bytes()).ok_or(ProtocolError("header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| ProtocolError("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// How a response body is delimited, and so whether the connection can carry another exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the connection ends with the body.
    Close,
}

/// The framing of a response (RFC 9112 §6.3), and whether the connection stays open after it.
pub fn response_framing(
    method: &Method,
    head: &mut ResponseHead,
) -> Result<(BodyFraming, bool), ProtocolError> {
    let mut keep_alive = match head.version {
        Version::HTTP_10 => head.keep_alive && !head.close,
        _ => !head.close,
    };
    let status = head.status.as_u16();
    if *method == Method::HEAD || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((BodyFraming::Empty, keep_alive));
    }
    if head.transfer_encoding {
        // Transfer-Encoding wins over Content-Length, and a message carrying both is one a
        // smuggler made: serve it, but never reuse the connection it came on.
        if !matches!(head.content_length, Ok(None)) {
            head.headers.remove(CONTENT_LENGTH);
            keep_alive = false;
        }
        return Ok(if head.chunked {
            (BodyFraming::Chunked, keep_alive)
        } else {
            (BodyFraming::Close, false)
        });
    }
    Ok(match head.content_length? {
        Some(0) => (BodyFraming::Empty, keep_alive),
        Some(n) => (BodyFraming::Length(n), keep_alive),
        None => (BodyFraming::Close, false),
    })
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What the chunked decoder produced from the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// More bytes are needed.
    NeedMore,
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// Decode the next piece of a chunked body from `buf`, advancing `state`.
pub fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
    loop {
        match *state {
            Chunked::Size => {
                // The limit holds however the line was cut into reads: a line is refused when
                // its CRLF cannot end within `MAX_CHUNK_LINE` bytes, whether the CRLF is here
                // yet or not (the scan stops there too).
                let Some(eol) = find_crlf(&buf[..buf.len().min(MAX_CHUNK_LINE)]) else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err(ProtocolError("chunk size line too long"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                let line = &buf[..eol];
                let digits = line
                    .iter()
                    .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                    .map_or(line, |end| &line[..end]);
                let size = parse_hex(digits).ok_or(ProtocolError("chunk size"))?;
                buf.advance(eol + 2);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (left as usize).min(buf.len());
                let data = buf.split_to(n).freeze();
                *state = if left == n as u64 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n as u64)
                };
                return Ok(Decoded::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ProtocolError("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Decoded::End);
                }
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut slots) {
                    // As for the chunk line, a block too large is refused whether it came
                    // whole or in pieces.
                    Ok(httparse::Status::Complete((len, parsed))) if len <= MAX_HEAD_BYTES => {
                        let trailers = header_map(parsed)?;
                        buf.advance(len);
                        return Ok(Decoded::Trailers(trailers));
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {
                        return Ok(Decoded::NeedMore)
                    }
                    _ => return Err(ProtocolError("malformed trailers")),
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    s.iter().try_fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16)?;
        Some(n * 16 + u64::from(d))
    })
}

#[cfg(test)]
#[path = "h1_codec_tests.rs"]
mod tests;
