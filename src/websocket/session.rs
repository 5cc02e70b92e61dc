//! One WebSocket client from accept to its close line: TLS and the HTTP upgrade inside the
//! window, then the TCP listener's pending phase over the unwrapped stream, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::io::WsIo;
use super::upgrade::{self, Head};
use super::{WsListener, LABEL};
use crate::config::Config;
use crate::limits::Admission;
use crate::metrics::Reject;
use crate::protocol::ServerStream;
use crate::relay::relay;
use crate::session::{close_with, CloseLog, Established, Pending, Refusal, Who};
use crate::shared::Shared;
use crate::stream::Stream;

/// Bytes a client may send after the upgrade and before its CONNECT is complete, on top of
/// `max_control_line`: room for frame headers, pings and the ops pipelined behind CONNECT.
const PIPELINE_ALLOWANCE: usize = 64 * 1024;

/// The upgraded client as the pending phase and the relay see it.
type Client = Stream<WsIo<Stream>>;

/// How the upgrade phase failed: the metric reason, the log detail, and the HTTP answer
/// (with the socket to send it on) when there is one.
struct UpgradeFailed {
    reason: Reject,
    detail: String,
    reply: Option<(Stream, Vec<u8>)>,
}

impl UpgradeFailed {
    fn quiet(reason: Reject, detail: impl Into<String>) -> Self {
        UpgradeFailed {
            reason,
            detail: detail.into(),
            reply: None,
        }
    }
}

pub(super) async fn serve(
    shared: Arc<Shared>,
    ws: Arc<WsListener>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut admission: Admission,
    stop_relays: CancellationToken,
) {
    let accepted = StdInstant::now();
    let deadline = Instant::now() + shared.config.load().auth_timeout;
    let config = shared.config.load_full();
    let local = tcp.local_addr().unwrap_or(peer);
    let _ = tcp.set_nodelay(true);
    let log = CloseLog {
        id: admission.id(),
        peer,
        accepted,
        listener: LABEL,
    };

    let upgraded = tokio::select! {
        r = timeout_at(deadline, upgrade(&shared, &ws, tcp, &config)) => match r {
            Ok(r) => r,
            // Dropping the future closed the socket: there is no channel to say more on.
            Err(_) => Err(UpgradeFailed::quiet(Reject::AuthTimeout, "window closed during the TLS handshake or the HTTP upgrade")),
        },
        _ = shared.stop_pending.cancelled() => Err(UpgradeFailed::quiet(Reject::Shutdown, "natsgate is shutting down")),
    };
    let client = match upgraded {
        Ok(c) => c,
        Err(failed) => return refuse_upgrade(&ws, failed, &log).await,
    };

    // The pending phase is the TCP listener's, run with what differs here: the window that
    // started at accept, no NATS-level TLS, and INFO without `connect_urls` (the cluster's
    // client URLs are no WebSocket endpoints; nor are the gateway's TCP `advertise` ones). No
    // inbound PROXY header is read inside the frames (`proxy_header` is not called).
    let mut pending = Pending::new(
        &shared,
        &config,
        &shared.upstreams,
        client,
        (peer, local),
        log.id,
    )
    .with_tls(None)
    .with_deadline(deadline)
    .stripping_connect_urls();
    let result = tokio::select! {
        r = pending.establish() => r,
        _ = shared.stop_pending.cancelled() => Err(Refusal::Shutdown),
    };
    match result {
        Err(refusal) => refuse(&ws, pending, refusal, &log).await,
        Ok(established) => {
            let info_sent = pending.info_sent();
            let Some(client) = pending.into_client() else {
                return;
            };
            shared
                .metrics
                .connect_wait
                .record(accepted.elapsed().as_secs_f64());
            admission.established();
            relay_to_end(&shared, client, established, info_sent, &log, &stop_relays).await;
        }
    }
}

/// Counts and logs a connection that never completed its upgrade, and answers it if it can.
async fn refuse_upgrade(ws: &WsListener, failed: UpgradeFailed, log: &CloseLog) {
    ws.metrics.reject(failed.reason);
    log.refused(failed.reason, &failed.detail, 0);
    if let Some((client, reply)) = failed.reply {
        close_with(client, &reply).await;
    }
}

