//! Reads for the HTTP/1 path that hold no buffer while a connection waits.

use std::io;

use bytes::{BufMut, BytesMut};

/// Bytes read on the stack when a connection has no buffer of its own.
const IDLE_READ: usize = 4096;

/// Read more bytes from `io` into `buf`, growing it by `chunk` when under 1 KiB is left. Both
/// directions of the HTTP/1 path read through this.
///
/// A connection that waits holds no buffer: when the read finds nothing and `buf` holds no
/// unconsumed bytes, its allocation is let go, and the next read goes to the stack first and
/// then into a buffer of the size that arrived. Streams spend almost all their life waiting
/// (a token every few tens of milliseconds, a keep-alive client between requests), and a
/// buffer sized for bulk transfer held through every wait was most of a stream's memory
/// (issue 19). A read that fills the stack buffer is bulk: `buf` then gets `chunk` and later
/// reads go straight into it, as before.
pub fn read_more<T: tokio::io::AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
    chunk: usize,
) -> std::task::Poll<io::Result<usize>> {
    use std::task::Poll;
    if buf.capacity() == 0 {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
        let mut read = tokio::io::ReadBuf::uninit(&mut stack);
        return match std::pin::Pin::new(io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                buf.reserve(if n == IDLE_READ { chunk } else { n });
                buf.put_slice(read.filled());
                Poll::Ready(Ok(n))
            }
            other => other.map_ok(|()| 0),
        };
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
    let read = tokio_util::io::poll_read_buf(std::pin::Pin::new(io), cx, buf);
    if read.is_pending() && buf.is_empty() {
        *buf = BytesMut::new();
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_waiting_connection_holds_no_buffer() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = BytesMut::with_capacity(16 * 1024);
        // Nothing to read and nothing unconsumed: the allocation goes.
        assert!(read_more(&mut near, &mut cx, &mut buf, 16 * 1024).is_pending());
        assert_eq!(buf.capacity(), 0);
        // A token's worth arrives: a buffer of about that size, not of `chunk`.
        far.write_all(b"data: token\n\n").await.unwrap();
        let n = read_more(&mut near, &mut cx, &mut buf, 16 * 1024);
        assert!(matches!(n, Poll::Ready(Ok(13))));
        assert_eq!(&buf[..], b"data: token\n\n");
        assert!(buf.capacity() < 1024);
        // Consumed, then waiting again: let go again.
        let _ = buf.split();
        assert!(read_more(&mut near, &mut cx, &mut buf, 16 * 1024).is_pending());
        assert_eq!(buf.capacity(), 0);
        // Bulk: a read that fills the stack buffer gets `chunk` for the reads after it.
        far.write_all(&[b'x'; 20 * 1024]).await.unwrap();
        let n = read_more(&mut near, &mut cx, &mut buf, 16 * 1024);
        assert!(matches!(n, Poll::Ready(Ok(IDLE_READ))));
        assert!(buf.capacity() >= 16 * 1024);
        let mut total = buf.len();
        while let Poll::Ready(Ok(n)) = read_more(&mut near, &mut cx, &mut buf, 16 * 1024) {
            total += n;
            if total == 20 * 1024 {
                break;
            }
        }
        assert_eq!(buf.len(), 20 * 1024);
        // Unconsumed bytes are never let go of.
        assert!(read_more(&mut near, &mut cx, &mut buf, 16 * 1024).is_pending());
        assert_eq!(buf.len(), 20 * 1024);
    }
}
