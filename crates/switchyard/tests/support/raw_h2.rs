//! HTTP/2 spoken frame by frame, for what a well-behaved client library will not send
//! (malformed heads, ignored windows, header blocks that never end).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::WAIT;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields (HPACK "literal without indexing, new name"), so any
/// name or value can be sent as is.
pub fn literal_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x00);
        for s in [name, value] {
            assert!(s.len() < 127, "short strings only");
            b.push(s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// One frame as read back.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// Frames read from a raw h2 connection.
pub struct FrameReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The socket, for writes that may fail once the server has closed.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The next frame, or `None` when the server closed the connection. Panics when nothing
    /// arrives for [`WAIT`].
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no frame and no close within {WAIT:?}: {e}"),
            }
        }
    }

    /// The next frame's (type, flags).
    pub fn next(&mut self) -> Option<(u8, u8)> {
        self.next_frame().map(|f| (f.kind, f.flags))
    }

    /// The next frame on `stream` (others, and connection frames, skipped).
    pub fn next_on(&mut self, stream: u32) -> Option<Frame> {
        loop {
            let f = self.next_frame()?;
            if f.stream == stream {
                return Some(f);
            }
        }
    }

    /// Read until the server closes; returns the frame types seen.
    pub fn until_closed(&mut self) -> Vec<u8> {
        let mut kinds = Vec::new();
        while let Some((kind, _)) = self.next() {
            kinds.push(kind);
        }
        kinds
    }
}

/// Open a raw h2 connection: preface and an empty SETTINGS.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s
}

/// Waits for an h2 client connection to be closed by the gateway as idle: a clean end, or
/// GOAWAY with NO_ERROR. `why` names what kept it busy if it never is.
pub async fn expect_idle_close<T>(conn: h2::client::Connection<T, bytes::Bytes>, why: &str)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ended = tokio::time::timeout(WAIT, conn).await.expect(why);
    if let Err(e) = ended {
        assert!(
            e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR),
            "{e:?}"
        );
    }
}
