//! `beatd beat`: the HA scheduler, its lock and last runs on Redis, its tasks to Redis or
//! RabbitMQ.

use super::daemon::{self, BeatPorts, Daemon, FleetWatch};
use super::settings::Settings;
use crate::beat::BeatOptions;
use crate::error::Error;

/// Runs `beatd beat` until stopped.
///
/// # Errors
/// Invalid schedules, no Redis URL, rejected credentials, an address that cannot be bound.
pub async fn beat(settings: Settings) -> Result<u8, Error> {
    let mut d = Daemon::new(settings.shutdown_grace)?;
    let entries = daemon::load_entries(
        &settings.schedules,
        settings.default_timezone,
        d.clock.as_ref(),
    )?;
    if let (Some(amqp), None) = (&settings.amqp_url, &settings.redis_url) {
        tracing::info!(
            entries = entries.len(),
            broker = %amqp.redacted(),
            state_file = %settings.state_file.display(),
            "beat starting as a single instance: no Redis, tasks to rabbitmq, last runs in the \
             state file; a second beat on this rabbitmq stands by (exclusive-queue lock)"
        );
        let ports = BeatPorts::amqp_single(
            amqp,
            &settings.namespace,
            settings.lock_ttl,
            &settings.state_file,
            settings.queue_args.clone(),
            d.metrics.clone(),
        )?;
        let listener = daemon::bind(settings.http_addr).await?;
        return daemon::serve_beat(
            d,
            ports,
            entries,
            daemon::Sources {
                paths: settings.schedules.clone(),
                default_timezone: settings.default_timezone,
            },
            BeatOptions::default(),
            None,
            listener,
        )
        .await;
    }
    let url = settings.require_redis("beatd beat")?;
    let conn = daemon::redis(url).await?;
    let mut ports = match &settings.amqp_url {
        Some(amqp) => {
            tracing::info!(
                entries = entries.len(),
                broker = %amqp.redacted(),
                redis = %url.redacted(),
                "beat starting: tasks to rabbitmq, lock and last runs in redis"
            );
            BeatPorts::amqp(
                &conn,
                amqp,
                &settings.namespace,
                settings.lock_ttl,
                settings.queue_args.clone(),
                d.metrics.clone(),
            )
        }
        None => {
            tracing::info!(entries = entries.len(), redis = %url.redacted(), "beat starting");
            BeatPorts::redis(&conn, &settings.namespace, settings.lock_ttl)
        }
    };
    if let Some(backend) = settings
        .result_backend
        .as_ref()
        .filter(|b| b.redacted().to_string() != url.redacted().to_string())
    {
        // Celery workers store results there; beatd's worker (on a Redis broker) on the
        // broker: the overlap policies read both.
        let results = daemon::redis(backend).await?;
        ports.results = Some(std::sync::Arc::new(crate::control::RedisRunStates {
            conn: results,
            also: Some(conn.clone()),
        }));
    }
    d.set_console(daemon::console_on_redis(&conn, &settings));
    let listener = daemon::bind(settings.http_addr).await?;
    // `celery inspect ping -d beatd-beat@<host>` is the health check Celery users ask of beat.
    daemon::start_ping_answer(
        &d,
        conn.clone(),
        format!("beatd-beat@{}", crate::host::hostname()),
    );
    let fleet = FleetWatch {
        conn,
        namespace: settings.namespace.clone(),
        strict_schedule: settings.strict_schedule,
    };
    daemon::serve_beat(
        d,
        ports,
        entries,
        daemon::Sources {
            paths: settings.schedules.clone(),
            default_timezone: settings.default_timezone,
        },
        BeatOptions::default(),
        Some(fleet),
        listener,
    )
    .await
}
