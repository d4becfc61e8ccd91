//! The minimal worker: runs Celery task messages — from beatd or from any Python producer —
//! and stores results Python reads with `AsyncResult(id).get()`.
//!
//! Owns: consuming kombu's Redis transport reliably (`broker`, `consumer`, `restore`), the
//! execution pipeline shared with the embedded in-process queue (`pipeline`, `local`), the
//! task kinds (`exec`, `http`, Rust handlers through [`Registry`]) and result sinks, the
//! interim states tasks report (`progress`, `progress_http`), Celery's canvas (`canvas`), and
//! remote control (`pidbox` on Redis, `control` for the answers, `state` for what they read
//! and revoke). Does not
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

pub mod amqp;
mod broker;
mod canvas;
mod consumer;
mod control;
mod exec;
mod held;
mod http;
mod local;
pub mod pidbox;
mod pipeline;
mod progress;
mod progress_http;
mod registry;
mod restore;
mod results;
mod slots;
mod spec;
mod state;
mod task;

pub use canvas::Outgoing;
pub use control::WorkerControl;
pub use local::run_local;
pub use pipeline::{Disposition, Finished, Pipeline, DEFAULT_MAX_MESSAGE_BYTES};
pub use progress::{RejectedUpdate, StateUpdates};
pub use registry::{LiveRegistry, Registered, Registry};
pub use results::{LogResults, MemoryResults, RedisResults, ResultSink};
pub use spec::{HeaderValue, TaskKind, TaskOptions, TaskSpec};
pub use state::{default_node_name, WorkerState};
pub use task::{Handler, TaskError, TaskRequest, TaskResult};

use crate::clock::SharedClock;
use crate::ops::liveness::Heartbeat;
use crate::ops::metrics::Metrics;
use crate::redis::RedisConn;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Worker errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or dropped a command.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// No connection to Redis could be made.
    #[error(transparent)]
    Connect(#[from] crate::redis::Error),
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
    /// The progress endpoint's address cannot be bound.
    #[error("cannot listen for task progress on {addr}")]
    ProgressBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
    /// The name remote control knows it by (`--node-name`, default `beatd@<host>`).
    pub node_name: String,
    /// Store `STARTED` for every task (`--track-started`), not only those configured so.
    pub track_started: bool,
    /// Where `http` tasks POST their states (`--progress-addr`); not served when `None`.
    pub progress_addr: Option<std::net::SocketAddr>,
    /// The base URL handed to tasks for it (`--progress-url`); default from the bound
    /// address (the host name when it is a wildcard address).
    pub progress_url: Option<String>,
}

impl WorkerOptions {
    /// The longest a healthy consume loop goes between two turns: a blocked pop's timeout
    /// plus its connection's reply margin, or the longest backoff after a failure.
    #[must_use]
    pub fn longest_turn(&self) -> Duration {
        (self.poll_timeout + Duration::from_secs(10)).max(Duration::from_secs(5))
    }
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
            node_name: default_node_name(),
            track_started: false,
            progress_addr: None,
            progress_url: None,
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

/// The worker on Redis, with everything it runs on.
pub struct Worker {
    /// Settings.
    pub opts: WorkerOptions,
    /// The tasks it runs; replacing them (a reload) leaves runs in flight alone.
    pub registry: LiveRegistry,
    /// Where its connections come from (it opens its own blocking ones from it).
    pub conn: RedisConn,
    /// Wall time.
    pub clock: SharedClock,
    /// When to stop.
    pub shutdown: Shutdown,
    /// `beatd_worker_*` and `beatd_redis_errors_total`.
    pub metrics: Arc<Metrics>,
    /// Beaten every turn of the consume loop (`/healthz`, the watchdog).
    pub heartbeat: Option<Heartbeat>,
}

impl Worker {
    /// A worker with its own metrics and no heartbeat.
    #[must_use]
    pub fn new(
        opts: WorkerOptions,
        registry: Registry,
        conn: RedisConn,
        clock: SharedClock,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            opts,
            registry: registry.into(),
            conn,
            clock,
            shutdown,
            metrics: Arc::default(),
            heartbeat: None,
        }
    }

