//! The endpoint `http` tasks post their interim states to: `POST /tasks/<id>/state` with
//! `Authorization: Bearer <token>` and the same JSON object an `exec` task writes to its
//! progress fd (`{"state": "PROGRESS", "meta": {…}}`). Each run gets its own URL and token in
//! its request (`progress_url`, `progress_token`); both stop working when the run ends.
//! Served only when the worker is given an address (`--progress-addr`).

use super::progress::MAX_UPDATE_BYTES;
use super::state::{PostError, WorkerState};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Serves the endpoint on `listener` until `stop`.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WorkerState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/tasks/{id}/state", post(post_state))
        .layer(DefaultBodyLimit::max(MAX_UPDATE_BYTES))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn post_state(
    State(state): State<WorkerState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match state.post_state(&id, token.trim(), &body) {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e @ PostError::NotRunning(_)) => (StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e @ PostError::BadToken) => (StatusCode::UNAUTHORIZED, format!("{e}\n")),
        Err(PostError::Rejected(e)) => {
            tracing::warn!(task_id = %id, error = %e, "ignored a malformed posted state");
            (StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}
