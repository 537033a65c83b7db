//! Reading the server name out of a TLS ClientHello without terminating TLS (SNI passthrough):
//! the bytes are only looked at, and all of them are forwarded unchanged to the endpoint, which
//! completes the handshake with the client itself.
//!
//! Untrusted input, so the read is bounded in size ([`MAX_CLIENT_HELLO`], as Envoy's
//! tls_inspector) and in time (the caller's timeout), and the parser never indexes past what it
//! checked. A ClientHello split across several TLS records is reassembled. Anything that is not
//! a TLS handshake, or a ClientHello without a host name, is forwarded with no server name (the
//! listener's default pool), as HAProxy's `req.ssl_sni` is then empty.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Bytes read while looking for the end of the ClientHello; past it the connection is refused.
/// A ClientHello with post-quantum key shares is about 2 KiB; 16 KiB is one full TLS record.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A TLS handshake whose ClientHello has not fully arrived.
    Incomplete,
    /// A complete ClientHello, with its host name (lower-cased) if it names one.
    Done(Option<String>),
    /// Not a TLS ClientHello (or a malformed one): forwarded without a server name.
    NotTls,
}

/// Why no server name could be waited for.
#[derive(Debug, PartialEq, Eq)]
pub enum PeekError {
    /// Still incomplete past [`MAX_CLIENT_HELLO`] bytes.
    TooLarge,
    /// The client sent nothing decisive within the timeout.
    Timeout,
    /// The client closed or reset before the ClientHello ended.
    Closed,
}

/// Read from `stream` until the ClientHello is complete (or shown not to be one). Returns the
/// bytes read, to be forwarded first, and the server name.
pub async fn peek(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<String>), PeekError> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            if buf.len() >= MAX_CLIENT_HELLO {
                return Err(PeekError::TooLarge);
            }
            let room = MAX_CLIENT_HELLO - buf.len();
            let n = (&mut *stream)
                .take(room as u64)
                .read_buf(&mut buf)
                .await
                .map_err(|_| PeekError::Closed)?;
            if n == 0 {
                return Err(PeekError::Closed);
            }
            match server_name(&buf) {
                Parse::Incomplete => continue,
                Parse::Done(name) => return Ok(name),
                Parse::NotTls => return Ok(None),
            }
        }
    };
    let name = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| PeekError::Timeout)??;
    Ok((buf, name))
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// The server name of the ClientHello that `bytes` begin with.
pub fn server_name(bytes: &[u8]) -> Parse {
    // Reassemble the handshake layer from however many records carry it.
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(header) = rest.get(..5) else {
            // A first byte that is not a handshake record settles it before five bytes arrive.
            return match rest.first() {
                Some(&t) if t != HANDSHAKE => Parse::NotTls,
                _ => Parse::Incomplete,
            };
        };
        // SSLv3/TLS record versions are 3.x; anything else is not TLS.
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Parse::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 2048 {
            return Parse::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Parse::Incomplete;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if let Some(head) = handshake.get(..4) {
            if head[0] != CLIENT_HELLO {
                return Parse::NotTls;
            }
            let body_len =
                usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
            // Decided on the length alone, before the body is complete, so that more bytes
            // never turn an answer around.
            if body_len > MAX_CLIENT_HELLO {
                return Parse::NotTls;
            }
            if let Some(body) = handshake.get(4..4 + body_len) {
                return Parse::Done(hello_server_name(body));
            }
        }
    }
}

/// A bounds-checked reader over one ClientHello body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// RFC 8446 4.1.2: legacy_version, random, legacy_session_id, cipher_suites,
/// legacy_compression_methods, extensions; RFC 6066 3: server_name.
fn hello_server_name(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.take(2 + 32)?;
    r.vec8()?;
    r.vec16()?;
    r.vec8()?;
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut names = Reader(Reader(data).vec16()?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == HOST_NAME {
                let valid = !name.is_empty()
                    && name
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b));
                return valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn real_client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = real_client_hello("API.example.com");
        assert_eq!(
            server_name(&hello),
            Parse::Done(Some("api.example.com".into()))
        );
        for cut in 0..hello.len() {
            assert_eq!(
                server_name(&hello[..cut]),
                Parse::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_client_hello_split_over_two_records_is_reassembled() {
        let hello = real_client_hello("b.example");
        let fragment = &hello[5..];
        let (a, b) = fragment.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(server_name(&split), Parse::Done(Some("b.example".into())));
    }

    #[test]
    fn an_ip_address_hello_has_no_server_name_and_plain_bytes_are_not_tls() {
        let hello = real_client_hello("127.0.0.1");
        assert_eq!(server_name(&hello), Parse::Done(None));
        assert_eq!(server_name(b"*1\r\n$4\r\nPING\r\n"), Parse::NotTls);
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(server_name(&[22, 2, 0, 0, 5]), Parse::NotTls);
        assert_eq!(server_name(&[22]), Parse::Incomplete);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = server_name(&bytes);
        }

        /// The fuzz target's property (`fuzz/fuzz_targets/tls_client_hello.rs`): a prefix is
        /// either incomplete or answered as the whole is.
        #[test]
        fn a_prefix_is_incomplete_or_answered_as_the_whole(pos in 0usize..300, byte in any::<u8>()) {
            let mut hello = real_client_hello("p.example");
            let pos = pos % hello.len();
            hello[pos] = byte;
            let whole = server_name(&hello);
            for cut in 0..hello.len() {
                let part = server_name(&hello[..cut]);
                prop_assert!(part == Parse::Incomplete || part == whole, "cut {}: {:?} vs {:?}", cut, part, whole);
            }
        }

        #[test]
        fn a_mutated_client_hello_never_panics(pos in 0usize..300, byte in any::<u8>(), cut in 0usize..400) {
            let mut hello = real_client_hello("x.example");
            let pos = pos % hello.len();
            hello[pos] = byte;
            hello.truncate(cut.max(1).min(hello.len()));
            let _ = server_name(&hello);
        }
    }
}
