//! The long-running commands, wired: `beat` (Redis), `run` (embedded, or beat and worker on
//! Redis) and `worker`. Each loads its settings, starts its parts under one task tracker,
//! serves HTTP, tells systemd, and stops in order: readiness 503, stop ticking and release
//! the lock, drain the worker, exit within the shutdown grace.

use crate::app::{settings, Error};
use crate::beat::message::CeleryEncoder;
use crate::beat::{Beat, BeatOptions, BeatStatus};
use crate::beat_io::{Emitter, LeaderLock, StateStore};
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::config;
use crate::entry::Entry;
use crate::ops::http::{self, Health};
use crate::ops::{metrics::Metrics, notify as sd};
use crate::redis_edge::{BrokerUrl, ConnectOptions, RedisConn};
use crate::shutdown::Signals;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// What every daemon shares.
pub(crate) struct Daemon {
    pub clock: SharedClock,
    pub signals: Signals,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
    pub grace: Duration,
    /// Stops the HTTP endpoint, after everything else.
    pub http_stop: tokio_util::sync::CancellationToken,
}

impl Daemon {
    pub(crate) fn new(grace: Duration) -> Result<Self, Error> {
        let signals = Signals::install()
            .map_err(|e| Error::Other(format!("installing signal handlers: {e}")))?;
        Ok(Self {
            clock: Arc::new(SystemClock),
            signals,
            metrics: Arc::new(Metrics::default()),
            tracker: TaskTracker::new(),
            grace,
            http_stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Binds and serves the HTTP endpoint when an address is set.
    pub(crate) async fn serve_http(
        &self,
        addr: Option<SocketAddr>,
        health: &Arc<Health>,
    ) -> Result<(), Error> {
        let Some(addr) = addr else { return Ok(()) };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Other(format!("cannot listen on {addr} (--http-addr): {e}")))?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "http endpoint listening");
        let health = health.clone();
        // Outside the tracker on purpose: the endpoint outlives the drain so probes see 503
        // until the very end; `wait` stops it last.
        let stop = self.http_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, health, stop).await {
                tracing::error!(error = %e, "http endpoint failed");
            }
        });
        Ok(())
    }

    /// Sends READY=1 once `ready` holds, and pings the watchdog while the process lives.
    pub(crate) fn notify_when_ready(&self, ready: http::ReadyFn) {
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
        self.tracker
            .spawn(sd::watchdog(|| true, self.signals.graceful.clone()));
    }

    /// Serves HTTP with readiness `ready`, tells systemd once ready, and runs until stopped.
    pub(crate) async fn serve(
        self,
        ready: http::ReadyFn,
        addr: Option<SocketAddr>,
    ) -> Result<u8, Error> {
        let health = Arc::new(Health::new(ready.clone(), self.metrics.clone()));
        self.serve_http(addr, &health).await?;
        self.notify_when_ready(ready);
        self.wait(&health).await;
        Ok(crate::app::exit::OK)
    }

    /// Waits for a stop signal, then for every task, within the grace.
    pub(crate) async fn wait(self, health: &Health) {
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

/// Loads schedules for a daemon start; warnings go to the log.
pub(crate) fn load_entries(paths: &[PathBuf], clock: &dyn Clock) -> Result<Vec<Entry>, Error> {
    let loaded = config::load_schedules(paths, clock.now()).map_err(Error::Config)?;
    for w in &loaded.warnings {
        tracing::warn!("{}", w.to_string().trim_end());
    }
    Ok(loaded.entries)
}

/// The producer name in `headers.origin`, like Celery's `gen<pid>@<host>`.
pub(crate) fn origin() -> String {
    format!("beatd{}@{}", std::process::id(), hostname())
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Connects to Redis; a wrong password ends the start at once, an unreachable server is
/// retried by the loops (and readiness stays false meanwhile).
pub(crate) async fn redis(url: &BrokerUrl) -> Result<RedisConn, Error> {
    let conn = RedisConn::new(url, ConnectOptions::default())
        .map_err(|e| Error::Other(crate::error_chain(&e)))?;
    match conn.check().await {
        Ok(()) => tracing::info!(redis = %url.redacted(), "redis reachable"),
        Err(e @ crate::redis_edge::Error::AuthFailed { .. }) => {
            return Err(Error::Other(crate::error_chain(&e)));
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "redis not reachable yet; retrying")
        }
    }
    Ok(conn)
}

/// The beat's parts, however they are backed.
pub(crate) struct BeatParts {
    pub leader: Arc<dyn LeaderLock>,
    pub emitter: Arc<dyn Emitter>,
    pub state: Arc<dyn StateStore>,
}

/// Starts the beat loop and the reloader; returns the beat's status for readiness.
pub(crate) fn start_beat(
    d: &Daemon,
    parts: BeatParts,
    entries: Vec<Entry>,
    paths: Vec<PathBuf>,
) -> Arc<BeatStatus> {
    let (tx, rx) = watch::channel::<Arc<[Entry]>>(entries.into());
    // The load's parse tree, raw tables and the list just copied are free now; without this
    // glibc keeps them as the idle footprint (with 10,000 entries, most of it).
    crate::ops::malloc::release_free_memory();
    let status = Arc::new(BeatStatus::default());
    let beat = Beat {
        clock: d.clock.clone(),
        leader: parts.leader,
        emitter: parts.emitter,
        state: parts.state,
        encoder: Arc::new(CeleryEncoder::new(d.clock.clone(), origin())),
        entries: rx,
        status: status.clone(),
        metrics: d.metrics.clone(),
        options: BeatOptions::default(),
    };
    d.tracker.spawn(beat.run(d.signals.graceful.clone()));
    d.tracker.spawn(crate::app::reload::run(
        paths,
        tx,
        d.signals.reload.clone(),
        d.clock.clone(),
        d.metrics.clone(),
        d.signals.graceful.clone(),
    ));
    status
}

/// `beatd beat`.
pub async fn beat(
    config: Option<&std::path::Path>,
    args: &crate::cli::BeatArgs,
) -> Result<u8, Error> {
    let file = settings::app_config(config)?;
    let d = Daemon::new(settings::shutdown_grace(&args.daemon, &file))?;
    let paths = settings::schedule_paths(&args.schedules, &file);
    let entries = load_entries(&paths, d.clock.as_ref())?;
    let Some(url) = settings::redis_url(&args.redis, &file)? else {
        return Err(Error::Usage(
            "beatd beat needs Redis: set --redis-url, BEATD_REDIS_URL, CELERY_BROKER_URL or \
             REDIS_URL (or use `beatd run` for the embedded mode)"
                .into(),
        ));
    };
    let conn = redis(&url).await?;
    let parts = redis_parts(
        &conn,
        &settings::namespace(&args.redis, &file),
        settings::lock_ttl(&args.leader, &file),
    );
    tracing::info!(entries = entries.len(), redis = %url.redacted(), "beat starting");
    let status = start_beat(&d, parts, entries, paths);
    let ready: http::ReadyFn = {
        let s = status.clone();
        Arc::new(move || s.store_reachable.load(Ordering::Relaxed))
    };
    d.serve(ready, settings::http_addr(&args.daemon, &file)?)
        .await
}

/// The Redis implementations of the beat's ports.
pub(crate) fn redis_parts(conn: &RedisConn, namespace: &str, ttl: Duration) -> BeatParts {
    let b = crate::redis_edge::Backend::new(conn, namespace, ttl);
    BeatParts {
        leader: b.leader,
        emitter: b.emitter,
        state: b.state,
    }
}

/// `beatd run`: beat and worker in one process. Without a Redis URL: the embedded mode
/// (state file + lock, in-process queue); with one: the Redis beat and worker side by side.
pub async fn run(
    config: Option<&std::path::Path>,
    args: &crate::cli::RunArgs,
) -> Result<u8, Error> {
    use crate::app::worker as w;
    let file = settings::app_config(config)?;
    let d = Daemon::new(settings::shutdown_grace(&args.daemon, &file))?;
    let paths = settings::schedule_paths(&args.schedules, &file);
    let entries = load_entries(&paths, d.clock.as_ref())?;
    let registry = w::registry(&file)?;
    let opts = w::options(&args.worker, &args.daemon, &file);
    let ready: http::ReadyFn = if let Some(url) = settings::redis_url(&args.redis, &file)? {
        let conn = redis(&url).await?;
        let parts = redis_parts(
            &conn,
            &settings::namespace(&args.redis, &file),
            settings::lock_ttl(&args.leader, &file),
        );
        tracing::info!(entries = entries.len(), redis = %url.redacted(), "beat and worker starting on redis");
        start_beat(&d, parts, entries, paths);
        w::start_redis_worker(&d, opts, registry, &url)?;
        w::redis_ready(conn, &d)
    } else {
        let state = settings::state_file(args.state_file.as_deref(), &file);
        let lock = crate::embedded::StateLock::acquire(&state)
            .map_err(|e| Error::Other(crate::error_chain(&e)))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let emitter = Arc::new(
            crate::embedded::FileEmitter::open(&state, tx)
                .map_err(|e| Error::Other(crate::error_chain(&e)))?,
        );
        tracing::info!(
            entries = entries.len(),
            state = %state.display(),
            tasks = ?registry.names(),
            "embedded mode (no Redis configured): beat and worker in one process"
        );
        let parts = BeatParts {
            leader: Arc::new(crate::embedded::EmbeddedLeader::new(lock)),
            emitter: emitter.clone(),
            state: emitter,
        };
        start_beat(&d, parts, entries, paths);
        let pipeline = crate::worker::Pipeline::new(
            Arc::new(registry),
            Arc::new(crate::worker::LogResults),
            d.clock.clone(),
        )
        .with_metrics(d.metrics.clone());
        let shutdown = crate::worker::Shutdown {
            graceful: d.signals.graceful.clone(),
            immediate: d.signals.immediate.clone(),
        };
        d.tracker.spawn(crate::worker::run_local(
            pipeline,
            rx,
            opts.concurrency,
            opts.shutdown_grace,
            shutdown,
        ));
        Arc::new(|| true)
    };
    d.serve(ready, settings::http_addr(&args.daemon, &file)?)
        .await
}
