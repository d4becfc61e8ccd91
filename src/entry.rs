//! The validated schedule entry: what `config` produces and what the beat, `next`, `status`
//! and the message builder consume. Owns per-entry fire-time rules that sit on top of the
//! bare schedule (jitter, `start_at`/`end_at`, `enabled`, catch-up); owns no I/O.

use crate::schedule::{CatchUp, Schedule};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// One `[[entry]]` of a schedule file, with `[defaults]` applied and every value validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique id across all files; last-run state is keyed by it.
    pub name: String,
    /// Celery task name.
    pub task: String,
    /// When it fires (cron in a time zone, anchored interval, or one-off).
    pub schedule: Schedule,
    /// IANA time zone name the entry is shown and evaluated in (`UTC` by default).
    pub timezone: chrono_tz::Tz,
    /// Positional arguments of the task.
    pub args: Vec<Value>,
    /// Keyword arguments of the task.
    pub kwargs: Map<String, Value>,
    /// Destination queue (default `celery`).
    pub queue: String,
    /// Routing key written in `delivery_info`; the queue name when unset.
    pub routing_key: Option<String>,
    /// Exchange written in `delivery_info`; `""` (the direct default) when unset.
    pub exchange: Option<String>,
    /// kombu Redis priority 0–9 (0 runs first).
    pub priority: Option<u8>,
    /// The message expires this long after its scheduled fire time.
    pub expires: Option<Duration>,
    /// Extra Celery headers copied into every message.
    pub headers: Map<String, Value>,
    /// The fixed offset drawn from a hash of the name (already resolved from the `jitter` bound).
    pub jitter_offset: Duration,
    /// What to do with fire times that passed while no beat was leader.
    pub catch_up: CatchUp,
    /// How far back catch-up looks (resolved default: the entry's period, at most 24 h).
    pub catch_up_window: Duration,
    /// Disabled entries are parsed and validated but never fire.
    pub enabled: bool,
    /// No fire time before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// No fire time after this instant.
    pub end_at: Option<DateTime<Utc>>,
    /// Free text for people.
    pub description: Option<String>,
    /// Where the entry was defined, for messages and `status`.
    pub source: Option<SourceRef>,
}

/// A place in a schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the entry's `[[entry]]` header.
    pub line: usize,
}
