//! The spliced byte stream after CONNECT: both directions at once, bounded buffers, byte counts,
//! half-close propagation, and the upstream's verdict read in passing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::lameduck::LameDuck;
use crate::metrics::{AuthResult, Metrics};
use crate::protocol::{ServerStream, Verdict};

/// The buffer a burst starts with: enough for any burst of small messages. Taken from the
/// worker's pool when the socket has bytes, given back when it would block.
pub(crate) const BUFFER_START: usize = 16 * 1024;
/// The buffer a direction switches to once a read fills the small one: a bulk publisher moves
/// 256 KiB per syscall pair (32 KiB measured 0.72 of direct on 16 KiB publishes, 256 KiB
/// 0.79; see BENCHMARKS.md). Given back like the small one when the socket would block.
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

/// How a relay learns that natsgate stops: lame duck mode first (announce, then close at this
/// connection's slot of the drain), and the end of the drain as the last word.
#[derive(Clone, Copy)]
pub(crate) struct Stop<'a> {
    pub(crate) lame_duck: &'a LameDuck,
    /// Fired when the drain period is over: close at once.
    pub(crate) now: &'a CancellationToken,
}

/// What a relay needs from the proxy it runs in. The relay owns it (an `Arc` of the proxy's
/// state in practice), so that a connection's task is one future that borrows from nothing.
pub(crate) trait Host {
    fn metrics(&self) -> &Metrics;
    fn stop(&self) -> Stop<'_>;
}

impl Host for (&Metrics, Stop<'_>) {
    fn metrics(&self) -> &Metrics {
        self.0
    }
    fn stop(&self) -> Stop<'_> {
        self.1
    }
}

/// Relays until both sides are done (or one fails, or `stop` fires), then hands the outcome
/// to `finish` (the close log line) and returns what it returns. Both sockets are closed then,
/// because it owns them. One task polls both directions, by hand: what an idle connection
/// keeps is this future, a few hundred bytes (see `the_relay_future_stays_small`); timers and
/// buffers exist only while needed. `finish` is part of it rather than a wrapper around it
/// because an async block that awaits a future it holds keeps two copies of it.
pub(crate) fn relay<C, U, H, T>(
    client: C,
    upstream: U,
    server: ServerStream,
    host: H,
    finish: impl FnOnce(Outcome) -> T,
) -> impl Future<Output = T>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    H: Host,
{
    // Built here and moved into the future once (an async fn would keep its arguments and
    // its locals apart).
    let mut splice = Splice {
        client,
        upstream,
        up: Dir::default(),
        down: Dir::default(),
        server,
        verdict: None,
        due: false,
        timer: None,
        grace_at: None,
        close_at: None,
    };
    async move {
        let (metrics, stop) = (host.metrics(), host.stop());
        let stopped = stop.now.cancelled();
        let lame = stop.lame_duck.signal.cancelled();
        tokio::pin!(stopped, lame);
        let end = std::future::poll_fn(|cx| {
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(RelayEnd::Shutdown);
            }
            if splice.close_at.is_none() && lame.as_mut().poll(cx).is_ready() {
                // Announce at the next op boundary, close at this connection's slot.
                splice.due = true;
                splice.close_at = Some(stop.lame_duck.close_at());
            }
            splice.poll(cx, metrics, stop)
        })
        .await;
        if splice.verdict.is_none() {
            metrics.upstream_auth(AuthResult::Unknown);
        }
        finish(Outcome {
            client_to_upstream: splice.up.total,
            upstream_to_client: splice.down.total,
            end,
        })
    }
}

