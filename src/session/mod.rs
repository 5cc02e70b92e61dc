//! One client connection from accept to its end: the pending phase ([`Pending`], inside the
//! authorization window), then the relay, then one log line.
//!
//! Shutdown drops the pending phase's future; the socket stays with [`Pending`], which is
//! counted and logged before it closes, so anyone who sees the close also sees the metric.

mod pending;
mod refusal;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::Admission;
use crate::metrics::Reject;
use crate::protocol::{self, ClientIdentity};
use crate::relay::{self, RelayEnd};
use crate::shared::Shared;
use crate::stream::Stream;
pub(crate) use pending::{Established, Pending};
pub(crate) use refusal::Refusal;

/// How long a refused client gets to read its `-ERR` before the socket is closed: closing with
/// unread input pending makes the kernel send RST, which can destroy the `-ERR` in flight.
const LINGER: Duration = Duration::from_millis(250);

/// Serves one accepted connection to its end. Never panics on client or upstream input.
///
/// The connection's task is the pending phase, in a box that is freed once the connection is
/// established, then the relay's future in its place: an idle established connection holds
/// the relay and what its close line needs, once each (`flatten` keeps the two phases in one
/// slot; an async fn here would keep its arguments, the pending phase's result and the relay
/// side by side).
pub(crate) fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) -> impl std::future::Future<Output = ()> + Send {
    use futures_util::FutureExt;
    Box::pin(establish(shared, tcp, peer, admission)).flatten()
}

/// The pending phase; returns the relay to run (not yet started), or nothing after a refusal.
async fn establish(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut admission: Admission,
) -> Either<std::future::Ready<()>, impl std::future::Future<Output = ()> + Send> {
    let accepted = Instant::now();
    let config = shared.config.load_full();
    let pending = pend(&shared, &config, tcp, peer, &mut admission, accepted).await;
    let Some((client, established, info_sent, log)) = pending else {
        return Either::Left(std::future::ready(()));
    };
    admission.established();
    Either::Right(relay_to_end(
        shared,
        client,
        established,
        info_sent,
        log,
        admission,
    ))
}

/// The relay's view of the proxy: owned by the connection's relay future.
impl relay::Host for Arc<Shared> {
    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }
    fn stop(&self) -> relay::Stop<'_> {
        relay::Stop {
            lame_duck: &self.lame_duck,
            now: &self.stop_all,
        }
    }
}

/// The pending phase up to an established connection (or a refusal, answered and logged here).
async fn pend(
    shared: &Shared,
    config: &crate::config::Config,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: &mut Admission,
    accepted: Instant,
) -> Option<(Stream, Established<Stream>, usize, CloseLog)> {
    let local = tcp.local_addr().unwrap_or(peer);
    let _ = tcp.set_nodelay(true);
    let id = admission.id();
    let mut pending = Pending::new(shared, config, &shared.upstreams, tcp, (peer, local), id);
    let phases = async {
        // Behind a load balancer the client's own address comes first: from then on it is the
        // client's address everywhere, the per-address limit included.
        if let Some(ip) = pending.proxy_header().await? {
            if !admission.rehome(ip, &config.listener) {
                let strip = config.upstream.strip_connect_urls;
                return Err(Refusal::Limit(shared.limit_refusal(ip, strip)));
            }
        }
        pending.establish().await
    };
    let result = tokio::select! {
        r = phases => r,
        _ = shared.stop_pending.cancelled() => Err(Refusal::Shutdown),
    };
    let log = CloseLog {
        id,
        peer: pending.client_addr(),
        accepted,
        listener: "tcp",
    };
    match result {
        Err(refusal) => {
            refuse(shared, pending, refusal, &log).await;
            None
        }
        Ok(established) => {
            let info_sent = pending.info_sent();
            let client = pending.into_client()?;
            shared
                .metrics
                .connect_wait
                .record(accepted.elapsed().as_secs_f64());
            Some((client, established, info_sent, log))
        }
    }
}

/// What every log line of one connection says, and the two lines themselves: one listener's
/// connections and the other's are logged alike.
pub(crate) struct CloseLog {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) accepted: Instant,
    /// `tcp` or `websocket`.
    pub(crate) listener: &'static str,
}

impl CloseLog {
    /// The line of a connection refused before it was established (summarised under a flood).
    pub(crate) fn refused(&self, reason: Reject, detail: &dyn std::fmt::Display, bytes_out: usize) {
        if crate::logsummary::refused(reason) {
            tracing::info!(
                conn = self.id,
                peer = %self.peer,
                listener = self.listener,
                duration_ms = self.accepted.elapsed().as_millis() as u64,
                bytes_in = 0u64,
                bytes_out = bytes_out as u64,
                reason = reason.as_str(),
                detail = %detail,
                "connection refused"
            );
        }
    }

