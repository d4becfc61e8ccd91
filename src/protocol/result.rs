//! Result-backend records in Celery's Redis format (celery-wire §7): the JSON stored at
//! `celery-task-meta-<id>` and published on the channel of the same name, with the key
//! order Celery writes. Pure; storing them is the worker's business.

use super::isotime::isoformat;
use super::pyjson::dumps;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Celery's default `result_expires`: one day.
pub const RESULT_TTL_SECS: u64 = 86_400;

/// The Redis key (and pub/sub channel) of a task's result.
#[must_use]
pub fn result_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// Final (or retry) state of a task, as Celery spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Finished and returned a value.
    Success,
    /// Raised, ran out of time, or could not be run.
    Failure,
    /// Failed and was sent again.
    Retry,
    /// Not run (expired or revoked).
    Revoked,
}

impl TaskState {
    /// `SUCCESS`, `FAILURE`, `RETRY`, `REVOKED`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Retry => "RETRY",
            Self::Revoked => "REVOKED",
        }
    }
}

/// An exception as Celery serializes it for JSON: Python rebuilds `exc_module.exc_type(*exc_message)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExcInfo {
    /// Class name, e.g. `ExecFailed`.
    pub exc_type: String,
    /// Constructor arguments, usually one message string.
    pub exc_message: Vec<Value>,
    /// Module, e.g. `beatd` or `celery.exceptions`.
    pub exc_module: String,
}

impl ExcInfo {
    /// An exception with one message argument.
    #[must_use]
    pub fn new(exc_type: &str, message: impl Into<String>, exc_module: &str) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_message: vec![Value::String(message.into())],
            exc_module: exc_module.into(),
        }
    }

    fn to_value(&self) -> Value {
        json!({"exc_type": self.exc_type, "exc_message": self.exc_message,
               "exc_module": self.exc_module})
    }
}

/// One result record.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    /// The task id.
    pub task_id: String,
    /// The state.
    pub state: TaskState,
    /// Return value (SUCCESS) or serialized exception (the others).
    pub result: Value,
    /// Traceback text (FAILURE/RETRY), `None` otherwise.
    pub traceback: Option<String>,
    /// When the task finished.
    pub date_done: DateTime<Utc>,
}

impl ResultRecord {
    /// SUCCESS with `value`.
    #[must_use]
    pub fn success(task_id: &str, value: Value, date_done: DateTime<Utc>) -> Self {
        Self::new(task_id, TaskState::Success, value, None, date_done)
    }

    /// FAILURE with an exception and optional traceback text.
    #[must_use]
    pub fn failure(
        task_id: &str,
        exc: &ExcInfo,
        traceback: Option<String>,
        date_done: DateTime<Utc>,
    ) -> Self {
        Self::new(
            task_id,
            TaskState::Failure,
            exc.to_value(),
            traceback,
            date_done,
        )
    }

    /// RETRY, as Celery records it: the `Retry` exception whose message says why and when.
    #[must_use]
    pub fn retry(
        task_id: &str,
        message: &str,
        traceback: Option<String>,
        date_done: DateTime<Utc>,
    ) -> Self {
        let exc = ExcInfo::new("Retry", message, "celery.exceptions");
        Self::new(
            task_id,
            TaskState::Retry,
            exc.to_value(),
            traceback,
            date_done,
        )
    }

    /// REVOKED because the message expired before it started (Celery's exact record).
    #[must_use]
    pub fn revoked_expired(task_id: &str, date_done: DateTime<Utc>) -> Self {
        let exc = ExcInfo::new("TaskRevokedError", "expired", "celery.exceptions");
        Self::new(task_id, TaskState::Revoked, exc.to_value(), None, date_done)
    }

    /// REVOKED by a remote-control `revoke`: `reason` is Celery's `revoked` (skipped before
    /// it started) or `terminated` (killed while running).
    #[must_use]
    pub fn revoked(task_id: &str, reason: &str, date_done: DateTime<Utc>) -> Self {
        let exc = ExcInfo::new("TaskRevokedError", reason, "celery.exceptions");
        Self::new(task_id, TaskState::Revoked, exc.to_value(), None, date_done)
    }

    /// FAILURE for a task name nobody registered (Celery's exact record).
    #[must_use]
    pub fn not_registered(task_id: &str, task: &str, date_done: DateTime<Utc>) -> Self {
        let exc = ExcInfo::new("NotRegistered", task, "celery.exceptions");
        Self::new(task_id, TaskState::Failure, exc.to_value(), None, date_done)
    }

    fn new(
        task_id: &str,
        state: TaskState,
        result: Value,
        traceback: Option<String>,
        date_done: DateTime<Utc>,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            state,
            result,
            traceback,
            date_done,
        }
    }

    /// The Redis key it is stored under.
    #[must_use]
    pub fn key(&self) -> String {
        result_key(&self.task_id)
    }

    /// The JSON text: status, result, traceback, children, date_done, task_id.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("status".into(), self.state.as_str().into());
        m.insert("result".into(), self.result.clone());
        m.insert("traceback".into(), self.traceback.clone().into());
        m.insert("children".into(), Value::Array(Vec::new()));
        m.insert("date_done".into(), isoformat(self.date_done).into());
        m.insert("task_id".into(), self.task_id.clone().into());
        dumps(&Value::Object(m))
    }
}

/// A state a running task reports before it ends (`STARTED`, `PROGRESS` or any custom
/// name), as Celery's `update_state` stores it: the meta as `result`, no traceback and a
/// null `date_done` (Celery sets it for ready states only).
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    /// The task id.
    pub task_id: String,
    /// The state name.
    pub state: String,
    /// The meta (`AsyncResult.info`).
    pub meta: Value,
}

/// The states after which a task's record is final (Celery's `READY_STATES`).
pub const READY_STATES: [&str; 3] = ["SUCCESS", "FAILURE", "REVOKED"];

impl StateRecord {
    /// `STARTED` with Celery's `task_track_started` meta.
    #[must_use]
    pub fn started(task_id: &str, pid: u32, hostname: &str) -> Self {
        Self {
            task_id: task_id.into(),
            state: "STARTED".into(),
            meta: json!({"pid": pid, "hostname": hostname}),
        }
    }

    /// The Redis key it is stored under.
    #[must_use]
    pub fn key(&self) -> String {
        result_key(&self.task_id)
    }

    /// The JSON text, in the key order of [`ResultRecord::to_json`].
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("status".into(), self.state.clone().into());
        m.insert("result".into(), self.meta.clone());
        m.insert("traceback".into(), Value::Null);
        m.insert("children".into(), Value::Array(Vec::new()));
        m.insert("date_done".into(), Value::Null);
        m.insert("task_id".into(), self.task_id.clone().into());
        dumps(&Value::Object(m))
    }
}
