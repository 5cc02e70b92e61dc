//! The spliced byte stream after CONNECT: both directions at once, bounded buffers, byte counts,
//! half-close propagation, and the upstream's verdict read in passing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lameduck::LameDuck;
use crate::metrics::{AuthResult, Metrics};
use crate::protocol::{ServerStream, Verdict};
use crate::stream::Stream;

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

/// Relays until both sides are done (or one fails, or `stop` fires). Both sockets are closed
/// when this returns, because it owns them.
pub(crate) async fn relay(
    client: Stream,
    upstream: Stream,
    server: ServerStream,
    metrics: &Metrics,
    stop: Stop<'_>,
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

/// How a relay learns that natsgate stops: lame duck mode first (announce, then close at this
/// connection's slot of the drain), and the end of the drain as the last word.
#[derive(Clone, Copy)]
pub(crate) struct Stop<'a> {
    pub(crate) lame_duck: &'a LameDuck,
    /// Fired when the drain period is over: close at once.
    pub(crate) now: &'a CancellationToken,
}

/// How a pump learns of an interjection: woken by the `Notify`, it asks the closure for the
/// bytes (which gives them only at an op boundary).
type Interjection<'a> = (&'a Notify, &'a (dyn Fn() -> Option<Vec<u8>> + Sync));

/// Something natsgate itself has to tell the client (the lame-duck INFO): `due` is set and
/// `wake` notified; the downstream pump writes it at the next op boundary.
#[derive(Default)]
struct Interject {
    due: AtomicBool,
    wake: Notify,
}

pub(crate) async fn relay_halves<CR, CW, UR, UW>(
    mut cr: CR,
    mut cw: CW,
    mut ur: UR,
    mut uw: UW,
    server: ServerStream,
    metrics: &Metrics,
    stop: Stop<'_>,
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
    // Shared by the downstream pump (feeding it) and the loop (the lame-duck INFO's rewrite);
    // never contended: both run in this one task.
    let server = Mutex::new(server);
    let interject = Interject::default();

    let end = {
        let up = pump(
            &mut cr,
            &mut uw,
            &metrics.client_to_upstream,
            &mut c2u,
            |_| None,
            None,
        );
        // The lame-duck INFO, once it is due and the stream is between two ops.
        let announce = || {
            let server = locked(&server);
            let ready = server.at_op_boundary() && interject.due.swap(false, Ordering::Relaxed);
            ready.then(|| stop.lame_duck.announcement(server.rewrite()))
        };
        let down = pump(
            &mut ur,
            &mut cw,
            &metrics.upstream_to_client,
            &mut u2c,
            |bytes| follow_server(&mut locked(&server), &mut verdict, metrics, bytes),
            Some((&interject.wake, &announce)),
        );
        tokio::pin!(up, down);
        until_end(up, down, stop, &interject).await
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

/// Runs both directions until the relay ends: both sides closed, an error, upstream gone past
/// its grace, the lame-duck close, or the end of the drain.
async fn until_end<U, D>(
    mut up: std::pin::Pin<&mut U>,
    mut down: std::pin::Pin<&mut D>,
    stop: Stop<'_>,
    interject: &Interject,
) -> RelayEnd
where
    U: Future<Output = std::io::Result<()>>,
    D: Future<Output = std::io::Result<()>>,
{
    let mut up_done = false;
    let mut down_done = false;
    // One timer for both deadlines a relay can have (a future's size is memory every
    // idle connection holds): the upstream-closed grace and the lame-duck close.
    let timer = tokio::time::sleep(Duration::from_secs(86_400));
    let mut grace_at: Option<tokio::time::Instant> = None;
    let mut close_at: Option<tokio::time::Instant> = None;
    let stopped = stop.now.cancelled();
    let lame = stop.lame_duck.signal.cancelled();
    tokio::pin!(timer, stopped, lame);
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
                    grace_at = Some(tokio::time::Instant::now() + UPSTREAM_CLOSED_GRACE);
                    timer.as_mut().reset(earliest(grace_at, close_at));
                }
            },
            _ = &mut lame, if close_at.is_none() => {
                interject.due.store(true, Ordering::Relaxed);
                interject.wake.notify_one();
                close_at = Some(stop.lame_duck.close_at());
                timer.as_mut().reset(earliest(grace_at, close_at));
            }
            _ = &mut timer, if grace_at.is_some() || close_at.is_some() => {
                let now = tokio::time::Instant::now();
                break match close_at {
                    Some(t) if t <= now => RelayEnd::Shutdown,
                    _ => RelayEnd::UpstreamClosed,
                };
            }
            _ = &mut stopped => break RelayEnd::Shutdown,
        }
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
///
/// A buffer is held only while bytes are in flight: each read takes one from the worker's
/// pool (or keeps the one of the previous chunk) and gives it back when the socket would
/// block, so an idle connection holds none. The waker is registered by the inner read, so
/// giving the buffer back on `Pending` loses nothing (`AsyncRead` reads nothing on `Pending`).
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    counter: &Counter,
    total: &mut u64,
    mut transform: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    interject: Option<Interjection<'_>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut held: Option<pool::Buffer> = None;
    // Whether the next burst starts with the large buffer: set when a read fills the small
    // one, cleared when a read uses less than half of the small one.
    let mut large = false;
    loop {
        let buf = match interject {
            None => read_pooled(r, &mut held, large).await?,
            Some((wake, interjection)) => {
                if let Some(bytes) = interjection() {
                    write_within_limit(w, &bytes).await?;
                    counter.increment(bytes.len() as u64);
                    *total += bytes.len() as u64;
                }
                tokio::select! {
                    r = read_pooled(r, &mut held, large) => r?,
                    _ = wake.notified() => continue,
                }
            }
        };
        let n = buf.len();
        if n == 0 {
            drop(held.take());
            // Half-close: the peer may still have bytes to send the other way.
            let _ = w.shutdown().await;
            return Ok(());
        }
        if n == BUFFER_START && !large {
            large = true;
        } else if n <= BUFFER_START / 2 {
            large = false;
        }
        let rewritten = transform(buf);
        let out = rewritten.as_deref().unwrap_or(buf);
        write_within_limit(w, out).await?;
        counter.increment(n as u64);
        *total += n as u64;
    }
}

