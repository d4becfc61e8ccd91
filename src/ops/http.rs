//! The HTTP endpoint: `/healthz` (the process answers), `/readyz` (config loaded and the
//! store reachable; 503 as soon as a graceful stop begins, before anything drains) and
//! `/metrics` (Prometheus text). Owns no state; it reads what it is given.

use crate::ops::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A readiness probe.
pub type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the endpoints report.
pub struct Health {
    /// Whether the process can do its work now (schedules loaded, Redis reachable).
    pub ready: ReadyFn,
    /// Set when a graceful stop begins; readiness turns false at once.
    pub draining: AtomicBool,
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
}

impl Health {
    /// Health that is ready when `ready` says so.
    #[must_use]
    pub fn new(ready: ReadyFn, metrics: Arc<Metrics>) -> Self {
        Self {
            ready,
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether `/readyz` answers 200.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && (self.ready)()
    }
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if health.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(),
    )
}
