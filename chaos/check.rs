//! The invariant checker of the chaos run: pure functions over what the run left behind (the
//! workers' execution logs and Redis' `{ns}:run_count`), no I/O, so its own tests can feed it
//! runs with duplicates, misses and losses and see it fail.
//!
//! Definitions (also in the README, "Chaos testing and fuzzing"):
//!
//! - **due**: the fire times of every entry in `[start_at, end_at]` (all entries use
//!   `catch_up = "all"` with a window longer than the run, so the policy wants every one sent).
//! - **sent**: the sum of `{ns}:run_count`, which beatd increments for each fire it records
//!   as sent (in the `LPUSH` script, or when a staged batch made visible is settled, right
//!   after its commit or by the next leader): the count of messages beatd put on the queue.
//! - **executed**: distinct task ids that ran at least once (a line in a worker's log).
//! - **duplicated**: messages sent for a fire time that already had one, i.e. executed task
//!   ids beyond the first per (entry, fire time). This is the beat's "at most once" promise.
//! - **re-executed**: runs of a task id beyond its first. Delivery to workers is at-least-once:
//!   a worker killed or paused mid-task has its message restored after the visibility timeout
//!   and run again, with the same id. Reported, not a failure.
//! - **lost**: messages sent but never executed (`sent - executed`).
//! - **missed**: due fire times that were neither executed nor accounted for as lost, i.e.
//!   never sent: the beat's "at least once while some replica leads" promise.
//! - **unexpected**: executions of a fire time that is not due (off the grid, out of range).
//! - **unaccounted**: executed ids beyond `sent`: Redis forgot a send it had acknowledged.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One line of a worker's log: the task ran once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The entry (from the task's args).
    pub entry: String,
    /// Scheduled fire time, ms since the Unix epoch.
    pub fire_ms: i64,
    /// Celery task id.
    pub task_id: String,
}

/// Parses a log line `<scheduled_at RFC 3339> <task id> <args JSON>`.
pub fn parse_line(line: &str) -> Option<Execution> {
    let mut it = line.splitn(3, ' ');
    let at = chrono::DateTime::parse_from_rfc3339(it.next()?).ok()?;
    let task_id = it.next()?.to_string();
    let args: Vec<String> = serde_json::from_str(it.next()?.trim()).ok()?;
    Some(Execution {
        entry: args.into_iter().next()?,
        fire_ms: at.timestamp_millis(),
        task_id,
    })
}

/// An entry of the run: fire times are the multiples of `period_ms` since the Unix epoch.
#[derive(Debug, Clone)]
pub struct GridEntry {
    /// Entry name.
    pub name: String,
    /// Period in ms.
    pub period_ms: i64,
}

/// The figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Fire times due.
    pub due: u64,
    /// Messages sent (run counts).
    pub sent: u64,
    /// Extra messages for an already-sent fire time.
    pub duplicated: u64,
    /// Due fire times never sent.
    pub missed: u64,
    /// Distinct messages executed.
    pub executed: u64,
    /// Extra runs of an already-executed message (at-least-once redelivery).
    pub reexecuted: u64,
    /// Sent, never executed.
    pub lost: u64,
    /// Executions of fire times that were not due.
    pub unexpected: u64,
    /// Executed messages beyond the sent count.
    pub unaccounted: u64,
}

impl Counts {
    /// The invariants hold.
    pub fn pass(&self) -> bool {
        self.duplicated == 0
            && self.missed == 0
            && self.lost == 0
            && self.unexpected == 0
            && self.unaccounted == 0
            && self.due > 0
    }
}

/// Checks a run whose entries fired over `[start_ms, end_ms]`.
pub fn check(
    entries: &[GridEntry],
    start_ms: i64,
    end_ms: i64,
    run_counts: &HashMap<String, u64>,
    executions: &[Execution],
) -> Counts {
    let mut c = Counts::default();
    for e in entries {
        let first = start_ms.div_euclid(e.period_ms) + i64::from(start_ms % e.period_ms != 0);
        let last = end_ms.div_euclid(e.period_ms);
        let due: HashSet<i64> = (first..=last).map(|k| k * e.period_ms).collect();
        let sent = run_counts.get(&e.name).copied().unwrap_or(0);
        // fire time -> distinct ids; id -> runs
        let mut by_fire: BTreeMap<i64, HashSet<&str>> = BTreeMap::new();
        let mut runs: HashMap<&str, u64> = HashMap::new();
        for x in executions.iter().filter(|x| x.entry == e.name) {
            *runs.entry(&x.task_id).or_default() += 1;
            by_fire.entry(x.fire_ms).or_default().insert(&x.task_id);
        }
        let ids = runs.len() as u64;
        let dup: u64 = by_fire.values().map(|s| s.len() as u64 - 1).sum();
        let unexpected = by_fire.keys().filter(|t| !due.contains(t)).count() as u64;
        let never_ran = due.iter().filter(|t| !by_fire.contains_key(t)).count() as u64;
        let lost = sent.saturating_sub(ids);
        c.due += due.len() as u64;
        c.sent += sent;
        c.duplicated += dup;
        c.executed += ids;
        c.reexecuted += runs.values().map(|n| n - 1).sum::<u64>();
        c.lost += lost;
        c.missed += never_ran.saturating_sub(lost);
        c.unexpected += unexpected;
        c.unaccounted += ids.saturating_sub(sent);
    }
    c
}
