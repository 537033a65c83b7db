//! TLS termination with rustls. ALPN offers `h2` and `http/1.1`; the connection layer then speaks
//! whichever was agreed.

use std::sync::Arc;

use switchyard_config::Tls;
use tokio_rustls::TlsAcceptor;

/// Build an acceptor from PEM files; errors name the file.
pub fn acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
