//! Moving bytes both ways between a client and its endpoint until both sides are done.
//!
//! The copy is Tokio's `copy_bidirectional` with larger buffers than its 8 KiB default (fewer
//! reads and writes per byte; [`BUFFER`]): a side that
//! reaches EOF has the other side's write half shut down (half-close passes through), and the
//! other direction keeps flowing until it ends too. Splicing through a pipe (HAProxy's
//! `splice-auto`) would skip the copy into user space, but needs `unsafe` or a new dependency
//! this workspace forbids.
//!
//! Bytes are counted on the sockets' wrappers with one relaxed atomic add per read or write, and
//! a coarse ticker reads the counts: it flushes them to the metrics, and closes the connection
//! once nothing moved for the idle timeout. So there is no timer per read, only one wake-up a
//! tick (a quarter of the idle timeout, at most [`FLUSH`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Each direction's buffer, allocated for the connection's life (128 KiB a connection). 16 KiB
/// (HAProxy's and NGINX's size) cost 8% more CPU per GB in `docs/benchmarks.md`'s run.
pub const BUFFER: usize = 64 * 1024;

/// Longest a byte count waits before it reaches the metrics.
const FLUSH: Duration = Duration::from_secs(5);

/// Byte counts of one connection: `[client received, client sent, upstream received, upstream
/// sent]`.
#[derive(Default)]
pub struct Traffic([AtomicU64; 4]);

impl Traffic {
    pub fn add(&self, slot: usize, n: u64) {
        self.0[slot].fetch_add(n, Ordering::Relaxed);
    }
    fn snapshot(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

pub const CLIENT_RECEIVED: usize = 0;
pub const CLIENT_SENT: usize = 1;
pub const UPSTREAM_RECEIVED: usize = 2;
pub const UPSTREAM_SENT: usize = 3;

/// The metric counters the four counts go to, in [`Traffic`]'s order.
pub struct Meters(pub [Counter; 4]);

/// A socket whose reads and writes add to `traffic` (`read`, `written` are slots).
struct Metered {
    inner: TcpStream,
    traffic: Arc<Traffic>,
    read: usize,
    written: usize,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.traffic.add(self.read, n as u64);
        }
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.traffic.add(self.written, n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or one reset the connection).
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Copy between `client` and `upstream` until both are done or the connection is idle for
/// `idle` (`None`: never). `traffic` may already hold bytes moved before the pump (a peeked
/// ClientHello); they are flushed with the rest.
pub async fn pump(
    client: TcpStream,
    upstream: TcpStream,
    traffic: Arc<Traffic>,
    meters: &Meters,
    idle: Option<Duration>,
) -> End {
    let mut client = Metered {
        inner: client,
        traffic: traffic.clone(),
        read: CLIENT_RECEIVED,
        written: CLIENT_SENT,
    };
    let mut upstream = Metered {
        inner: upstream,
        traffic: traffic.clone(),
        read: UPSTREAM_RECEIVED,
        written: UPSTREAM_SENT,
    };
    let tick = idle.map_or(FLUSH, |d| (d / 4).clamp(Duration::from_millis(1), FLUSH));
    // Quiet ticks that make the connection idle: closes between `idle` and `idle + tick`.
    let quiet_limit = idle.map(|d| d.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64);
    let mut flushed = [0u64; 4];
    let flush = |flushed: &mut [u64; 4]| {
        let now = traffic.snapshot();
        for (i, counter) in meters.0.iter().enumerate() {
            if now[i] > flushed[i] {
                counter.inc_by(now[i] - flushed[i]);
            }
        }
        let moved = now != *flushed;
        *flushed = now;
        moved
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER);
    tokio::pin!(copy);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = 0u64;
    let end = loop {
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tcp connection ended with an error");
                }
                break End::Closed;
            }
            _ = ticker.tick() => {
                quiet = if flush(&mut flushed) { 0 } else { quiet + 1 };
                if quiet_limit.is_some_and(|limit| quiet >= limit) {
                    break End::Idle;
                }
            }
        }
    };
    flush(&mut flushed);
    end
}
