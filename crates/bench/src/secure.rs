//! `https://` targets: HTTP/2 over TLS (ALPN `h2`) or HTTP/3 over QUIC, each over one
//! connection per target that every request of the run multiplexes on, as a browser or an SDK
//! with a shared client does. That one connection is the point: under packet loss, TCP holds
//! every stream behind a lost segment, QUIC only the stream it belonged to.
//!
//! The server's certificate is checked against `--cacert` (the benchmark's own CA); there is no
//! system trust store and no "insecure" mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H3Recv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A request that failed before its response head; `connect` when no connection could be made.
#[derive(Debug)]
pub struct Failed {
    pub connect: bool,
}

/// A reply body from either protocol.
pub enum ReplyBody {
    Hyper(hyper::body::Incoming),
    H3(Box<H3Recv>),
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H3(s) => s.poll_recv_data(cx).map(|r| match r {
                Ok(Some(mut buf)) => Some(Ok(Frame::data(buf.copy_to_bytes(buf.remaining())))),
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

enum Conn {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H3(H3Send, quinn::Connection),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H2(s) => s.is_closed(),
            Conn::H3(_, q) => q.close_reason().is_some(),
        }
    }
}

/// The TLS client of a run: one connection per target authority, opened on first use and
/// again after it closes.
pub struct Secure {
    http3: bool,
    tls: Arc<rustls::ClientConfig>,
    quic: Option<quinn::Endpoint>,
    conns: tokio::sync::Mutex<HashMap<Authority, Conn>>,
}

impl Secure {
    pub fn new(http3: bool, cacert: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(cacert)
            .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", cacert.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "--cacert {}: no certificates",
            cacert.display()
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![if http3 {
            b"h3".to_vec()
        } else {
            b"h2".to_vec()
        }];
        let tls = Arc::new(tls);
        let quic = if http3 {
            let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone())?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            Some(endpoint)
        } else {
            None
        };
        Ok(Self {
            http3,
            tls,
            quic,
            conns: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub async fn request(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<ReplyBody>, Failed> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(Failed { connect: true })?;
        let conn = self.connection(&authority).await?;
        match conn {
            Conn::H2(mut send) => send
                .send_request(req)
                .await
                .map(|r| r.map(ReplyBody::Hyper))
                .map_err(|_| Failed { connect: false }),
            Conn::H3(mut send, _) => {
                let (parts, body) = req.into_parts();
                let body = http_body_util::BodyExt::collect(body)
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let closed = |_| Failed { connect: false };
                let mut stream = send
                    .send_request(http::Request::from_parts(parts, ()))
                    .await
                    .map_err(closed)?;
                if !body.is_empty() {
                    stream.send_data(body).await.map_err(closed)?;
                }
                stream.finish().await.map_err(closed)?;
                let (_, mut recv) = stream.split();
                let resp = recv.recv_response().await.map_err(closed)?;
                Ok(resp.map(|()| ReplyBody::H3(Box::new(recv))))
            }
        }
    }

    async fn connection(&self, authority: &Authority) -> Result<Conn, Failed> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(authority).filter(|c| !c.is_closed()) {
            return Ok(match c {
                Conn::H2(s) => Conn::H2(s.clone()),
                Conn::H3(s, q) => Conn::H3(s.clone(), q.clone()),
            });
        }
        let fail = |_| Failed { connect: true };
        let port = authority.port_u16().unwrap_or(443);
        // IPv4 first: `localhost` names ::1 as well, where a test server is rarely bound (and
        // the QUIC endpoint here is bound to IPv4).
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((authority.host(), port))
            .await
            .map_err(fail)?
            .collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        let addr = *addrs.first().ok_or(Failed { connect: true })?;
        let name = rustls::pki_types::ServerName::try_from(authority.host().to_string())
            .map_err(|_| Failed { connect: true })?;
        let conn = if let (true, Some(quic)) = (self.http3, &self.quic) {
            let q = quic
                .connect(addr, authority.host())
                .map_err(|_| Failed { connect: true })?
                .await
                .map_err(|_| Failed { connect: true })?;
            let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(q.clone()))
                .await
                .map_err(|_| Failed { connect: true })?;
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            Conn::H3(send, q)
        } else {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
            tcp.set_nodelay(true).map_err(fail)?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(fail)?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .adaptive_window(true)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|_| Failed { connect: true })?;
            tokio::spawn(conn);
            Conn::H2(send)
        };
        let out = match &conn {
            Conn::H2(s) => Conn::H2(s.clone()),
            Conn::H3(s, q) => Conn::H3(s.clone(), q.clone()),
        };
        conns.insert(authority.clone(), conn);
        Ok(out)
    }
}
