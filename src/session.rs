//! One client connection from accept to hand-off: the authorization window, TLS (first or
//! classic), the upstream dial, INFO relay, the CONNECT line, and then the relay.
//!
//! The pending phase is a single future that owns the client socket and checks the deadline at
//! every await. When the window closes it still holds the socket, so it can send the exact
//! `-ERR` that nats-server would. Shutdown simply drops that future, closing both sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::config::{Config, HandshakeFirst};
use crate::listener::Admission;
use crate::metrics::Reject;
use crate::protocol::{self, ClientIdentity, TlsAdvert};
use crate::relay::{self, RelayEnd};
use crate::stream::Stream;
use crate::Shared;

/// A TLS ClientHello starts with a handshake record: content type 22.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How long a refused client gets to read its `-ERR` before the socket is closed: closing with
/// unread input pending makes the kernel send RST, which can destroy the `-ERR` in flight.
const LINGER: Duration = Duration::from_millis(250);

/// Why a pending connection ended without being established.
struct Refusal {
    reason: Reject,
    /// The bytes the client gets before close (`None`: close silently).
    reply: Option<Vec<u8>>,
    /// The client socket, when it is still usable for the reply.
    client: Option<Stream>,
    detail: String,
}

impl Refusal {
    fn new(reason: Reject, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            reply: None,
            client: None,
            detail: detail.into(),
        }
    }

    /// Keeps the client socket until the refusal is counted and logged, so that anyone who
    /// sees the close also sees the metric.
    fn closing(mut self, client: Stream) -> Refusal {
        self.client = Some(client);
        self
    }

    fn reply(mut self, client: Stream, bytes: impl Into<Vec<u8>>) -> Refusal {
        self.client = Some(client);
        self.reply = Some(bytes.into());
        self
    }
}

/// What the pending phase hands to the relay.
struct Ready {
    client: Stream,
    upstream: Stream,
    identity: ClientIdentity,
    /// Bytes already sent before the relay started (INFO down, CONNECT and pipeline up).
    info_len: usize,
    forwarded: usize,
    /// What INFO lines tell the client about TLS (later INFOs get the same rewrite).
    advert: TlsAdvert,
}

/// Serves one accepted connection to its end. Never panics on client or upstream input.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut admission: Admission,
) {
    let accepted = Instant::now();
    let config = shared.config.load_full();
    let deadline = tokio::time::Instant::from_std(accepted) + config.auth_timeout;
    let id = admission.id();
    let local = tcp.local_addr().unwrap_or(peer);
    let _ = tcp.set_nodelay(true);

    // INFO bytes written to the client, for the close line of a refused connection too.
    let mut info_sent = 0usize;
    let pending = tokio::select! {
        r = establish(&shared, &config, tcp, peer, local, deadline, &mut info_sent) => r,
        _ = shared.stop_pending.cancelled() => Err(Refusal::new(Reject::Shutdown, "natsgate is shutting down")),
    };
    match pending {
        Err(refusal) => {
            shared.metrics.reject(refusal.reason);
            tracing::info!(
                conn = id,
                peer = %peer,
                duration_ms = accepted.elapsed().as_millis() as u64,
                bytes_in = 0u64,
                bytes_out = info_sent as u64,
                reason = refusal.reason.as_str(),
                detail = %refusal.detail,
                "connection refused"
            );
            if let (Some(client), Some(reply)) = (refusal.client, refusal.reply) {
                close_with(client, &reply).await;
            }
        }
        Ok(ready) => {
            shared
                .metrics
                .connect_wait
                .record(accepted.elapsed().as_secs_f64());
            admission.established();
            let server =
                protocol::ServerStream::new(ready.advert, config.upstream.strip_connect_urls);
            // Boxed: the relay state exists only once the connection is established, so the
            // task of a pending connection does not carry it.
            let mut outcome = Box::pin(relay::relay(
                ready.client,
                ready.upstream,
                server,
                &shared.metrics,
                &shared.stop_all,
            ))
            .await;
            outcome.client_to_upstream += ready.forwarded as u64;
            outcome.upstream_to_client += ready.info_len as u64;
            let id_fields = &ready.identity;
            let error = match &outcome.end {
                RelayEnd::Error(e) => e.to_string(),
                _ => String::new(),
            };
            tracing::info!(
                conn = id,
                peer = %peer,
                duration_ms = accepted.elapsed().as_millis() as u64,
                bytes_in = outcome.client_to_upstream,
                bytes_out = outcome.upstream_to_client,
                reason = outcome.end.as_str(),
                client_name = id_fields.name.as_deref().unwrap_or(""),
                client_lang = id_fields.lang.as_deref().unwrap_or(""),
                client_version = id_fields.version.as_deref().unwrap_or(""),
                user = id_fields.user.as_deref().unwrap_or(""),
                error = %error,
                "connection closed"
            );
        }
    }
}

