//! The overlap policy at a fire time (`overlap = "skip"` / `"buffer_one"`): whether the
//! entry's previous run has a final state in the result backend, and what to do when not. The
//! previous run is the last message the leader sent for the entry (after a failover, the one
//! the controls recorded, timed from the term start); it holds the next back at most
//! `overlap_timeout`, so a lost result cannot block the entry forever.
//!
//! Decided at the fire time: a fire time staged ahead whose previous run is still going is
//! put back and decided again at its instant (on the direct path), so a run that finishes
//! in between is not skipped for nothing. A waiting `buffer_one` fire time is sent before
//! any later one is decided, and while one waits every later one is held: the buffered run
//! is always the next run of its entry.

use super::plan::{Due, Plan};
use super::Beat;
use crate::control::SkipReason;
use crate::entry::Overlap;
use crate::leader::Lease;
use crate::store::Error;
use std::collections::HashSet;
use tokio::time::Instant;

/// The last message sent for an entry (task id) and when.
type Running = (String, Instant);

impl Beat {
    /// Takes out of `due` the fires whose previous run is still going: `skip` counts them as
    /// skipped by overlap, `buffer_one` keeps the first waiting (sent by
    /// [`Beat::release_buffered`]) and skips the rest. Each plans its entry's next fire time.
    /// A fire time not yet due (staged ahead) is put back instead, to be decided at its
    /// instant. Waiting fire times whose previous run finished are sent first. A result
    /// backend that does not answer lets them through (logged).
    ///
    /// # Errors
    /// As [`Beat::release_buffered`]'s.
    pub(super) async fn hold_overlapping(
        &self,
        lease: &Lease,
        plan: &mut Plan,
        due: Vec<Due>,
    ) -> Result<Vec<Due>, Error> {
        let Some(results) = self.controls.results.clone() else {
            return Ok(due);
        };
        if !self.controls.local().buffered.is_empty() {
            self.release_buffered(lease, plan).await?;
        }
        let now = Instant::now();
        let (ask, mut held): (Vec<(usize, String)>, HashSet<usize>) = {
            let local = self.controls.local();
            let mut held = HashSet::new();
            let ask = due
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    let e = &plan.entries()[d.idx];
                    if e.overlap == Overlap::Allow {
                        return None;
                    }
                    if local.buffered.contains_key(&*e.name) {
                        // One waits already: it goes next, this one is held.
                        held.insert(i);
                        return None;
                    }
                    let (id, sent) = local.running.get(&*e.name)?;
                    (now.duration_since(*sent) < e.overlap_timeout).then(|| (i, id.clone()))
                })
                .collect();
            (ask, held)
        };
        if ask.is_empty() && held.is_empty() {
            return Ok(due);
        }
        let ids: Vec<String> = ask.iter().map(|(_, id)| id.clone()).collect();
        let finished = if ids.is_empty() {
            Vec::new()
        } else {
            match results.finished(&ids).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e),
                        "result backend unavailable: overlap policies let these fire times through");
                    vec![true; ids.len()]
                }
            }
        };
        held.extend(
            ask.iter()
                .zip(finished)
                .filter(|(_, done)| !done)
                .map(|((i, _), _)| *i),
        );
        let wall = self.clock.now();
        let mut keep = Vec::with_capacity(due.len());
        for (i, d) in due.into_iter().enumerate() {
            if !held.contains(&i) {
                keep.push(d);
                continue;
            }
            if d.at > wall {
                plan.defer(d);
                continue;
            }
            let e = &plan.entries()[d.idx];
            let name = e.name.to_string();
            let at = crate::protocol::rfc3339_millis(d.at);
            let mut local = self.controls.local();
            if e.overlap == Overlap::BufferOne && !local.buffered.contains_key(&name) {
                tracing::info!(entry = %name, scheduled = %at,
                    "fire time buffered: the previous run has not finished");
                local.buffered.insert(name, d);
            } else {
                tracing::info!(entry = %name, scheduled = %at,
                    "fire time skipped: the previous run has not finished");
                self.metrics
                    .count_skip(&name, SkipReason::Overlap.as_str(), 1);
                local
                    .unsaved
                    .skips
                    .push((name.clone(), SkipReason::Overlap, 1));
                local.unsaved.missed.push((name, d.at.timestamp_millis()));
            }
            drop(local);
            plan.complete(d);
        }
        Ok(keep)
    }

    /// Each poll, and before overlap is decided: sends each buffered fire time whose previous
    /// run finished (or ran past `overlap_timeout`), through the entry's own key like a
    /// catch-up.
    pub(super) async fn release_buffered(&self, lease: &Lease, plan: &Plan) -> Result<(), Error> {
        let Some(results) = self.controls.results.clone() else {
            return Ok(());
        };
        let waiting: Vec<(String, Due, Option<Running>)> = {
            let local = self.controls.local();
            local
                .buffered
                .iter()
                .map(|(n, d)| (n.clone(), *d, local.running.get(n).cloned()))
                .collect()
        };
        for (name, d, running) in waiting {
            let Some(entry) = plan.entries().iter().find(|e| *e.name == *name) else {
                self.controls.local().buffered.remove(&name);
                continue;
            };
            if d.at > self.clock.now() {
                // Never before its fire time (only a fire time already due is buffered).
                continue;
            }
            let ready = match running {
                None => true,
                Some((_, sent)) if sent.elapsed() >= entry.overlap_timeout => true,
                Some((id, _)) => results
                    .finished(std::slice::from_ref(&id))
                    .await?
                    .first()
                    .copied()
                    .unwrap_or(true),
            };
            if ready {
                let fire = self.encoder.encode(entry, d.at, lease.epoch);
                self.send(lease, entry, &[fire], true).await?;
                self.controls.local().buffered.remove(&name);
            }
        }
        Ok(())
    }
}
