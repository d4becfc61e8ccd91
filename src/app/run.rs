//! `beatd run`: beat and worker in one process. Without a Redis URL, the embedded mode (the
//! state file and its lock, an in-process queue); with one, the Redis beat and worker side by
//! side.

use super::daemon::{self, BeatPorts, Daemon};
use super::settings::Settings;
use crate::beat::BeatOptions;
use crate::error::Error;
use crate::ops::http;
use std::sync::Arc;

/// Runs `beatd run` until stopped.
///
/// # Errors
/// Invalid schedules or tasks, rejected credentials, a locked state file, an address that
/// cannot be bound.
pub async fn run(settings: Settings) -> Result<u8, Error> {
    if let Some(amqp) = &settings.amqp_url {
        // The embedded queue (or a Redis one) would take tasks away from where Celery's
        // producers and workers meet: on RabbitMQ.
        return Err(Error::Usage(format!(
            "beatd run keeps tasks in Redis or in-process, but the broker is RabbitMQ ({}): run \
             `beatd beat` and `beatd worker` instead",
            amqp.redacted()
        )));
    }
    let mut d = Daemon::new(settings.shutdown_grace)?;
    let entries = daemon::load_entries(
        &settings.schedules,
        settings.default_timezone,
        d.clock.as_ref(),
    )?;
    let registry = daemon::registry(&settings.file)?;
    for (task, entry) in crate::config::unhandled_tasks(&entries, &settings.file) {
        tracing::warn!(task = %task, entry = %entry,
            "scheduled task has no handler in beatd.toml; this worker will fail it as NotRegistered");
    }
    let opts = daemon::worker_options(&settings);
    let paths = daemon::Sources {
        paths: settings.schedules.clone(),
        default_timezone: settings.default_timezone,
    };
    let ready: http::ReadyFn = if let Some(url) = &settings.redis_url {
        let conn = daemon::redis(url).await?;
        let ports = BeatPorts::redis(&conn, &settings.namespace, settings.lock_ttl);
        d.set_console(daemon::console_on_redis(&conn, &settings));
        tracing::info!(entries = entries.len(), redis = %url.redacted(), "beat and worker starting on redis");
        let beat = daemon::start_beat(&d, ports, entries, paths, BeatOptions::default());
        let agreement = daemon::start_fleet_watch(&d, &conn, &settings.namespace, &beat);
        daemon::start_redis_worker(&d, opts, registry.into(), conn.clone());
        let redis_up = daemon::redis_ready(conn, &d);
        let strict = settings.strict_schedule;
        Arc::new(move || redis_up() && !(strict && agreement.mismatch().is_some()))
    } else {
        if let Some(e) = entries
            .iter()
            .find(|e| e.overlap != crate::entry::Overlap::Allow)
        {
            return Err(Error::Usage(format!(
                "entry {:?} sets overlap = \"{}\", which needs the result backend of a beat \
                 on Redis: set --redis-url or REDIS_URL (the embedded worker stores no results)",
                e.name,
                e.overlap.as_str()
            )));
        }
        if let Some(e) = entries.iter().find(|e| e.rq.is_some()) {
            return Err(Error::Usage(format!(
                "entry {:?} targets RQ (protocol = \"rq\"), which needs Redis: set \
                 --redis-url or REDIS_URL (the embedded mode's queue feeds beatd's own worker)",
                e.name
            )));
        }
        let state = &settings.state_file;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ports = BeatPorts::embedded(state, tx)?;
        d.set_console(daemon::ConsoleSource {
            leader: crate::console::LeaderSource::Embedded,
            results: None,
            token: settings.control_token.clone(),
        });
        tracing::info!(
            entries = entries.len(),
            state = %state.display(),
            tasks = ?registry.names(),
            "embedded mode (no Redis configured): beat and worker in one process"
        );
        daemon::start_beat(&d, ports, entries, paths, BeatOptions::default());
        daemon::start_local_worker(&d, &opts, registry, rx);
        Arc::new(|| true)
    };
    let listener = daemon::bind(settings.http_addr).await?;
    d.serve(ready, listener).await
}