/// The pending phase: everything inside the authorization window. The TLS handshake and the
/// upstream dial are boxed: their states are large and short-lived, and a pending connection
/// should cost only what it holds while it waits for CONNECT.
async fn establish(
    shared: &Shared,
    config: &Config,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    deadline: tokio::time::Instant,
    info_sent: &mut usize,
) -> Result<Ready, Refusal> {
    let tls = shared.client_tls.as_ref();
    // 1. TLS first, when configured (or detected).
    let mut client = Stream::Plain(tcp);
    if let Some(t) = tls {
        let first = match t.mode {
            HandshakeFirst::Off => false,
            HandshakeFirst::On => true,
            HandshakeFirst::Auto(wait) => {
                let limit = deadline.min(tokio::time::Instant::now() + wait);
                matches!(
                    peek_first(&client, limit).await,
                    Ok(Some(TLS_HANDSHAKE_RECORD))
                )
            }
        };
        if first {
            client = handshake(shared, client, deadline).await?;
        }
    }

    // 2. Upstream.
    let dial = Box::pin(shared.upstreams.dial(deadline, Some((peer, local)))).await;
    let upstream = match dial {
        Ok(u) => u,
        Err(crate::upstream::DialError::Deadline) => {
            return Err(
                Refusal::new(Reject::AuthTimeout, "window closed while dialing upstream")
                    .reply(client, protocol::ERR_AUTH_TIMEOUT),
            )
        }
        Err(e) => {
            return Err(Refusal::new(Reject::UpstreamUnavailable, e.to_string()).closing(client))
        }
    };
    // Only ADR-55 signing needs the nonce later; a pending connection keeps nothing it need not.
    let nonce = shared
        .signer
        .as_ref()
        .and_then(|_| upstream.info.str_field("nonce"));
    let advert = match tls {
        None => TlsAdvert::None,
        Some(t) if t.required => TlsAdvert::Required { verify: t.verify },
        Some(t) => TlsAdvert::Available { verify: t.verify },
    };
    let info = protocol::rewrite_info(upstream.info, advert, config.upstream.strip_connect_urls);
    let mut upstream_stream = upstream.stream;

    // 3. INFO to the client.
    match timeout_at(deadline, write_flush(&mut client, &info)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Refusal::new(Reject::Protocol, format!("writing INFO: {e}")).closing(client))
        }
        Err(_) => {
            return Err(
                Refusal::new(Reject::AuthTimeout, "window closed while writing INFO")
                    .closing(client),
            );
        }
    }
    let info_len = info.len();
    drop(info);
    *info_sent = info_len;
    shared.metrics.upstream_to_client.increment(info_len as u64);

    // 4. Classic TLS: the client upgrades after INFO.
    if let Some(t) = tls {
        if !client.is_tls() {
            // A silent client falls through to the CONNECT read, which reports the timeout.
            match peek_first(&client, deadline).await {
                Ok(Some(TLS_HANDSHAKE_RECORD)) => {
                    client = handshake(shared, client, deadline).await?
                }
                Ok(Some(_)) if t.required => {
                    return Err(Refusal::new(
                        Reject::TlsRequired,
                        "plaintext where TLS is required",
                    )
                    .reply(client, protocol::ERR_TLS_REQUIRED));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(
                        Refusal::new(Reject::Protocol, format!("reading: {e}")).closing(client)
                    )
                }
            }
        }
    }

    // 5. CONNECT.
    let max = config.listener.max_control_line;
    let mut buf: Vec<u8> = Vec::new();
    let line = loop {
        match protocol::scan_connect(&buf, max) {
            Ok(Some(line)) => break line,
            Ok(None) => {}
            Err(e) => {
                let reply = e.client_error();
                return Err(Refusal::new(Reject::Protocol, e.to_string()).reply(client, reply));
            }
        }
        if buf.capacity() == buf.len() {
            // Grow in modest steps: a silent client costs only its first small buffer.
            buf.reserve(if buf.is_empty() {
                256
            } else {
                buf.len().min(max + 2)
            });
        }
        match timeout_at(deadline, client.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                return Err(
                    Refusal::new(Reject::Protocol, "client closed before CONNECT").closing(client),
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(
                    Refusal::new(Reject::Protocol, format!("reading CONNECT: {e}")).closing(client),
                )
            }
            Err(_) => {
                return Err(
                    Refusal::new(Reject::AuthTimeout, "no CONNECT within the window")
                        .reply(client, protocol::ERR_AUTH_TIMEOUT),
                )
            }
        }
    };

    // 6. Forward CONNECT (signed when ADR-55 is on) and whatever the client pipelined after it.
    let mut forward = match (&shared.signer, &nonce) {
        (Some(kp), Some(nonce)) => match kp.sign(nonce.as_bytes()) {
            Ok(sig) => {
                let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
                protocol::connect_with_proxy_sig(&buf, &line, &sig)
            }
            Err(_) => buf[..line.line_len].to_vec(),
        },
        _ => buf[..line.line_len].to_vec(),
    };
    forward.extend_from_slice(&buf[line.line_len..]);
    shared
        .metrics
        .client_to_upstream
        .increment(forward.len() as u64);
    // A few KiB into a fresh socket; the bound only guards against an upstream that stopped
    // reading, so the connection cannot sit in the pending phase forever.
    let limit = config.upstream.connect_timeout;
    match tokio::time::timeout(limit, write_flush(&mut upstream_stream, &forward)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Refusal::new(
                Reject::UpstreamUnavailable,
                format!("upstream closed before CONNECT: {e}"),
            ))
        }
        Err(_) => {
            return Err(Refusal::new(
                Reject::UpstreamUnavailable,
                "upstream did not accept the CONNECT",
            ))
        }
    }
    Ok(Ready {
        identity: line.client_identity(),
        info_len,
        advert,
        forwarded: forward.len(),
        client,
        upstream: upstream_stream,
    })
}

