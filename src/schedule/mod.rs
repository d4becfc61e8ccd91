//! Next-fire math: cron in a time zone (croner + jiff's tz database, DST policy), anchored intervals,
//! one-offs, jitter and catch-up. Pure: no I/O, no system clock; every function takes the
//! instant it reasons about. Per-entry rules layered on top (jitter offset, `start_at` /
//! `end_at`, `enabled`) live in `impl Entry` in `entry.rs`.
//!
//! Civil time (cron, in the entry's zone) and absolute time (`every`, `at`) are kept apart:
//! only [`CronSchedule`] knows about zones, and the DST policy lives in `dst.rs`.

mod catchup;
mod cron;
mod dst;
#[cfg(test)]
mod dst_tests;
mod interval;
mod jitter;
mod zone;

pub use catchup::default_catch_up_window;
pub(crate) use catchup::select_missed;
pub use cron::{CronError, CronSchedule};
pub use jitter::jitter_offset;
pub use zone::{Tz, UnknownZone, ZoneOffset};

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

impl Schedule {
    /// The first fire time strictly after `after`.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(cron) => cron.next_after(after),
            Schedule::Every { interval, anchor } => interval::next_after(*anchor, *interval, after),
            Schedule::At(at) => (*at > after).then_some(*at),
        }
    }

    /// The last fire time at or before `t`.
    #[must_use]
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(cron) => cron.latest_at_or_before(t),
            Schedule::Every { interval, anchor } => {
                interval::latest_at_or_before(*anchor, *interval, t)
            }
            Schedule::At(at) => (*at <= t).then_some(*at),
        }
    }
}