/// Both sockets, both directions and the relay's deadlines.
struct Splice<C, U> {
    client: C,
    upstream: U,
    /// Client to upstream.
    up: Dir,
    /// Upstream to client (INFO rewriting, the lame-duck INFO).
    down: Dir,
    server: ServerStream,
    verdict: Option<Verdict>,
    /// The lame-duck INFO is owed to the client (written at the next op boundary).
    due: bool,
    /// One timer for both deadlines a relay can have, made when the first is set.
    timer: Option<Pin<Box<Sleep>>>,
    /// Upstream has closed: the client has until then to close its side.
    grace_at: Option<Instant>,
    /// Lame duck mode: this connection's slot of the drain.
    close_at: Option<Instant>,
}

impl<C, U> Splice<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn poll(&mut self, cx: &mut Context<'_>, metrics: &Metrics, stop: Stop<'_>) -> Poll<RelayEnd> {
        let (client, upstream) = (&mut self.client, &mut self.upstream);
        if !self.up.done {
            let counter = &metrics.client_to_upstream;
            match self.up.poll(cx, client, upstream, counter, &mut Verbatim) {
                Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::Error(e)),
                Poll::Ready(Ok(())) if self.down.done => {
                    return Poll::Ready(RelayEnd::UpstreamClosed)
                }
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {}
            }
        }
        if !self.down.done {
            let mut follow = Downstream {
                server: &mut self.server,
                verdict: &mut self.verdict,
                due: &mut self.due,
                metrics,
                lame_duck: stop.lame_duck,
            };
            let counter = &metrics.upstream_to_client;
            match self.down.poll(cx, upstream, client, counter, &mut follow) {
                Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::Error(e)),
                Poll::Ready(Ok(())) if self.up.done => return Poll::Ready(RelayEnd::ClientClosed),
                Poll::Ready(Ok(())) => {
                    self.grace_at = Some(Instant::now() + UPSTREAM_CLOSED_GRACE);
                }
                Poll::Pending => {}
            }
        }
        self.poll_deadlines(cx)
    }

    /// The upstream-closed grace and the lame-duck close, on one timer.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let due = match (self.grace_at, self.close_at) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Poll::Pending,
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(match self.close_at {
                Some(t) if t <= Instant::now() => RelayEnd::Shutdown,
                _ => RelayEnd::UpstreamClosed,
            }),
        }
    }
}

/// One direction: a read, then its bytes (or their rewrite) written out, then the next read;
/// at EOF the half-close passes on.
///
/// A buffer is held only while bytes are in flight: a read takes one from the worker's pool
/// (or keeps the one of the previous chunk) and gives it back when the socket would block, so
/// an idle connection holds none. The waker is registered by the read that returned
/// `Pending`, which read nothing, so giving the buffer back then loses nothing.
#[derive(Default)]
struct Dir {
    /// The chunk in flight; `out` (when set) is written instead of it.
    held: Option<pool::Buffer>,
    /// A rewritten chunk, or natsgate's own bytes (the lame-duck INFO).
    out: Option<Vec<u8>>,
    /// Bytes of the chunk (or of `out`) already written.
    written: usize,
    /// The chunk is written; the writer has to flush it (TLS buffers records).
    flushing: bool,
    /// Whether the next read uses the large buffer: set when a read fills the small one,
    /// cleared when a read uses less than half of it.
    large: bool,
    /// The reader reached EOF; the half-close is being passed on.
    eof: bool,
    done: bool,
    /// Armed while a write waits for the peer: past it the peer is gone.
    stall: Option<Pin<Box<Sleep>>>,
    total: u64,
}

impl Dir {
    /// Moves bytes until the reader would block (`Pending`), the direction ends (`Ready(Ok)`),
    /// or it fails; `follow` sees each chunk and has natsgate's own bytes written between two.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        counter: &Counter,
        follow: &mut impl Follow,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.pending_out() {
                std::task::ready!(self.poll_write(cx, w))?;
                continue;
            }
            if self.eof {
                // Half-close: the peer may still have bytes to send the other way.
                let _ = std::task::ready!(Pin::new(&mut *w).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if let Some(own) = follow.own() {
                self.count(counter, own.len());
                self.out = Some(own);
                continue;
            }
            let n = std::task::ready!(self.poll_read(cx, r))?;
            if n == 0 {
                self.eof = true;
                self.held = None;
                continue;
            }
            self.count(counter, n);
            let chunk = self.held.as_deref().unwrap_or(&[]);
            self.out = follow.chunk(chunk);
        }
    }

