//! What the long-running commands share, wired once: signals, the HTTP endpoint, systemd
//! notifications and the watchdog, loop liveness, and the assembly of the beat (its ports on
//! Redis or on the state file) and of the worker. Each part starts under one task tracker and
//! stops in order: readiness 503, stop ticking and release the lock, drain the worker, exit
//! within the shutdown grace.
//!
//! [`serve_beat`] is the whole beat daemon with its dependencies passed in, so a test can run
//! it in-process on ports of its own choosing.

pub use super::reload::Sources;
use super::settings::Settings;
use crate::beat::message::CeleryEncoder;
use crate::beat::{Beat, BeatOptions, BeatStatus, Emission};
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::config::{self, AppConfig};
use crate::console::{LeaderSource, Token};
use crate::control::{ControlStore, LocalControls, RedisControls};
use crate::emit::{LocalEmitter, RedisEmitter};
use crate::entry::Entry;
use crate::error::{exit, Error};
use crate::leader::{FileLeader, Handover, LeaderLock, Poll, RedisLeader};
use crate::ops::http::{self, Health};
use crate::ops::liveness::Liveness;
use crate::ops::metrics::Metrics;
use crate::ops::notify::{self as sd, Watchdog};
use crate::redis::{BrokerUrl, ConnectOptions, Keys, RedisConn};
use crate::shutdown::Signals;
use crate::state::fleet::{Agreement, Fleet};
use crate::state::{FileState, RedisState, StateStore};
use crate::worker::{Registry, Shutdown, WorkerOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// No loop is given longer than this between two turns before `/healthz` reports it stalled.
const LIVENESS_CAP: Duration = Duration::from_secs(60);

/// What every daemon shares.
pub struct Daemon {
    /// Wall time.
    pub clock: SharedClock,
    /// Stop and reload requests.
    pub signals: Signals,
    /// Served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The loops `/healthz` and the watchdog watch.
    pub liveness: Liveness,
    /// Every task of the daemon.
    tracker: TaskTracker,
    /// Graceful stop limit.
    grace: Duration,
    /// Where watchdog pings go.
    watchdog: Watchdog,
    /// Stops the HTTP endpoint, after everything else.
    http_stop: CancellationToken,
    /// Where the status page reads the leader and results; `None`: no page.
    console_source: Option<ConsoleSource>,
    /// The status page's routes, once a beat is started.
    console: std::sync::Mutex<Option<axum::Router>>,
}

/// What the status page needs beyond the beat's ports.
#[derive(Clone)]
pub struct ConsoleSource {
    /// Who leads.
    pub leader: LeaderSource,
    /// The result backend, when on Redis.
    pub results: Option<RedisConn>,
    /// The control token; `None`: read-only.
    pub token: Option<Token>,
}

impl Daemon {
    /// A daemon driven by the process's signals and systemd's watchdog.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn new(grace: Duration) -> Result<Self, Error> {
        let signals = Signals::install().map_err(Error::Signals)?;
        Ok(Self::with(grace, signals, Watchdog::from_env()))
    }

    /// A daemon driven by `signals` (tokens a test cancels) pinging `watchdog`.
    #[must_use]
    pub fn with(grace: Duration, signals: Signals, watchdog: Watchdog) -> Self {
        Self {
            clock: Arc::new(SystemClock),
            signals,
            metrics: Arc::new(Metrics::default()),
            liveness: Liveness::default(),
            tracker: TaskTracker::new(),
            grace,
            watchdog,
            http_stop: CancellationToken::new(),
            console_source: None,
            console: std::sync::Mutex::new(None),
        }
    }

    /// Serves the status page and the control endpoint beside the health endpoints, once a
    /// beat is started on this daemon.
    pub fn set_console(&mut self, source: ConsoleSource) {
        self.console_source = Some(source);
    }

    /// Serves HTTP on `listener` when there is one.
    fn serve_http(&self, listener: Option<TcpListener>, health: &Arc<Health>) {
        let Some(listener) = listener else { return };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(addr = %addr, "http endpoint listening");
        }
        let health = health.clone();
        let console = self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Outside the tracker on purpose: the endpoint outlives the drain so probes see 503
        // until the very end; `wait` stops it last.
        let stop = self.http_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, health, console, stop).await {
                tracing::error!(error = %e, "http endpoint failed");
            }
        });
    }

    /// Sends READY=1 once `ready` holds, and pings the watchdog while every loop turns.
    fn notify_when_ready(&self, ready: http::ReadyFn) {
        let stop = self.signals.graceful.clone();
        let r = ready.clone();
        self.tracker.spawn(async move {
            loop {
                if r() {
                    sd::ready();
                    tracing::info!("ready");
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        let live = self.liveness.clone();
        self.tracker.spawn(
            self.watchdog
                .clone()
                .run(move || live.healthy(), self.signals.graceful.clone()),
        );
    }

    /// Serves HTTP with readiness `ready`, tells systemd once ready, and runs until stopped.
    ///
    /// # Errors
    /// None yet; the signature leaves room for a failing part.
    pub async fn serve(
        self,
        ready: http::ReadyFn,
        listener: Option<TcpListener>,
    ) -> Result<u8, Error> {
        let health = Arc::new(Health::new(
            ready.clone(),
            self.metrics.clone(),
            self.liveness.clone(),
        ));
        self.serve_http(listener, &health);
        self.notify_when_ready(ready);
        self.wait(&health).await;
        Ok(exit::OK)
    }

    /// Waits for a stop signal, then for every task, within the grace.
    async fn wait(self, health: &Health) {
        self.signals.graceful.cancelled().await;
        health.draining.store(true, Ordering::Relaxed);
        sd::stopping();
        self.tracker.close();
        tokio::select! {
            () = self.tracker.wait() => tracing::info!("stopped"),
            () = self.signals.immediate.cancelled() => tracing::warn!("stopped at once"),
            () = tokio::time::sleep(self.grace) => {
                tracing::warn!(grace = ?self.grace, "shutdown grace exceeded; exiting");
            }
        }
        self.http_stop.cancel();
    }
}

/// Binds the HTTP endpoint's address, when one is set.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| Error::Listen { addr, source })
}

/// Loads schedules for a daemon start; warnings go to the log.
///
/// # Errors
/// Diagnostics of invalid files.
pub fn load_entries(
    paths: &[PathBuf],
    default_timezone: Option<crate::schedule::Tz>,
    clock: &dyn Clock,
) -> Result<Vec<Entry>, Error> {
    let loaded =
        config::load_schedules_in(paths, clock.now(), default_timezone).map_err(Error::Config)?;
    for w in &loaded.warnings {
        tracing::warn!("{}", w.to_string().trim_end());
    }
    Ok(loaded.entries)
}

/// Connects a daemon to Redis; a wrong password ends the start at once, an unreachable server
/// is retried by the loops (and readiness stays false meanwhile).
///
/// # Errors
/// An invalid URL or rejected credentials.
pub async fn redis(url: &BrokerUrl) -> Result<RedisConn, Error> {
    let conn = RedisConn::new(url, ConnectOptions::default())?;
    match conn.check().await {
        Ok(()) => {
            tracing::info!(redis = %url.redacted(), "redis reachable");
            for w in conn.config_warnings().await.unwrap_or_default() {
                tracing::warn!("{w}");
            }
        }
        // Retrying never fixes these; a Sentinel set that is only unreachable is retried.
        Err(
            e
            @ (crate::redis::Error::AuthFailed { .. } | crate::redis::Error::UnknownMaster { .. }),
        ) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "redis not reachable yet; retrying");
        }
    }
    Ok(conn)
}

