//! Just enough ZMTP 3.0 (the ZeroMQ wire protocol, rfc.zeromq.org/spec/23) for KV events:
//! the NULL mechanism, PUB/SUB and DEALER/ROUTER, over TCP.
//!
//! Why not the `zeromq` crate: its decoder sizes its buffer from the peer's frame header before
//! the bytes arrive, so one 8-byte header claiming 2^62 bytes aborts the process. The peer here
//! is a model server, outside the gateway's trust, and an index of its cache is never worth the
//! gateway. Four socket types over one mechanism are a few hundred lines, and every length read
//! here is checked against [`MAX_FRAME_BYTES`] and [`MAX_PARTS`] before anything is allocated.
//! Frames are read into buffers sized by bytes that actually arrived, not by claims.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Largest frame accepted (a vLLM batch of 256 long prompts is a few MiB).
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Most parts in one message (KV events use 3, replay requests 2 or 3).
pub const MAX_PARTS: usize = 8;
/// Largest command frame accepted (READY carries two short properties).
const MAX_COMMAND_BYTES: usize = 4096;

/// The socket types this module speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Pub,
    Sub,
    Router,
    Dealer,
}

impl SocketType {
    fn name(self) -> &'static str {
        match self {
            Self::Pub => "PUB",
            Self::Sub => "SUB",
            Self::Router => "ROUTER",
            Self::Dealer => "DEALER",
        }
    }

    /// Peers this type may talk to (ZMTP's compatibility table; REQ asks a ROUTER too).
    fn accepts(self, peer: &[u8]) -> bool {
        match self {
            Self::Pub => matches!(peer, b"SUB" | b"XSUB"),
            Self::Sub => matches!(peer, b"PUB" | b"XPUB"),
            Self::Router => matches!(peer, b"DEALER" | b"REQ" | b"ROUTER"),
            Self::Dealer => matches!(peer, b"ROUTER" | b"REP" | b"DEALER"),
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// What arrived: a message (its parts) or a command (its name and body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Message(Vec<Bytes>),
    Command { name: String, body: Bytes },
}

/// The receiving half of a connection.
#[derive(Debug)]
pub struct ZmtpReader {
    r: BufReader<OwnedReadHalf>,
}

/// The sending half of a connection.
#[derive(Debug)]
pub struct ZmtpWriter {
    w: OwnedWriteHalf,
    buf: Vec<u8>,
}

fn greeting(as_server: bool) -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3; // major
    g[11] = 0; // minor: 3.0, so peers send subscriptions as messages, which both sides read
    g[12..16].copy_from_slice(b"NULL");
    g[32] = u8::from(as_server);
    g
}

/// Greets the peer on `stream` as `me` and exchanges READY; returns the two halves.
/// `TCP_NODELAY` is set: events are small and late events are worth less. The caller bounds the
/// time this takes.
pub async fn handshake(
    stream: TcpStream,
    me: SocketType,
    as_server: bool,
) -> io::Result<(ZmtpReader, ZmtpWriter)> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = ZmtpReader {
        r: BufReader::with_capacity(64 * 1024, r),
    };
    let mut writer = ZmtpWriter { w, buf: Vec::new() };
    writer.w.write_all(&greeting(as_server)).await?;
    let mut peer = [0u8; 64];
    reader.r.read_exact(&mut peer).await?;
    if peer[0] != 0xff || peer[9] & 1 != 1 {
        return Err(bad("not a ZMTP peer (bad greeting signature)"));
    }
    if peer[10] < 3 {
        return Err(bad(format!(
            "ZMTP {}.x peer; 3.0 or later needed",
            peer[10]
        )));
    }
    if &peer[12..16] != b"NULL" || peer[16..32].iter().any(|&b| b != 0) {
        return Err(bad("ZMTP peer wants a security mechanism other than NULL"));
    }
    let mut ready = Vec::with_capacity(32);
    ready.push(5);
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&(me.name().len() as u32).to_be_bytes());
    ready.extend_from_slice(me.name().as_bytes());
    writer.frame(0x04, &ready);
    writer.flush().await?;
    match reader.recv().await? {
        Incoming::Command { name, body } if name == "READY" => {
            let peer_type = property(&body, b"Socket-Type")
                .ok_or_else(|| bad("ZMTP READY without Socket-Type"))?;
            if !me.accepts(peer_type) {
                return Err(bad(format!(
                    "ZMTP peer is a {} socket; a {} cannot talk to it",
                    String::from_utf8_lossy(peer_type),
                    me.name()
                )));
            }
        }
        Incoming::Command { name, body } if name == "ERROR" => {
            return Err(bad(format!(
                "ZMTP peer refused: {}",
                String::from_utf8_lossy(body.get(1..).unwrap_or_default())
            )))
        }
        other => return Err(bad(format!("expected ZMTP READY, got {other:?}"))),
    }
    Ok((reader, writer))
}

/// A property's value from a READY body (after the command name).
fn property<'a>(body: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = body;
    while let Some((&n, tail)) = rest.split_first() {
        let (key, tail) = tail.split_at_checked(usize::from(n))?;
        let (len, tail) = tail.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (value, tail) = tail.split_at_checked(len)?;
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
        rest = tail;
    }
    None
}

