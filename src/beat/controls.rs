//! The leader's side of the runtime controls ([`crate::control`]): it looks at the queued
//! requests when the store's [`Doorbell`] rings and polls them every [`POLL`] while it
//! cannot hear it (or has counts to write), every [`IDLE_POLL`] otherwise; it answers each
//! (pause, resume, trigger, backfill), keeps paused entries from sending, and counts every
//! fire time not sent by reason. Hooks into the loop are small: [`Beat::control_turn`] each
//! poll, [`Beat::hold_paused`] on due fires, and [`Beat::control_replan`] at each plan.
//!
//! Every send goes through the same fenced [`crate::emit::Emitter::emit`] as a regular fire.
//! A trigger is recorded under a key of its own per request, a backfilled fire time under one
//! per fire time ([`crate::control::one_off_key`]), so answering a request twice (a leader
//! dies before answering, the next one sees it again) sends nothing twice.

use super::plan::{Due, Plan};
use super::term::{Phase, Term};
use super::{Beat, TermEnd};
use crate::control::{
    one_off_key, Action, ControlStore, Doorbell, Pause, Persisted, Refusal, Reply, Request,
    ResumeCatchUp, RunStates, SkipReason, Update, BACKFILL_CAP, BACKFILL_CONFIRM,
};
use crate::emit::{EmitOutcome, Fire};
use crate::entry::Entry;
use crate::leader::Lease;
use crate::state::LastRun;
use crate::store::Error;
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How often the leader looks for requests while the doorbell cannot be heard (no
/// subscription), and how soon it writes counts and marks: "effective within a second".
pub const POLL: Duration = Duration::from_millis(250);

/// How often the leader looks for requests while the doorbell is heard: only for a request
/// whose ring was lost (a subscription broken without the connection noticing), so an
/// idle beat spends no CPU between fire times.
pub const IDLE_POLL: Duration = Duration::from_secs(5);

/// Fires sent per call of a backfill or a resume catch-up.
const CHUNK: usize = 500;

/// Items of each kind per control write: about 1.4 µs of Redis each in a hash table, but up
/// to 5 µs in a hash of up to 512 entries, which Redis keeps as a listpack that every write
/// scans (500 task ids and first runs after a fire of 500 entries held Redis 8 ms in one
/// write of 2,000 a kind); at 200 a kind a part stays under about 2 ms.
const CONTROL_WRITE_ITEMS: usize = 200;

/// How long one poll goes on writing parts of a large update before it leaves the rest to
/// the next poll (a part takes about 2 ms of Redis and a round trip).
const CONTROL_WRITE_BUDGET: Duration = Duration::from_millis(20);

/// The controls as the beat holds them: the store, and the leader's copy of what is paused.
pub struct Controls {
    /// Where requests wait and pauses are kept.
    store: Arc<dyn ControlStore>,
    /// Where run states are read for the overlap policies; `None`: every run counts as
    /// finished.
    pub(super) results: Option<Arc<dyn RunStates>>,
    /// The leader's view, loaded at each plan and kept up to date by what it writes.
    local: Mutex<Local>,
}

#[derive(Default)]
pub(super) struct Local {
    /// Pauses and counts as last read or written.
    persisted: Persisted,
    /// Counts and marks not yet written (flushed at the next poll).
    pub(super) unsaved: Update,
    /// When it last polled; `None`: poll at once.
    last_poll: Option<Instant>,
    /// Per entry, the last message sent (task id) and when.
    pub(super) running: HashMap<String, (String, Instant)>,
    /// Per entry, the fire time `buffer_one` keeps waiting.
    pub(super) buffered: HashMap<String, Due>,
}

impl Controls {
    /// Controls kept in `store`.
    #[must_use]
    pub fn new(store: Arc<dyn ControlStore>) -> Self {
        Self {
            store,
            results: None,
            local: Mutex::default(),
        }
    }

    /// Reads run states from `results` for the overlap policies.
    #[must_use]
    pub fn with_results(mut self, results: Option<Arc<dyn RunStates>>) -> Self {
        self.results = results;
        self
    }

    pub(super) fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's doorbell, listening from this call on (`None`: it has none).
    #[must_use]
    pub fn doorbell(&self) -> Option<Arc<Doorbell>> {
        self.store.doorbell()
    }

    /// Makes the next turn poll (the doorbell rang).
    pub fn poll_now(&self) {
        self.local().last_poll = None;
    }

    /// When the loop must wake next for the controls, at `now` (`wall` on the clock), with
    /// the doorbell heard (`bell_heard`) or not: soon while counts wait to be written, a buffered fire waits for
    /// its run, or requests cannot be heard; otherwise at the fallback poll, or when the
    /// first pause ends.
    #[must_use]
    pub fn poll_at(&self, now: Instant, wall: DateTime<Utc>, bell_heard: bool) -> Instant {
        let local = self.local();
        let Some(last) = local.last_poll else {
            return now;
        };
        let quick = !bell_heard || !local.unsaved.is_empty() || !local.buffered.is_empty();
        if quick {
            return last + POLL;
        }
        let fallback = last + IDLE_POLL;
        match local
            .persisted
            .pauses
            .values()
            .filter_map(|p| p.until_ms)
            .min()
        {
            // Never sooner than the short interval: a pause whose end could not be written
            // yet is retried at that pace, not in a busy loop.
            Some(until) => {
                let wait = u64::try_from(until - ms(wall)).unwrap_or(0);
                fallback.min((now + Duration::from_millis(wait)).max(last + POLL))
            }
            None => fallback,
        }
    }

    /// Whether `entry` is paused now.
    #[must_use]
    pub fn is_paused(&self, entry: &str) -> bool {
        self.local().persisted.pauses.contains_key(entry)
    }

    /// Notes the task id of a message just sent for `entry` (written at the next poll);
    /// `regular`: the fire time of a regular (or catch-up) send, the first of which is kept.
    pub fn sent(&self, entry: &Arc<str>, task_id: &str, regular: Option<i64>) {
        let mut local = self.local();
        local
            .running
            .insert(entry.to_string(), (task_id.to_owned(), Instant::now()));
        if let Some(at) = regular {
            if !local.persisted.first_run.contains_key(entry) {
                local.persisted.first_run.insert(Arc::clone(entry), at);
                local.unsaved.first_run.push((entry.to_string(), at));
            }
        }
        local
            .unsaved
            .last_task
            .push((entry.to_string(), task_id.to_owned()));
    }

    /// Notes in the leader's copy only the first regular run of an entry sent in a big
    /// batch of entries without an overlap policy (a control write of that many would be a
    /// large one; settling a staged batch on Redis records first runs and task ids itself,
    /// and the next plan marks the rest), so a backfill in this term does not send its fire
    /// times again.
    pub fn first_ran(&self, entry: &Arc<str>, at: i64) {
        let mut local = self.local();
        if !local.persisted.first_run.contains_key(entry) {
            local.persisted.first_run.insert(Arc::clone(entry), at);
        }
    }

    /// Counts `n` fire times of `entry` under `reason` (written at the next poll).
    pub fn count(&self, entry: &str, reason: SkipReason, n: u64) {
        self.local()
            .unsaved
            .skips
            .push((entry.to_owned(), reason, n));
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// The fire times of `entry` in `from..=to`, at most `cap + 1` of them (so a caller can tell
/// "more than cap").
fn fire_times(
    entry: &Entry,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = entry.next_fire_after(from - TimeDelta::milliseconds(1));
    while let Some(at) = t {
        if at > to || out.len() > cap {
            break;
        }
        out.push(at);
        t = entry.next_fire_after(at);
    }
    out
}

fn refused(refusal: Refusal, message: String, epoch: u64) -> Reply {
    Reply {
        refused: Some(refusal),
        message,
        sent: 0,
        already_sent: 0,
        epoch,
    }
}

fn applied(message: String, sent: u64, already_sent: u64, epoch: u64) -> Reply {
    Reply {
        refused: None,
        message,
        sent,
        already_sent,
        epoch,
    }
}

/// `entry` with `beatd_trigger: kind` in its headers (or its RQ job's meta).
fn marked(entry: &Entry, kind: &str) -> Entry {
    let mut e = entry.clone();
    if let Some(rq) = &mut e.rq {
        rq.meta.insert("beatd_trigger".into(), kind.into());
    } else {
        let mut headers = (*e.headers).clone();
        headers.insert("beatd_trigger".into(), kind.into());
        e.headers = Arc::new(headers);
    }
    e
}

impl Beat {
    /// At each plan: loads the controls, folds `skipped_through` into the last runs (what a
    /// pause or a resume left out is not caught up later), and counts the fire times the
    /// catch-up policy leaves out since the last run. `None` when the store failed.
    pub(super) async fn control_replan(
        &self,
        entries: &[Entry],
        last: &mut HashMap<String, LastRun>,
        lease: &Lease,
    ) -> Option<()> {
        let mut persisted = match self.controls.store.read().await {
            Ok(p) => p,
            Err(e) => {
                self.store_failed(&e);
                return None;
            }
        };
        // Keyed by the entries' own names, so the leader's copy holds no second one.
        for e in entries {
            if let Some((_, at)) = persisted.first_run.remove_entry(&*e.name) {
                persisted.first_run.insert(Arc::clone(&e.name), at);
            }
        }
        let now = self.clock.now();
        let tolerance =
            TimeDelta::from_std(self.options.takeover_tolerance).unwrap_or(TimeDelta::zero());
        let mut update = Update::default();
        for entry in entries {
            let fp = entry.fingerprint();
            if let Some(&through) = persisted.skipped_through.get(&*entry.name) {
                let run = last
                    .entry(entry.name.to_string())
                    .or_insert_with(|| LastRun {
                        fire_at_ms: through,
                        count: 0,
                        fingerprint: Some(fp.clone()),
                    });
                run.fire_at_ms = run.fire_at_ms.max(through);
            }
            if last.contains_key(&*entry.name) && !persisted.first_run.contains_key(&*entry.name) {
                // Ran before controls kept a first run: its history counts as sent.
                update.first_run.push((entry.name.to_string(), i64::MIN));
            }
            let Some(l) = last
                .get(&*entry.name)
                .filter(|l| l.fingerprint.as_deref() == Some(fp.as_str()))
            else {
                continue;
            };
            // Fire times in (last, now - tolerance] the policy does not send: counted once,
            // and marked as decided so a second plan does not count them again.
            let last_at = from_ms(l.fire_at_ms);
            let sent = entry.missed_fires(Some(last_at), now);
            let cutoff = now - tolerance;
            if cutoff <= last_at {
                continue;
            }
            let all = fire_times(
                entry,
                last_at + TimeDelta::milliseconds(1),
                cutoff,
                BACKFILL_CAP,
            );
            let left_out: Vec<DateTime<Utc>> =
                all.into_iter().filter(|t| !sent.contains(t)).collect();
            let Some(&latest) = left_out.last() else {
                continue;
            };
            let reason = if persisted.pauses.contains_key(&*entry.name) {
                SkipReason::Pause
            } else {
                SkipReason::CatchUp
            };
            let n = u64::try_from(left_out.len()).unwrap_or(u64::MAX);
            update.skips.push((entry.name.to_string(), reason, n));
            let newest = left_out.len().saturating_sub(crate::control::MISSED_CAP);
            update.missed.extend(
                left_out[newest..]
                    .iter()
                    .map(|t| (entry.name.to_string(), ms(*t))),
            );
            self.metrics.count_skip(&entry.name, reason.as_str(), n);
            // Marked as decided (so a second plan does not count them again) only below the
            // first fire time the policy sends, which the plan's catch-up then keeps.
            if sent.first().is_none_or(|first| latest < *first) {
                update
                    .skipped_through
                    .push((entry.name.to_string(), ms(latest)));
                if let Some(run) = last.get_mut(&*entry.name) {
                    run.fire_at_ms = run.fire_at_ms.max(ms(latest));
                }
            }
        }
        update.leader_since = Some((lease.epoch, ms(now)));
        let mut local = self.controls.local();
        local.persisted = persisted;
        update.apply(&mut local.persisted);
        local.unsaved.merge(update);
        local.last_poll = None;
        let since = Instant::now();
        for e in entries
            .iter()
            .filter(|e| e.overlap != crate::entry::Overlap::Allow)
        {
            if let Some(id) = local.persisted.last_task.get(&*e.name).cloned() {
                local
                    .running
                    .entry(e.name.to_string())
                    .or_insert((id, since));
            }
        }
        drop(local);
        Some(())
    }

    /// Takes paused entries' fires out of `due`: each counts as skipped by pause and plans
    /// its entry's next fire time.
    pub(super) fn hold_paused(&self, plan: &mut Plan, due: Vec<Due>) -> Vec<Due> {
        let paused: Vec<bool> = {
            let local = self.controls.local();
            if local.persisted.pauses.is_empty() {
                return due;
            }
            due.iter()
                .map(|d| {
                    local
                        .persisted
                        .pauses
                        .contains_key(&*plan.entries()[d.idx].name)
                })
                .collect()
        };
        let mut keep = Vec::with_capacity(due.len());
        for (d, paused) in due.into_iter().zip(paused) {
            if paused {
                let name = plan.entries()[d.idx].name.to_string();
                tracing::info!(entry = %name, scheduled = %crate::protocol::rfc3339_millis(d.at),
                    "fire time skipped: entry paused");
                self.metrics
                    .count_skip(&name, SkipReason::Pause.as_str(), 1);
                let mut local = self.controls.local();
                local
                    .unsaved
                    .skips
                    .push((name.clone(), SkipReason::Pause, 1));
                local.unsaved.missed.push((name.clone(), ms(d.at)));
                local.unsaved.skipped_through.push((name, ms(d.at)));
                drop(local);
                plan.complete(d);
            } else {
                keep.push(d);
            }
        }
        keep
    }

    /// Each poll: writes pending counts, ends expired pauses, and answers queued requests.
    /// A store failure is retried at the next poll; a lost lease ends the term.
    pub(super) async fn control_turn(
        &self,
        term: &mut Term,
        plan: &mut Plan,
        bell_heard: bool,
    ) -> Result<(), TermEnd> {
        let now = self.clock.now();
        {
            let at = Instant::now();
            if at < self.controls.poll_at(at, now, bell_heard) {
                return Ok(());
            }
            self.controls.local().last_poll = Some(at);
        }
        let lease = term.lease.clone();
        let expired: Vec<String> = self
            .controls
            .local()
            .persisted
            .pauses
            .iter()
            .filter(|(_, p)| p.until_ms.is_some_and(|u| u <= ms(now)))
            .map(|(e, _)| e.clone())
            .collect();
        let mut update = std::mem::take(&mut self.controls.local().unsaved);
        for entry in expired {
            tracing::info!(entry = %entry, by = "pause expiry", "entry resumed: its pause ended");
            update.pauses.push((entry, None));
        }
        if let Err(e) = self
            .control_write(&lease, update, Some(CONTROL_WRITE_BUDGET))
            .await
        {
            return self.control_failed(e);
        }
        if let Err(e) = self.release_buffered(&lease, plan).await {
            return self.control_failed(e);
        }
        let requests = match self.controls.store.pending().await {
            Ok(r) => r,
            Err(e) => return self.control_failed(e),
        };
        for request in requests {
            if term.expired(Instant::now()) {
                return Err(TermEnd::LeaseLost);
            }
            let reply = match self.answer(&lease, plan, &request).await {
                Ok(reply) => reply,
                Err(e) => return self.control_failed(e),
            };
            if reply.refused.is_some() {
                tracing::warn!(entry = %request.entry, action = request.action.name(),
                    by = %request.by, request = %request.id, reason = ?reply.refused,
                    "control request refused: {}", reply.message);
            } else {
                tracing::info!(entry = %request.entry, action = request.action.name(),
                    by = %request.by, request = %request.id, sent = reply.sent,
                    already_sent = reply.already_sent, epoch = lease.epoch,
                    "control request applied: {}", reply.message);
            }
            if let Err(e) = self.controls.store.answer(&request, &reply).await {
                return self.control_failed(e);
            }
            if matches!(request.action, Action::Pause { .. })
                && reply.refused.is_none()
                && matches!(term.phase, Phase::Staging(_) | Phase::Staged(_))
            {
                // A batch parked ahead may hold the entry just paused: roll it back and
                // plan again, so the pause holds from the next fire time on.
                term.phase = Phase::Replan { not_before: None };
            }
        }
        Ok(())
    }

    /// At a graceful stop, under the lease still held: a fire time `buffer_one` kept waiting
    /// is not sent (the next leader knows nothing of it), so it counts as skipped by overlap,
    /// and what is unsaved is written, so the counts match what was sent. Best effort, two
    /// seconds at most; a failure is logged.
    pub(super) async fn flush_controls(&self, lease: &Lease) {
        let update = {
            let mut local = self.controls.local();
            let buffered: Vec<(String, Due)> = local.buffered.drain().collect();
            for (name, d) in buffered {
                tracing::info!(entry = %name, scheduled = %crate::protocol::rfc3339_millis(d.at),
                    "fire time skipped: the leader stopped while it was buffered");
                self.metrics
                    .count_skip(&name, SkipReason::Overlap.as_str(), 1);
                local
                    .unsaved
                    .skips
                    .push((name.clone(), SkipReason::Overlap, 1));
                local.unsaved.missed.push((name, ms(d.at)));
            }
            std::mem::take(&mut local.unsaved)
        };
        if update.is_empty() {
            return;
        }
        let write_all = async {
            for part in update.split(CONTROL_WRITE_ITEMS) {
                self.controls.store.write(lease, &part).await?;
            }
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), write_all).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %crate::error_chain(&e),
                "counts of the last moments not written at shutdown"),
            Err(_) => {
                tracing::warn!("counts of the last moments not written at shutdown: timed out")
            }
        }
    }

    fn control_failed(&self, e: Error) -> Result<(), TermEnd> {
        match e {
            Error::LeaseLost => Err(TermEnd::LeaseLost),
            e @ Error::Unavailable(_) => {
                self.store_failed(&e);
                Ok(())
            }
        }
    }

    /// Writes `update` fenced, and keeps it in the leader's copy; on failure it stays
    /// unsaved for the next poll. With a `budget`, parts are written only until it is spent
    /// and the rest waits for the next poll too: counts and marks of a catch-up start of
    /// 100,000 entries are 500 parts, seconds of writes that must neither hold the burst
    /// back nor keep the term from renewing its lease.
    async fn control_write(
        &self,
        lease: &Lease,
        update: Update,
        budget: Option<Duration>,
    ) -> Result<(), Error> {
        if update.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut parts = update.split(CONTROL_WRITE_ITEMS).into_iter();
        while let Some(part) = parts.next() {
            if let Err(e) = self.controls.store.write(lease, &part).await {
                // Pauses are re-derived from the request, which stays queued; the rest (this
                // part and the ones after it) stays for the next poll.
                self.keep_unsaved(
                    Update {
                        pauses: Vec::new(),
                        ..part
                    },
                    parts,
                );
                return Err(e);
            }
            part.apply(&mut self.controls.local().persisted);
            if budget.is_some_and(|b| started.elapsed() >= b) {
                self.keep_unsaved(Update::default(), parts);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Puts parts not written back in front of what was noted since, so a later task id
    /// still wins over an earlier one.
    fn keep_unsaved(&self, mut left: Update, parts: impl Iterator<Item = Update>) {
        for later in parts {
            left.merge(later);
        }
        let mut local = self.controls.local();
        left.merge(std::mem::take(&mut local.unsaved));
        local.unsaved = left;
    }

    /// Validates and applies one request. `Err` only for a store failure or a lost lease
    /// (the request stays queued).
    async fn answer(&self, lease: &Lease, plan: &Plan, r: &Request) -> Result<Reply, Error> {
        let epoch = lease.epoch;
        let now = self.clock.now();
        if ms(now) > r.deadline_ms {
            return Ok(refused(
                Refusal::Stale,
                format!(
                    "request reached the leader (epoch {epoch}) {} ms after its deadline; not applied",
                    ms(now) - r.deadline_ms
                ),
                epoch,
            ));
        }
        let Some(entry) = plan.entries().iter().find(|e| *e.name == *r.entry) else {
            let names: Vec<&str> = plan.entries().iter().map(|e| e.name.as_ref()).collect();
            let hint = names
                .iter()
                .map(|n| (strsim::jaro_winkler(&r.entry, n), *n))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map_or(String::new(), |(_, n)| format!("; did you mean {n:?}?"));
            return Ok(refused(
                Refusal::UnknownEntry,
                format!(
                    "no entry named {:?} in the leader's schedule{hint}",
                    r.entry
                ),
                epoch,
            ));
        };
        if !entry.enabled {
            return Ok(refused(
                Refusal::Disabled,
                format!(
                    "entry {:?} is disabled (enabled = false in its schedule file); nothing to {}",
                    r.entry,
                    r.action.name()
                ),
                epoch,
            ));
        }
        match &r.action {
            Action::Pause { until_ms } => self.pause_entry(lease, entry, r, *until_ms, now).await,
            Action::Resume { catch_up } => self.resume_entry(lease, entry, r, *catch_up, now).await,
            Action::Trigger => {
                let e = marked(entry, "manual");
                let mut fire = self.encoder.encode(&e, now, epoch);
                fire.entry = one_off_key(&entry.name, "trigger", &r.id);
                let (sent, already) = self.send(lease, entry, &[fire], false).await?;
                Ok(applied(
                    if sent == 1 {
                        "one run sent now".into()
                    } else {
                        "already sent for this request".into()
                    },
                    sent,
                    already,
                    epoch,
                ))
            }
            Action::Backfill {
                from_ms,
                to_ms,
                confirmed,
            } => {
                self.backfill(lease, entry, (*from_ms, *to_ms), *confirmed, now)
                    .await
            }
        }
    }

    async fn pause_entry(
        &self,
        lease: &Lease,
        entry: &Entry,
        r: &Request,
        until_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Reply, Error> {
        if let Some(u) = until_ms.filter(|u| *u <= ms(now)) {
            return Ok(refused(
                Refusal::BadRange,
                format!(
                    "--until {} is not in the future",
                    crate::protocol::rfc3339_millis(from_ms(u))
                ),
                lease.epoch,
            ));
        }
        let since_ms = self
            .controls
            .local()
            .persisted
            .pauses
            .get(&*entry.name)
            .map_or(ms(now), |p| p.since_ms);
        let pause = Pause {
            since_ms,
            until_ms,
            by: r.by.clone(),
        };
        let update = Update {
            pauses: vec![(entry.name.to_string(), Some(pause))],
            ..Update::default()
        };
        self.control_write(lease, update, None).await?;
        let until = until_ms.map_or("until resumed".to_owned(), |u| {
            format!("until {}", crate::protocol::rfc3339_millis(from_ms(u)))
        });
        Ok(applied(format!("paused {until}"), 0, 0, lease.epoch))
    }

    async fn resume_entry(
        &self,
        lease: &Lease,
        entry: &Entry,
        r: &Request,
        catch_up: ResumeCatchUp,
        now: DateTime<Utc>,
    ) -> Result<Reply, Error> {
        let Some(pause) = self
            .controls
            .local()
            .persisted
            .pauses
            .get(&*entry.name)
            .cloned()
        else {
            return Ok(applied("was not paused".into(), 0, 0, lease.epoch));
        };
        let missed = fire_times(entry, from_ms(pause.since_ms), now, BACKFILL_CAP);
        let chosen: Vec<DateTime<Utc>> = match catch_up {
            ResumeCatchUp::None => Vec::new(),
            ResumeCatchUp::Latest => missed.last().copied().into_iter().collect(),
            ResumeCatchUp::All => missed.iter().copied().take(BACKFILL_CAP).collect(),
        };
        // Through the entry's own key, like a catch-up: recorded as its last run, so no
        // other leader sends them again.
        let fires: Vec<Fire> = chosen
            .iter()
            .map(|at| self.encoder.encode(entry, *at, lease.epoch))
            .collect();
        let (sent, already) = self.send(lease, entry, &fires, true).await?;
        let mut update = Update {
            pauses: vec![(entry.name.to_string(), None)],
            ..Update::default()
        };
        if let Some(latest) = missed.last() {
            update
                .skipped_through
                .push((entry.name.to_string(), ms(*latest)));
        }
        self.control_write(lease, update, None).await?;
        let _ = r;
        Ok(applied(
            format!(
                "resumed; {} fire time(s) missed while paused, {sent} sent (catch-up {catch_up:?})",
                missed.len()
            ),
            sent,
            already,
            lease.epoch,
        ))
    }

    async fn backfill(
        &self,
        lease: &Lease,
        entry: &Entry,
        (from, to): (i64, i64),
        confirmed: bool,
        now: DateTime<Utc>,
    ) -> Result<Reply, Error> {
        let epoch = lease.epoch;
        let (f, t) = (from_ms(from), from_ms(to));
        if from > to {
            return Ok(refused(
                Refusal::BadRange,
                format!(
                    "--from {} is after --to {}",
                    crate::protocol::rfc3339_millis(f),
                    crate::protocol::rfc3339_millis(t)
                ),
                epoch,
            ));
        }
        if t > now {
            return Ok(refused(
                Refusal::BadRange,
                format!(
                    "--to {} is in the future; backfill sends past fire times only",
                    crate::protocol::rfc3339_millis(t)
                ),
                epoch,
            ));
        }
        let times = fire_times(entry, f, t, BACKFILL_CAP);
        if times.len() > BACKFILL_CAP {
            return Ok(refused(
                Refusal::BadRange,
                format!("more than {BACKFILL_CAP} fire times in the range; split it"),
                epoch,
            ));
        }
        if times.len() > BACKFILL_CONFIRM && !confirmed {
            return Ok(refused(
                Refusal::NeedsConfirm,
                format!(
                    "{} fire times in the range (more than {BACKFILL_CONFIRM}); confirm with --yes",
                    times.len()
                ),
                epoch,
            ));
        }
        // Regular sends are recorded in order, so a fire time after the last run, or before
        // the first, was never sent regularly; between them only those recorded as not sent
        // (paused, left out by the catch-up policy) were not.
        let last = self.state.last_runs().await?;
        let last_run = last.get(&*entry.name).map_or(i64::MIN, |l| l.fire_at_ms);
        let first_run = self
            .controls
            .local()
            .persisted
            .first_run
            .get(&*entry.name)
            .copied()
            .unwrap_or(i64::MAX);
        let missed: std::collections::HashSet<i64> = self
            .controls
            .store
            .missed(&entry.name, from, to)
            .await?
            .into_iter()
            .collect();
        let e = marked(entry, "backfill");
        let mut skipped_regular = 0u64;
        let fires: Vec<Fire> = times
            .iter()
            .filter(|at| {
                let t = ms(**at);
                let unsent = t > last_run || t < first_run || missed.contains(&t);
                skipped_regular += u64::from(!unsent);
                unsent
            })
            .map(|at| {
                let mut fire = self.encoder.encode(&e, *at, epoch);
                fire.entry = one_off_key(&entry.name, "backfill", &ms(*at).to_string());
                fire
            })
            .collect();
        let (sent, already) = self.send(lease, entry, &fires, true).await?;
        Ok(applied(
            format!("{} fire time(s) in the range, {sent} sent", times.len()),
            sent,
            already + skipped_regular,
            epoch,
        ))
    }

    /// Sends `fires` of `entry` in chunks through the fenced emitter; (sent, already sent).
    pub(super) async fn send(
        &self,
        lease: &Lease,
        entry: &Entry,
        fires: &[Fire],
        catch_up: bool,
    ) -> Result<(u64, u64), Error> {
        let (mut sent, mut already) = (0u64, 0u64);
        for chunk in fires.chunks(CHUNK) {
            let outcomes = self.emission.emitter().emit(lease, chunk).await?;
            let now = self.clock.now();
            for (fire, outcome) in chunk.iter().zip(&outcomes) {
                match outcome {
                    EmitOutcome::Sent => {
                        sent += 1;
                        let regular = (!fire.entry.contains('\u{1f}')).then_some(fire.fire_at_ms);
                        self.controls.sent(&entry.name, &fire.task_id, regular);
                        self.status
                            .sent
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.metrics.count_sent(&entry.name);
                        tracing::info!(entry = %entry.name, task = %entry.task,
                            task_id = %fire.task_id,
                            scheduled = %crate::protocol::rfc3339_millis(from_ms(fire.fire_at_ms)),
                            lateness_ms = ms(now) - fire.fire_at_ms,
                            epoch = lease.epoch, catch_up,
                            control = fire.entry.split('\u{1f}').nth(1).unwrap_or("resume"),
                            "fire");
                    }
                    EmitOutcome::AlreadySent => already += 1,
                }
            }
        }
        Ok((sent, already))
    }
}