/// Connects a one-shot command (`send`, `status`): an unreachable Redis is an error at once.
///
/// # Errors
/// No Redis URL configured; Redis unreachable or refusing the credentials.
pub async fn connect_once(settings: &Settings) -> Result<(RedisConn, Keys), Error> {
    let Some(url) = &settings.redis_url else {
        return Err(Error::Usage(
            "no Redis URL: set --redis-url, BEATD_REDIS_URL, CELERY_BROKER_URL or REDIS_URL".into(),
        ));
    };
    let conn = crate::redis::connect(url, ConnectOptions::default()).await?;
    Ok((conn, Keys::new(&settings.namespace)))
}

/// The status page's sources for a beat on Redis.
#[must_use]
pub fn console_on_redis(conn: &RedisConn, settings: &Settings) -> ConsoleSource {
    ConsoleSource {
        leader: LeaderSource::Redis(Box::new(RedisLeader::new(
            conn.clone(),
            Keys::new(&settings.namespace),
            settings.lock_ttl,
        ))),
        results: Some(conn.clone()),
        token: settings.control_token.clone(),
    }
}

/// The beat's ports, however they are backed: the seam where a second broker or a
/// Sentinel-managed Redis plugs in (ARCHITECTURE.md shows how).
pub struct BeatPorts {
    /// Leadership.
    pub leader: Arc<dyn LeaderLock>,
    /// How a standby hears of a release.
    pub handover: Arc<dyn Handover>,
    /// Emission, direct or staged.
    pub emission: Emission,
    /// Last runs.
    pub state: Arc<dyn StateStore>,
    /// Pause, resume, trigger and backfill requests and the pauses they leave.
    pub controls: Arc<dyn ControlStore>,
    /// Run states for the overlap policies; `None`: no result backend.
    pub results: Option<Arc<dyn crate::control::RunStates>>,
}