/// TLS (for `wss://`), then the HTTP upgrade, answered with 101 or with nats-server's status.
async fn upgrade(
    shared: &Shared,
    ws: &WsListener,
    tcp: TcpStream,
    config: &Config,
) -> Result<WsIo<Stream>, UpgradeFailed> {
    let mut client = match &ws.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let started = StdInstant::now();
            match Box::pin(tls.acceptor.accept(tcp)).await {
                Ok(s) => {
                    shared
                        .metrics
                        .tls_handshake
                        .record(started.elapsed().as_secs_f64());
                    Stream::Tls(Box::new(s.into()))
                }
                Err(e) => {
                    return Err(UpgradeFailed::quiet(
                        Reject::TlsHandshake,
                        format!("TLS handshake failed: {e}"),
                    ))
                }
            }
        }
    };
    let protocol = |detail: String| UpgradeFailed::quiet(Reject::Protocol, detail);
    let head = match upgrade::read_head(&mut client).await {
        Ok(Head::Complete { head, extra: false }) => head,
        Ok(Head::Complete { extra: true, .. }) => {
            // nats-server's answer to bytes sent before the 101.
            return Err(http_refusal(
                client,
                400,
                "client sent data before handshake is complete",
            ));
        }
        Ok(Head::TooLarge) => return Err(http_refusal(client, 431, "request head too large")),
        Ok(Head::Closed) => return Err(protocol("client closed during the HTTP upgrade".into())),
        Err(e) => return Err(protocol(format!("during the HTTP upgrade: {e}"))),
    };
    let allowed = config
        .websocket
        .as_ref()
        .map(|w| w.allowed_origins.as_slice())
        .unwrap_or_default();
    let accept = match upgrade::check(&head, allowed) {
        Ok(accept) => accept,
        Err(refused) => return Err(http_refusal(client, refused.status, refused.reason)),
    };
    let response = upgrade::switching_protocols(&accept);
    let write = async {
        client.write_all(&response).await?;
        client.flush().await
    };
    if let Err(e) = write.await {
        return Err(protocol(format!("while answering the upgrade: {e}")));
    }
    let budget = config.listener.max_control_line + PIPELINE_ALLOWANCE;
    Ok(WsIo::new(client, budget).await)
}

fn http_refusal(client: Stream, status: u16, why: &str) -> UpgradeFailed {
    UpgradeFailed {
        reason: Reject::Protocol,
        detail: format!("WebSocket upgrade refused with {status}: {why}"),
        reply: Some((client, upgrade::error_response(status))),
    }
}

/// Counts and logs a refusal inside the window, then sends its reply in a frame, then a close
/// frame.
async fn refuse(
    ws: &WsListener,
    pending: Pending<'_, WsIo<Stream>, crate::upstream::Upstreams>,
    refusal: Refusal,
    log: &CloseLog,
) {
    let reason = refusal.reason();
    ws.metrics.reject(reason);
    log.refused(reason, &refusal, pending.info_sent());
    if let Some(client) = pending.into_client() {
        // Without a reply (the window closed while INFO was written) there is still a close
        // frame: the client learns the connection ended on purpose.
        close_with(client, &refusal.reply().unwrap_or_default()).await;
    }
}

/// Relays an established connection until it ends, then writes its close line.
async fn relay_to_end(
    shared: &Shared,
    mut client: Client,
    established: Established<Stream>,
    info_sent: usize,
    log: &CloseLog,
    stop: &CancellationToken,
) {
    if let Stream::Plain(io) = &mut client {
        io.established();
    }
    let server = ServerStream::with_rewrite(established.rewrite);
    let stop = crate::relay::Stop {
        lame_duck: &shared.lame_duck,
        now: stop,
    };
    let (identity, forwarded) = (Who::new(&established.identity), established.forwarded);
    let finish = |mut outcome: crate::relay::Outcome| {
        outcome.client_to_upstream += forwarded as u64;
        outcome.upstream_to_client += info_sent as u64;
        log.closed(&outcome, &identity);
    };
    // Boxed: the relay state exists only once the connection is established.
    let relayed = relay(
        client,
        established.upstream,
        server,
        (&*shared.metrics, stop),
        finish,
    );
    Box::pin(relayed).await;
}
