//! The minimal worker: runs Celery task messages — from beatd or from any Python producer —
//! and stores results Python reads with `AsyncResult(id).get()`.
//!
//! Owns: consuming kombu's Redis transport reliably (`broker`, `consumer`, `restore`), the
//! execution pipeline shared with the embedded in-process queue (`pipeline`, `local`), the
//! task kinds (`exec`, `http`, Rust handlers through [`Registry`]) and result sinks. Does not
//! own: message format (`protocol`), configuration files (`config` maps `TaskDef` onto
//! [`TaskSpec`]), signals (the binary turns them into the [`Shutdown`] tokens).
//!
//! Glossary, in kombu/Celery terms: a *delivery* is one message popped from a list; *ack*
//! removes it from `unacked`; *restore* puts back messages whose worker vanished; *prefetch*
//! is how many messages are held beyond those running.
//!
//! Life of a message on Redis: BRPOP (plus a batched RPOP) in kombu's priority order →
//! decode (malformed: FAILURE if the id is known, dropped) → `unacked` + `unacked_index` in
//! one MULTI per batch → wait for the ETA and a run slot → run under the time limit → one
//! script stores the result (SETEX + PUBLISH), acks, and pushes a retry if any. While held,
//! its `unacked_index` score is refreshed (`held`), so only a dead worker's messages age past
//! the visibility timeout. Where beatd departs from kombu on purpose: malformed messages
//! never crash or loop; a restore with a missing binding goes to the routing key's queue
//! instead of being dropped; unstarted messages go back to their queue on a graceful stop.

mod broker;
mod consumer;
mod exec;
mod held;
mod http;
mod local;
mod observe;
mod pipeline;
mod registry;
mod restore;
mod results;
mod spec;

pub use local::run_local;
pub use observe::{Observer, Outcome};
pub use pipeline::{Disposition, Finished, Pipeline, DEFAULT_MAX_MESSAGE_BYTES};
pub use registry::{Handler, Registered, Registry, TaskError, TaskRequest, TaskResult};
pub use results::{LogResults, MemoryResults, RedisResults, ResultSink};
pub use spec::{HeaderValue, TaskKind, TaskOptions, TaskSpec};

use crate::clock::SharedClock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Worker errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or dropped a command.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// An `exec` task with no program.
    #[error("task {task:?} has an empty command")]
    EmptyCommand {
        /// Task name.
        task: String,
    },
    /// An `http` header refers to an unset environment variable.
    #[error("task {task:?} needs environment variable {var}, which is not set")]
    MissingEnv {
        /// Task name.
        task: String,
        /// Variable name.
        var: String,
    },
    /// An `http` header name or value is not valid HTTP.
    #[error("task {task:?} has an invalid http header {header:?}")]
    BadHeader {
        /// Task name.
        task: String,
        /// Header name.
        header: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build http client: {0}")]
    HttpClient(String),
    /// No queue to consume.
    #[error("no queues to consume")]
    NoQueues,
}

/// Worker settings (the `beatd worker` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// Queues to consume, in order (`--queues`, default `celery`).
    pub queues: Vec<String>,
    /// Tasks run at once (`--concurrency`, default: CPUs).
    pub concurrency: usize,
    /// Messages held per running slot (kombu/Celery default 4).
    pub prefetch_multiplier: usize,
    /// Unacked messages older than this are restored (`--visibility-timeout`, default 1 h).
    pub visibility_timeout: Duration,
    /// How often the restore pass runs after startup (kombu: about 100 s).
    pub restore_interval: Duration,
    /// Time given to running tasks after a graceful stop (`--shutdown-grace`, default 30 s).
    pub shutdown_grace: Duration,
    /// Larger messages are rejected.
    pub max_message_bytes: usize,
    /// BRPOP timeout (kombu uses 1 s).
    pub poll_timeout: Duration,
    /// Result key TTL (Celery's `result_expires`, one day).
    pub result_ttl: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queues: vec!["celery".into()],
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            prefetch_multiplier: 4,
            visibility_timeout: Duration::from_secs(3600),
            restore_interval: Duration::from_secs(100),
            shutdown_grace: Duration::from_secs(30),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            poll_timeout: Duration::from_secs(1),
            result_ttl: Duration::from_secs(crate::protocol::RESULT_TTL_SECS),
        }
    }
}

