//! The load side: hold N streams through a proxy and time every chunk.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::stats::Summary;

/// What `streams load` does (its command-line flags).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadSpec {
    /// The stream's URL through the proxy (http:// or https://).
    #[arg(long)]
    pub url: String,
    /// Streams to hold open.
    #[arg(long)]
    pub streams: usize,
    /// Use HTTP/2 (h2c for http://, ALPN h2 for https://).
    #[arg(long)]
    pub http2: bool,
    /// HTTP/2: streams per connection.
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    /// PEM CA bundle for https:// URLs.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// How long to wait for every stream to deliver its first chunk.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub ramp_timeout: Duration,
    /// Settle time after `ready`, before the window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub settle: Duration,
    /// Measurement window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub window: Duration,
    /// A gap between two chunks of one stream longer than this is a stall.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub stall_after: Duration,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// The result line.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub streams: usize,
    /// Streams that delivered a first chunk before the ramp timeout.
    pub ready: usize,
    /// Streams that could not be opened (connect, TLS, status other than 200).
    pub failed: usize,
    /// Why streams failed to open, by reason (status code or error).
    pub errors: std::collections::BTreeMap<String, usize>,
    /// Streams that ended (EOF or error) before the client closed them.
    pub cut: usize,
    /// Streams with a gap between chunks longer than `--stall-after` after `ready`, including
    /// a stream silent at the end of the window.
    pub stalled: usize,
    pub max_gap_ms: f64,
    pub ramp_s: f64,
    pub window_s: f64,
    /// Chunks received in the window.
    pub chunks: u64,
    pub chunks_per_s: f64,
    /// Origin send → client receive, for chunks received in the window, in ms.
    pub latency: Summary,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd)]
enum Phase {
    Ramp,
    Settle,
    Window,
    Done,
}

/// Shared by every stream task (one thread: `Rc` and cells).
struct State {
    phase: Cell<Phase>,
    ready: Cell<usize>,
    failed: Cell<usize>,
    errors: RefCell<std::collections::BTreeMap<String, usize>>,
    cut: Cell<usize>,
    chunks: Cell<u64>,
    latencies_us: RefCell<Vec<u32>>,
    /// Per stream: when it last delivered a chunk, and whether it has stalled.
    last: RefCell<Vec<(Option<Instant>, bool)>>,
    max_gap: Cell<Duration>,
    stall_after: Duration,
}

impl State {
    fn fail(&self, n: usize, reason: String) {
        self.failed.set(self.failed.get() + n);
        *self.errors.borrow_mut().entry(reason).or_default() += n;
    }

    fn on_chunks(&self, stream: usize, sent_ns: impl Iterator<Item = u64>) {
        let now = Instant::now();
        let now_ns = super::now_ns();
        let phase = self.phase.get();
        let mut last = self.last.borrow_mut();
        let (prev, stalled) = &mut last[stream];
        match *prev {
            None => self.ready.set(self.ready.get() + 1),
            Some(prev) if phase >= Phase::Settle => {
                let gap = now - prev;
                if gap > self.max_gap.get() {
                    self.max_gap.set(gap);
                }
                if gap > self.stall_after && !*stalled {
                    *stalled = true;
                }
            }
            Some(_) => {}
        }
        *prev = Some(now);
        if phase == Phase::Window {
            let mut lat = self.latencies_us.borrow_mut();
            for ns in sent_ns {
                lat.push((now_ns.saturating_sub(ns) / 1000).min(u32::MAX as u64) as u32);
                self.chunks.set(self.chunks.get() + 1);
            }
        }
    }
}

/// Run the whole measurement.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    let local = tokio::task::LocalSet::new();
    local.run_until(run_local(spec)).await
}

async fn run_local(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    let target = Target::parse(&spec)?;
    let state = Rc::new(State {
        phase: Cell::new(Phase::Ramp),
        ready: Cell::new(0),
        failed: Cell::new(0),
        errors: RefCell::default(),
        cut: Cell::new(0),
        chunks: Cell::new(0),
        latencies_us: RefCell::new(Vec::new()),
        last: RefCell::new(vec![(None, false); spec.streams]),
        max_gap: Cell::new(Duration::ZERO),
        stall_after: spec.stall_after,
    });
    let connects = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let started = Instant::now();
    let per_conn = if spec.http2 {
        spec.per_connection.max(1)
    } else {
        1
    };
    let mut first = 0;
    while first < spec.streams {
        let ids = first..(first + per_conn).min(spec.streams);
        first = ids.end;
        let (target, state, connects) = (target.clone(), state.clone(), connects.clone());
        tokio::task::spawn_local(async move {
            let permit = connects.acquire().await;
            let n = ids.len();
            match target.open(n).await {
                Ok(senders) => {
                    drop(permit);
                    for (id, sender) in ids.zip(senders) {
                        tokio::task::spawn_local(hold(sender, target.clone(), id, state.clone()));
                    }
                }
                Err(e) => state.fail(n, format!("open: {e:#}")),
            }
        });
    }
    let deadline = started + spec.ramp_timeout;
    while state.ready.get() + state.failed.get() + state.cut.get() < spec.streams
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp = started.elapsed();
    println!("ready {}", state.ready.get());
    state.phase.set(Phase::Settle);
    tokio::time::sleep(spec.settle).await;
    println!("window-start");
    state.phase.set(Phase::Window);
    let window_start = Instant::now();
    tokio::time::sleep(spec.window).await;
    state.phase.set(Phase::Done);
    let window = window_start.elapsed();
    println!("window-end");
    let end = Instant::now();
    let mut stalled = 0;
    for (last, was_stalled) in state.last.borrow().iter() {
        let silent = last.is_some_and(|t| end - t > spec.stall_after);
        if *was_stalled || silent {
            stalled += 1;
        }
    }
    let mut lat = state.latencies_us.take();
    let chunks = state.chunks.get();
    Ok(LoadReport {
        streams: spec.streams,
        ready: state.ready.get(),
        failed: state.failed.get(),
        errors: state.errors.take(),
        cut: state.cut.get(),
        stalled,
        max_gap_ms: state.max_gap.get().as_secs_f64() * 1000.0,
        ramp_s: ramp.as_secs_f64(),
        window_s: window.as_secs_f64(),
        chunks,
        chunks_per_s: chunks as f64 / window.as_secs_f64(),
        latency: Summary::of_micros(&mut lat),
    })
}

