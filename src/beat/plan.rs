//! The beat's plan: a min-heap of (next fire time, entry) that says what is due and when to
//! wake. Pure and synchronous; the loop in `beat` owns time and I/O.

use crate::entry::Entry;
use crate::state::LastRun;
use chrono::{DateTime, TimeDelta, Utc};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Index of an entry in the plan's entry list.
pub type EntryIdx = usize;

/// Planned fires of a set of entries.
#[derive(Debug)]
pub struct Plan {
    /// The entries, in file order.
    entries: Arc<[Entry]>,
    /// Pending fire times, earliest first: one regular fire per entry plus catch-up fires.
    heap: BinaryHeap<Reverse<Pending>>,
}

/// A pending fire. Only a regular fire plans the entry's next one when it goes out, so
/// catch-up fires never duplicate the regular chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    /// Scheduled fire time.
    at: DateTime<Utc>,
    /// The entry.
    idx: EntryIdx,
    /// Whether this is a catch-up fire.
    catch_up: bool,
}

/// A fire that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The entry.
    pub idx: EntryIdx,
    /// Scheduled fire time.
    pub at: DateTime<Utc>,
    /// Whether this is a catch-up fire (a regular fire plans the next one when sent).
    pub catch_up: bool,
}

impl Plan {
    /// Plans `entries` as seen at `now`, given the recorded last runs: missed fire times
    /// (per each entry's catch-up policy) are due at once, the rest at their next fire time.
    #[must_use]
    pub fn new(
        entries: Arc<[Entry]>,
        last_runs: &HashMap<String, LastRun>,
        now: DateTime<Utc>,
    ) -> Self {
        Self::with_tolerance(entries, last_runs, now, Duration::ZERO)
    }

    /// Like [`Plan::new`], but when the catch-up policy sends nothing for an entry that ran
    /// before (`none`, or a window too short), a fire time that came due at most `tolerance`
    /// before `now` is sent as a late regular fire rather than skipped. A term that starts
    /// after a graceful handover (the standby polls the lock every second) thus sends the
    /// fire time that fell due during the poll, even under `catch_up = "none"`; `latest` and
    /// `all` are unchanged (they already send it). Entries never run (or whose schedule
    /// changed) still start from `now`, with no immediate fire.
    #[must_use]
    pub fn with_tolerance(
        entries: Arc<[Entry]>,
        last_runs: &HashMap<String, LastRun>,
        now: DateTime<Utc>,
        tolerance: Duration,
    ) -> Self {
        let tolerance = TimeDelta::from_std(tolerance).unwrap_or(TimeDelta::zero());
        let mut heap = BinaryHeap::with_capacity(entries.len());
        for (idx, entry) in entries.iter().enumerate() {
            let last = last_runs
                .get(&*entry.name)
                .filter(|l| l.fingerprint.as_deref() == Some(entry.fingerprint().as_str()))
                .and_then(|l| DateTime::from_timestamp_millis(l.fire_at_ms));
            let missed = entry.missed_fires(last, now);
            // The regular chain starts after `now`, or, when the policy caught nothing up,
            // after `now - tolerance`: a fire time due within the tolerance goes out late.
            // A last run in the future (another host's clock ran ahead) is never repeated.
            let after = match last {
                None => now,
                Some(l) if missed.is_empty() => {
                    l.max(now.checked_sub_signed(tolerance).unwrap_or(now))
                }
                Some(l) => l.max(now),
            };
            for at in missed {
                heap.push(Reverse(Pending {
                    at,
                    idx,
                    catch_up: true,
                }));
            }
            if let Some(at) = entry.next_fire_after(after) {
                heap.push(Reverse(Pending {
                    at,
                    idx,
                    catch_up: false,
                }));
            }
        }
        Self { entries, heap }
    }

    /// The entries planned.
    #[must_use]
    pub fn entries(&self) -> &Arc<[Entry]> {
        &self.entries
    }

    /// The earliest pending fire time.
    #[must_use]
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse(p)| p.at)
    }

    /// Removes and returns every fire due at or before `now`, oldest first.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some(Reverse(p)) = self.heap.peek().copied() {
            if p.at > now {
                break;
            }
            self.heap.pop();
            due.push(Due {
                idx: p.idx,
                at: p.at,
                catch_up: p.catch_up,
            });
        }
        due
    }

    /// Marks `due` as done: a regular fire plans the entry's next fire time.
    pub fn complete(&mut self, due: Due) {
        if due.catch_up {
            return;
        }
        if let Some(at) = self.entries[due.idx].next_fire_after(due.at) {
            self.heap.push(Reverse(Pending {
                at,
                idx: due.idx,
                catch_up: false,
            }));
        }
    }

    /// Puts `due` back, undecided: it is due again at its fire time.
    pub fn defer(&mut self, due: Due) {
        self.heap.push(Reverse(Pending {
            at: due.at,
            idx: due.idx,
            catch_up: due.catch_up,
        }));
    }

    /// Takes the fires of a batch parked under an earlier plan out of this one, so they are
    /// not planned twice, and gives each its catch-up flag as planned here. `false` (and the
    /// plan unchanged) when one of them is not pending in this plan.
    pub fn take_staged(&mut self, staged: &mut [Due]) -> bool {
        let wanted: HashMap<(EntryIdx, DateTime<Utc>), usize> = staged
            .iter()
            .enumerate()
            .map(|(i, d)| ((d.idx, d.at), i))
            .collect();
        let mut found = vec![None; staged.len()];
        let mut kept = Vec::with_capacity(self.heap.len());
        for Reverse(p) in std::mem::take(&mut self.heap) {
            match wanted.get(&(p.idx, p.at)) {
                Some(&i) if found[i].is_none() => found[i] = Some(p),
                _ => kept.push(Reverse(p)),
            }
        }
        if found.iter().any(Option::is_none) {
            kept.extend(found.into_iter().flatten().map(Reverse));
            self.heap = kept.into();
            return false;
        }
        self.heap = kept.into();
        for (d, p) in staged.iter_mut().zip(found.into_iter().flatten()) {
            d.catch_up = p.catch_up;
        }
        true
    }

    /// Number of pending fires.
    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
