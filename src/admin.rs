//! The admin HTTP endpoints: `/metrics`, `/livez` (alias `/healthz`) and `/readyz`.
//!
//! Liveness never depends on upstream: as a sidecar, natsgate's startup probe gates the pod
//! that nats-server itself runs in. Readiness does: it wants a loaded certificate (guaranteed
//! once the proxy runs) and at least one upstream member that answered its last probe or dial.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::shared::Shared;

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
    if shared.upstreams.any_up() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no upstream server is up\n".to_string(),
        )
    }
}
