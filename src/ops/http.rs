//! The HTTP endpoint: `/healthz` (every loop keeps turning, see `ops::liveness`), `/readyz` (config loaded and the
//! store reachable; 503 as soon as a graceful stop begins, before anything drains) and
//! `/metrics` (Prometheus text). Owns no state; it reads what it is given.

use crate::ops::liveness::Liveness;
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
    /// The loops whose progress `/healthz` reports.
    pub liveness: Liveness,
}

impl Health {
    /// Health that is ready when `ready` says so.
    #[must_use]
    pub fn new(ready: ReadyFn, metrics: Arc<Metrics>, liveness: Liveness) -> Self {
        Self {
            ready,
            draining: AtomicBool::new(false),
            metrics,
            liveness,
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
    extra: Option<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    // More routes from the caller (the status page), which this module knows nothing of.
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let stalled = health.liveness.stalled();
    if stalled.is_empty() {
        return (StatusCode::OK, "ok\n".to_owned());
    }
    let what: Vec<String> = stalled
        .iter()
        .map(|(name, age)| format!("{name} loop stalled for {}s", age.as_secs()))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{}\n", what.join(", ")),
    )
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
