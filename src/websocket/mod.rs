//! NATS over WebSocket (`[websocket]`): a second listener whose clients (browsers, mobile apps)
//! are held to the same authorization window as TCP clients and relayed, unwrapped, to the
//! same `[upstream]` as plain NATS, so nats-server needs no `websocket {}` block.
//!
//! One connection's life, the window starting at accept as for TCP:
//!
//! ```text
//! accept ─► limits ─► [TLS (wss)] ─► HTTP upgrade ─► Pending (INFO … CONNECT) ─► relay
//!   └ the window covers all of it, up to the end of the CONNECT line ───────┘
//! ```
//!
//! - [`upgrade`]: the HTTP request, checked and answered as nats-server's websocket port does;
//! - [`io`]: the framing adapter, the WebSocket stream as NATS bytes ([`io::WsIo`]);
//! - [`session`]: one connection, from accept to its close line.
//!
//! After the upgrade the connection goes through the TCP listener's own pending phase
//! ([`crate::session::Pending`], without NATS-level TLS: INFO says no `tls_required`), then
//! through the same relay.

mod io;
mod session;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{TlsConfig, WebSocketConfig};
use crate::listener::Acceptor;
use crate::metrics::{ListenerMetrics, Metrics, Reject};
use crate::shared::Shared;
use crate::tls::{self, TlsError, TlsFiles};

/// The `listener` label value of this listener's series.
pub(crate) const LABEL: &str = "websocket";

/// What the WebSocket listener needs besides [`Shared`]: its own TLS and its own series.
pub(crate) struct WsListener {
    /// `wss://`: the handshake with `[websocket]`'s certificate; `None`: `ws://`.
    tls: Option<WsTls>,
    metrics: ListenerMetrics,
}

/// `[websocket]`'s certificate, served by rustls and reloaded like `[tls]`'s.
pub(crate) struct WsTls {
    acceptor: tokio_rustls::TlsAcceptor,
    files: Arc<TlsFiles>,
    /// Where the certificate's expiry is recorded (see [`WsListener::new`]).
    expiry: Arc<Metrics>,
}

impl WsListener {
    /// Loads the certificate (if any). `metrics` gets the certificate's expiry only when the
    /// TCP listener serves none, so the served-certificate gauge keeps meaning one thing.
    pub(crate) fn new(
        config: &WebSocketConfig,
        tcp_has_tls: bool,
        metrics: &Arc<Metrics>,
    ) -> Result<WsListener, TlsError> {
        let tls = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                // TODO(cert label): a `cert="websocket"` series once the gauge has the label.
                let expiry = match tcp_has_tls {
                    true => Arc::new(Metrics::new()),
                    false => metrics.clone(),
                };
                let mut files = TlsFiles::default();
                let tls_config = TlsConfig {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    ca_file: None,
                    timeout: Duration::from_secs(2),
                    handshake_first: crate::config::HandshakeFirst::On,
                    required: true,
                };
                let server = tls::server_config(&tls_config, &expiry, &mut files)?;
                Some(WsTls {
                    acceptor: tokio_rustls::TlsAcceptor::from(server),
                    files: Arc::new(files),
                    expiry,
                })
            }
            _ => None,
        };
        Ok(WsListener {
            tls,
            metrics: metrics.listener(LABEL),
        })
    }

    /// The certificate to watch and reload (`wss://`), and where its expiry goes.
    pub(crate) fn certs(&self) -> Option<(Arc<TlsFiles>, Arc<Metrics>)> {
        self.tls
            .as_ref()
            .map(|t| (t.files.clone(), t.expiry.clone()))
    }
}

/// Accepts WebSocket clients until shutdown starts, then drains as the TCP listener does:
/// established connections get `shutdown.drain_timeout`, then are closed. Its own stop token
/// for established connections, so an empty TCP listener does not cut the drain short.
pub(crate) async fn serve(shared: Arc<Shared>, ws: Arc<WsListener>, listener: TcpListener) {
    let tasks = TaskTracker::new();
    let stop_relays = CancellationToken::new();
    let mut acceptor = Acceptor::new(listener, LABEL);
    while let Some((tcp, peer)) = acceptor.next(&shared.stop_pending).await {
        ws.metrics.accepted.increment(1);
        accept_one(&shared, &ws, &tasks, &stop_relays, tcp, peer);
    }
    drop(acceptor);
    tasks.close();
    let drain = shared.config.load().shutdown.drain_timeout;
    let _ = tokio::time::timeout(drain, tasks.wait()).await;
    stop_relays.cancel();
    tasks.wait().await;
}

fn accept_one(
    shared: &Arc<Shared>,
    ws: &Arc<WsListener>,
    tasks: &TaskTracker,
    stop_relays: &CancellationToken,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let config = shared.config.load();
    match shared
        .limits
        .admit(peer.ip(), &config.listener, &shared.metrics)
    {
        Some(admission) => {
            let (shared, ws, stop) = (shared.clone(), ws.clone(), stop_relays.clone());
            tasks
                .spawn(async move { session::serve(shared, ws, tcp, peer, admission, stop).await });
        }
        None => {
            ws.metrics.reject(Reject::Limit);
            tracing::info!(peer = %peer, listener = LABEL, reason = Reject::Limit.as_str(), "connection refused: limit reached");
            // A refused client must cost no TLS handshake and no task: a ws:// client gets a
            // 503 at once (the socket is fresh, so it fits), a wss:// client a close.
            if ws.tls.is_none() {
                let _ = tcp.try_write(&upgrade::error_response(503));
            }
            if let Ok(std) = tcp.into_std() {
                let _ = std.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}
