//! The status page at `/` of the HTTP port and the JSON behind it (`/api/status`,
//! `/api/entries`), and the control endpoint (`POST /api/control`) that `beatd pause --url`
//! and the page's buttons use. Server-rendered ([`page`]); the only script is a few lines
//! that post a button's request.
//!
//! Reads the leader, the last runs, the controls and (on Redis) the result backend; never
//! writes them: a control request is queued for the leader like any other
//! ([`crate::control::ControlStore::submit`]). Requests are accepted only with the control
//! token, compared in constant time ([`Token`]), never logged.

pub mod page;
pub mod view;

use crate::beat::BeatStatus;
use crate::clock::SharedClock;
use crate::control::{Action, ControlStore, Request, ResumeCatchUp};
use crate::entry::Entry;
use crate::leader::RedisLeader;
use crate::redis::RedisConn;
use crate::state::StateStore;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The control token: compared in constant time, never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    /// The token `s`.
    #[must_use]
    pub fn new(s: &str) -> Self {
        Self(s.as_bytes().into())
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    #[must_use]
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_ref().ct_eq(candidate.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Who leads, as the console can learn it.
#[derive(Clone)]
pub enum LeaderSource {
    /// The HA beat: the lock on Redis.
    Redis(Box<RedisLeader>),
    /// `beatd run` without Redis: this process, by the state file's lock.
    Embedded,
}

/// What the console reads.
#[derive(Clone)]
pub struct Console {
    /// The beat's current entries.
    pub entries: watch::Receiver<Arc<[Entry]>>,
    /// Requests and pauses.
    pub controls: Arc<dyn ControlStore>,
    /// Last runs.
    pub state: Arc<dyn StateStore>,
    /// The lock.
    pub leader: LeaderSource,
    /// Where task results are (Celery's `celery-task-meta-<id>` keys), when on Redis.
    pub results: Option<RedisConn>,
    /// This replica's beat.
    pub beat: Arc<BeatStatus>,
    /// Wall time.
    pub clock: SharedClock,
    /// The control token; `None`: read-only.
    pub token: Option<Token>,
}

/// How long the endpoint waits for the leader's answer unless the request says.
const WAIT: Duration = Duration::from_secs(10);

/// The console's routes, to merge into the HTTP endpoint.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/status", get(api_status))
        .route("/api/entries", get(api_entries))
        .route("/api/control", post(control))
        .with_state(Arc::new(console))
}

async fn index(State(c): State<Arc<Console>>) -> Response {
    match view::status(&c).await {
        Ok(v) => Html(page::render(&v, c.token.is_some())).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn api_status(State(c): State<Arc<Console>>) -> Response {
    match view::status(&c).await {
        Ok(v) => json(&v),
        Err(e) => unavailable(&e),
    }
}

async fn api_entries(State(c): State<Arc<Console>>) -> Response {
    match view::status(&c).await {
        Ok(v) => json(&v.entries),
        Err(e) => unavailable(&e),
    }
}

fn json(v: &impl serde::Serialize) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(v).expect("views serialize"),
    )
        .into_response()
}

fn unavailable(e: &crate::store::Error) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("store unavailable: {}\n", crate::error_chain(e)),
    )
        .into_response()
}

/// A control request over HTTP: the CLI's whole [`Request`], or the page's entry and action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    /// As built by `beatd pause --url` and the like.
    request: Option<Request>,
    /// The page's button: the entry...
    entry: Option<String>,
    /// ...and `pause`, `resume` or `trigger`.
    action: Option<String>,
    /// How long to wait for the leader.
    wait_ms: Option<u64>,
}

async fn control(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(token) = &c.token else {
        return (
            StatusCode::FORBIDDEN,
            "read-only: start beatd with --control-token to accept control requests\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.matches(given) {
        tracing::warn!(peer = %peer, "control request with a wrong or missing token refused");
        return (StatusCode::UNAUTHORIZED, "wrong or missing control token\n").into_response();
    }
    let body: ControlBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")).into_response(),
    };
    let wait = body
        .wait_ms
        .map_or(WAIT, Duration::from_millis)
        .min(Duration::from_secs(60));
    let now = c.clock.now().timestamp_millis();
    let request = match (body.request, body.entry, body.action.as_deref()) {
        (Some(mut r), None, None) => {
            r.by = format!("{} via http {peer}", r.by);
            r
        }
        (None, Some(entry), Some(action)) => {
            let action = match action {
                "pause" => Action::Pause { until_ms: None },
                "resume" => Action::Resume {
                    catch_up: ResumeCatchUp::None,
                },
                "trigger" => Action::Trigger,
                other => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("unknown action {other:?}: pause, resume or trigger\n"),
                    )
                        .into_response()
                }
            };
            Request {
                id: crate::protocol::new_uuid(),
                entry,
                action,
                by: format!("status page {peer}"),
                at_ms: now,
                deadline_ms: now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
            }
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "send either {\"request\": ...} or {\"entry\": ..., \"action\": ...}\n",
            )
                .into_response()
        }
    };
    match c.controls.submit(&request, wait).await {
        Ok(Some(reply)) => json(&reply),
        Ok(None) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("no leader answered within {wait:?}; the request expires unapplied\n"),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}
