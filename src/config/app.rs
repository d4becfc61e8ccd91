//! `beatd.toml`, the application config: broker, namespace, leader lock, HTTP address, state
//! file, schedule paths and the worker's task definitions. Owns the public typed form, its
//! defaults, and its stage-2 checks (`raw::RawAppConfig` → [`AppConfig`]). Does not own
//! environment variables and flags: the CLI merges those over what this returns.

use super::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use super::parse::{self, Node};
use super::raw::{RawAppConfig, RawAppDefaults, RawTask, RawWorker};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod check;

/// The validated `beatd.toml`. Relative paths in the file are resolved against the file's
/// directory, so the same file works whatever the working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Redis URL for broker, lock and state; `None` means embedded mode (`beatd run`).
    pub redis_url: Option<RedisUrl>,
    /// Prefix of every beatd key in Redis (`{namespace}:leader`, ...). Default `beatd`.
    pub namespace: String,
    /// Leader lock TTL; the holder renews every third of it. Default 10 s.
    pub lock_ttl: Duration,
    /// Address of `/healthz`, `/readyz` and `/metrics`; `None` when set to `"off"`.
    /// Default `127.0.0.1:9808`.
    pub http_addr: Option<SocketAddr>,
    /// Embedded-mode last-run state file; `None` lets the CLI pick (`$STATE_DIRECTORY`, or
    /// `./beatd-state.json`).
    pub state_file: Option<PathBuf>,
    /// Schedule files or directories. Default `["schedules"]`.
    pub schedules: Vec<PathBuf>,
    /// `[worker]`.
    pub worker: WorkerConfig,
    /// `[defaults] timezone`: the zone of entries whose schedule file sets none (Celery's
    /// `timezone` setting). `None`: UTC.
    pub default_timezone: Option<crate::schedule::Tz>,
}

/// `[worker]`: what the bundled worker consumes and how it runs tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Queues to consume, in kombu's order. Default `["celery"]`.
    pub queues: Vec<String>,
    /// Tasks run at once; `None` means one per CPU.
    pub concurrency: Option<usize>,
    /// Unacknowledged messages of a dead worker are restored after this. Default 1 h.
    pub visibility_timeout: Duration,
    /// How long in-flight tasks may run on after SIGTERM. Default 30 s.
    pub shutdown_grace: Duration,
    /// Task handlers by Celery task name (`[worker.tasks."<name>"]`).
    pub tasks: BTreeMap<String, TaskDef>,
}

/// One `[worker.tasks."<name>"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDef {
    /// How the task runs.
    pub kind: TaskKind,
    /// The task is killed and fails when it runs longer; `None` means no limit.
    pub time_limit: Option<Duration>,
    /// Retries after a failure before the failure is final. Default 0.
    pub max_retries: u32,
    /// Delay before the first retry, doubling for each further one. Default 1 s.
    pub retry_backoff: Duration,
    /// Store no result in the result backend. Default false.
    pub ignore_result: bool,
    /// Store `STARTED` when the task starts (Celery's `track_started`). Default false.
    pub track_started: bool,
}

/// What a task does when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// `kind = "exec"`: runs a program directly, never through a shell.
    Exec {
        /// Program and its arguments; never empty.
        command: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// Working directory; the worker's own when `None`.
        cwd: Option<PathBuf>,
    },
    /// `kind = "http"`: POSTs the task as JSON.
    Http {
        /// `http://` or `https://` URL.
        url: String,
        /// Request headers.
        headers: BTreeMap<String, HeaderValue>,
        /// Request timeout; `None` leaves it to the worker's default.
        timeout: Option<Duration>,
    },
}

/// An HTTP header value of an `http` task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Sent as written.
    Literal(String),
    /// `{ env = "VAR" }`: read from this environment variable when the task runs, so secrets
    /// stay out of the file.
    Env(String),
}

/// A Redis URL whose password never shows in `Debug` or `Display` (logs, `status`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL to connect with, password included.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Validates the scheme (`redis`, `rediss`, `redis+unix`, `unix`).
    ///
    /// # Errors
    /// A message naming the scheme found, for a diagnostic.
    pub fn parse(url: &str) -> Result<Self, String> {
        match url.split_once("://") {
            Some(("redis" | "rediss" | "redis+unix" | "unix", rest)) if !rest.is_empty() => {
                Ok(RedisUrl(url.to_owned()))
            }
            Some((scheme, _)) => Err(format!("unsupported Redis URL scheme `{scheme}`")),
            None => Err("not a URL".to_owned()),
        }
    }

    /// The URL with any password replaced by `****`.
    #[must_use]
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// Replaces the password of `scheme://user:password@host` with `****`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None if !auth.is_empty() => format!("{scheme}://****@{host}"),
        None => url.to_owned(),
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            redis_url: None,
            namespace: "beatd".to_owned(),
            lock_ttl: Duration::from_secs(10),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9808))),
            state_file: None,
            schedules: vec![PathBuf::from("schedules")],
            worker: WorkerConfig::default(),
            default_timezone: None,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec!["celery".to_owned()],
            concurrency: None,
            visibility_timeout: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(30),
            tasks: BTreeMap::new(),
        }
    }
}

/// Reads and validates `beatd.toml`; every problem is reported.
///
/// # Errors
/// Every problem found, each with `path:line:column`.
pub fn load_app_config(path: &Path) -> Result<AppConfig, Diagnostics> {
    let file = super::read(path).map_err(|d| Diagnostics(vec![d]))?;
    load(&file)
}

/// Validates `beatd.toml` text as if read from `path` (relative paths resolve against its
/// directory).
///
/// # Errors
/// Every problem found, each with `path:line:column`.
pub fn load_app_config_str(path: impl Into<PathBuf>, text: &str) -> Result<AppConfig, Diagnostics> {
    load(&SourceFile::new(path, text))
}

fn load(file: &SourceFile) -> Result<AppConfig, Diagnostics> {
    let mut out = Vec::new();
    let doc = parse::document(file).map_err(Diagnostics)?;
    // Narrowing only: where a whole-file deserialization failed, find every bad key below.
    let tasks = |key: &str, node: &Node<'_>, out: &mut Vec<Diagnostic>| {
        let Some(tasks) = node.get_ref().as_table().filter(|_| key == "tasks") else {
            return false;
        };
        for (name, task) in tasks.iter() {
            let what = format!("[worker.tasks.\"{}\"]", name.get_ref());
            parse::table::<RawTask>(file, &what, task, &parse::flat, out);
        }
        true
    };
    let worker = |key: &str, node: &Node<'_>, out: &mut Vec<Diagnostic>| match key {
        "worker" => {
            parse::table::<RawWorker>(file, "[worker]", node, &tasks, out);
            true
        }
        "defaults" => {
            parse::table::<RawAppDefaults>(
                file,
                "[defaults] of beatd.toml",
                node,
                &parse::flat,
                out,
            );
            true
        }
        _ => false,
    };
    let Some(raw) = parse::table::<RawAppConfig>(file, "beatd.toml", &doc, &worker, &mut out)
    else {
        return Err(Diagnostics(out));
    };
    let raw = raw.value;
    let config = check::app(file, raw.get_ref(), &mut out);
    out.sort_by_key(|d| (d.line, d.column));
    if out.iter().any(Diagnostic::is_error) {
        return Err(Diagnostics(out));
    }
    Ok(config)
}
