//! Handling one message, independent of where it came from: decode (rejecting malformed
//! messages with a logged reason and, when the id is known, a stored FAILURE), wait for the
//! ETA, revoke when expired or revoked by remote control, dispatch to the registered handler
//! under its time limit (storing `STARTED` and the task's interim states on the way), decide on
//! a retry, and say which canvas messages (chain, callbacks, errbacks) follow. The Redis
//! consumer and the embedded in-process queue of `beatd run` share it; neither acking nor
//! queue I/O happens here.

use super::canvas::{self, Outgoing};
use super::progress::{self, StateUpdates};
use super::registry::{LiveRegistry, Registry};
use super::results::ResultSink;
use super::state::WorkerState;
use super::task::{TaskError, TaskRequest};
use crate::clock::SharedClock;
use crate::ops::metrics::Metrics;
use crate::protocol::{
    dumps, isoformat, new_uuid, priority_list_key, DecodeError, Envelope, ExcInfo, ParsedTask,
    ResultRecord, StateRecord,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Longest excerpt of a result in the log line of a finished task.
const RESULT_EXCERPT: usize = 512;

/// Default cap on one message's size (kombu has none; a 10 MiB task message is a mistake).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 << 20;

/// What the transport should do once a message is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge it (it ran, failed for good, was revoked or was malformed).
    Done,
    /// Acknowledge it and enqueue this retry message (same id, `retries + 1`, an ETA).
    Retry {
        /// Redis list (queue plus priority suffix) to LPUSH onto.
        list_key: String,
        /// The new envelope.
        payload: String,
        /// When the retry is due.
        eta: DateTime<Utc>,
    },
}

/// A run's outcome before anything is written: what to do with the message and the result
/// to store (`None` when results are ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Ack, or ack and send a retry.
    pub disposition: Disposition,
    /// The record to store.
    pub record: Option<ResultRecord>,
    /// Canvas messages to send with the ack (the chain's next task, callbacks, errbacks).
    pub followups: Vec<Outgoing>,
}

impl Finished {
    fn done(record: Option<ResultRecord>) -> Self {
        Self {
            disposition: Disposition::Done,
            record,
            followups: Vec::new(),
        }
    }
}

/// The shared "handle one envelope" pipeline.
#[derive(Clone)]
pub struct Pipeline {
    /// Registered tasks (replaced on reload).
    registry: LiveRegistry,
    /// Running requests and revokes, shared with remote control.
    state: WorkerState,
    /// Store `STARTED` for every task (Celery's `task_track_started`), not only for those
    /// whose options ask for it.
    track_started: bool,
    /// Base URL of the endpoint `http` tasks post states to (`progress_http`), when served.
    progress_base: Option<String>,
    /// Where results go.
    results: Arc<dyn ResultSink>,
    /// Wall time (date_done, ETA, expiry).
    clock: SharedClock,
    /// Larger messages are rejected.
    max_message_bytes: usize,
    /// `beatd_worker_*` metrics: tasks by task and state, run time, in flight. A private
    /// registry unless the daemon hands its own over with [`Pipeline::with_metrics`].
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// A pipeline over `registry`, storing into `results`.
    #[must_use]
    pub fn new(
        registry: impl Into<LiveRegistry>,
        results: Arc<dyn ResultSink>,
        clock: SharedClock,
    ) -> Self {
        Self {
            registry: registry.into(),
            state: WorkerState::default(),
            track_started: false,
            progress_base: None,
            results,
            clock,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            metrics: Arc::default(),
        }
    }

    /// Shares `state` (node name, running requests, revokes) with remote control.
    #[must_use]
    pub fn with_state(mut self, state: WorkerState) -> Self {
        self.state = state;
        self
    }

    /// Stores `STARTED` for every task.
    #[must_use]
    pub fn with_track_started(mut self, on: bool) -> Self {
        self.track_started = on;
        self
    }

    /// Hands each run a URL under `base` (and a token) to post its states to.
    #[must_use]
    pub fn with_progress_url(mut self, base: Option<String>) -> Self {
        self.progress_base = base.map(|b| b.trim_end_matches('/').to_owned());
        self
    }

    /// The task table, replaceable while the pipeline runs.
    #[must_use]
    pub fn registry(&self) -> &LiveRegistry {
        &self.registry
    }

    /// Running requests and revokes.
    #[must_use]
    pub fn state(&self) -> &WorkerState {
        &self.state
    }

