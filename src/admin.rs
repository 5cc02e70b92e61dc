//! The admin HTTP endpoints: `/metrics`, `/livez` (alias `/healthz`) and `/readyz`.
//!
//! Liveness never depends on upstream: as a sidecar, natsgate's startup probe gates the pod
//! that nats-server itself runs in. Readiness does: it wants a loaded certificate (guaranteed
//! once the proxy runs) and an upstream that answered within [`READY_WINDOW`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::shared::Shared;

/// An upstream must have accepted a connection this recently for `/readyz` to pass.
pub(crate) const READY_WINDOW: Duration = Duration::from_secs(10);
/// When no client connection has reached upstream for this long, a probe dials it.
const PROBE_AFTER: Duration = Duration::from_secs(3);

/// Serves the admin endpoints until `stop` fires.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let stop = shared.stop_all.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/healthz", get(livez))
        .route("/readyz", get(readyz))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin server failed");
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
    match shared.upstreams.since_last_success() {
        Some(age) if age <= READY_WINDOW => (StatusCode::OK, "ok\n".to_string()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no upstream answered in the last {}s\n", age.as_secs()),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no upstream has answered yet\n".to_string(),
        ),
    }
}

/// Keeps readiness honest while no clients connect: dials upstream (with a PROXY v2 LOCAL
/// header when PROXY protocol is on) whenever nothing has reached it for a while.
pub(crate) async fn probe_upstream(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let stale = shared
            .upstreams
            .since_last_success()
            .is_none_or(|age| age >= PROBE_AFTER);
        if stale {
            let deadline =
                tokio::time::Instant::now() + shared.config.load().upstream.connect_timeout;
            if let Ok(conn) = shared.upstreams.dial(deadline, None).await {
                drop(conn);
            }
        }
    }
}