impl BeatPorts {
    /// The HA ports on Redis under `namespace`, with leases of `ttl`: staged emission.
    #[must_use]
    pub fn redis(conn: &RedisConn, namespace: &str, ttl: Duration) -> Self {
        let keys = Keys::new(namespace);
        let leader = Arc::new(RedisLeader::new(conn.clone(), keys.clone(), ttl));
        Self {
            leader: leader.clone(),
            handover: leader,
            emission: Emission::Staged(Arc::new(RedisEmitter::new(
                conn.clone(),
                keys.clone(),
                crate::emit::EmitOptions::default(),
            ))),
            state: Arc::new(RedisState::new(conn.clone(), keys)),
            controls: Arc::new(RedisControls::new(conn.clone(), namespace)),
            results: Some(Arc::new(crate::control::RedisRunStates::on(conn.clone()))),
        }
    }

    /// The HA ports with RabbitMQ as the broker: the lock and last runs on Redis under
    /// `namespace`, fires published to `amqp` with confirms (direct emission: intent, publish,
    /// sent; see `emit::amqp`).
    #[must_use]
    pub fn amqp(
        conn: &RedisConn,
        amqp: &crate::amqp::AmqpUrl,
        namespace: &str,
        ttl: Duration,
        queue_args: crate::amqp::QueueArgs,
        metrics: Arc<Metrics>,
    ) -> Self {
        let keys = Keys::new(namespace);
        let leader = Arc::new(RedisLeader::new(conn.clone(), keys.clone(), ttl));
        Self {
            leader: leader.clone(),
            handover: leader,
            emission: Emission::Direct(Arc::new(crate::emit::AmqpEmitter::new(
                amqp.clone(),
                conn.clone(),
                keys.clone(),
                crate::emit::AmqpOptions {
                    queue_args,
                    ..crate::emit::AmqpOptions::default()
                },
                metrics,
            ))),
            state: Arc::new(RedisState::new(conn.clone(), keys)),
            controls: Arc::new(RedisControls::new(conn.clone(), namespace)),
            results: Some(Arc::new(crate::control::RedisRunStates::on(conn.clone()))),
        }
    }

    /// The single-instance mode on RabbitMQ without Redis: an exclusive queue as the lock
    /// (a second beat stands by until the first goes away), the state file for last runs.
    ///
    /// # Errors
    /// The state file is unreadable.
    pub fn amqp_single(
        amqp: &crate::amqp::AmqpUrl,
        namespace: &str,
        ttl: Duration,
        state_file: &Path,
        queue_args: crate::amqp::QueueArgs,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let state = Arc::new(FileState::open(state_file)?);
        let publisher = crate::emit::AmqpPublisher::new(amqp.clone(), queue_args, metrics);
        let controls = LocalControls::open(&crate::control::local::path_beside(state_file))
            .map_err(Error::Controls)?;
        Ok(Self {
            controls: Arc::new(controls),
            results: None,
            leader: Arc::new(crate::leader::AmqpLeader::new(amqp.clone(), namespace, ttl)),
            handover: Arc::new(Poll),
            emission: Emission::Direct(Arc::new(crate::emit::AmqpFileEmitter::new(
                publisher,
                state.clone(),
            ))),
            state,
        })
    }

