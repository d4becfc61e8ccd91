//! Runtime controls of the schedules: pause (optionally until a time), resume, trigger and
//! backfill requests, the pauses they leave behind, and the per-entry counts of fire times not
//! sent. The [`ControlStore`] port and its implementations — Redis ([`redis`], the HA beat:
//! any replica or `beatd pause` queues a request, the leader answers it) and in-process
//! ([`local`], `beatd run` and the beat's tests; persisted beside the state file).
//!
//! The schedule files stay the source of truth for *what* runs; these act on *when*. A request
//! is only a request: the leader validates and applies it (`crate::beat::controls`), so an
//! unknown entry or a stale request is refused in one place. Owns the requests' shape and
//! storage; never imports `beat` or `emit`.

mod doorbell;
pub mod local;
pub mod redis;

pub use crate::store::Error;
pub use doorbell::Doorbell;
pub use local::LocalControls;
pub use redis::{RedisControls, RedisRunStates};

use crate::leader::Lease;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What a control request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Send nothing for the entry until resumed (or until `until_ms`, ms since the epoch).
    Pause {
        /// When the pause ends by itself; `None`: until resumed.
        #[serde(default)]
        until_ms: Option<i64>,
    },
    /// End a pause; `catch_up` decides about the fire times missed while paused.
    Resume {
        /// What to send of the fire times missed while paused.
        #[serde(default)]
        catch_up: ResumeCatchUp,
    },
    /// One extra run now, beside the regular fire times.
    Trigger,
    /// Every fire time of the entry in `from_ms..=to_ms`, oldest first, each at most once.
    Backfill {
        /// First instant of the range, ms since the epoch.
        from_ms: i64,
        /// Last instant of the range, ms since the epoch.
        to_ms: i64,
        /// Allow more than [`BACKFILL_CONFIRM`] fire times (the CLI's `--yes`).
        #[serde(default)]
        confirmed: bool,
    },
}

impl Action {
    /// The action's name, as in logs and on the command line.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
            Self::Trigger => "trigger",
            Self::Backfill { .. } => "backfill",
        }
    }
}

/// On resume, which fire times missed while paused to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ResumeCatchUp {
    /// None of them (the default): the entry goes on from its next fire time.
    #[default]
    None,
    /// Only the latest.
    Latest,
    /// All of them, oldest first, at most [`BACKFILL_CAP`].
    All,
}

/// A backfill larger than this many fire times needs confirming.
pub const BACKFILL_CONFIRM: usize = 100;
/// No backfill (or resume catch-up) sends more than this many fire times.
pub const BACKFILL_CAP: usize = 10_000;

/// One control request, as queued for the leader.
// No `deny_unknown_fields`: serde does not combine it with the flattened action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique id (a uuid); the reply is filed under it, and a trigger is sent once per id.
    pub id: String,
    /// The entry acted on.
    pub entry: String,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Who asked (`user@host` of the CLI, or `http <peer>`), for the log.
    pub by: String,
    /// When it was asked, ms since the epoch on the asker's clock.
    pub at_ms: i64,
    /// The asker stops waiting at this instant (ms); a leader that sees the request later
    /// refuses it as stale, since nobody hears the answer and the asker was told it failed.
    pub deadline_ms: i64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No entry of that name in the leader's schedule.
    UnknownEntry,
    /// The entry is `enabled = false` in its file: nothing to pause, trigger or backfill.
    Disabled,
    /// A backfill range that is reversed, in the future, or larger than allowed.
    BadRange,
    /// A backfill of more than [`BACKFILL_CONFIRM`] fire times, not confirmed.
    NeedsConfirm,
    /// The request reached a leader after its deadline (a failover in between).
    Stale,
    /// The leader could not store or send it (its store failed or it lost the lease).
    Unavailable,
}

/// The leader's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// `None` when applied; why not otherwise.
    pub refused: Option<Refusal>,
    /// A sentence for the asker.
    pub message: String,
    /// Messages sent by this request.
    pub sent: u64,
    /// Fire times of the request that were already sent and skipped.
    pub already_sent: u64,
    /// The epoch of the leader that answered.
    pub epoch: u64,
}

/// An entry's pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Since when, ms since the epoch.
    pub since_ms: i64,
    /// Until when, if it ends by itself.
    pub until_ms: Option<i64>,
    /// Who paused it.
    pub by: String,
}

/// Why a fire time was not sent (or not on time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The previous run had not finished (`overlap = "skip"` or a full `buffer_one`).
    Overlap,
    /// The entry was paused.
    Pause,
    /// Missed while no leader ran, and not sent under the catch-up policy and window.
    CatchUp,
    /// Sent, but more than a second after its fire time.
    Late,
}

impl SkipReason {
    /// Every reason, in the order reports list them.
    pub const ALL: [Self; 4] = [Self::Overlap, Self::Pause, Self::CatchUp, Self::Late];