/// The client TLS handshake, limited by `tls.timeout` and by the window. A window missed here
/// closes silently (there is no channel to send `-ERR` on).
async fn handshake(
    shared: &Shared,
    client: Stream,
    deadline: tokio::time::Instant,
) -> Result<Stream, Refusal> {
    let Some(t) = shared.client_tls.as_ref() else {
        return Ok(client);
    };
    let Stream::Plain(tcp) = client else {
        return Ok(client);
    };
    let started = Instant::now();
    let limit = deadline.min(tokio::time::Instant::now() + t.timeout);
    match timeout_at(limit, Box::pin(t.acceptor.accept(tcp))).await {
        Ok(Ok(s)) => {
            shared
                .metrics
                .tls_handshake
                .record(started.elapsed().as_secs_f64());
            Ok(Stream::Tls(Box::new(s.into())))
        }
        Ok(Err(e)) => Err(Refusal::new(
            Reject::TlsHandshake,
            format!("TLS handshake failed: {e}"),
        )),
        Err(_) if limit == deadline => Err(Refusal::new(
            Reject::AuthTimeout,
            "window closed during the TLS handshake",
        )),
        Err(_) => Err(Refusal::new(
            Reject::TlsHandshake,
            "TLS handshake timed out",
        )),
    }
}

/// The first byte the client sent, without consuming it; `None` if it closed. Only meaningful
/// on a plaintext socket.
async fn peek_first(client: &Stream, limit: tokio::time::Instant) -> std::io::Result<Option<u8>> {
    let Stream::Plain(tcp) = client else {
        return Ok(None);
    };
    let mut b = [0u8; 1];
    match timeout_at(limit, tcp.peek(&mut b)).await {
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) => Ok(Some(b[0])),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

async fn write_flush(s: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

/// Sends a final `-ERR`, then closes in a way that lets the client read it: FIN first, then a
/// short, bounded wait that discards whatever the client still sends.
async fn close_with(mut client: Stream, reply: &[u8]) {
    let work = async {
        write_flush(&mut client, reply).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending connection's task is this future plus what it holds. The large, short-lived
    /// states (TLS handshake, upstream dial) are boxed so that a flood of silent clients costs
    /// little; this keeps that true.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let config = Config::parse(
            "[upstream]\nservers = [\"nats://127.0.0.1:9\"]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let gateway = crate::Gateway::new(config).unwrap();
        let shared = gateway.shared.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let listener_config = shared.config.load().listener.clone();
        let admission = shared
            .limits
            .admit(peer.ip(), &listener_config, &shared.metrics)
            .unwrap();
        let task = serve(shared.clone(), tcp, peer, admission);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "the per-connection future is {size} bytes");
        eprintln!("per-connection future: {size} bytes");
    }
}