    /// The embedded mode's ports: the lock on the state file, the state file, and the
    /// in-process queue `queue` the worker reads.
    ///
    /// # Errors
    /// The state file is locked by another process, or unreadable.
    pub fn embedded(
        state_file: &Path,
        queue: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    ) -> Result<Self, Error> {
        let leader = Arc::new(FileLeader::acquire(state_file)?);
        let state = Arc::new(FileState::open(state_file)?);
        let controls = LocalControls::open(&crate::control::local::path_beside(state_file))
            .map_err(Error::Controls)?;
        Ok(Self {
            controls: Arc::new(controls),
            results: None,
            leader,
            handover: Arc::new(Poll),
            emission: Emission::Direct(Arc::new(LocalEmitter::new(state.clone(), queue))),
            state,
        })
    }
}

/// A started beat: its status (readiness) and its current entries.
pub struct StartedBeat {
    /// Leader or not, store reachable or not.
    pub status: Arc<BeatStatus>,
    /// The entries the beat runs; a reload sends a new value.
    pub entries: watch::Receiver<Arc<[Entry]>>,
}

/// Starts the beat loop and the reloader under the daemon.
pub fn start_beat(
    d: &Daemon,
    ports: BeatPorts,
    entries: Vec<Entry>,
    sources: Sources,
    options: BeatOptions,
) -> StartedBeat {
    let (tx, rx) = watch::channel::<Arc<[Entry]>>(entries.into());
    // The load's parse tree, raw tables and the list just copied are free now; without this
    // glibc keeps them as the idle footprint (with 10,000 entries, most of it).
    crate::ops::malloc::release_free_memory();
    let status = Arc::new(BeatStatus::default());
    let heartbeat = d.liveness.register(
        "beat",
        Liveness::bound_for(options.longest_sleep(), LIVENESS_CAP),
    );
    if let Some(src) = &d.console_source {
        let router = crate::console::router(crate::console::Console {
            entries: rx.clone(),
            controls: ports.controls.clone(),
            state: ports.state.clone(),
            leader: src.leader.clone(),
            results: src.results.clone(),
            beat: status.clone(),
            clock: d.clock.clone(),
            token: src.token.clone(),
        });
        *d.console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(router);
    }
    let beat = Beat {
        clock: d.clock.clone(),
        leader: ports.leader,
        handover: ports.handover,
        emission: ports.emission,
        state: ports.state,
        encoder: Arc::new(CeleryEncoder::new(d.clock.clone(), crate::host::origin())),
        entries: rx.clone(),
        status: status.clone(),
        metrics: d.metrics.clone(),
        options,
        heartbeat,
        controls: crate::beat::controls::Controls::new(ports.controls.clone())
            .with_results(ports.results.clone()),
    };
    d.tracker.spawn(beat.run(d.signals.graceful.clone()));
    d.tracker.spawn(super::reload::run(
        sources,
        tx,
        d.signals.reload.clone(),
        d.clock.clone(),
        d.metrics.clone(),
        d.signals.graceful.clone(),
    ));
    StartedBeat {
        status,
        entries: rx,
    }
}

/// Starts the watch that publishes (as leader) or compares (as standby) the schedule set on
/// Redis; returns what it found, for readiness.
pub fn start_fleet_watch(
    d: &Daemon,
    conn: &RedisConn,
    namespace: &str,
    beat: &StartedBeat,
) -> Arc<Agreement> {
    let agreement = Arc::new(Agreement::default());
    let status = beat.status.clone();
    d.tracker.spawn(crate::state::fleet::watch(
        Fleet::new(conn.clone(), Keys::new(namespace)),
        beat.entries.clone(),
        move || status.is_leader.load(Ordering::Relaxed),
        format!("{}:{}", crate::host::hostname(), std::process::id()),
        d.metrics.clone(),
        agreement.clone(),
        d.signals.graceful.clone(),
    ));
    agreement
}

/// Readiness of a beat on Redis: the store answers, and with `strict_schedule` this
/// replica's schedule files match the leader's.
#[must_use]
pub fn beat_ready(
    beat: &StartedBeat,
    agreement: &Arc<Agreement>,
    strict_schedule: bool,
) -> http::ReadyFn {
    let status = beat.status.clone();
    let agreement = agreement.clone();
    Arc::new(move || {
        status.store_reachable.load(Ordering::Relaxed)
            && !(strict_schedule && agreement.mismatch().is_some())
    })
}