    /// Counts into `metrics` (the daemon's, served on `/metrics`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts one failed Redis call of the transport in `beatd_redis_errors_total`.
    pub(crate) fn redis_error(&self) {
        self.metrics.redis_errors.inc();
    }

    /// Counts one task outcome in `beatd_worker_tasks_total{task,state}`.
    fn count(&self, task: &str, state: &'static str) {
        self.metrics
            .worker_tasks
            .get_or_create(&vec![
                ("task", task.to_owned()),
                ("state", state.to_owned()),
            ])
            .inc();
    }

    /// Sets the message size cap.
    #[must_use]
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// The clock it reads.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Handles one message end to end, sleeping until its ETA (embedded mode).
    pub async fn handle(&self, raw: &[u8]) -> Disposition {
        let task = match self.receive(raw) {
            Ok(task) => task,
            Err(rejected) => return self.store_finished(*rejected).await,
        };
        if let Some(eta) = task.eta {
            crate::clock::sleep_until(self.clock.as_ref(), eta).await;
        }
        self.execute(&task).await
    }

    /// Decodes a message. A malformed one is logged and comes back as what to do with it:
    /// acknowledge it and store a FAILURE when its id is known. The caller finishes it the
    /// way it finishes every message ([`Pipeline::store_finished`], or the Redis
    /// transport's atomic result-and-ack).
    ///
    /// # Errors
    /// The rejected message's [`Finished`].
    pub fn receive(&self, raw: &[u8]) -> Result<ParsedTask, Box<Finished>> {
        match Envelope::parse_limited(raw, self.max_message_bytes) {
            Ok(task) => {
                tracing::debug!(task_id = %task.id, task = %task.task, "task received");
                Ok(task)
            }
            Err(err) => Err(Box::new(self.reject(&err))),
        }
    }

    fn reject(&self, err: &DecodeError) -> Finished {
        let (exc_type, module) = match err {
            DecodeError::BadBase64 { .. }
            | DecodeError::BodyNotJson { .. }
            | DecodeError::BodyShape { .. } => ("DecodeError", "kombu.exceptions"),
            DecodeError::UnsupportedContentType { .. } => ("ContentDisallowed", "kombu.exceptions"),
            _ => ("InvalidTaskError", "celery.exceptions"),
        };
        let id = err.task_id().unwrap_or("");
        tracing::error!(task_id = id, error = %err, "rejected malformed message; acked and dropped");
        // The task name of a malformed message is not to be trusted: one label value.
        self.count("<malformed>", "rejected");
        Finished::done(err.task_id().map(|id| {
            let exc = ExcInfo::new(exc_type, format!("invalid task message: {err}"), module);
            ResultRecord::failure(id, &exc, None, self.clock.now())
        }))
    }

    /// Runs a decoded message now (its ETA has passed or is ignored) and stores its result.
    pub async fn execute(&self, task: &ParsedTask) -> Disposition {
        let finished = self.execute_deferred(task).await;
        self.store_finished(finished).await
    }

    /// Stores a finished message's result, if any, and returns what to do with the message.
    pub async fn store_finished(&self, finished: Finished) -> Disposition {
        if let Some(record) = finished.record {
            self.store(record).await;
        }
        if !finished.followups.is_empty() {
            tracing::warn!(
                count = finished.followups.len(),
                "the embedded queue does not follow chains or callbacks; not sent"
            );
        }
        finished.disposition
    }

