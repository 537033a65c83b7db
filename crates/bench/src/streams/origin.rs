//! The SSE origin: one endless chunked stream per HTTP/1.1 request.
//!
//! Written against the socket rather than through an HTTP server so that the origin's own cost
//! per stream is one task, one timer and one small buffer: the load core has to carry 10k
//! streams on both ends and the benchmark measures the proxy, not this.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::MissedTickBehavior;

/// Longest request head the origin reads.
const MAX_HEAD: usize = 16 * 1024;

/// What every stream sends.
#[derive(Debug, Clone, Copy)]
pub struct OriginSpec {
    interval_min: Duration,
    interval_max: Duration,
    chunk_bytes: usize,
}

impl OriginSpec {
    pub fn new(
        interval_min: Duration,
        interval_max: Duration,
        chunk_bytes: usize,
    ) -> anyhow::Result<Self> {
        ensure!(
            !interval_min.is_zero() && interval_min <= interval_max,
            "--interval-min must be above 0 and at most --interval-max"
        );
        ensure!(
            (32..=16 * 1024).contains(&chunk_bytes),
            "--chunk-bytes must be 32..=16384"
        );
        Ok(Self {
            interval_min,
            interval_max,
            chunk_bytes,
        })
    }

    fn draw_interval(&self) -> Duration {
        let lo = self.interval_min.as_micros() as u64;
        let hi = self.interval_max.as_micros() as u64;
        Duration::from_micros(fastrand::u64(lo..=hi))
    }
}

/// Accept and serve until the process is stopped.
pub async fn serve(listen: SocketAddr, spec: OriginSpec) -> anyhow::Result<()> {
    // A deep accept queue: a proxy opens thousands of upstream connections at once when a
    // client's streams arrive together, and a dropped SYN costs a second-long retransmit.
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener: TcpListener = socket.listen(65_535)?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        // Out of file descriptors or a connection reset before accept: keep serving.
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = stream_to(stream, spec).await;
        });
    }
}

async fn stream_to(mut stream: TcpStream, spec: OriginSpec) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    loop {
        if head.len() >= MAX_HEAD {
            return Ok(());
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    drop(head);
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .await?;
    let mut ticker = tokio::time::interval(spec.draw_interval());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut frame = Vec::with_capacity(spec.chunk_bytes + 16);
    loop {
        ticker.tick().await;
        frame.clear();
        encode_chunk(&mut frame, super::now_ns(), spec.chunk_bytes);
        stream.write_all(&frame).await?;
    }
}

/// One chunk of the chunked body: an SSE event `data: <ns>` padded to `event_bytes`.
fn encode_chunk(frame: &mut Vec<u8>, ns: u64, event_bytes: usize) {
    use std::io::Write;
    let _ = write!(frame, "{event_bytes:x}\r\ndata: {ns:020}");
    // "data: " + 20 digits + "\n\n" = 28 bytes; the rest is padding before the blank line.
    let pad = event_bytes.saturating_sub(28);
    if pad > 0 {
        frame.push(b' ');
        frame.extend(std::iter::repeat_n(b'x', pad - 1));
    }
    frame.extend_from_slice(b"\n\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_is_framed_to_the_event_size() {
        let mut f = Vec::new();
        encode_chunk(&mut f, 42, 64);
        let text = String::from_utf8(f).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        assert_eq!(size, "40");
        let event = rest.strip_suffix("\r\n").unwrap();
        assert_eq!(event.len(), 64);
        assert!(event.starts_with("data: 00000000000000000042 x"));
        assert!(event.ends_with("\n\n"));
    }
}
