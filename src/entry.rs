//! The validated schedule entry: what `config` produces and what the beat, `next`, `status`
//! and the message builder consume. Owns per-entry fire-time rules that sit on top of the
//! bare schedule (jitter, `start_at`/`end_at`, `enabled`, catch-up); owns no I/O.

use crate::schedule::{self, CatchUp, Schedule};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

/// One `[[entry]]` of a schedule file, with `[defaults]` applied and every value validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique id across all files; last-run state is keyed by it. Shared with what is kept
    /// per entry (the sent counts, the controls' first runs), so those hold no copy.
    pub name: Arc<str>,
    /// Celery task name; shared between entries of the same task.
    pub task: Arc<str>,
    /// When it fires (cron in a time zone, anchored interval, or one-off).
    pub schedule: Schedule,
    /// IANA time zone name the entry is shown and evaluated in (`UTC` by default).
    pub timezone: crate::schedule::Tz,
    /// Positional arguments of the task (shared: most entries have none, and a beat with
    /// 10,000 entries keeps them all in memory).
    pub args: Arc<[Value]>,
    /// Keyword arguments of the task (shared when empty).
    pub kwargs: Arc<Map<String, Value>>,
    /// Destination queue (default `celery`); shared between entries of the same queue.
    pub queue: Arc<str>,
    /// Extra Celery headers copied into every message (shared when empty).
    pub headers: Arc<Map<String, Value>>,
    /// The fixed offset drawn from a hash of the name (already resolved from the `jitter` bound).
    pub jitter_offset: Duration,
    /// What to do with fire times that passed while no beat was leader.
    pub catch_up: CatchUp,
    /// How far back catch-up looks (resolved default: the entry's period, at most 24 h).
    pub catch_up_window: Duration,
    /// Disabled entries are parsed and validated but never fire.
    pub enabled: bool,
    /// What to do at a fire time while the previous run has no final state (`overlap`).
    pub overlap: Overlap,
    /// Longest a run without a final state holds back the next (`overlap_timeout`): a lost
    /// result must not block the entry forever.
    pub overlap_timeout: Duration,
    /// What few entries set (routing, priority, expiry, a time window, a description):
    /// `None` when the entry sets none of it, so the common entry stays small (a beat keeps
    /// every entry in memory; inline, these took a third of each).
    pub rare: Option<Box<Rare>>,
    /// Where the entry was defined, for messages and `status`.
    pub source: Option<SourceRef>,
    /// `protocol = "rq"`: the entry enqueues an RQ job instead of sending a Celery message.
    pub rq: Option<Box<RqTarget>>,
}

/// The settings of an [`Entry`] that few entries use ([`Entry::rare`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rare {
    /// Routing key written in `delivery_info`; the queue name when unset.
    pub routing_key: Option<Box<str>>,
    /// Exchange written in `delivery_info`; `""` (the direct default) when unset.
    pub exchange: Option<Box<str>>,
    /// kombu Redis priority 0–9 (0 runs first).
    pub priority: Option<u8>,
    /// The message expires this long after its scheduled fire time.
    pub expires: Option<Duration>,
    /// No fire time before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// No fire time after this instant.
    pub end_at: Option<DateTime<Utc>>,
    /// Free text for people.
    pub description: Option<Box<str>>,
}

impl Rare {
    /// Boxed, or `None` when nothing is set.
    #[must_use]
    pub fn boxed(self) -> Option<Box<Self>> {
        (self != Self::default()).then(|| Box::new(self))
    }
}

/// What an RQ entry enqueues besides its function (`task`), arguments and queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RqTarget {
    /// How `data` and `meta` are serialized: RQ's default pickle, or JSON for workers
    /// started with `--serializer rq.serializers.JSONSerializer`.
    pub serializer: RqSerializer,
    /// `job_timeout`: the worker kills the job after this long.
    pub timeout: Option<Duration>,
    /// How long the result is kept; `Some(-1)`: forever (RQ's own encoding), in seconds.
    pub result_ttl: Option<i64>,
    /// How long the job may wait in the queue before RQ discards it.
    pub ttl: Option<Duration>,
    /// How long a failed job is kept.
    pub failure_ttl: Option<Duration>,
    /// Extra `job.meta` (beatd adds the fire time as `beatd_scheduled_at`).
    pub meta: Map<String, Value>,
}

/// RQ's two serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RqSerializer {
    /// `rq.serializers.DefaultSerializer` (pickle).
    #[default]
    Pickle,
    /// `rq.serializers.JSONSerializer`.
    Json,
}

/// A place in a schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// The file; shared by every entry of the file rather than copied into each.
    pub path: Arc<Path>,
    /// 1-based line of the entry's `[[entry]]` header.
    pub line: usize,
}

/// `s` as a string shared with every live entry that uses the same text (task and queue
/// names repeat across thousands of entries). Weak references: text no entry uses any more
/// is freed; the map drops its dead keys as it grows.
#[must_use]
pub fn shared_str(s: &str) -> Arc<str> {
    static TEXTS: LazyLock<Mutex<HashMap<Box<str>, Weak<str>>>> = LazyLock::new(Mutex::default);
    let Ok(mut m) = TEXTS.lock() else {
        return Arc::from(s);
    };
    if let Some(found) = m.get(s).and_then(Weak::upgrade) {
        return found;
    }
    if m.len() >= 64 && m.len().is_power_of_two() {
        m.retain(|_, w| w.strong_count() > 0);
    }
    let text = Arc::<str>::from(s);
    m.insert(s.into(), Arc::downgrade(&text));
    text
}

