//! Upstreams for the tcp listener tests: echo servers (optionally reading a PROXY v2 header
//! first) and TLS servers with a certificate of their own name, each counting its connections
//! and stopped when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A running upstream; its accept task ends when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<F, Fut>(handle: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    Upstream {
        addr,
        accepted,
        task,
    }
}

/// Echoes every byte; on the client's EOF finishes echoing and closes its write side.
pub async fn echo() -> Upstream {
    serve(|mut s: TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// What a PROXY v2 header said: (source, destination).
pub type ProxyAddresses = (SocketAddr, SocketAddr);

/// Reads a PROXY v2 header (TCP over IPv4 only), reports its addresses, then echoes.
pub async fn proxy_v2_echo() -> (
    Upstream,
    mpsc::UnboundedReceiver<Result<ProxyAddresses, String>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = serve(move |mut s: TcpStream| {
        let tx = tx.clone();
        async move {
            let mut head = [0u8; 28];
            if s.read_exact(&mut head).await.is_err() {
                let _ = tx.send(Err("closed before a header".into()));
                return;
            }
            let parsed = parse_v4(&head);
            let ok = parsed.is_ok();
            let _ = tx.send(parsed);
            if ok {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        }
    })
    .await;
    (up, rx)
}

fn parse_v4(h: &[u8; 28]) -> Result<ProxyAddresses, String> {
    if &h[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
        return Err(format!("bad signature {:?}", &h[..12]));
    }
    if h[12] != 0x21 || h[13] != 0x11 || h[14..16] != [0, 12] {
        return Err(format!("bad version/family/length {:?}", &h[12..16]));
    }
    let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Ok((
        SocketAddr::from((ip(&h[16..20]), port(&h[24..26]))),
        SocketAddr::from((ip(&h[20..24]), port(&h[26..28]))),
    ))
}

/// A TLS server whose certificate names `name`; after the handshake it writes
/// `served by NAME\n` and closes.
pub async fn tls_named(name: &'static str) -> Upstream {
    // The name as the subject's CN too, so that `openssl s_client`'s `subject=` line shows it.
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key_pair).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve(move |s: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(mut tls) = acceptor.accept(s).await {
                let _ = tls
                    .write_all(format!("served by {name}\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            }
        }
    })
    .await
}

/// Connect with TCP_NODELAY.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Send `msg` on an open connection and read exactly its echo.
pub async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(super::WAIT, s.read_exact(&mut back))
        .await
        .expect("echo within the wait")
        .expect("echo read");
    assert_eq!(back, msg);
}

/// One whole connection: send `msg`, half-close, read everything until the other side closes.
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = connect(addr).await;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(msg).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let (_, n) = tokio::time::timeout(super::WAIT, async { tokio::join!(send, recv) })
        .await
        .expect("round trip within the wait");
    n.unwrap();
    back
}