/// The two ways to stop: `graceful` stops taking messages, lets running tasks finish within
/// the grace and returns unstarted ones to their queue; `immediate` stops at once and leaves
/// unfinished messages unacknowledged (restored after the visibility timeout).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// First SIGTERM/SIGINT.
    pub graceful: CancellationToken,
    /// Second SIGINT.
    pub immediate: CancellationToken,
}

/// Runs the worker on Redis until `shutdown`, storing results in the Redis result backend.
///
/// # Errors
/// No queues, or Redis unreachable at startup. Later Redis outages are retried, not returned.
pub async fn run(
    opts: WorkerOptions,
    registry: Registry,
    client: redis::Client,
    clock: SharedClock,
    shutdown: Shutdown,
) -> Result<(), Error> {
    run_observed(
        opts,
        registry,
        client,
        clock,
        shutdown,
        None,
        Arc::default(),
    )
    .await
}

/// [`run`] with a hook called once per handled message, counting into `metrics` (the
/// daemon's, served on `/metrics`).
///
/// # Errors
/// As [`run`].
pub async fn run_observed(
    opts: WorkerOptions,
    registry: Registry,
    client: redis::Client,
    clock: SharedClock,
    shutdown: Shutdown,
    observer: Option<Arc<dyn Observer>>,
    metrics: Arc<crate::ops::metrics::Metrics>,
) -> Result<(), Error> {
    if opts.queues.is_empty() {
        return Err(Error::NoQueues);
    }
    let connecting = async {
        let conn = connect(&client, Duration::from_secs(10)).await?;
        // Waiting blocks a connection: each watched list gets its own so acks, results and
        // the atomic pops never wait behind it.
        let mut wait_conns = Vec::new();
        for _ in broker::brpop_keys(&opts.queues) {
            wait_conns.push(connect(&client, opts.poll_timeout + Duration::from_secs(10)).await?);
        }
        Ok::<_, Error>((conn, wait_conns))
    };
    // Connecting retries for seconds while Redis is down: a stop signal must not wait for it.
    let (conn, wait_conns) = tokio::select! {
        c = connecting => c?,
        () = shutdown.graceful.cancelled() => return Ok(()),
        () = shutdown.immediate.cancelled() => return Ok(()),
    };
    let results = RedisResults::new(conn.clone()).with_ttl(opts.result_ttl.as_secs());
    let mut pipeline = Pipeline::new(Arc::new(registry), Arc::new(results), clock)
        .with_max_message_bytes(opts.max_message_bytes)
        .with_metrics(metrics);
    if let Some(observer) = observer {
        pipeline = pipeline.with_observer(observer);
    }
    tracing::info!(queues = ?opts.queues, concurrency = opts.concurrency, "worker started");
    consumer::consume(&opts, pipeline, conn, wait_conns, shutdown).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Longest wait between two reconnect attempts of a worker connection, in milliseconds.
const RECONNECT_MAX_DELAY_MS: u64 = 500;

pub(crate) async fn connect(
    client: &redis::Client,
    response: Duration,
) -> Result<ConnectionManager, Error> {
    // redis-rs hands its retry `factor` (100) to backon as the growth factor, so without a
    // cap the waits between reconnect attempts go 1 s, 60 s, 60 s...: a command issued during
    // an outage of a few seconds then blocks for minutes after Redis is back. Cap each wait.
    let cfg = ConnectionManagerConfig::new()
        .set_max_delay(RECONNECT_MAX_DELAY_MS)
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(response)
        .set_factor(2)
        .set_number_of_retries(3);
    Ok(client.get_connection_manager_with_config(cfg).await?)
}