/// The beat daemon, whole: the beat on `ports`, the reloader on `sources`, the schedule-set
/// watch on `fleet`, HTTP on `listener`, systemd and the watchdog, until the daemon's graceful
/// signal. Ready while the store answers (and, with `strict_schedule`, the schedules agree).
///
/// # Errors
/// As [`Daemon::serve`].
pub async fn serve_beat(
    d: Daemon,
    ports: BeatPorts,
    entries: Vec<Entry>,
    sources: Sources,
    options: BeatOptions,
    fleet: Option<FleetWatch>,
    listener: Option<TcpListener>,
) -> Result<u8, Error> {
    let beat = start_beat(&d, ports, entries, sources, options);
    let ready = match fleet {
        Some(f) => {
            let agreement = start_fleet_watch(&d, &f.conn, &f.namespace, &beat);
            beat_ready(&beat, &agreement, f.strict_schedule)
        }
        None => {
            let status = beat.status;
            Arc::new(move || status.store_reachable.load(Ordering::Relaxed))
        }
    };
    d.serve(ready, listener).await
}

/// Where a beat on Redis compares its schedule set with the leader's.
pub struct FleetWatch {
    /// The Redis the replicas share.
    pub conn: RedisConn,
    /// Their namespace.
    pub namespace: String,
    /// Whether a replica whose schedule differs from the leader's is not ready.
    pub strict_schedule: bool,
}

/// The registry of every task defined in `beatd.toml`.
///
/// # Errors
/// When a definition cannot be registered.
pub fn registry(file: &AppConfig) -> Result<Registry, Error> {
    let mut registry = Registry::new();
    for (name, def) in &file.worker.tasks {
        registry
            .add_spec(name.clone(), def)
            .map_err(|source| Error::Task {
                name: name.clone(),
                source,
            })?;
    }
    Ok(registry)
}

/// The worker's options from the settings.
#[must_use]
pub fn worker_options(settings: &Settings) -> WorkerOptions {
    WorkerOptions {
        queues: settings.queues.clone(),
        concurrency: settings.concurrency,
        visibility_timeout: settings.visibility_timeout,
        shutdown_grace: settings.shutdown_grace,
        track_started: settings.track_started,
        progress_addr: settings.progress_addr,
        progress_url: settings.progress_url.clone(),
        node_name: settings
            .node_name
            .clone()
            .unwrap_or_else(crate::worker::default_node_name),
        ..WorkerOptions::default()
    }
}

/// The worker's stop tokens, from the daemon's.
#[must_use]
pub fn worker_shutdown(d: &Daemon) -> Shutdown {
    Shutdown {
        graceful: d.signals.graceful.clone(),
        immediate: d.signals.immediate.clone(),
    }
}

