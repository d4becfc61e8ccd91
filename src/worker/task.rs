//! The contract between the worker and a task: what a handler is given ([`TaskRequest`]),
//! what it answers ([`TaskResult`], [`TaskError`]) and the [`Handler`] trait. The built-in
//! kinds (`exec`, `http`) and the [`super::Registry`] import this; it imports neither.

use super::progress::{RejectedUpdate, StateUpdates};
use crate::protocol::ExcInfo;
use serde_json::{Map, Value};

/// What a handler is given.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// How many times it was retried before.
    pub retries: u32,
    /// Whether a kombu restore put it back (it may have run before).
    pub redelivered: bool,
    /// The `beatd_scheduled_at` header, when beatd sent it.
    pub scheduled_at: Option<String>,
    /// Every message header.
    pub headers: Map<String, Value>,
    /// Where interim states go ([`TaskRequest::update_state`]).
    pub updates: StateUpdates,
    /// The URL an out-of-process task (`http`) POSTs its states to, when the worker serves
    /// one (`--progress-addr`).
    pub progress_url: Option<String>,
    /// The bearer token for [`TaskRequest::progress_url`], valid while this run lasts.
    pub progress_token: Option<String>,
}

impl TaskRequest {
    /// Reports an interim state, as Celery's `self.update_state(state=…, meta=…)`: stored in
    /// the result backend so `AsyncResult(id).state` / `.info` show it while the task runs.
    /// Updates are coalesced (at most ten stored a second, the latest wins) and dropped once
    /// the task has ended.
    ///
    /// # Errors
    /// A final state (`SUCCESS`, `FAILURE`, `REVOKED`), an empty or overlong name, or a meta
    /// over 64 KiB of JSON.
    pub fn update_state(&self, state: &str, meta: Value) -> Result<(), RejectedUpdate> {
        self.updates.update_state(state, meta)
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// The exception stored in the FAILURE (or RETRY) record.
    pub exc: ExcInfo,
    /// Traceback text (for exec: the stderr tail).
    pub traceback: Option<String>,
    /// Whether a retry may help (exit status, HTTP 5xx, connection errors).
    pub retryable: bool,
}

impl TaskError {
    /// A failure that a retry would not fix.
    #[must_use]
    pub fn fatal(exc_type: &str, message: impl Into<String>) -> Self {
        Self {
            exc: ExcInfo::new(exc_type, message, "beatd"),
            traceback: None,
            retryable: false,
        }
    }

    /// A failure worth retrying when the task allows retries.
    #[must_use]
    pub fn retryable(exc_type: &str, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::fatal(exc_type, message)
        }
    }

    /// Adds traceback text.
    #[must_use]
    pub fn with_traceback(mut self, tb: impl Into<String>) -> Self {
        self.traceback = Some(tb.into());
        self
    }
}

/// The outcome of one run: the JSON result, or why it failed.
pub type TaskResult = Result<Value, TaskError>;

/// Runs one task.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs the task once. Dropping the future must stop the work (time limits and
    /// immediate shutdown rely on it).
    async fn call(&self, req: TaskRequest) -> TaskResult;
}
