//! The admin HTTP endpoints: `/metrics`, `/livez` (alias `/healthz`) and `/readyz`.
//!
//! Liveness never depends on upstream: as a sidecar, natsgate's startup probe gates the pod
//! that nats-server itself runs in. Readiness does: it wants a loaded certificate (guaranteed
//! once the proxy runs) and at least one upstream member that answered its last probe or dial.
//!
//! The admin port is often reachable by more than Prometheus (the manifests bind it on
//! `0.0.0.0`), so it is bounded like nats-server's monitoring port, and more:
//!
//! - a request head must arrive within [`HEADER_READ_TIMEOUT`] of the connection opening or
//!   of the previous response (hyper restarts this timer while it waits for the next request,
//!   so it is also the idle keep-alive timeout);
//! - a request head may be at most [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`] headers;
//! - a handler gets [`REQUEST_TIMEOUT`], and a connection is closed gracefully after
//!   [`MAX_CONNECTION_AGE`] (a client that never reads its response cannot hold it longer);
//! - at most [`crate::fdlimit::admin_cap`] connections are open at once; beyond that a new
//!   connection is closed as soon as it is accepted. The cap is part of the descriptor budget,
//!   so admin connections never take a descriptor the client listener needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{BoxError, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

use crate::listener::Acceptor;
use crate::shared::Shared;

/// Time to send a whole request head, counted from accept or from the previous response:
/// nats-server's monitoring port closes silent connections after 5 s too.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's read buffer cap: a longer request head is answered `431` and closed. (hyper's
/// minimum is 8 KiB; a scrape or probe sends a few hundred bytes.)
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers a request may carry.
pub(crate) const MAX_HEADERS: usize = 32;
/// Time a handler may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed (after its current response) this long after it opened.
pub(crate) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a connection being closed may take to finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Refused admin connections are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/healthz", get(livez))
        .route("/readyz", get(readyz))
        .with_state(shared)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n")
                }))
                .timeout(REQUEST_TIMEOUT),
        )
}

/// Serves the admin endpoints until `stop_all` fires, with at most
/// [`crate::fdlimit::admin_cap`] connections open at once.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let cap = crate::fdlimit::admin_cap();
    let stop = shared.stop_all.clone();
    let app = router(shared);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(cap));
    let tasks = TaskTracker::new();
    let mut refusals = Refusals::default();
    // EMFILE and the like: the budget should prevent it; the acceptor backs off, never spins.
    let mut acceptor = Acceptor::new(listener, "admin");
    while let Some((tcp, _)) = acceptor.next(&stop).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            refusals.note(cap);
            continue;
        };
        let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        });
    }
    drop(acceptor);
    tasks.close();
    tasks.wait().await;
}

/// Counts admin connections closed at the cap, for a log line that cannot flood the log.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, cap: usize) {
        self.since_log += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                cap,
                refused = self.since_log,
                "admin connection cap reached: closing new admin connections"
            );
            self.since_log = 0;
            self.last_log = Some(Instant::now());
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.stop_pending.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
    }
    if shared.upstreams.any_up() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no upstream server is up\n".to_string(),
        )
    }
}
