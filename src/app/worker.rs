//! `beatd worker`: runs Celery messages from Redis or RabbitMQ as `exec`, `http` or Rust tasks.

use super::daemon::{self, Daemon};
use super::settings::Settings;
use crate::error::Error;

/// Runs `beatd worker` until stopped.
///
/// # Errors
/// No Redis URL, rejected credentials, a task definition that cannot be registered, an
/// address that cannot be bound.
pub async fn worker(settings: Settings) -> Result<u8, Error> {
    let d = Daemon::new(settings.shutdown_grace)?;
    if let Some(amqp) = &settings.amqp_url {
        let registry = daemon::registry(&settings.file)?;
        let opts = daemon::worker_options(&settings);
        tracing::info!(
            tasks = ?registry.names(),
            queues = ?opts.queues,
            broker = %amqp.redacted(),
            "worker starting on rabbitmq"
        );
        let ready = daemon::start_amqp_worker(
            &d,
            opts,
            registry,
            amqp.clone(),
            settings.queue_args.clone(),
            settings.result_backend.as_ref(),
            &settings.namespace,
        )
        .await?;
        let listener = daemon::bind(settings.http_addr).await?;
        return d.serve(ready, listener).await;
    }
    let url = settings.require_redis("beatd worker")?;
    let conn = daemon::redis(url).await?;
    let registry = daemon::registry(&settings.file)?;
    let opts = daemon::worker_options(&settings);
    tracing::info!(tasks = ?registry.names(), queues = ?opts.queues, "worker starting");
    let live = crate::worker::LiveRegistry::from(registry);
    daemon::start_task_reloader(&d, settings.config_path.clone(), live.clone());
    daemon::start_redis_worker(&d, opts, live, conn.clone());
    let ready = daemon::redis_ready(conn, &d);
    let listener = daemon::bind(settings.http_addr).await?;
    d.serve(ready, listener).await
}
