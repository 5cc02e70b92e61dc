//! The spliced byte stream after CONNECT: both directions at once, bounded buffers, byte counts,
//! half-close propagation, and the upstream's verdict read in passing.

use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::metrics::{AuthResult, Metrics};
use crate::protocol::{ServerStream, Verdict};
use crate::stream::Stream;

/// Per-direction buffer to start with: enough for any burst of small messages, and cheap for
/// the many connections that never carry bulk (it is not zeroed, so untouched pages cost no
/// memory).
pub(crate) const BUFFER_START: usize = 16 * 1024;
/// The largest per-direction buffer. A buffer doubles each time one read fills it, so a bulk
/// publisher moves 256 KiB per syscall pair (32 KiB measured 0.72 of direct on 16 KiB
/// publishes, growing to 256 KiB 0.79; see BENCHMARKS.md), while an established connection
/// still costs a bounded, known amount of memory.
pub(crate) const BUFFER_SIZE: usize = 256 * 1024;

/// Once upstream has closed, how long the client may keep its side open before natsgate
/// closes it (nats-server never half-closes on purpose; this bounds a client that ignores FIN).
const UPSTREAM_CLOSED_GRACE: Duration = Duration::from_secs(5);

/// A peer that accepts no bytes for this long is gone: the connection is closed. nats-server
/// gives its own writes 10 s (`write_deadline`) before it declares a slow consumer and closes
/// upstream; without this limit a client that never reads would keep its natsgate connection
/// after upstream has given up on it.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// How the relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    ClientClosed,
    UpstreamClosed,
    Error(std::io::Error),
    /// The shutdown drain period ran out.
    Shutdown,
}

impl RelayEnd {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            RelayEnd::ClientClosed => "client_closed",
            RelayEnd::UpstreamClosed => "upstream_closed",
            RelayEnd::Error(_) => "io_error",
            RelayEnd::Shutdown => "shutdown",
        }
    }
}

/// Totals for the close log line.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) client_to_upstream: u64,
    pub(crate) upstream_to_client: u64,
    pub(crate) end: RelayEnd,
}

/// Relays until both sides are done (or one fails, or `stop` fires). Both sockets are closed
/// when this returns, because it owns them.
pub(crate) async fn relay(
    client: Stream,
    upstream: Stream,
    server: ServerStream,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Outcome {
    match (client, upstream) {
        // Plain on both sides (the common sidecar case): borrowed halves, no lock per poll.
        (Stream::Plain(mut c), Stream::Plain(mut u)) => {
            let (cr, cw) = c.split();
            let (ur, uw) = u.split();
            relay_halves(cr, cw, ur, uw, server, metrics, stop).await
        }
        (client, upstream) => {
            let (cr, cw) = tokio::io::split(client);
            let (ur, uw) = tokio::io::split(upstream);
            relay_halves(cr, cw, ur, uw, server, metrics, stop).await
        }
    }
}

pub(crate) async fn relay_halves<CR, CW, UR, UW>(
    mut cr: CR,
    mut cw: CW,
    mut ur: UR,
    mut uw: UW,
    mut server: ServerStream,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Outcome
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut c2u = 0u64;
    let mut u2c = 0u64;
    let mut verdict: Option<Verdict> = None;

    let end = {
        let up = pump(
            &mut cr,
            &mut uw,
            &metrics.client_to_upstream,
            &mut c2u,
            |_| None,
        );
        let down = pump(
            &mut ur,
            &mut cw,
            &metrics.upstream_to_client,
            &mut u2c,
            |bytes| follow_server(&mut server, &mut verdict, metrics, bytes),
        );
        tokio::pin!(up, down);
        let mut up_done = false;
        let mut down_done = false;
        let grace = tokio::time::sleep(Duration::from_secs(86_400));
        let stopped = stop.cancelled();
        tokio::pin!(grace, stopped);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Err(e) => break RelayEnd::Error(e),
                    Ok(()) if down_done => break RelayEnd::UpstreamClosed,
                    Ok(()) => up_done = true,
                },
                r = &mut down, if !down_done => match r {
                    Err(e) => break RelayEnd::Error(e),
                    Ok(()) if up_done => break RelayEnd::ClientClosed,
                    Ok(()) => {
                        down_done = true;
                        grace.as_mut().reset(tokio::time::Instant::now() + UPSTREAM_CLOSED_GRACE);
                    }
                },
                _ = &mut grace, if down_done => break RelayEnd::UpstreamClosed,
                _ = &mut stopped => break RelayEnd::Shutdown,
            }
        }
    };
    if verdict.is_none() {
        metrics.upstream_auth(AuthResult::Unknown);
    }
    Outcome {
        client_to_upstream: c2u,
        upstream_to_client: u2c,
        end,
    }
}

/// Feeds upstream's bytes to the server-op follower (INFO rewriting) and records the
/// upstream's verdict on the CONNECT the first time one is seen.
fn follow_server(
    server: &mut ServerStream,
    verdict: &mut Option<Verdict>,
    metrics: &Metrics,
    bytes: &[u8],
) -> Option<Vec<u8>> {
    let rewritten = server.feed(bytes);
    if verdict.is_none() {
        *verdict = server.verdict();
        if let Some(v) = *verdict {
            metrics.upstream_auth(match v {
                Verdict::Accepted => AuthResult::Accepted,
                Verdict::Rejected => AuthResult::Rejected,
            });
        }
    }
    rewritten
}

/// Copies one direction until EOF, then propagates the half-close. `transform` may replace
/// a chunk (INFO rewriting); byte counts are of what was read.
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    counter: &Counter,
    total: &mut u64,
    mut transform: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(BUFFER_START);
    loop {
        buf.clear();
        // Reads into the spare capacity: no zeroing, no per-read allocation.
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: the peer may still have bytes to send the other way.
            let _ = w.shutdown().await;
            return Ok(());
        }
        if n == buf.capacity() && n < BUFFER_SIZE {
            buf.reserve_exact((2 * n).min(BUFFER_SIZE) - n);
        }
        let rewritten = transform(&buf[..n]);
        let out = rewritten.as_deref().unwrap_or(&buf[..n]);
        // TLS streams buffer records until flushed; plain TCP flush is a no-op. The timer
        // is only armed when the write does not complete at once (Timeout polls it first).
        let write = async {
            w.write_all(out).await?;
            w.flush().await
        };
        match tokio::time::timeout(WRITE_STALL_LIMIT, write).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer stopped reading",
                ))
            }
        }
        counter.increment(n as u64);
        *total += n as u64;
    }
}
