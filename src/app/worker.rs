//! Wiring of the worker: `beatd.toml` task definitions become registry entries, and the
//! worker runs on Redis (`beatd worker`, `beatd run` with Redis) or on the in-process queue
//! (`beatd run` embedded).

use crate::app::daemon::{self, Daemon};
use crate::app::{settings, Error};
use crate::config::AppConfig;
use crate::ops::http;
use crate::worker::{Registry, Shutdown, WorkerOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The registry of every configured task.
///
/// # Errors
/// When a definition cannot be registered.
pub fn registry(file: &AppConfig) -> Result<Registry, Error> {
    let mut registry = Registry::new();
    for (name, def) in &file.worker.tasks {
        registry
            .add_spec(name.clone(), def)
            .map_err(|e| Error::Other(format!("task {name:?}: {}", crate::error_chain(&e))))?;
    }
    Ok(registry)
}

/// Worker options from flags and file.
#[must_use]
pub fn options(
    args: &crate::cli::WorkerOpts,
    daemon: &crate::cli::DaemonArgs,
    file: &AppConfig,
) -> WorkerOptions {
    WorkerOptions {
        queues: settings::worker_queues(args, file),
        concurrency: settings::concurrency(args, file),
        visibility_timeout: settings::visibility_timeout(args, file),
        shutdown_grace: settings::shutdown_grace(daemon, file),
        ..WorkerOptions::default()
    }
}

/// Starts the worker on Redis under the daemon's tracker, reconnecting until it can start.
pub(crate) fn start_redis_worker(
    d: &Daemon,
    opts: WorkerOptions,
    registry: Registry,
    url: &crate::redis_edge::BrokerUrl,
) -> Result<(), Error> {
    let client =
        redis::Client::open(url.expose()).map_err(|e| Error::Other(format!("redis url: {e}")))?;
    let clock = d.clock.clone();
    let shutdown = Shutdown {
        graceful: d.signals.graceful.clone(),
        immediate: d.signals.immediate.clone(),
    };
    let metrics = d.metrics.clone();
    let registry = Arc::new(registry);
    d.tracker.spawn(async move {
        let mut wait = Duration::from_millis(100);
        loop {
            let reg = Registry::clone(&registry);
            let run = crate::worker::run_observed(
                opts.clone(),
                reg,
                client.clone(),
                clock.clone(),
                shutdown.clone(),
                None,
                metrics.clone(),
            );
            match run.await {
                Ok(()) => return,
                Err(e) => {
                    metrics.redis_errors.inc();
                    tracing::warn!(error = %crate::error_chain(&e), "worker cannot start; retrying");
                }
            }
            tokio::select! {
                () = shutdown.graceful.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    });
    Ok(())
}

/// `beatd worker`.
pub async fn worker(
    config: Option<&std::path::Path>,
    args: &crate::cli::WorkerArgs,
) -> Result<u8, Error> {
    let file = settings::app_config(config)?;
    let d = Daemon::new(settings::shutdown_grace(&args.daemon, &file))?;
    let Some(url) = settings::redis_url(&args.redis, &file)? else {
        return Err(Error::Usage(
            "beatd worker needs Redis: set --redis-url, BEATD_REDIS_URL, CELERY_BROKER_URL or \
             REDIS_URL (or use `beatd run` for the embedded mode)"
                .into(),
        ));
    };
    let conn = daemon::redis(&url).await?;
    let registry = registry(&file)?;
    let opts = options(&args.worker, &args.daemon, &file);
    tracing::info!(tasks = ?registry.names(), queues = ?opts.queues, "worker starting");
    start_redis_worker(&d, opts, registry, &url)?;
    let ready: http::ReadyFn = redis_ready(conn, &d);
    d.serve(ready, settings::http_addr(&args.daemon, &file)?)
        .await
}

/// Readiness from a background PING every 2 s.
pub(crate) fn redis_ready(conn: crate::redis_edge::RedisConn, d: &Daemon) -> http::ReadyFn {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    let stop = d.signals.graceful.clone();
    d.tracker.spawn(async move {
        loop {
            f.store(conn.check().await.is_ok(), Ordering::Relaxed);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    Arc::new(move || flag.load(Ordering::Relaxed))
}
