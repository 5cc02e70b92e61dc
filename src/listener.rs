//! The accept loop and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Reject;
use crate::session;
use crate::shared::Shared;

/// Accepts until shutdown starts, then stops accepting (the listener is closed, so new
/// connections are refused), lets established connections drain for `drain_timeout`, and
/// closes what is left. Returns when every connection task has finished.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let tasks = TaskTracker::new();
    let mut acceptor = Acceptor::new(listener, "tcp");
    while let Some((tcp, peer)) = acceptor.next(&shared.stop_pending).await {
        shared.metrics.accepted.increment(1);
        accept_one(&shared, &tasks, tcp, peer);
    }
    drop(acceptor);
    tasks.close();
    let open = shared.limits.open();
    if open > 0 {
        tracing::info!(
            open,
            drain_timeout_s = shared.config.load().shutdown.drain_timeout.as_secs_f64(),
            "draining connections"
        );
    }
    let drain = shared.config.load().shutdown.drain_timeout;
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::info!(
            open = shared.limits.open(),
            "drain timeout reached; closing remaining connections"
        );
        // The drain period is the same for every listener and worker thread: past it, every
        // connection closes. One that drained early must not cut the others short.
        shared.stop_all.cancel();
    }
    tasks.wait().await;
}

fn accept_one(shared: &Arc<Shared>, tasks: &TaskTracker, tcp: TcpStream, peer: SocketAddr) {
    let config = shared.config.load();
    match shared
        .limits
        .admit(peer.ip(), &config.listener, &shared.metrics)
    {
        Some(admission) => {
            tasks.spawn(session::serve(shared.clone(), tcp, peer, admission));
        }
        None => {
            shared.metrics.reject(Reject::Limit);
            if crate::logsummary::refused(Reject::Limit) {
                tracing::info!(peer = %peer, reason = Reject::Limit.as_str(), "connection refused: limit reached");
            }
            // INFO first, then the -ERR, the order nats-server uses: clients that do not see
            // INFO report "INFO not received" instead of the limit. The socket is fresh, so
            // these few hundred bytes fit its buffer; never wait on it.
            let reply = shared.limit_refusal(peer.ip(), config.upstream.strip_connect_urls);
            let _ = tcp.try_write(&reply);
            if let Ok(std) = tcp.into_std() {
                let _ = std.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

/// A listening socket's accept loop, shared by the client, WebSocket and admin listeners:
/// errors that concern only the connection being accepted are skipped, and the others
/// (EMFILE, ENFILE, ENOBUFS) back off, doubling up to 1 s, instead of spinning on a listener
/// that stays readable; service resumes once descriptors free up.
pub(crate) struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
    /// Which listener, for the log lines.
    label: &'static str,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, label: &'static str) -> Acceptor {
        Acceptor {
            listener,
            backoff: Duration::ZERO,
            label,
        }
    }

    /// The next connection; `None` once `stop` has fired (checked first).
    pub(crate) async fn next(
        &mut self,
        stop: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok(conn) => {
                    self.backoff = Duration::ZERO;
                    return Some(conn);
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, listener = self.label, "accept: connection failed before it was accepted");
                }
                Err(e) => {
                    self.backoff =
                        (self.backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tracing::error!(error = %e, listener = self.label, backoff_ms = self.backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}
