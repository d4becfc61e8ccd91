//! `beatd beat`: the HA scheduler on Redis.

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
    let url = settings.require_redis("beatd beat")?;
    let conn = daemon::redis(url).await?;
    let ports = BeatPorts::redis(&conn, &settings.namespace, settings.lock_ttl);
    d.set_console(daemon::console_on_redis(&conn, &settings));
    tracing::info!(entries = entries.len(), redis = %url.redacted(), "beat starting");
    let listener = daemon::bind(settings.http_addr).await?;
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