    /// The label value in `/metrics` and the key in `beatd status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overlap => "overlap",
            Self::Pause => "pause",
            Self::CatchUp => "catch_up",
            Self::Late => "late",
        }
    }

    /// The reason named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What the controls leave behind, read at each term start and by `beatd status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Paused entries.
    #[serde(default)]
    pub pauses: BTreeMap<String, Pause>,
    /// Per entry, the latest fire time a pause (or a resume without catch-up) decided not to
    /// send: the plan treats it as run, so a failover after a resume does not catch up what
    /// the resume said to leave out.
    #[serde(default)]
    pub skipped_through: BTreeMap<String, i64>,
    /// Per entry and reason, fire times not sent (or sent late), ever.
    #[serde(default)]
    pub skips: BTreeMap<String, BTreeMap<SkipReason, u64>>,
    /// Per entry, the task id of the last message sent for it (its result state on the status
    /// page; the overlap policy's "previous run").
    #[serde(default)]
    pub last_task: BTreeMap<String, String>,
    /// The epoch of the last leader to plan, and when its term began (ms since the epoch).
    #[serde(default)]
    pub leader_since: Option<(u64, i64)>,
    /// Per entry, its first regular fire time sent since controls exist: older fire times
    /// were never sent regularly, so a backfill may send them. `i64::MIN` for an entry that
    /// ran before (its history is unknown and counts as sent).
    #[serde(default)]
    pub first_run: BTreeMap<Arc<str>, i64>,
    /// In-process stores only (Redis keeps these in a sorted set, read with
    /// [`ControlStore::missed`]): fire times not sent, per entry, the newest [`MISSED_CAP`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missed: BTreeMap<String, std::collections::BTreeSet<i64>>,
}

/// The fire times not sent that are remembered (per entry in-process, per namespace on
/// Redis), newest first; a backfill treats older ones as sent.
pub const MISSED_CAP: usize = 100_000;

/// Changes the leader writes in one step, fenced by its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Pauses set (`Some`) or lifted (`None`).
    pub pauses: Vec<(String, Option<Pause>)>,
    /// New `skipped_through` values.
    pub skipped_through: Vec<(String, i64)>,
    /// Counts to add.
    pub skips: Vec<(String, SkipReason, u64)>,
    /// Task ids of messages just sent.
    pub last_task: Vec<(String, String)>,
    /// A new term: (epoch, since ms).
    pub leader_since: Option<(u64, i64)>,
    /// Fire times not sent (pause, catch-up, overlap): (entry, ms).
    pub missed: Vec<(String, i64)>,
    /// First regular fire times, kept only where none is recorded yet.
    pub first_run: Vec<(String, i64)>,
}

impl Update {
    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pauses.is_empty()
            && self.skipped_through.is_empty()
            && self.skips.is_empty()
            && self.last_task.is_empty()
            && self.leader_since.is_none()
            && self.missed.is_empty()
            && self.first_run.is_empty()
    }

    /// Applies the update to `p` (the in-process stores, and the leader's own copy).
    pub fn apply(&self, p: &mut Persisted) {
        for (entry, pause) in &self.pauses {
            match pause {
                Some(x) => {
                    p.pauses.insert(entry.clone(), x.clone());
                }
                None => {
                    p.pauses.remove(entry);
                }
            }
        }
        for (entry, ms) in &self.skipped_through {
            let v = p.skipped_through.entry(entry.clone()).or_insert(*ms);
            *v = (*v).max(*ms);
        }
        for (entry, reason, n) in &self.skips {
            *p.skips
                .entry(entry.clone())
                .or_default()
                .entry(*reason)
                .or_insert(0) += n;
        }
        for (entry, id) in &self.last_task {
            p.last_task.insert(entry.clone(), id.clone());
        }
        if self.leader_since.is_some() {
            p.leader_since = self.leader_since;
        }
        for (entry, ms) in &self.first_run {
            p.first_run.entry(entry.as_str().into()).or_insert(*ms);
        }
    }

    /// Applies the missed fire times to an in-process store's copy, capped per entry.
    pub fn apply_missed(&self, p: &mut Persisted) {
        for (entry, ms) in &self.missed {
            let set = p.missed.entry(entry.clone()).or_default();
            set.insert(*ms);
            while set.len() > MISSED_CAP {
                set.pop_first();
            }
        }
    }

    /// Splits the update into parts of at most `max` items of each kind, in order (the first
    /// carries the pauses and the term), so that one write never holds the store long: a
    /// batch of 100,000 fires counted late made one write of 2.3 MB that held Redis 135 ms.
    #[must_use]
    pub fn split(self, max: usize) -> Vec<Update> {
        // Dealt out in one pass: taking each part off the front of the vectors moved the rest
        // every time, which at 100,000 skips (a catch-up start) cost seconds of memmove.
        fn deal<T>(
            v: Vec<T>,
            max: usize,
            parts: &mut [Update],
            to: fn(&mut Update) -> &mut Vec<T>,
        ) {
            let mut items = v.into_iter();
            for part in parts {
                to(part).extend(items.by_ref().take(max));
            }
        }
        let max = max.max(1);
        let Update {
            pauses,
            skipped_through,
            skips,
            last_task,
            leader_since,
            missed,
            first_run,
        } = self;
        let longest = [
            skipped_through.len(),
            skips.len(),
            last_task.len(),
            missed.len(),
            first_run.len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let mut parts: Vec<Update> = (0..longest.div_ceil(max).max(1))
            .map(|_| Update::default())
            .collect();
        parts[0].pauses = pauses;
        parts[0].leader_since = leader_since;
        deal(skipped_through, max, &mut parts, |u| &mut u.skipped_through);
        deal(skips, max, &mut parts, |u| &mut u.skips);
        deal(last_task, max, &mut parts, |u| &mut u.last_task);
        deal(missed, max, &mut parts, |u| &mut u.missed);
        deal(first_run, max, &mut parts, |u| &mut u.first_run);
        parts
    }

    /// Folds `other` (written later) into this one.
    pub fn merge(&mut self, other: Update) {
        self.pauses.extend(other.pauses);
        self.skipped_through.extend(other.skipped_through);
        self.skips.extend(other.skips);
        self.last_task.extend(other.last_task);
        if other.leader_since.is_some() {
            self.leader_since = other.leader_since;
        }
        self.missed.extend(other.missed);
        self.first_run.extend(other.first_run);
    }
}

