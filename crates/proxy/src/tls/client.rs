//! The gateway as a TLS client of a pool's endpoints (a pool's `tls`, Envoy's
//! `UpstreamTlsContext`).
//!
//! [`client_config`] is the one place a pool's settings become a rustls `ClientConfig`; every
//! transport that speaks TLS upstream calls it with its own ALPN (`http/1.1`, `h2`, `h3`). The
//! files are read when a config generation is built, so a reload picks up rotated certificates;
//! [`UpstreamConnector`] remembers a digest of what it read, so connections opened under the
//! previous generation are kept across a reload that changed nothing.
//!
//! Endpoints are IP addresses: without `sni` the IP itself is the server name, sent as no SNI
//! (RFC 6066 forbids IP literals there) and checked against the certificate's IP SANs, as
//! rustls does for an IP `ServerName`. `verify: false` accepts any certificate chain but still
//! checks the handshake's signatures, so the peer holds the key of the certificate it showed:
//! the connection is encrypted, not authenticated.
//!
//! A failed handshake is a connect failure to the request path (retried, counted against the
//! endpoint), answered 502 with type `upstream_tls_error`; [`TlsCause`] names why, and
//! [`TlsErrorLog`] logs each cause once per pool, endpoint and config generation.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use switchyard_config::UpstreamTls;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A rustls client config for `spec`, offering `spec.alpn` or else `default_alpn`. Errors name
/// the file that could not be read or used.
pub fn client_config(
    spec: &UpstreamTls,
    default_alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, String> {
    build(
        spec,
        default_alpn,
        &mut std::collections::hash_map::DefaultHasher::new(),
        &Arc::default(),
    )
}

/// A pool without a client certificate: sends none, but remembers that an upstream asked. A
/// TLS 1.3 server refuses a missing certificate only after the client's side of the handshake
/// has finished, with an alert the client often never reads (the server's close resets the
/// connection under the request just written); this is how such a reset is told from any other.
#[derive(Debug)]
struct NoClientCert(Arc<AtomicBool>);

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _acceptable_issuers: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// A connection an upstream dropped before answering, after asking for the client certificate
/// the pool does not have.
#[derive(Debug)]
pub struct ClientCertificateMissing;

impl std::fmt::Display for ClientCertificateMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the upstream asked for a client certificate (the pool has none) and closed the connection",
        )
    }
}

impl std::error::Error for ClientCertificateMissing {}

fn build(
    spec: &UpstreamTls,
    default_alpn: &[&[u8]],
    digest: &mut impl Hasher,
    asked: &Arc<AtomicBool>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    spec.hash(digest);
    default_alpn.hash(digest);
    let provider = super::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&spec.ca, spec.verify) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca, digest)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        (None, true) => {
            return Err("`verify: true` needs `ca`, the CA bundle to trust".into());
        }
        (_, false) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let mut config = match (&spec.cert, &spec.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, digest)?;
            let key_der = read_key(key, digest)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
        _ => builder.with_client_cert_resolver(Arc::new(NoClientCert(asked.clone()))),
    };
    config.alpn_protocols = match &spec.alpn {
        Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None => default_alpn.iter().map(|p| p.to_vec()).collect(),
    };
    Ok(Arc::new(config))
}

fn read_file(path: &Path, digest: &mut impl Hasher) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    bytes.hash(digest);
    Ok(bytes)
}

/// Certificates from a PEM file; an empty bundle is an error.
pub(crate) fn read_certs(
    path: &Path,
    digest: &mut impl Hasher,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path, digest)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates found", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path, digest: &mut impl Hasher) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_file(path, digest)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no private key found", path.display()))
}

/// `verify: false`: any chain for any name, but the handshake signature must verify against
/// the certificate shown.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A pool's TLS client, built once per config generation: the config, the server name, and a
/// digest of the settings and the files' contents read.
pub struct UpstreamConnector {
    connector: TlsConnector,
    sni: Option<ServerName<'static>>,
    digest: u64,
    /// An upstream asked for a client certificate this pool does not have.
    asked_for_cert: Arc<AtomicBool>,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("sni", &self.sni)
            .field("digest", &self.digest)
            .finish()
    }
}

impl UpstreamConnector {
    pub fn new(spec: &UpstreamTls, default_alpn: &[&[u8]]) -> Result<Self, String> {
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        let asked_for_cert = Arc::default();
        let config = build(spec, default_alpn, &mut digest, &asked_for_cert)?;
        let sni = match &spec.sni {
            Some(name) => {
                Some(ServerName::try_from(name.clone()).map_err(|e| format!("sni `{name}`: {e}"))?)
            }
            None => None,
        };
        Ok(Self {
            connector: TlsConnector::from(config),
            sni,
            digest: digest.finish(),
            asked_for_cert,
        })
    }