    /// The line of an established connection that ended: bytes each way, why, and who the
    /// client said it was (no secrets).
    pub(crate) fn closed(&self, outcome: &relay::Outcome, who: &Who) {
        let error = match &outcome.end {
            RelayEnd::Error(e) => e.to_string(),
            _ => String::new(),
        };
        let [name, lang, version, user] = who.fields();
        tracing::info!(
            conn = self.id,
            peer = %self.peer,
            listener = self.listener,
            duration_ms = self.accepted.elapsed().as_millis() as u64,
            bytes_in = outcome.client_to_upstream,
            bytes_out = outcome.upstream_to_client,
            reason = outcome.end.as_str(),
            client_name = name,
            client_lang = lang,
            client_version = version,
            user,
            error = %error,
            "connection closed"
        );
    }
}

/// Who the client said it was (`name`, `lang`, `version`, `user`), as the close line shows it:
/// the four strings in one allocation (an established connection keeps this until it closes;
/// five allocations were about 150 bytes of every idle connection).
pub(crate) struct Who {
    text: Box<str>,
    /// Where `name`, `lang` and `version` end in `text` (`user` runs to its end).
    ends: [u16; 3],
}

impl Who {
    pub(crate) fn new(identity: &ClientIdentity) -> Who {
        let fields = [
            &identity.name,
            &identity.lang,
            &identity.version,
            &identity.user,
        ]
        .map(|f| f.as_deref().unwrap_or(""));
        let mut text = String::with_capacity(fields.iter().map(|f| f.len()).sum());
        let mut ends = [0u16; 3];
        for (i, field) in fields.iter().enumerate() {
            text.push_str(field);
            if let Some(end) = ends.get_mut(i) {
                // Each field is at most IDENTITY_MAX_CHARS (64) characters: 256 bytes.
                *end = u16::try_from(text.len()).unwrap_or(u16::MAX);
            }
        }
        Who {
            text: text.into_boxed_str(),
            ends,
        }
    }

    /// `name`, `lang`, `version` and `user`; `""` for each the client did not send.
    pub(crate) fn fields(&self) -> [&str; 4] {
        let [a, b, c] = self.ends.map(usize::from);
        let bounds = [0, a, b, c, self.text.len()];
        std::array::from_fn(|i| self.text.get(bounds[i]..bounds[i + 1]).unwrap_or(""))
    }
}

/// Counts and logs a refusal, then sends its reply (if any) on the socket and closes it.
async fn refuse(
    shared: &Shared,
    pending: Pending<'_, TcpStream, crate::upstream::Upstreams>,
    refusal: Refusal,
    log: &CloseLog,
) {
    let reason = refusal.reason();
    shared.metrics.reject(reason);
    log.refused(reason, &refusal, pending.info_sent());
    if let (Some(client), Some(reply)) = (pending.into_client(), refusal.reply()) {
        close_with(client, &reply).await;
    }
}

/// The relay of an established connection, ending with its close line (and the end of its
/// admission: the connection no longer counts once the line is written). Not an async fn: its
/// future is the relay's, holding what the close line needs, each thing once.
fn relay_to_end(
    shared: Arc<Shared>,
    client: Stream,
    established: Established<Stream>,
    info_sent: usize,
    log: CloseLog,
    admission: Admission,
) -> impl std::future::Future<Output = ()> + Send {
    let server = protocol::ServerStream::with_rewrite(established.rewrite);
    // Boxed: an idle connection keeps it only for its close line (8 bytes in the task; the
    // task's size class is what a connection costs).
    let (identity, forwarded) = (
        Box::new(Who::new(&established.identity)),
        established.forwarded,
    );
    let finish = move |mut outcome: relay::Outcome| {
        outcome.client_to_upstream += forwarded as u64;
        outcome.upstream_to_client += info_sent as u64;
        log.closed(&outcome, &identity);
        drop(admission);
    };
    relay::relay(client, established.upstream, server, shared, finish)
}

/// Sends a final `-ERR`, then closes in a way that lets the client read it: FIN first, then a
/// short, bounded wait that discards whatever the client still sends.
pub(crate) async fn close_with<S>(mut client: Stream<S>, reply: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let work = async {
        pending::write_flush(&mut client, reply).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 512];
        let mut budget = 64 * 1024usize;
        loop {
            let n = client.read(&mut sink).await?;
            if n == 0 || n >= budget {
                return Ok::<(), std::io::Error>(());
            }
            budget -= n;
        }
    };
    let _ = tokio::time::timeout(LINGER, work).await;
}