/// One stream: send the request, then read chunks until it ends or the run does.
async fn hold(mut sender: Sender, target: Target, id: usize, state: Rc<State>) {
    // HTTP/1.1 in origin form with `host`; HTTP/2 in absolute form, whose authority hyper
    // sends as `:authority` (a `host` beside it is refused by some servers).
    let req = if target.http2 {
        Request::get(target.uri.clone())
    } else {
        Request::get(target.path.as_str()).header(http::header::HOST, target.authority.as_str())
    };
    let Ok(req) = req.body(Empty::<Bytes>::new()) else {
        return;
    };
    let resp = match sender.send(req).await {
        Ok(r) if r.status() == http::StatusCode::OK => r,
        Ok(r) => return state.fail(1, format!("status {}", r.status().as_u16())),
        Err(e) => return state.fail(1, format!("send: {e}")),
    };
    let mut body = resp.into_body();
    let mut events = Events::default();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let sent = events.push(data);
                    if !sent.is_empty() {
                        state.on_chunks(id, sent.into_iter());
                    }
                }
            }
            Some(Err(_)) | None => {
                if state.phase.get() != Phase::Done {
                    state.cut.set(state.cut.get() + 1);
                }
                return;
            }
        }
    }
}

/// Send times parsed out of SSE `data: <ns>` events, across frame boundaries.
#[derive(Default)]
struct Events {
    carry: Vec<u8>,
}

impl Events {
    fn push(&mut self, data: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let joined;
        let bytes: &[u8] = if self.carry.is_empty() {
            data
        } else {
            self.carry.extend_from_slice(data);
            joined = std::mem::take(&mut self.carry);
            &joined
        };
        let mut rest = bytes;
        while let Some(end) = find(rest, b"\n\n") {
            let event = &rest[..end];
            if let Some(at) = find(event, b"data: ") {
                let digits = &event[at + 6..];
                let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
                if let Some(ns) = std::str::from_utf8(&digits[..n])
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    out.push(ns);
                }
            }
            rest = &rest[end + 2..];
        }
        // An event split over frames; bounded so a peer without blank lines cannot grow it.
        if rest.len() <= 64 * 1024 {
            self.carry.extend_from_slice(rest);
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

type Send1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type Send2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

enum Sender {
    H1(Send1),
    H2(Send2),
}

impl Sender {
    async fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> hyper::Result<http::Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

#[derive(Clone)]
struct Target {
    uri: Uri,
    path: String,
    authority: String,
    host: String,
    port: u16,
    http2: bool,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Target {
    fn parse(spec: &LoadSpec) -> anyhow::Result<Self> {
        let uri: Uri = spec.url.parse().context("--url")?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("--url must be http:// or https://"),
        };
        let authority = uri.authority().context("--url has no host")?.clone();
        let host = authority.host().to_string();
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let cacert = spec.cacert.as_ref().context("https:// needs --cacert")?;
            let config = client_tls(cacert, spec.http2)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        Ok(Self {
            uri,
            path,
            authority: authority.to_string(),
            host,
            port,
            http2: spec.http2,
            tls,
        })
    }

    /// One connection carrying `n` streams (1 on HTTP/1.1).
    async fn open(&self, n: usize) -> anyhow::Result<Vec<Sender>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                self.handshake(TokioIo::new(tls), n).await
            }
            None => self.handshake(TokioIo::new(tcp), n).await,
        }
    }

    async fn handshake<T>(&self, io: TokioIo<T>, n: usize) -> anyhow::Result<Vec<Sender>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.http2 {
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await?;
            tokio::task::spawn_local(conn);
            Ok((0..n).map(|_| Sender::H2(send.clone())).collect())
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::task::spawn_local(conn);
            Ok(vec![Sender::H1(send)])
        }
    }
}

fn client_tls(cacert: &std::path::Path, http2: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(cacert).with_context(|| format!("--cacert {}", cacert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_frames() {
        let mut e = Events::default();
        assert_eq!(
            e.push(b"data: 00000000000000000007 xx\n\ndata: 0000"),
            vec![7]
        );
        assert_eq!(e.push(b"0000000000000009\n\n"), vec![9]);
        assert!(e.push(b"").is_empty());
    }
}
