//! TLS termination with rustls. ALPN offers `h2` and `http/1.1`; the connection layer then speaks
//! whichever was agreed.
//!
//! Certificates rotate without a restart: a listener holds its rustls config in an `ArcSwap`,
//! each new connection takes the current one, and [`ReloadableTls::reload`] (on every config
//! reload and whenever the certificate or key file changes) re-reads both files. A read that
//! fails — a missing file, a key that does not match, a half-written PEM — keeps the previous
//! certificate serving: an expired-soon certificate beats a listener that refuses every
//! handshake. Connections already open keep the certificate they were accepted with.
//!
//! With `client_ca` the listener asks for client certificates and verifies them against it
//! (Envoy's `DownstreamTlsContext` with a validation context): `require_client_cert` refuses the
//! handshake of a client without one; otherwise such a client is let in without an identity. The
//! CA bundle is re-read with the certificate.
//!
//! Resumption: TLS 1.3 (and 1.2) session tickets are on, sealed by one [`super::ticketer`] per
//! listener that outlives certificate reloads (a reload does not force every client back to a
//! full handshake). rustls' default, without a ticketer, is a stateful cache of only 256
//! sessions per listener: past 256 recent clients, resumption silently turned into full
//! handshakes.

use std::sync::Arc;

use arc_swap::ArcSwap;
use switchyard_config::Tls;
use tokio_rustls::TlsAcceptor;

/// Build an acceptor from PEM files; errors name the file.
pub fn acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
    server_config(tls, &new_ticketer()?).map(TlsAcceptor::from)
}

type Ticketer = Arc<dyn rustls::server::ProducesTickets>;

fn new_ticketer() -> Result<Ticketer, String> {
    super::ticketer().map_err(|e| format!("session tickets: {e}"))
}

fn server_config(tls: &Tls, ticketer: &Ticketer) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = {
        let mut r = std::io::BufReader::new(
            std::fs::File::open(&tls.cert).map_err(|e| format!("{}: {e}", tls.cert.display()))?,
        );
        rustls_pemfile::certs(&mut r)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", tls.cert.display()))?
    };
    if certs.is_empty() {
        return Err(format!("{}: no certificates found", tls.cert.display()));
    }
    let key = {
        let mut r = std::io::BufReader::new(
            std::fs::File::open(&tls.key).map_err(|e| format!("{}: {e}", tls.key.display()))?,
        );
        rustls_pemfile::private_key(&mut r)
            .map_err(|e| format!("{}: {e}", tls.key.display()))?
            .ok_or_else(|| format!("{}: no private key found", tls.key.display()))?
    };
    let provider = super::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let mut digest = std::collections::hash_map::DefaultHasher::new();
            for cert in super::client::read_certs(ca, &mut digest)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let mut verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            if !tls.require_client_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = ticketer.clone();
    Ok(Arc::new(config))
}

/// A listener's TLS settings and the rustls config currently served.
pub struct ReloadableTls {
    spec: Tls,
    current: ArcSwap<rustls::ServerConfig>,
    /// Kept across reloads: tickets issued before one still resume after it.
    ticketer: Ticketer,
    /// Bumped on every successful reload: the QUIC endpoint (which holds its own copy of the
    /// config) compares it to know when to take the new certificate.
    generation: std::sync::atomic::AtomicU64,
}

impl ReloadableTls {
    /// Read the certificate and key; errors name the file.
    pub fn load(spec: &Tls) -> Result<Self, String> {
        let ticketer = new_ticketer()?;
        Ok(Self {
            spec: spec.clone(),
            current: ArcSwap::new(server_config(spec, &ticketer)?),
            ticketer,
            generation: Default::default(),
        })
    }

    /// The acceptor for a new connection: the certificate current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// The rustls config served now, and its generation.
    pub fn current(&self) -> (Arc<rustls::ServerConfig>, u64) {
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        (self.current.load_full(), generation)
    }

    /// Whether the config changed since `generation`.
    pub fn changed_since(&self, generation: u64) -> bool {
        self.generation.load(std::sync::atomic::Ordering::Acquire) != generation
    }

    /// The files this listener reads.
    pub fn spec(&self) -> &Tls {
        &self.spec
    }

    /// Re-read the files and serve what they hold from the next connection on. On error the
    /// previous certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.spec, &self.ticketer)?;
        self.current.store(fresh);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}