    /// Runs until `shutdown`, storing results in the Redis result backend.
    ///
    /// # Errors
    /// No queues, or Redis unreachable at startup. Later Redis outages are retried, not
    /// returned.
    pub async fn run(self) -> Result<(), Error> {
        let opts = self.opts;
        if opts.queues.is_empty() {
            return Err(Error::NoQueues);
        }
        let conn = self.conn;
        let connecting = async {
            let main = conn.dedicated(Duration::from_secs(10)).await?;
            // Waiting blocks a connection: each watched list gets its own so acks, results and
            // the atomic pops never wait behind it.
            let mut wait_conns = Vec::new();
            for _ in broker::brpop_keys(&opts.queues) {
                wait_conns.push(
                    conn.dedicated(opts.poll_timeout + Duration::from_secs(10))
                        .await?,
                );
            }
            Ok::<_, Error>((main, wait_conns))
        };
        // Connecting retries for seconds while Redis is down: a stop signal must not wait for
        // it, and the heartbeat goes on (the loop is waiting on the network, not wedged).
        tokio::pin!(connecting);
        let (main, wait_conns) = loop {
            tokio::select! {
                c = &mut connecting => break c?,
                () = self.shutdown.graceful.cancelled() => return Ok(()),
                () = self.shutdown.immediate.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Some(h) = &self.heartbeat {
                        h.beat();
                    }
                }
            }
        };
        let results = RedisResults::new(main.clone()).with_ttl(opts.result_ttl.as_secs());
        let state = WorkerState::new(&opts.node_name);
        let stop_control = CancellationToken::new();
        let mut progress_base = None;
        let mut progress_server = None;
        if let Some(addr) = opts.progress_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::ProgressBind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| Error::ProgressBind { addr, source })?;
            let base = opts.progress_url.clone().unwrap_or_else(|| {
                if bound.ip().is_unspecified() {
                    format!("http://{}:{}", crate::host::hostname(), bound.port())
                } else {
                    format!("http://{bound}")
                }
            });
            tracing::info!(addr = %bound, url = %base, "serving task progress");
            progress_base = Some(base);
            progress_server = Some(tokio::spawn(progress_http::serve(
                listener,
                state.clone(),
                stop_control.clone(),
            )));
        }
        let results: Arc<dyn ResultSink> = Arc::new(results);
        let pipeline = Pipeline::new(self.registry.clone(), results.clone(), self.clock.clone())
            .with_max_message_bytes(opts.max_message_bytes)
            .with_metrics(self.metrics)
            .with_state(state.clone())
            .with_track_started(opts.track_started)
            .with_progress_url(progress_base);
        let control = WorkerControl {
            state,
            registry: self.registry,
            concurrency: opts.concurrency.max(1),
            prefetch: opts.concurrency.max(1) * opts.prefetch_multiplier.max(1),
            marks: Some(control::RevokeMarks {
                results,
                clock: self.clock.clone(),
            }),
        };
        let remote = tokio::spawn(pidbox::serve(
            conn.clone(),
            opts.node_name.clone(),
            Arc::new(control),
            self.clock,
            stop_control.clone(),
        ));
        tracing::info!(queues = ?opts.queues, concurrency = opts.concurrency,
            node = %opts.node_name, "worker started");
        consumer::consume(
            &opts,
            pipeline,
            main,
            wait_conns,
            self.shutdown,
            self.heartbeat,
        )
        .await;
        stop_control.cancel();
        let _ = remote.await;
        if let Some(server) = progress_server {
            let _ = server.await;
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Runs the worker on Redis until `shutdown` ([`Worker::run`] with its own metrics).
///
/// # Errors
/// As [`Worker::run`].
pub async fn run(
    opts: WorkerOptions,
    registry: Registry,
    conn: RedisConn,
    clock: SharedClock,
    shutdown: Shutdown,
) -> Result<(), Error> {
    Worker::new(opts, registry, conn, clock, shutdown)
        .run()
        .await
}
