//! `beatd beat`: the HA scheduler on Redis.

use super::daemon::{self, BeatPorts, Daemon};
use super::settings::Settings;
use crate::beat::BeatOptions;
use crate::error::Error;

/// Runs `beatd beat` until stopped.
///
/// # Errors
/// Invalid schedules, no Redis URL, rejected credentials, an address that cannot be bound.
pub async fn beat(settings: Settings) -> Result<u8, Error> {
    let d = Daemon::new(settings.shutdown_grace)?;
    let entries = daemon::load_entries(&settings.schedules, d.clock.as_ref())?;
    let url = settings.require_redis("beatd beat")?;
    let conn = daemon::redis(url).await?;
    let ports = BeatPorts::redis(&conn, &settings.namespace, settings.lock_ttl);
    tracing::info!(entries = entries.len(), redis = %url.redacted(), "beat starting");
    let listener = daemon::bind(settings.http_addr).await?;
    daemon::serve_beat(
        d,
        ports,
        entries,
        settings.schedules,
        BeatOptions::default(),
        listener,
    )
    .await
}