    fn count(&mut self, counter: &Counter, n: usize) {
        counter.increment(n as u64);
        self.total += n as u64;
    }

    /// Whether bytes are waiting to be written (or flushed).
    fn pending_out(&self) -> bool {
        self.flushing || self.out.is_some() || self.held.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// One read into a pooled buffer: the previous chunk's if it is of the wanted size,
    /// otherwise one from the pool; given back if the read would block or fails.
    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
    ) -> Poll<std::io::Result<usize>> {
        let want = if self.large {
            BUFFER_SIZE
        } else {
            BUFFER_START
        };
        let mut buf = match self.held.take() {
            Some(b) if b.capacity() == want => b,
            _ => pool::Buffer::take(want),
        };
        buf.vec().clear();
        // `buf` goes back to the pool unless the read produced bytes.
        let n = std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(r), cx, buf.vec()))?;
        if n == BUFFER_START && !self.large {
            self.large = true;
        } else if n <= BUFFER_START / 2 {
            self.large = false;
        }
        if n > 0 {
            self.held = Some(buf);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what is pending and flushes it, or fails when the peer accepts nothing for
    /// [`WRITE_STALL_LIMIT`] (the timer exists only while a write waits).
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<std::io::Result<()>> {
        let progress = self.poll_write_out(cx, w);
        if progress.is_ready() {
            self.stall = None;
            return progress;
        }
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_LIMIT)));
        match stall.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer stopped reading",
            ))),
        }
    }

    fn poll_write_out<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<std::io::Result<()>> {
        while !self.flushing {
            let bytes = match (&self.out, &self.held) {
                (Some(out), _) => &out[self.written..],
                (None, Some(held)) => &held[self.written..],
                (None, None) => &[][..],
            };
            if bytes.is_empty() {
                self.flushing = true;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut *w).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
        self.flushing = false;
        self.written = 0;
        self.out = None;
        // Keep the (emptied) buffer for the next read of this burst.
        if let Some(b) = self.held.as_mut() {
            b.vec().clear();
        }
        Poll::Ready(Ok(()))
    }
}

/// What a direction does besides copying bytes.
trait Follow {
    /// Sees each chunk read; `Some` is written out in its place.
    fn chunk(&mut self, bytes: &[u8]) -> Option<Vec<u8>>;
    /// Bytes of natsgate's own to write before the next read.
    fn own(&mut self) -> Option<Vec<u8>>;
}

/// Client to upstream: bytes as they come.
struct Verbatim;

impl Follow for Verbatim {
    fn chunk(&mut self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn own(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// Upstream to client: INFO lines rewritten by the server-op follower, the upstream's verdict
/// on the CONNECT recorded the first time one is seen, and the lame-duck INFO once it is due
/// and the stream is between two ops.
struct Downstream<'a> {
    server: &'a mut ServerStream,
    verdict: &'a mut Option<Verdict>,
    due: &'a mut bool,
    metrics: &'a Metrics,
    lame_duck: &'a LameDuck,
}

impl Follow for Downstream<'_> {
    fn chunk(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let rewritten = self.server.feed(bytes);
        if self.verdict.is_none() {
            *self.verdict = self.server.verdict();
            if let Some(v) = *self.verdict {
                self.metrics.upstream_auth(match v {
                    Verdict::Accepted => AuthResult::Accepted,
                    Verdict::Rejected => AuthResult::Rejected,
                });
            }
        }
        rewritten
    }

    fn own(&mut self) -> Option<Vec<u8>> {
        let ready = *self.due && self.server.at_op_boundary();
        *self.due &= !ready;
        ready.then(|| self.lame_duck.announcement(self.server.rewrite()))
    }
}

/// Per-worker pools of relay buffers. A buffer not in use by a read or write in flight is
/// either here (bounded, so a burst of many connections at once returns its memory to the
/// allocator afterwards) or freed.
pub(crate) mod pool {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{BUFFER_SIZE, BUFFER_START};

