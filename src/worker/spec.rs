//! How a task is run, as configured: `[worker.tasks."<name>"]` of beatd.toml
//! (`config::TaskDef`) and the options the worker derives from it. Owns no execution; see
//! `exec`, `http` and `registry`.

use std::time::Duration;

/// Task kinds and header values are the ones `beatd.toml` defines: one type from the file to
/// the runner.
pub use crate::config::{HeaderValue, TaskKind};

/// One configured task: `[worker.tasks."<name>"]` of beatd.toml, or built in code.
pub type TaskSpec = crate::config::TaskDef;

impl TaskSpec {
    /// A spec of `kind` with no limit, no retries, 1 s backoff, results stored.
    #[must_use]
    pub fn new(kind: TaskKind) -> Self {
        Self {
            kind,
            time_limit: None,
            max_retries: 0,
            retry_backoff: Duration::from_secs(1),
            ignore_result: false,
            track_started: false,
        }
    }

    /// The options part, shared with Rust handlers.
    #[must_use]
    pub fn options(&self) -> TaskOptions {
        TaskOptions {
            time_limit: self.time_limit,
            max_retries: self.max_retries,
            retry_backoff: self.retry_backoff,
            ignore_result: self.ignore_result,
            track_started: self.track_started,
        }
    }
}

/// Execution policy of a registered task, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// See [`TaskSpec::time_limit`].
    pub time_limit: Option<Duration>,
    /// See [`TaskSpec::max_retries`].
    pub max_retries: u32,
    /// See [`TaskSpec::retry_backoff`].
    pub retry_backoff: Duration,
    /// See [`TaskSpec::ignore_result`].
    pub ignore_result: bool,
    /// See [`TaskSpec::track_started`].
    pub track_started: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            time_limit: None,
            max_retries: 0,
            retry_backoff: Duration::from_secs(1),
            ignore_result: false,
            track_started: false,
        }
    }
}

impl TaskOptions {
    /// Delay before retry number `retries + 1`: backoff × 2^retries, at most one hour.
    #[must_use]
    pub fn backoff(&self, retries: u32) -> Duration {
        const CAP: Duration = Duration::from_secs(3600);
        crate::backoff::Backoff::between(self.retry_backoff, CAP).after(retries.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let o = TaskOptions {
            retry_backoff: Duration::from_secs(2),
            ..TaskOptions::default()
        };
        assert_eq!(o.backoff(0), Duration::from_secs(2));
        assert_eq!(o.backoff(3), Duration::from_secs(16));
        assert_eq!(o.backoff(40), Duration::from_secs(3600));
    }
}