/// Where control requests wait for the leader, and what they leave behind.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Queues `request` and waits up to `wait` for the leader's reply; `None` when no leader
    /// answered in time (the request then expires unapplied at its deadline).
    async fn submit(&self, request: &Request, wait: Duration) -> Result<Option<Reply>, Error>;
    /// The queued requests, oldest first, at most 100; each stays queued until answered, so
    /// a leader that dies before answering leaves it to the next one.
    async fn pending(&self) -> Result<Vec<Request>, Error>;
    /// Files the reply of request `id` and removes it from the queue.
    async fn answer(&self, request: &Request, reply: &Reply) -> Result<(), Error>;
    /// Pauses, `skipped_through` and skip counts.
    async fn read(&self) -> Result<Persisted, Error>;
    /// Fire times of `entry` in `from_ms..=to_ms` recorded as not sent.
    async fn missed(&self, entry: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>, Error>;
    /// Writes `update` while the lock still holds `lease.token`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when it no longer does; nothing is written then.
    async fn write(&self, lease: &Lease, update: &Update) -> Result<(), Error>;
    /// The bell each submitted request rings, when this store has one; the first call starts
    /// listening (call it inside the runtime). `None`: the leader polls at the short interval.
    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        None
    }
}

/// Whether runs are over, from the result backend (the overlap policies).
#[async_trait]
pub trait RunStates: Send + Sync {
    /// For each task id, whether its result has a final state (`SUCCESS`, `FAILURE`,
    /// `REVOKED`).
    async fn finished(&self, task_ids: &[String]) -> Result<Vec<bool>, Error>;
}

/// The state key under which the one-off sends of `entry` are recorded: `kind` is `trigger`
/// (one key per request, so a request answered twice sends once) or `backfill` (one key per
/// fire time, so a fire time is backfilled at most once). The unit separator cannot appear
/// in an entry name (names are validated), so these never collide with an entry.
#[must_use]
pub fn one_off_key(entry: &str, kind: &str, id: &str) -> String {
    format!("{entry}\u{1f}{kind}\u{1f}{id}")
}

/// The entry a state key belongs to: itself, or the entry of a one-off key.
#[must_use]
pub fn entry_of_key(key: &str) -> &str {
    key.split('\u{1f}').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_splits_into_bounded_parts_that_add_up_to_it() {
        let skips: Vec<_> = (0..5)
            .map(|i| (format!("e{i}"), SkipReason::Late, 1))
            .collect();
        let update = Update {
            pauses: vec![("p".into(), None)],
            skips: skips.clone(),
            first_run: vec![("e0".into(), 7)],
            leader_since: Some((3, 9)),
            ..Update::default()
        };
        let parts = update.clone().split(2);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.skips.len() <= 2 && !p.is_empty()));
        assert_eq!(parts[0].pauses.len(), 1);
        assert_eq!(parts[0].leader_since, Some((3, 9)));
        let mut joined = Update::default();
        for p in parts {
            joined.merge(p);
        }
        assert_eq!(joined, update);
        // A small update stays one part; an empty one is one empty part.
        assert_eq!(update.clone().split(100), vec![update]);
        assert_eq!(Update::default().split(10).len(), 1);
    }
}