    /// Buffers kept per worker thread: enough for the connections of one worker that are in
    /// a burst at the same moment on a busy proxy, small against the per-connection memory
    /// they replace (at most 8 × 16 KiB + 2 × 256 KiB = 640 KiB per worker).
    const KEEP_SMALL: usize = 8;
    const KEEP_LARGE: usize = 2;

    /// Buffers out of the pools, held by a connection that has bytes in flight.
    static HELD: AtomicUsize = AtomicUsize::new(0);

    /// Small buffers, large buffers.
    type Pools = (Vec<Vec<u8>>, Vec<Vec<u8>>);

    thread_local! {
        static POOL: RefCell<Pools> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// How many buffers connections hold right now (all workers).
    #[cfg(test)]
    pub(crate) fn held() -> usize {
        HELD.load(Ordering::Relaxed)
    }

    /// A buffer taken from the pool; goes back (or is freed) on drop.
    #[derive(Debug)]
    pub(crate) struct Buffer(Vec<u8>);

    impl Buffer {
        /// A buffer of `capacity` (`BUFFER_START` or `BUFFER_SIZE`): pooled if one is there,
        /// otherwise a fresh one (not zeroed: untouched pages cost no memory).
        pub(crate) fn take(capacity: usize) -> Buffer {
            let pooled = POOL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    let list = if capacity == BUFFER_SIZE {
                        &mut p.1
                    } else {
                        &mut p.0
                    };
                    list.pop()
                })
                .ok()
                .flatten();
            HELD.fetch_add(1, Ordering::Relaxed);
            Buffer(pooled.unwrap_or_else(|| Vec::with_capacity(capacity)))
        }

        pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
            &mut self.0
        }

