//! A TLS origin for upstream TLS tests: rustls in front of hyper's HTTP/1.1 and HTTP/2 server,
//! optionally requiring a client certificate from a given CA. Every answer is `200` with the
//! path, the ALPN agreed and the `x-forwarded-client-cert` it got, as JSON.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::background::Background;
use super::pki::Issued;

pub struct TlsOrigin {
    pub addr: SocketAddr,
    /// Requests answered.
    pub hits: Arc<AtomicUsize>,
    /// TLS handshakes completed.
    pub handshakes: Arc<AtomicUsize>,
    _server: Background,
}

fn certs(path: &std::path::Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile_certs(&pem)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

impl TlsOrigin {
    /// Serve with `server`'s certificate; with `client_ca`, require a client certificate it
    /// signed.
    pub fn start(server: &Issued, client_ca: Option<&std::path::Path>) -> TlsOrigin {
        use rustls::pki_types::pem::PemObject;
        let chain = certs(&server.cert);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&server.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca) {
                    roots.add(c).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let handshakes2 = handshakes.clone();
        let server = Background::start(move |listener| async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).unwrap();
                let acceptor = acceptor.clone();
                let hits = hits2.clone();
                let handshakes = handshakes2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let alpn = tls
                        .get_ref()
                        .1
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let body = serde_json::json!({
                                "path": req.uri().path(),
                                "alpn": alpn,
                                "version": format!("{:?}", req.version()),
                                "xfcc": req
                                    .headers()
                                    .get("x-forwarded-client-cert")
                                    .and_then(|v| v.to_str().ok()),
                            });
                            async move {
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from(body.to_string()),
                                )))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin {
            addr: server.addr,
            hits,
            handshakes,
            _server: server,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}
