//! `beatd next`: upcoming fire times per entry, in the entry's zone with its UTC offset.
//! The cheapest way to see what a DST transition does to a schedule.

use super::settings::Settings;
use crate::cli::{NextArgs, OutputFormat};
use crate::clock::{Clock, SystemClock};
use crate::entry::Entry;
use crate::error::{exit, Error};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Runs `beatd next`.
///
/// # Errors
/// A bad `--from`, an unknown `--entry`, invalid schedule files.
pub fn next(settings: &Settings, args: &NextArgs) -> Result<u8, Error> {
    let now = SystemClock.now();
    let from = match &args.from {
        Some(s) => parse_from(
            s,
            settings
                .default_timezone
                .unwrap_or(crate::schedule::Tz::UTC),
        )?,
        None => now,
    };
    let loaded =
        crate::config::load_schedules_in(&settings.schedules, now, settings.default_timezone)
            .map_err(Error::Config)?;
    for name in &args.entry {
        if !loaded.entries.iter().any(|e| *e.name == **name) {
            return Err(Error::Usage(format!("no entry named {name:?}")));
        }
    }
    let list = next_fires(&loaded.entries, &args.entry, from, usize::from(args.count));
    match args.format {
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).expect("serializes")
            );
        }
        OutputFormat::Text => print!("{}", render_text(&list)),
    }
    Ok(exit::OK)
}

/// `--from`: an RFC 3339 instant, or a local date-time (seconds optional) read in `tz`.
fn parse_from(s: &str, tz: crate::schedule::Tz) -> Result<DateTime<Utc>, Error> {
    use chrono::TimeZone;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })
    .ok_or_else(|| {
        Error::Usage(format!(
            "--from {s:?} is not a date-time: write 2027-03-26T12:00:00+01:00 (an instant) \
                 or 2027-03-26T12:00:00 (local time in {tz})"
        ))
    })?;
    // In a DST gap the local time does not exist: the instant just after the gap.
    tz.from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.to_utc())
        .ok_or_else(|| Error::Usage(format!("--from {s:?} does not exist in {tz}")))
}

/// One entry's upcoming fires, as printed by `--format json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NextFires {
    /// Entry name.
    pub entry: String,
    /// IANA zone name.
    pub timezone: String,
    /// RFC 3339 instants with the zone's offset.
    pub fires: Vec<String>,
}

/// The next `count` fire times after `from` of each entry (all, or those named in `only`).
#[must_use]
pub fn next_fires(
    entries: &[Entry],
    only: &[String],
    from: DateTime<Utc>,
    count: usize,
) -> Vec<NextFires> {
    entries
        .iter()
        .filter(|e| only.is_empty() || only.iter().any(|n| **n == *e.name))
        .map(|e| {
            let mut fires = Vec::with_capacity(count);
            let mut after = from;
            while fires.len() < count {
                let Some(at) = e.next_fire_after(after) else {
                    break;
                };
                fires.push(rfc3339_in(e, at));
                after = at;
            }
            NextFires {
                entry: e.name.to_string(),
                timezone: e.timezone.name().to_string(),
                fires,
            }
        })
        .collect()
}

fn rfc3339_in(e: &Entry, at: DateTime<Utc>) -> String {
    at.with_timezone(&e.timezone)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Text rendering: one block per entry, local time then UTC.
#[must_use]
pub fn render_text(list: &[NextFires]) -> String {
    let mut out = String::new();
    for n in list {
        out.push_str(&format!("{} ({})\n", n.entry, n.timezone));
        if n.fires.is_empty() {
            out.push_str("  (no upcoming fire time)\n");
        }
        for f in &n.fires {
            let utc = DateTime::parse_from_rfc3339(f)
                .map(|d| d.to_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true))
                .unwrap_or_default();
            out.push_str(&format!("  {f}  {utc}\n"));
        }
    }
    out
}
