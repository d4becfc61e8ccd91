//! A hook for metrics: the pipeline reports how each message ended and how long its task
//! ran. The daemon maps it onto `beatd_worker_tasks_total{task,state}` and
//! `beatd_worker_task_duration_seconds{task}`; the worker itself keeps no counters.

use std::time::Duration;

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The task returned a value.
    Succeeded,
    /// The task failed for good (including time limits).
    Failed,
    /// The task failed and a retry was sent.
    Retried,
    /// The message had expired; the task did not run.
    Revoked,
    /// No task of that name is registered.
    Unregistered,
    /// The message was malformed and dropped.
    Rejected,
}

impl Outcome {
    /// A lowercase label value: `success`, `failure`, `retry`, `revoked`, `unregistered`,
    /// `rejected`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "success",
            Self::Failed => "failure",
            Self::Retried => "retry",
            Self::Revoked => "revoked",
            Self::Unregistered => "unregistered",
            Self::Rejected => "rejected",
        }
    }
}

/// Receives one call per handled message. Called inline on the worker's tasks: keep it cheap
/// (increment a counter, observe a histogram).
pub trait Observer: Send + Sync + 'static {
    /// `task` is the task name (empty for a rejected message whose name is unknown);
    /// `ran_for` is set when the task actually ran.
    fn task_done(&self, task: &str, outcome: Outcome, ran_for: Option<Duration>);
}