    /// A connection that failed before its first answer (HTTP/1: a fresh connection's first
    /// exchange; HTTP/2: a stream that got no response), read in the light of what upstreams
    /// asked: once one wanted the client certificate this pool lacks, such a failure is taken
    /// for its refusal (see [`NoClientCert`]).
    pub fn explain_early_failure(&self, e: io::Error) -> io::Error {
        if self.asked_for_cert.load(Ordering::Relaxed) && TlsCause::find(&e).is_none() {
            io::Error::new(io::ErrorKind::ConnectionAborted, ClientCertificateMissing)
        } else {
            e
        }
    }

    /// Whether `a` and `b` were built from the same settings and file contents (or are both
    /// absent), so connections made by either are interchangeable.
    pub fn same(a: Option<&Self>, b: Option<&Self>) -> bool {
        a.map(|c| c.digest) == b.map(|c| c.digest)
    }

    /// The configured name, or the endpoint's IP address.
    pub fn server_name(&self, address: SocketAddr) -> ServerName<'static> {
        self.sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()))
    }

    /// The handshake over an open connection to `address`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        address: SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name(address), tcp).await
    }

    /// The same TLS client for the pool's health probes.
    pub fn probe_tls(&self) -> switchyard_health::ProbeTls {
        switchyard_health::ProbeTls {
            connector: self.connector.clone(),
            server_name: self.sni.clone(),
            digest: self.digest,
        }
    }

    /// The rustls config, for a transport that drives its own handshake.
    pub fn config(&self) -> &Arc<rustls::ClientConfig> {
        self.connector.config()
    }
}

/// The ALPN a transport offers unless the pool's `alpn` says otherwise.
pub fn default_alpn(protocol: switchyard_config::Protocol) -> &'static [&'static [u8]] {
    match protocol {
        switchyard_config::Protocol::Http1 => &[b"http/1.1"],
        switchyard_config::Protocol::Http2 => &[b"h2"],
        switchyard_config::Protocol::Http3 => &[b"h3"],
    }
}

/// The pool's TLS clients: one for traffic, one for health probes (whose protocol may differ
/// from the pool's: an HTTP check speaks HTTP/1.1, a gRPC check HTTP/2). Errors name the pool's
/// file that failed.
pub fn pool_connectors(pool: &switchyard_config::Pool) -> Result<Option<PoolClients>, String> {
    let Some(spec) = &pool.tls else {
        return Ok(None);
    };
    let traffic = UpstreamConnector::new(spec, default_alpn(pool.protocol))?;
    let probe = match &pool.health {
        None => None,
        Some(h) if h.grpc.is_some() => Some(UpstreamConnector::new(spec, &[b"h2"])?.probe_tls()),
        Some(h) if h.http.is_some() => {
            Some(UpstreamConnector::new(spec, &[b"http/1.1"])?.probe_tls())
        }
        Some(_) => Some(traffic.probe_tls()),
    };
    if !spec.verify {
        tracing::warn!(pool = %pool.name, "tls.verify is off: upstream certificates are not checked");
    }
    Ok(Some(PoolClients {
        traffic: Arc::new(traffic),
        probe,
    }))
}

/// A pool's TLS clients, from [`pool_connectors`].
pub struct PoolClients {
    pub traffic: Arc<UpstreamConnector>,
    /// For active health checks (none without `health`).
    pub probe: Option<switchyard_health::ProbeTls>,
}

/// Why a TLS connection to an upstream failed, as the `reason` label and the error's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsCause {
    /// Not signed by a CA in `ca` (or a bad signature in the chain).
    Untrusted,
    /// Valid, but for another name than `sni` (or the endpoint's IP).
    NameMismatch,
    Expired,
    NotYetValid,
    /// Another problem with the upstream's certificate (encoding, purpose, revocation).
    BadCertificate,
    /// The upstream wants a client certificate and the pool has none (or not one it accepts).
    ClientCertificateRejected,
    /// No ALPN protocol in common.
    NoApplicationProtocol,
    /// The upstream ended the handshake with another alert.
    PeerAlert,
    /// Anything else: not TLS on the other side, a protocol violation.
    Handshake,
}

