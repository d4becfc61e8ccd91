//! Next-fire math: cron in a time zone (croner + chrono-tz, DST policy), anchored intervals,
//! one-offs, jitter and catch-up. Pure: no I/O, no system clock; every function takes the
//! instant it reasons about.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// What to do with fire times missed while no beat was leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Skip them.
    None,
    /// Send the most recent one within the window.
    #[default]
    Latest,
    /// Send all of them within the window, oldest first, at most 1000.
    All,
}

/// When an entry fires, before jitter and windows.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// A cron expression evaluated in a time zone.
    Cron(CronSchedule),
    /// `anchor + k × interval` in absolute (UTC) time.
    Every {
        /// The period (> 0).
        interval: Duration,
        /// Fire times are `anchor + k × interval`; the Unix epoch by default.
        anchor: DateTime<Utc>,
    },
    /// A one-off instant.
    At(DateTime<Utc>),
}

/// A parsed cron expression bound to a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as written.
    pub expr: String,
    /// Zone the fields are interpreted in.
    pub tz: chrono_tz::Tz,
    /// The parsed pattern.
    cron: croner::Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

/// A cron expression that does not parse; names the field and value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// Human message, e.g. `invalid hour field "25": must be 0-23`.
    pub message: String,
    /// Byte range inside the expression the error points at, when known.
    pub span: Option<std::ops::Range<usize>>,
}

impl CronSchedule {
    /// Parses a 5-field (or 6-field, seconds first) expression for `tz`.
    pub fn parse(expr: &str, tz: chrono_tz::Tz) -> Result<Self, CronError> {
        let _ = (expr, tz);
        todo!("schedule module")
    }
}

impl Schedule {
    /// The first fire time strictly after `after`.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = after;
        todo!("schedule module")
    }

    /// The last fire time at or before `t`.
    #[must_use]
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = t;
        todo!("schedule module")
    }
}
