//! A small HTTP/1.1 client for the admin API: one GET of a JSON document, or one GET that stays
//! open as a server-sent event stream.
//!
//! Each request has a connection of its own. Both commands make one request and keep it, or
//! reconnect after a failure, so a pool would add state for no saved round trip. Every wait on
//! the network is bounded except the wait for the next event, which belongs to the caller: a tap
//! with narrow filters may rightly see nothing for minutes. Errors name the address, the path and
//! the step that failed, because the first thing someone running `switchyard top` against the
//! wrong port needs to read is which port and why.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::sse::{SseError, SseParser, MAX_EVENT_BYTES};

/// The admin listener's address when none is given.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// The largest JSON document `get_json` reads.
const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// How much of an error response's body goes into the error message.
const MAX_ERROR_BODY_BYTES: usize = 512;

#[derive(Debug)]
pub struct ClientError {
    /// The admin address as the user gave it.
    pub admin: String,
    /// The path and query of the request, when the failure belongs to one.
    pub path: Option<String>,
    pub failure: Failure,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    BadAddress(String),
    Connect(String),
    ConnectTimeout(Duration),
    Handshake(String),
    Send(String),
    HeadTimeout(Duration),
    Status { status: StatusCode, body: String },
    NotEventStream(String),
    Body(String),
    BodyTimeout(Duration),
    DocumentTooLarge(usize),
    Event(SseError),
    Json(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "admin {}", self.admin)?;
        if let Some(path) = &self.path {
            write!(f, ", GET {path}")?;
        }
        f.write_str(": ")?;
        match &self.failure {
            Failure::BadAddress(why) => {
                write!(
                    f,
                    "not an admin address (HOST:PORT or http://HOST:PORT): {why}"
                )
            }
            Failure::Connect(why) => write!(f, "cannot connect: {why}"),
            Failure::ConnectTimeout(t) => write!(f, "no connection within {t:?}"),
            Failure::Handshake(why) => write!(f, "HTTP handshake failed: {why}"),
            Failure::Send(why) => write!(f, "request failed: {why}"),
            Failure::HeadTimeout(t) => write!(f, "no response within {t:?}"),
            Failure::Status { status, body } if body.is_empty() => write!(f, "status {status}"),
            Failure::Status { status, body } => write!(f, "status {status}: {body}"),
            Failure::NotEventStream(ct) => {
                write!(f, "expected a text/event-stream response, got `{ct}`")
            }
            Failure::Body(why) => write!(f, "reading the body failed: {why}"),
            Failure::BodyTimeout(t) => write!(f, "the body did not arrive within {t:?}"),
            Failure::DocumentTooLarge(n) => write!(f, "the document is larger than {n} bytes"),
            Failure::Event(e) => write!(f, "bad event stream: {e}"),
            Failure::Json(why) => write!(f, "not the expected JSON: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An error and its causes on one line: hyper's own messages are terse ("connection error")
/// and put the useful part in `source()`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Where the admin API is, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Admin {
    given: String,
    host: String,
    port: u16,
    authority: String,
    pub connect_timeout: Duration,
    /// From the request sent to the response head; for a document, again for its body.
    pub head_timeout: Duration,
    pub max_event_bytes: usize,
}

impl Admin {
    /// `HOST:PORT`, `http://HOST:PORT` or `http://HOST:PORT/`; IPv6 hosts in brackets.
    pub fn parse(given: &str) -> Result<Admin, ClientError> {
        let fail = |why: &str| ClientError {
            admin: given.to_owned(),
            path: None,
            failure: Failure::BadAddress(why.to_owned()),
        };
        let trimmed = given.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("http://{trimmed}")
        };
        let uri: Uri = with_scheme.parse().map_err(|e| fail(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(fail("the admin API is plain http"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(fail("give the address only, without a path"));
        }
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err(fail("no host"));
        };
        let Some(port) = uri.port_u16() else {
            return Err(fail("no port"));
        };
        Ok(Admin {
            given: given.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            connect_timeout: Duration::from_secs(3),
            head_timeout: Duration::from_secs(5),
            max_event_bytes: MAX_EVENT_BYTES,
        })
    }

    /// The address as the user gave it.
    pub fn as_str(&self) -> &str {
        &self.given
    }

    fn error(&self, path: &str, failure: Failure) -> ClientError {
        ClientError {
            admin: self.given.clone(),
            path: Some(path.to_owned()),
            failure,
        }
    }

    /// Fetches `path` (with its query) and reads the body as `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.send(path, "application/json").await?;
        let read = tokio::time::timeout(self.head_timeout, read_capped(body, MAX_DOCUMENT_BYTES));
        let bytes = match read.await {
            Err(_) => return Err(self.error(path, Failure::BodyTimeout(self.head_timeout))),
            Ok(Err(failure)) => return Err(self.error(path, failure)),
            Ok(Ok(bytes)) => bytes,
        };
        serde_json::from_slice(&bytes).map_err(|e| self.error(path, Failure::Json(e.to_string())))
    }

    /// Opens `path` (with its query) as an event stream.
    pub async fn stream(&self, path: &str) -> Result<EventStream, ClientError> {
        let body = self.send(path, "text/event-stream").await?;
        Ok(EventStream {
            admin: self.clone(),
            path: path.to_owned(),
            body: Some(body),
            parser: SseParser::new(self.max_event_bytes),
        })
    }

    /// Connects, sends the GET and waits for a successful head of the expected type.
    async fn send(&self, path: &str, accept: &str) -> Result<Incoming, ClientError> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => return Err(self.error(path, Failure::ConnectTimeout(self.connect_timeout))),
            Ok(Err(e)) => return Err(self.error(path, Failure::Connect(e.to_string()))),
            Ok(Ok(stream)) => stream,
        };
        // Events are small and each one is wanted now; the request is a single write anyway.
        let _ = stream.set_nodelay(true);
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| Failure::Handshake(chain(&e)))?;
            // Ends by itself once the response body and the sender are dropped.
            tokio::spawn(connection);
            let request = Request::get(path)
                .header(HOST, &self.authority)
                .header(ACCEPT, accept)
                .body(Empty::<Bytes>::new())
                .map_err(|e| Failure::Send(e.to_string()))?;
            sender
                .send_request(request)
                .await
                .map_err(|e| Failure::Send(chain(&e)))
        };
        let response = match tokio::time::timeout(self.head_timeout, exchange).await {
            Err(_) => return Err(self.error(path, Failure::HeadTimeout(self.head_timeout))),
            Ok(Err(failure)) => return Err(self.error(path, failure)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body = tokio::time::timeout(
                self.head_timeout,
                read_capped(response.into_body(), MAX_ERROR_BODY_BYTES),
            )
            .await;
            let body = match body {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim().to_owned(),
                // Too long, too slow or broken: the status says enough.
                _ => String::new(),
            };
            return Err(self.error(path, Failure::Status { status, body }));
        }
        if accept == "text/event-stream" {
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            if !content_type.starts_with("text/event-stream") {
                return Err(self.error(path, Failure::NotEventStream(content_type)));
            }
        }
        Ok(response.into_body())
    }
}

/// Reads a whole body of at most `limit` bytes.
async fn read_capped(mut body: Incoming, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Body(chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(Failure::DocumentTooLarge(limit));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    admin: Admin,
    path: String,
    /// `None` once the body has ended or failed.
    body: Option<Incoming>,
    parser: SseParser,
}

impl EventStream {
    /// The next event's data; `Ok(None)` when the server ended the stream. Cancel-safe: a
    /// dropped call loses no data.
    pub async fn next_event(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            let failure = match body.frame().await {
                None => {
                    self.body = None;
                    continue;
                }
                Some(Err(e)) => Failure::Body(chain(&e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match self.parser.push(&data) {
                        Ok(()) => continue,
                        Err(e) => Failure::Event(e),
                    },
                    Err(_trailers) => continue,
                },
            };
            self.body = None;
            return Err(self.admin.error(&self.path, failure));
        }
    }
}

/// Appends `key=value` to a query string, percent-encoding the value.
pub fn push_query(query: &mut String, key: &str, value: &str) {
    query.push(if query.is_empty() { '?' } else { '&' });
    query.push_str(key);
    query.push('=');
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            query.push(char::from(byte));
        } else {
            query.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