/// `args` as the entry keeps them; every entry without arguments shares one empty list.
#[must_use]
pub fn shared_args(args: Vec<Value>) -> Arc<[Value]> {
    static NONE: LazyLock<Arc<[Value]>> = LazyLock::new(|| Arc::from(Vec::new()));
    if args.is_empty() {
        NONE.clone()
    } else {
        args.into()
    }
}

/// A JSON table (`kwargs`, `headers`) as the entry keeps it; empty tables are shared.
#[must_use]
pub fn shared_table(table: Map<String, Value>) -> Arc<Map<String, Value>> {
    static EMPTY: LazyLock<Arc<Map<String, Value>>> = LazyLock::new(Arc::default);
    if table.is_empty() {
        EMPTY.clone()
    } else {
        Arc::new(table)
    }
}

/// One nanosecond: chrono's resolution, so "the first fire at or after `t`" is exactly "the
/// first fire strictly after `t - EPSILON`".
const EPSILON: TimeDelta = TimeDelta::nanoseconds(1);

impl Entry {
    /// Routing key written in `delivery_info`; the queue name when unset.
    #[must_use]
    pub fn routing_key(&self) -> Option<&str> {
        self.rare.as_ref()?.routing_key.as_deref()
    }

    /// Exchange written in `delivery_info`; `""` (the direct default) when unset.
    #[must_use]
    pub fn exchange(&self) -> Option<&str> {
        self.rare.as_ref()?.exchange.as_deref()
    }

    /// kombu Redis priority 0–9 (0 runs first).
    #[must_use]
    pub fn priority(&self) -> Option<u8> {
        self.rare.as_ref()?.priority
    }

    /// The message expires this long after its scheduled fire time.
    #[must_use]
    pub fn expires(&self) -> Option<Duration> {
        self.rare.as_ref()?.expires
    }

    /// No fire time before this instant.
    #[must_use]
    pub fn start_at(&self) -> Option<DateTime<Utc>> {
        self.rare.as_ref()?.start_at
    }

    /// No fire time after this instant.
    #[must_use]
    pub fn end_at(&self) -> Option<DateTime<Utc>> {
        self.rare.as_ref()?.end_at
    }

    /// Free text for people.
    #[must_use]
    pub fn description(&self) -> Option<&str> {
        self.rare.as_ref()?.description.as_deref()
    }

    /// The fingerprint of what decides an entry's fire times. A different fingerprint means the
    /// schedule changed, so the old last run must not trigger a catch-up of the new schedule.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        use crate::schedule::Schedule;
        let base = match &self.schedule {
            Schedule::Cron(c) => format!("cron:{}@{}", c.expr, c.tz),
            Schedule::Every { interval, anchor } => {
                format!(
                    "every:{}ms@{}",
                    interval.as_millis(),
                    anchor.timestamp_millis()
                )
            }
            Schedule::At(at) => format!("at:{}", at.timestamp_millis()),
        };
        format!("{base}+{}ms", self.jitter_offset.as_millis())
    }

    /// The jitter offset as a signed delta (saturating; offsets are far below its range).
    fn offset(&self) -> TimeDelta {
        TimeDelta::from_std(self.jitter_offset).unwrap_or(TimeDelta::MAX)
    }

    /// The first fire time strictly after `after`: the schedule's time plus the jitter offset,
    /// within `start_at`..=`end_at`; `None` if disabled or if nothing is left to fire.
    #[must_use]
    pub fn next_fire_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        let offset = self.offset();
        let mut from = after;
        if let Some(start) = self.start_at().and_then(|s| s.checked_sub_signed(EPSILON)) {
            from = from.max(start);
        }
        let base = self.schedule.next_after(from.checked_sub_signed(offset)?)?;
        let fire = base.checked_add_signed(offset)?;
        self.end_at().is_none_or(|end| fire <= end).then_some(fire)
    }

    /// The last fire time at or before `t` (jitter and windows applied); `None` if disabled.
    #[must_use]
    pub fn latest_fire_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        let offset = self.offset();
        let to = self.end_at().map_or(t, |end| end.min(t));
        let base = self
            .schedule
            .latest_at_or_before(to.checked_sub_signed(offset)?)?;
        let fire = base.checked_add_signed(offset)?;
        self.start_at()
            .is_none_or(|start| fire >= start)
            .then_some(fire)
    }

    /// The fire times in `(last, now]` to send now under the entry's `catch_up` policy and
    /// `catch_up_window`, oldest first (see `schedule::catchup`). An entry that never ran
    /// (`last == None`) misses nothing: it starts from now with no immediate fire.
    #[must_use]
    pub fn missed_fires(
        &self,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        schedule::select_missed(self.catch_up, self.catch_up_window, last, now, |t| {
            self.latest_fire_at_or_before(t)
        })
    }
}

#[cfg(test)]
mod tests;

/// The overlap policy of an entry, named as Temporal and Kubernetes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Send at every fire time, whatever the previous run does (the default).
    #[default]
    Allow,
    /// Send nothing while the previous run has no final state in the result backend.
    Skip,
    /// Keep at most one fire time waiting, sent when the previous run finishes.
    BufferOne,
}

impl Overlap {
    /// The name in schedule files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Skip => "skip",
            Self::BufferOne => "buffer_one",
        }
    }
}

/// The default `overlap_timeout`.
pub const DEFAULT_OVERLAP_TIMEOUT: Duration = Duration::from_secs(3600);