        pub(crate) fn capacity(&self) -> usize {
            self.0.capacity()
        }
    }

    impl std::ops::Deref for Buffer {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Buffer {
        fn drop(&mut self) {
            HELD.fetch_sub(1, Ordering::Relaxed);
            let mut v = std::mem::take(&mut self.0);
            v.clear();
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                let (list, keep) = match v.capacity() {
                    BUFFER_SIZE => (&mut p.1, KEEP_LARGE),
                    BUFFER_START => (&mut p.0, KEEP_SMALL),
                    _ => return,
                };
                if list.len() < keep {
                    list.push(v);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::{pool, relay, RelayEnd, Stop};
    use crate::lameduck::LameDuck;
    use crate::metrics::Metrics;
    use crate::protocol::{ServerStream, TlsAdvert};
    use crate::stream::Stream;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    async fn until_no_buffer_held() -> bool {
        for _ in 0..200 {
            if pool::held() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// An established connection that went idle after a burst in each direction (large
    /// enough to switch to the 256 KiB buffer) holds no relay buffer, while it stays open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_holds_no_buffer_after_a_burst() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let relayed = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let server = ServerStream::new(TlsAdvert::None, false);
                let lame = LameDuck::new(CancellationToken::new());
                let stop = Stop {
                    lame_duck: &lame,
                    now: &stop,
                };
                relay(
                    Stream::Plain(client_side),
                    Stream::Plain(upstream_side),
                    server,
                    (&metrics, stop),
                    |o| o,
                )
                .await
            })
        };
        assert!(
            until_no_buffer_held().await,
            "no burst yet, yet buffers are held"
        );

        let burst = vec![b'x'; 1024 * 1024];
        let mut got = vec![0u8; burst.len()];
        let (_, read) = tokio::join!(client.write_all(&burst), upstream.read_exact(&mut got));
        read.unwrap();
        let (_, read) = tokio::join!(upstream.write_all(&burst), client.read_exact(&mut got));
        read.unwrap();
        assert_eq!(got, burst);

        assert!(
            until_no_buffer_held().await,
            "an idle established connection still holds {} buffer(s) after its burst",
            pool::held()
        );
        // Still established: a later message goes through.
        client.write_all(b"PING\r\n").await.unwrap();
        let mut ping = [0u8; 6];
        upstream.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"PING\r\n");
        assert!(!relayed.is_finished());
        stop.cancel();
        let outcome = relayed.await.unwrap();
        assert_eq!(outcome.client_to_upstream, burst.len() as u64 + 6);
        assert_eq!(outcome.upstream_to_client, burst.len() as u64);
        assert_eq!(pool::held(), 0);
    }

    /// The relay future is what an idle established connection holds besides its sockets.
    #[tokio::test]
    async fn the_relay_future_stays_small() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _upstream) = pair().await;
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let server = ServerStream::new(TlsAdvert::None, false);
        let lame = LameDuck::new(CancellationToken::new());
        let stop = Stop {
            lame_duck: &lame,
            now: &stop,
        };
        let fut = relay(
            Stream::Plain(client_side),
            Stream::Plain(upstream_side),
            server,
            (&metrics, stop),
            |o| o,
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("relay future: {size} bytes");
        // Both sockets, both directions, the op follower, the two stop signals (632 B when
        // written; it was 2.1 KB as nested async fns with select!, timers inline).
        assert!(size <= 768, "the relay future is {size} bytes");
    }

    /// natsgate's own lame duck mode: the client gets `"ldm": true` in an asynchronous INFO at
    /// once, but never inside a message (here: in the middle of a MSG payload it waits for the
    /// payload's end), and the connection is closed at its slot of the drain.
    #[tokio::test]
    async fn lame_duck_announces_between_ops_then_closes_at_its_slot() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let metrics = Metrics::new();
        let signal = CancellationToken::new();
        let lame = std::sync::Arc::new(LameDuck::new(signal.clone()));
        let relayed = {
            let lame = lame.clone();
            tokio::spawn(async move {
                let now = CancellationToken::new();
                let server = ServerStream::new(TlsAdvert::None, true);
                let stop = Stop {
                    lame_duck: &lame,
                    now: &now,
                };
                let started = tokio::time::Instant::now();
                let out = relay(
                    Stream::Plain(client_side),
                    Stream::Plain(upstream_side),
                    server,
                    (&metrics, stop),
                    |o| o,
                )
                .await;
                (out.end, started.elapsed())
            })
        };
        upstream.write_all(b"MSG a 1 10\r\n01234").await.unwrap();
        let mut got = vec![0u8; 17];
        client.read_exact(&mut got).await.unwrap();
        let latest = crate::protocol::parse_info(
            b"INFO {\"server_id\":\"S\",\"nonce\":\"n\",\"client_id\":7}",
        )
        .unwrap();
        lame.begin(Duration::from_millis(600), 1, Some(&latest));
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream.write_all(b"56789\r\n").await.unwrap();
        let mut rest = vec![0u8; 7];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, b"56789\r\n", "the payload is never split by the INFO");
        let info = {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while client.read(&mut b).await.unwrap() == 1 {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            String::from_utf8(line).unwrap()
        };
        assert!(
            info.starts_with("INFO {") && info.contains("\"ldm\":true"),
            "{info}"
        );
        assert!(
            !info.contains("nonce") && !info.contains("client_id"),
            "{info}"
        );
        let (end, lived) = relayed.await.unwrap();
        assert!(matches!(end, RelayEnd::Shutdown), "{end:?}");
        // One connection: slot 1 of 1 closes at half the 600 ms drain.
        assert!(
            lived >= Duration::from_millis(250) && lived < Duration::from_millis(600),
            "{lived:?}"
        );
    }
}