    /// Runs a decoded message now and returns its result record instead of storing it, so
    /// a transport can store it and acknowledge in one atomic step.
    pub async fn execute_deferred(&self, task: &ParsedTask) -> Finished {
        let now = self.clock.now();
        let registry: Arc<Registry> = self.registry.current();
        let registered = registry.get(&task.task).cloned();
        let options = registered.as_ref().map(|r| r.options).unwrap_or_default();
        let ignore = task.ignore_result.unwrap_or(options.ignore_result);
        let keep = |r: ResultRecord| (!ignore).then_some(r);
        let label = registered
            .as_ref()
            .map_or("<unregistered>", |_| task.task.as_str());
        if task.expires.is_some_and(|e| e <= now) {
            tracing::info!(task_id = %task.id, task = %task.task, "discarding expired task");
            self.count(label, "revoked");
            return Finished::done(keep(ResultRecord::revoked_expired(&task.id, now)));
        }
        if self.state.is_revoked(&task.id) {
            tracing::info!(task_id = %task.id, task = %task.task, "discarding revoked task");
            self.count(label, "revoked");
            return Finished::done(keep(ResultRecord::revoked(&task.id, "revoked", now)));
        }
        let Some(registered) = registered else {
            tracing::error!(task_id = %task.id, task = %task.task, "received unregistered task");
            // Any producer can name any task: one label value for all unknown names keeps
            // the series count bounded.
            self.count("<unregistered>", "unregistered");
            return Finished::done(Some(ResultRecord::not_registered(
                &task.id, &task.task, now,
            )));
        };
        if let Some(exc) = canvas::chord_unsupported(task) {
            tracing::error!(task_id = %task.id, task = %task.task,
                "task is part of a chord, which the beatd worker does not support; failed");
            self.count(&task.task, "failure");
            return Finished::done(Some(ResultRecord::failure(&task.id, &exc, None, now)));
        }
        let limit = task
            .timelimit
            .0
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .or(options.time_limit);
        // Celery stores neither STARTED nor interim states for a task whose result is ignored
        // (`track_started and not ignore_result`); interim states would then stay forever.
        let (updates, _writer) = if ignore {
            (StateUpdates::default(), None)
        } else {
            let (u, w) = progress::start(&task.id, self.results.clone());
            (u, Some(w))
        };
        if (self.track_started || options.track_started) && !ignore {
            let started = StateRecord::started(&task.id, std::process::id(), self.state.node());
            if let Err(e) = self.results.store_state(&started).await {
                tracing::warn!(task_id = %task.id, error = %e, "cannot store STARTED");
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let time_start = now.timestamp_micros() as f64 / 1e6;
        let active = self.state.begin(task, time_start, updates.clone());
        // A revoke that came while STARTED was being stored found nothing running to stop.
        if self.state.is_revoked(&task.id) {
            tracing::info!(task_id = %task.id, task = %task.task, "discarding revoked task");
            self.count(&task.task, "revoked");
            return Finished::done(keep(ResultRecord::revoked(&task.id, "revoked", now)));
        }
        let started = tokio::time::Instant::now();
        let mut req = request(task);
        req.updates = updates;
        if let Some(base) = &self.progress_base {
            req.progress_url = Some(format!("{base}/tasks/{}/state", path_segment(&task.id)));
            req.progress_token = Some(active.token.clone());
        }
        let outcome = {
            let _in_flight = InFlight::enter(&self.metrics);
            tokio::select! {
                o = run_guarded(registered.handler.clone(), req, limit) => Some(o),
                // Dropping the run kills an exec task's process group.
                () = active.terminate.cancelled() => None,
            }
        };
        drop(active);
        let ran_for = started.elapsed();
        let elapsed = ran_for.as_secs_f64();
        self.metrics
            .task_duration
            .get_or_create(&vec![("task", task.task.clone())])
            .observe(elapsed);
        let done = self.clock.now();
        let Some(outcome) = outcome else {
            tracing::warn!(task_id = %task.id, task = %task.task, elapsed,
                "task terminated by a revoke");
            self.count(&task.task, "revoked");
            return Finished::done(keep(ResultRecord::revoked(&task.id, "terminated", done)));
        };
        self.count(
            &task.task,
            match &outcome {
                Ok(_) => "success",
                Err(e) if e.retryable && task.retries < options.max_retries => "retry",
                Err(_) => "failure",
            },
        );
        match outcome {
            Ok(value) => {
                let result = excerpt(&value.to_string(), RESULT_EXCERPT);
                tracing::info!(task_id = %task.id, task = %task.task, elapsed, %result,
                    "task succeeded");
                Finished {
                    disposition: Disposition::Done,
                    followups: canvas::on_success(task, &value, done),
                    record: keep(ResultRecord::success(&task.id, value, done)),
                }
            }
            Err(e) if e.retryable && task.retries < options.max_retries => {
                let delay = options.backoff(task.retries);
                let eta = done + chrono::Duration::from_std(delay).unwrap_or_default();
                let why = format!("Retry in {}s: {}", delay.as_secs_f64(), exc_text(&e));
                tracing::warn!(task_id = %task.id, task = %task.task, retries = task.retries,
                    reason = %exc_text(&e), "task failed; retrying");
                let (list_key, payload) = retry_message(task, eta);
                Finished {
                    disposition: Disposition::Retry {
                        list_key,
                        payload,
                        eta,
                    },
                    record: keep(ResultRecord::retry(&task.id, &why, e.traceback, done)),
                    followups: Vec::new(),
                }
            }
            Err(e) => {
                tracing::error!(task_id = %task.id, task = %task.task, elapsed,
                    reason = %exc_text(&e), "task failed");
                let (followups, chained) =
                    canvas::on_failure(task, &e.exc, e.traceback.as_deref(), done);
                for r in chained {
                    self.store(r).await;
                }
                Finished {
                    disposition: Disposition::Done,
                    followups,
                    record: keep(ResultRecord::failure(&task.id, &e.exc, e.traceback, done)),
                }
            }
        }
    }

    async fn store(&self, record: ResultRecord) {
        if let Err(e) = self.results.store(&record).await {
            tracing::error!(task_id = %record.task_id, error = %e, "cannot store task result");
        }
    }
}

/// Holds one `beatd_worker_in_flight` unit; released on drop, so an aborted task (immediate
/// stop) does not leave the gauge high.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn exc_text(e: &TaskError) -> String {
    let msg = match e.exc.exc_message.first() {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    format!("{}: {msg}", e.exc.exc_type)
}

fn request(task: &ParsedTask) -> TaskRequest {
    TaskRequest {
        id: task.id.clone(),
        task: task.task.clone(),
        args: task.args.clone(),
        kwargs: task.kwargs.clone(),
        retries: task.retries,
        redelivered: task.redelivered,
        scheduled_at: task
            .headers
            .get("beatd_scheduled_at")
            .and_then(Value::as_str)
            .map(Into::into),
        headers: task.headers.clone(),
        updates: StateUpdates::default(),
        progress_url: None,
        progress_token: None,
    }
}

/// `id` as one URL path segment (RFC 3986 unreserved characters kept, the rest %-encoded).
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first `max` bytes of `text` (on a character boundary), marked when cut.
fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Runs the handler on its own task so a panic becomes a FAILURE, and aborts it (which
/// kills an exec child) when the limit passes or when the caller is dropped.
async fn run_guarded(
    handler: Arc<dyn super::task::Handler>,
    req: TaskRequest,
    limit: Option<Duration>,
) -> Result<Value, TaskError> {
    struct AbortOnDrop(tokio::task::JoinHandle<Result<Value, TaskError>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut guard = AbortOnDrop(tokio::spawn(async move { handler.call(req).await }));
    let joined = match limit {
        Some(limit) => match tokio::time::timeout(limit, &mut guard.0).await {
            Ok(joined) => joined,
            Err(_) => {
                // Celery stores `TimeLimitExceeded(<limit>)`: the limit in seconds as the one
                // argument (an int when whole), so Python sees the same `exc.args`.
                let arg = if limit.subsec_nanos() == 0 {
                    Value::from(limit.as_secs())
                } else {
                    Value::from(limit.as_secs_f64())
                };
                return Err(TaskError {
                    exc: ExcInfo {
                        exc_type: "TimeLimitExceeded".into(),
                        exc_message: vec![arg],
                        exc_module: "billiard.exceptions".into(),
                    },
                    traceback: None,
                    retryable: false,
                });
            }
        },
        None => (&mut guard.0).await,
    };
    joined.unwrap_or_else(|e| {
        let what = if e.is_panic() {
            "task panicked"
        } else {
            "task was cancelled"
        };
        Err(TaskError::fatal("TaskPanicked", what))
    })
}

/// The retry envelope: the same message with `retries + 1`, an ETA, a fresh delivery tag
/// and no redelivery marks, bound for the list it came from.
fn retry_message(task: &ParsedTask, eta: DateTime<Utc>) -> (String, String) {
    let mut env = task.envelope.clone();
    if let Some(Value::Object(h)) = env.get_mut("headers") {
        h.insert("retries".into(), (task.retries + 1).into());
        h.insert("eta".into(), isoformat(eta).into());
        h.remove("redelivered");
    }
    if let Some(Value::Object(p)) = env.get_mut("properties") {
        p.insert("delivery_tag".into(), new_uuid().into());
        if let Some(Value::Object(info)) = p.get_mut("delivery_info") {
            info.remove("redelivered");
        }
    }
    let list_key = priority_list_key(&task.routing_key, task.priority);
    (list_key, dumps(&Value::Object(env)))
}
