//! How a task is run, as configured: the worker's mirror of `[worker.tasks."<name>"]` in
//! beatd.toml (`config::TaskDef`), kept free of config parsing so the lead can map one to
//! the other field for field. Owns no execution; see `exec`, `http` and `registry`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One configured task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// What running it means.
    pub kind: TaskKind,
    /// Hard limit per run; the run is killed and fails with `TimeLimitExceeded`. A message's
    /// own `timelimit` header (hard part) wins when set.
    pub time_limit: Option<Duration>,
    /// Retries after a retryable failure (non-zero exit, HTTP 5xx or connection error).
    pub max_retries: u32,
    /// Delay before the first retry; doubles on each further retry, capped at one hour.
    pub retry_backoff: Duration,
    /// Store no result (Celery's `ignore_result`); a message header `ignore_result` wins.
    pub ignore_result: bool,
}

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
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            time_limit: None,
            max_retries: 0,
            retry_backoff: Duration::from_secs(1),
            ignore_result: false,
        }
    }
}

impl TaskOptions {
    /// Delay before retry number `retries + 1`: backoff × 2^retries, at most one hour.
    #[must_use]
    pub fn backoff(&self, retries: u32) -> Duration {
        const CAP: Duration = Duration::from_secs(3600);
        let factor = 1u32.checked_shl(retries.min(31)).unwrap_or(u32::MAX);
        self.retry_backoff
            .checked_mul(factor)
            .map_or(CAP, |d| d.min(CAP))
    }
}

/// The kinds of configured tasks.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// Run a program directly (never through a shell).
    Exec {
        /// Program and its arguments; the message's args are never spliced in.
        command: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// Working directory; the worker's when `None`.
        cwd: Option<PathBuf>,
    },
    /// POST the task as JSON to a URL.
    Http {
        /// Target URL.
        url: String,
        /// Request headers.
        headers: BTreeMap<String, HeaderValue>,
        /// Per-request timeout; 30 s when `None`.
        timeout: Option<Duration>,
    },
}

/// A configured HTTP header value: literal, or read from the environment (secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// The value itself.
    Value(String),
    /// The name of an environment variable holding it (`{ env = "VAR" }`); it must be set
    /// when the task is registered and is re-read on every request.
    Env(String),
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