/// Starts the worker on Redis under the daemon, retrying until it can start.
pub fn start_redis_worker(
    d: &Daemon,
    opts: WorkerOptions,
    registry: crate::worker::LiveRegistry,
    conn: RedisConn,
) {
    let clock = d.clock.clone();
    let shutdown = worker_shutdown(d);
    let metrics = d.metrics.clone();
    let heartbeat = d.liveness.register(
        "worker",
        Liveness::bound_for(opts.longest_turn(), LIVENESS_CAP),
    );
    d.tracker.spawn(async move {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(5));
        loop {
            heartbeat.beat();
            let run = crate::worker::Worker {
                opts: opts.clone(),
                registry: registry.clone(),
                conn: conn.clone(),
                clock: clock.clone(),
                shutdown: shutdown.clone(),
                metrics: metrics.clone(),
                heartbeat: Some(heartbeat.clone()),
            }
            .run();
            match run.await {
                Ok(()) => return,
                Err(e) => {
                    metrics.redis_errors.inc();
                    tracing::warn!(error = %crate::error_chain(&e), "worker cannot start; retrying");
                }
            }
            tokio::select! {
                () = shutdown.graceful.cancelled() => return,
                () = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    });
}

/// Starts the worker on RabbitMQ under the daemon (it reconnects by itself); results go to
/// `results` (a Redis result backend, whose states also say which ids are done) or are only
/// logged. Returns its readiness: connected and consuming.
pub async fn start_amqp_worker(
    d: &Daemon,
    opts: WorkerOptions,
    registry: Registry,
    url: crate::amqp::AmqpUrl,
    queue_args: crate::amqp::QueueArgs,
    results: Option<&BrokerUrl>,
    namespace: &str,
) -> Result<http::ReadyFn, Error> {
    let (sink, finality): (
        Arc<dyn crate::worker::ResultSink>,
        Arc<dyn crate::worker::amqp::Finality>,
    ) = match results {
        Some(r) => {
            let conn = redis(r).await?;
            let main = conn.dedicated(Duration::from_secs(10)).await?;
            (
                Arc::new(
                    crate::worker::RedisResults::new(main.clone())
                        .with_ttl(opts.result_ttl.as_secs()),
                ),
                Arc::new(crate::worker::amqp::RedisFinality {
                    conn: main,
                    namespace: namespace.to_owned(),
                }),
            )
        }
        None => {
            tracing::info!("no result backend: results are only logged");
            (
                Arc::new(crate::worker::LogResults),
                Arc::new(crate::worker::amqp::NeverFinal),
            )
        }
    };
    let connected = Arc::new(AtomicBool::new(false));
    let heartbeat = d.liveness.register(
        "worker",
        Liveness::bound_for(opts.longest_turn(), LIVENESS_CAP),
    );
    let worker = crate::worker::amqp::AmqpWorker {
        opts,
        url,
        queue_args,
        registry,
        results: sink,
        finality,
        clock: d.clock.clone(),
        shutdown: worker_shutdown(d),
        metrics: d.metrics.clone(),
        heartbeat: Some(heartbeat),
        connected: connected.clone(),
    };
    d.tracker.spawn(worker.run());
    Ok(Arc::new(move || connected.load(Ordering::Relaxed)))
}

/// Reloads the worker's task table from `beatd.toml` on every SIGHUP: the file is validated
/// and every task registered first; an invalid file or task keeps the old table, logged with
/// its `file:line:column` diagnostics. Runs in flight keep the handler they started with.
pub fn start_task_reloader(
    d: &Daemon,
    config_path: Option<PathBuf>,
    live: crate::worker::LiveRegistry,
) {
    let hup = d.signals.reload.clone();
    let stop = d.signals.graceful.clone();
    d.tracker.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = hup.notified() => {}
            }
            tracing::info!("SIGHUP: reloading worker tasks");
            crate::ops::notify::reloading();
            match super::settings::app_config(config_path.as_deref())
                .and_then(|file| registry(&file))
            {
                Ok(table) => {
                    tracing::info!(tasks = ?table.names(), "worker tasks reloaded");
                    live.replace(table);
                }
                Err(Error::Config(diags)) => tracing::error!(
                    "task reload rejected; keeping the previous tasks:\n{}",
                    diags.to_string().trim_end()
                ),
                Err(e) => tracing::error!(error = %crate::error_chain(&e),
                    "task reload rejected; keeping the previous tasks"),
            }
            crate::ops::notify::reloaded();
        }
    });
}

/// Answers `celery inspect ping` as `node` (the beat's health check) until the daemon stops.
pub fn start_ping_answer(d: &Daemon, conn: RedisConn, node: String) {
    let stop = d.signals.graceful.clone();
    d.tracker.spawn(crate::worker::pidbox::serve(
        conn,
        node,
        Arc::new(crate::worker::pidbox::PingOnly),
        d.clock.clone(),
        stop,
    ));
}

/// Readiness from Redis's answers, looked at every 2 s: a background `PING` when no other
/// command got a reply in that time (a leader's renewals and polls usually did).
pub fn redis_ready(conn: RedisConn, d: &Daemon) -> http::ReadyFn {
    const EVERY: Duration = Duration::from_secs(2);
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let stop = d.signals.graceful.clone();
    d.tracker.spawn(async move {
        loop {
            let ok = conn.answered_within(EVERY) || conn.check().await.is_ok();
            f.store(ok, Ordering::Relaxed);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    });
    Arc::new(move || flag.load(Ordering::Relaxed))
}

/// Starts the embedded worker on the in-process queue `rx`.
pub fn start_local_worker(
    d: &Daemon,
    opts: &WorkerOptions,
    registry: Registry,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let pipeline = crate::worker::Pipeline::new(
        Arc::new(registry),
        Arc::new(crate::worker::LogResults),
        d.clock.clone(),
    )
    .with_metrics(d.metrics.clone());
    d.tracker.spawn(crate::worker::run_local(
        pipeline,
        rx,
        opts.concurrency,
        opts.shutdown_grace,
        worker_shutdown(d),
    ));
}