impl ZmtpReader {
    /// The next message or command. Frames over [`MAX_FRAME_BYTES`], messages over
    /// [`MAX_PARTS`] and malformed commands are errors (the caller drops the connection).
    pub async fn recv(&mut self) -> io::Result<Incoming> {
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        loop {
            let flags = self.r.read_u8().await?;
            if flags & 0xf8 != 0 {
                return Err(bad(format!(
                    "ZMTP frame flags {flags:#04x} reserved bits set"
                )));
            }
            let len = if flags & 0x02 != 0 {
                self.r.read_u64().await?
            } else {
                u64::from(self.r.read_u8().await?)
            };
            let command = flags & 0x04 != 0;
            let limit = if command {
                MAX_COMMAND_BYTES
            } else {
                MAX_FRAME_BYTES - total
            };
            if len > limit as u64 {
                return Err(bad(format!(
                    "ZMTP {} of {len} bytes, over the {limit}-byte limit",
                    if command { "command" } else { "message" }
                )));
            }
            let body = self.read_body(len as usize).await?;
            if command {
                if !parts.is_empty() || flags & 0x01 != 0 {
                    return Err(bad("ZMTP command inside a multipart message"));
                }
                let (&n, rest) = body
                    .split_first()
                    .ok_or_else(|| bad("empty ZMTP command"))?;
                let name = rest
                    .get(..usize::from(n))
                    .ok_or_else(|| bad("truncated ZMTP command name"))?;
                let name = String::from_utf8_lossy(name).into_owned();
                let body = Bytes::from(body).slice(1 + usize::from(n)..);
                return Ok(Incoming::Command { name, body });
            }
            total += body.len();
            parts.push(Bytes::from(body));
            if flags & 0x01 == 0 {
                return Ok(Incoming::Message(parts));
            }
            if parts.len() >= MAX_PARTS {
                return Err(bad(format!("ZMTP message of more than {MAX_PARTS} parts")));
            }
        }
    }

    /// Reads `len` bytes, growing the buffer as they arrive (a claimed length is not trusted
    /// with an allocation of its own size).
    async fn read_body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        let read = (&mut self.r)
            .take(len as u64)
            .read_to_end(&mut body)
            .await?;
        if read != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(body)
    }
}

impl ZmtpWriter {
    fn frame(&mut self, flags: u8, body: &[u8]) {
        if body.len() > 255 {
            self.buf.push(flags | 0x02);
            self.buf
                .extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            self.buf.push(flags);
            self.buf.push(body.len() as u8);
        }
        self.buf.extend_from_slice(body);
    }

    async fn flush(&mut self) -> io::Result<()> {
        let r = self.w.write_all(&self.buf).await;
        self.buf.clear();
        r
    }

    /// Sends one multipart message in one write.
    pub async fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        for (i, p) in parts.iter().enumerate() {
            let more = if i + 1 < parts.len() { 0x01 } else { 0 };
            self.frame(more, p);
        }
        self.flush().await
    }

    /// Sends a command (`PONG` answers to `PING`, `SUBSCRIBE` in 3.1 form).
    pub async fn command(&mut self, name: &str, body: &[u8]) -> io::Result<()> {
        let mut c = Vec::with_capacity(1 + name.len() + body.len());
        c.push(name.len() as u8);
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(body);
        self.frame(0x04, &c);
        self.flush().await
    }
}

/// Answers a `PING` with its context; other commands need no answer here.
pub async fn answer_command(w: &mut ZmtpWriter, name: &str, body: &[u8]) -> io::Result<()> {
    if name == "PING" {
        // PING: TTL (2 bytes), then context echoed in PONG.
        w.command("PONG", body.get(2..).unwrap_or_default()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        a: SocketType,
        b: SocketType,
    ) -> io::Result<((ZmtpReader, ZmtpWriter), (ZmtpReader, ZmtpWriter))> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await?;
            handshake(s, a, true).await
        });
        let client = handshake(TcpStream::connect(addr).await?, b, false).await?;
        Ok((server.await.expect("join")?, client))
    }

    #[tokio::test]
    async fn messages_and_limits() {
        let ((mut sr, mut sw), (mut cr, mut cw)) =
            pair(SocketType::Pub, SocketType::Sub).await.unwrap();
        cw.send(&[b"\x01"]).await.unwrap();
        assert_eq!(
            sr.recv().await.unwrap(),
            Incoming::Message(vec![Bytes::from_static(b"\x01")])
        );
        let big = vec![7u8; 1000];
        sw.send(&[b"", &5u64.to_be_bytes(), &big]).await.unwrap();
        let Incoming::Message(parts) = cr.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].len(), 1000);
        // A header claiming 2^62 bytes is refused before any allocation.
        sw.w.write_all(&[0x02]).await.unwrap();
        sw.w.write_all(&(1u64 << 62).to_be_bytes()).await.unwrap();
        let e = cr.recv().await.unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
    }

    #[tokio::test]
    async fn incompatible_types_are_refused() {
        let e = pair(SocketType::Pub, SocketType::Dealer)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("cannot talk"), "{e}");
        let ((_, _), (_, _)) = pair(SocketType::Router, SocketType::Dealer).await.unwrap();
    }
}