impl TlsCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "certificate_untrusted",
            Self::NameMismatch => "certificate_name_mismatch",
            Self::Expired => "certificate_expired",
            Self::NotYetValid => "certificate_not_yet_valid",
            Self::BadCertificate => "certificate_invalid",
            Self::ClientCertificateRejected => "client_certificate_rejected",
            Self::NoApplicationProtocol => "no_application_protocol",
            Self::PeerAlert => "peer_alert",
            Self::Handshake => "handshake_failure",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Untrusted => "upstream TLS: certificate not signed by a trusted CA",
            Self::NameMismatch => "upstream TLS: certificate not valid for the server name",
            Self::Expired => "upstream TLS: certificate expired",
            Self::NotYetValid => "upstream TLS: certificate not valid yet",
            Self::BadCertificate => "upstream TLS: invalid certificate",
            Self::ClientCertificateRejected => {
                "upstream TLS: the upstream requires a client certificate it accepts"
            }
            Self::NoApplicationProtocol => "upstream TLS: no ALPN protocol in common",
            Self::PeerAlert => "upstream TLS: the upstream refused the handshake",
            Self::Handshake => "upstream TLS: handshake failed",
        }
    }

    fn of(e: &rustls::Error) -> Self {
        use CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer | C::BadSignature => Self::Untrusted,
                C::NotValidForName | C::NotValidForNameContext { .. } => Self::NameMismatch,
                C::Expired | C::ExpiredContext { .. } => Self::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => Self::NotYetValid,
                _ => Self::BadCertificate,
            },
            rustls::Error::AlertReceived(a) => match a {
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied => Self::ClientCertificateRejected,
                AlertDescription::NoApplicationProtocol => Self::NoApplicationProtocol,
                _ => Self::PeerAlert,
            },
            rustls::Error::NoApplicationProtocol => Self::NoApplicationProtocol,
            _ => Self::Handshake,
        }
    }

    /// The TLS cause anywhere in `err`'s chain (through `io::Error`s, whose `source` skips the
    /// error they wrap), with rustls' own description of it.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<(Self, String)> {
        let mut next = Some(err);
        for _ in 0..16 {
            let e = next?;
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some((Self::of(tls), tls.to_string()));
            }
            if let Some(missing) = e.downcast_ref::<ClientCertificateMissing>() {
                return Some((Self::ClientCertificateRejected, missing.to_string()));
            }
            next = match e.downcast_ref::<io::Error>() {
                Some(io) => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        None
    }
}

/// Logs each TLS failure cause once per endpoint for the life of a config generation: a broken
/// certificate fails every request, and one line per request would bury everything else.
#[derive(Default)]
pub struct TlsErrorLog {
    seen: Mutex<HashSet<(SocketAddr, TlsCause)>>,
}

/// Past this many distinct (endpoint, cause) pairs the set starts over, so it stays bounded
/// whatever the endpoints do.
const MAX_REMEMBERED: usize = 1024;

impl TlsErrorLog {
    /// Whether `(address, cause)` is new, remembering it.
    pub fn first(&self, address: SocketAddr, cause: TlsCause) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        seen.insert((address, cause))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_found_through_io_errors() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::Expired);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        let (cause, text) = TlsCause::find(&io).expect("found");
        assert_eq!(cause, TlsCause::Expired);
        assert!(text.contains("Expired"), "{text}");
        let wrapped = io::Error::other(io);
        assert_eq!(
            TlsCause::find(&wrapped).map(|c| c.0),
            Some(TlsCause::Expired)
        );
        let plain = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(TlsCause::find(&plain).is_none());
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(
            TlsCause::find(&alert).map(|c| c.0),
            Some(TlsCause::ClientCertificateRejected)
        );
    }

    #[test]
    fn the_log_remembers_each_cause_once_and_stays_bounded() {
        let log = TlsErrorLog::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(log.first(a, TlsCause::Expired));
        assert!(!log.first(a, TlsCause::Expired));
        assert!(log.first(a, TlsCause::Untrusted));
        for port in 0..(MAX_REMEMBERED as u16 + 10) {
            log.first(SocketAddr::from(([127, 0, 0, 2], port)), TlsCause::Expired);
        }
        assert!(log.seen.lock().unwrap().len() <= MAX_REMEMBERED);
    }

    #[test]
    fn verify_needs_a_ca_and_missing_files_are_named() {
        let spec = UpstreamTls {
            sni: None,
            ca: None,
            cert: None,
            key: None,
            verify: true,
            alpn: None,
        };
        assert!(client_config(&spec, &[b"h2"]).is_err());
        let spec = UpstreamTls {
            verify: false,
            ..spec
        };
        let config = client_config(&spec, &[b"h2"]).expect("builds");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let spec = UpstreamTls {
            ca: Some("/nonexistent/ca.pem".into()),
            verify: true,
            alpn: Some(vec!["h3".into()]),
            ..spec
        };
        let e = client_config(&spec, &[b"h2"]).unwrap_err();
        assert!(e.starts_with("/nonexistent/ca.pem:"), "{e}");
    }
}