fn earliest(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    match (a, b) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a
            .or(b)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400)),
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes and flushes, or fails when the peer accepts nothing for [`WRITE_STALL_LIMIT`]. TLS
/// streams buffer records until flushed; plain TCP flush is a no-op. The timer is only armed
/// when the write does not complete at once (`Timeout` polls it first).
async fn write_within_limit<W: AsyncWrite + Unpin>(w: &mut W, out: &[u8]) -> std::io::Result<()> {
    let write = async {
        w.write_all(out).await?;
        w.flush().await
    };
    match tokio::time::timeout(WRITE_STALL_LIMIT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "peer stopped reading",
        )),
    }
}

/// One read into a pooled buffer: the buffer of the previous chunk if there is one (and it is
/// of the wanted size), otherwise one from the pool; given back to the pool if the read would
/// block or fails. Returns the bytes read (empty at EOF), left in `held`.
async fn read_pooled<'h, R: AsyncRead + Unpin>(
    r: &mut R,
    held: &'h mut Option<pool::Buffer>,
    large: bool,
) -> std::io::Result<&'h [u8]> {
    let want = if large { BUFFER_SIZE } else { BUFFER_START };
    std::future::poll_fn(|cx| {
        let mut buf = match held.take() {
            Some(b) if b.capacity() == want => b,
            _ => pool::Buffer::take(want),
        };
        buf.vec().clear();
        let polled = {
            let read = r.read_buf(buf.vec());
            std::pin::pin!(read).poll(cx)
        };
        match polled {
            Poll::Pending => Poll::Pending, // `buf` goes back to the pool here
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(_)) => {
                *held = Some(buf);
                Poll::Ready(Ok(()))
            }
        }
    })
    .await?;
    Ok(held.as_deref().unwrap_or(&[]))
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
                    &metrics,
                    stop,
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
            &metrics,
            stop,
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("relay future: {size} bytes");
        // 2 KiB, plus what lame duck mode needs (its signal, the wake-up, the flag).
        assert!(size <= 2048 + 128, "the relay future is {size} bytes");
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
                    &metrics,
                    stop,
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
