//! The accept loop, the connection limits checked at accept, and graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::metrics::{Metrics, Phase, Reject};
use crate::protocol;
use crate::session;
use crate::Shared;

/// Connection counts the limits are checked against.
#[derive(Default)]
pub struct Limits {
    open: AtomicUsize,
    pending: AtomicUsize,
    /// Pending connections per client address; entries are removed when they reach zero, so
    /// the map holds only addresses that have a connection inside the window right now.
    pending_per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
}

impl Limits {
    /// Admits a connection or says which limit it hit. Counts are taken here, before any
    /// upstream dial, so a flood never reaches nats-server.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        cfg: &ListenerConfig,
        metrics: &Arc<Metrics>,
    ) -> Option<Admission> {
        let mut per_ip = self
            .pending_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let ip_count = per_ip.get(&ip).copied().unwrap_or(0);
        // The descriptor budget caps max_connections so the table never runs full.
        let max_connections = cfg.max_connections.min(crate::fdlimit::client_cap());
        if self.open.load(Ordering::Relaxed) >= max_connections
            || self.pending.load(Ordering::Relaxed) >= cfg.max_pending
            || ip_count >= cfg.max_pending_per_ip
        {
            return None;
        }
        per_ip.insert(ip, ip_count + 1);
        drop(per_ip);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::Relaxed);
        metrics.active(Phase::Pending).increment(1.0);
        Some(Admission {
            limits: self.clone(),
            metrics: metrics.clone(),
            ip,
            phase: Phase::Pending,
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    fn release_pending(&self, ip: IpAddr) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self
            .pending_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Connections open now (pending and established).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection's place in the limits and the active gauge. Dropping it, on whatever path the
/// connection ends, gives the place back, so the counts and `natsgate_connections_active`
/// always return to zero.
pub struct Admission {
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    ip: IpAddr,
    phase: Phase,
    id: u64,
}

impl Admission {
    /// The connection id used in log lines.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The CONNECT went through: leave the pending counts.
    pub fn established(&mut self) {
        if self.phase == Phase::Pending {
            self.limits.release_pending(self.ip);
            self.metrics.active(Phase::Pending).decrement(1.0);
            self.metrics.active(Phase::Established).increment(1.0);
            self.phase = Phase::Established;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.phase == Phase::Pending {
            self.limits.release_pending(self.ip);
        }
        self.metrics.active(self.phase).decrement(1.0);
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts until shutdown starts, then stops accepting (the listener is closed, so new
/// connections are refused), lets established connections drain for `drain_timeout`, and
/// closes what is left. Returns when every connection task has finished.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let tasks = TaskTracker::new();
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop_pending.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::ZERO;
                shared.metrics.accepted.increment(1);
                accept_one(&shared, &tasks, tcp, peer);
            }
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept: connection failed before it was accepted");
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning on a listener that
                // stays readable; service resumes once descriptors free up.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.stop_pending.cancelled() => break,
                }
            }
        }
    }
    drop(listener);
    tasks.close();
    let open = shared.limits.open();
    if open > 0 {
        tracing::info!(
            open,
            drain_timeout_s = shared.config.load().drain_timeout.as_secs_f64(),
            "draining connections"
        );
    }
    let drain = shared.config.load().drain_timeout;
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::info!(
            open = shared.limits.open(),
            "drain timeout reached; closing remaining connections"
        );
    }
    shared.stop_all.cancel();
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
            tracing::info!(peer = %peer, reason = Reject::Limit.as_str(), "connection refused: limit reached");
            // The socket is fresh, so this small write fits its buffer; never wait on it.
            let _ = tcp.try_write(protocol::ERR_MAX_CONNECTIONS);
            if let Ok(std) = tcp.into_std() {
                let _ = std.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
pub(crate) fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}
