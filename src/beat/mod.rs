//! The scheduler loop: leadership, the plan, and emission, over the small traits in
//! [`crate::beat_io`]. Owns when things are sent; owns no I/O of its own (Redis, files and the queue
//! are behind the traits) and reads time only through a [`Clock`].
//!
//! Glossary, mapped to Celery Beat's names:
//!
//! | beatd | Celery Beat |
//! |---|---|
//! | entry | `ScheduleEntry` (one item of `beat_schedule`) |
//! | fire time | the instant `is_due()` turns true |
//! | plan | the heap in `Scheduler.tick()` |
//! | emit | `Scheduler.apply_async()` |
//! | last run | `last_run_at` in the shelve file (here: per replica set, in Redis or a state file) |
//! | catch-up | what Celery does implicitly (one run at start) — here an explicit policy |
//! | leader, epoch | (none: Celery Beat is a singleton) |

pub mod message;
pub mod plan;

use crate::beat_io::{BatchId, EmitOutcome, Emitter, Error, Fire, LeaderLock, Lease, StateStore};
use crate::clock::SharedClock;
use crate::entry::Entry;
use crate::ops::metrics::Metrics;
use chrono::{DateTime, TimeDelta, Utc};
use plan::{Due, Plan};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Turns a due entry into its message; built from `protocol` by the caller, so the loop stays
/// free of wire details.
pub trait FireEncoder: Send + Sync {
    /// Encodes the message of `entry` for the scheduled fire time `at` under fencing `epoch`.
    fn encode(&self, entry: &Entry, at: DateTime<Utc>, epoch: u64) -> Fire;
}

/// Live facts about the beat, read by `/readyz` and tests; counters live in [`Metrics`].
#[derive(Debug, Default)]
pub struct BeatStatus {
    /// Whether this replica holds the lease.
    pub is_leader: AtomicBool,
    /// The fencing epoch of the current or last lease.
    pub epoch: AtomicU64,
    /// Whether the last call to the store succeeded (readiness).
    pub store_reachable: AtomicBool,
    /// Messages sent by this process.
    pub sent: AtomicU64,
}

/// Timing knobs of the loop.
#[derive(Debug, Clone)]
pub struct BeatOptions {
    /// How often a standby tries to take the lock.
    pub acquire_interval: Duration,
    /// Longest wait between retries after a store error.
    pub max_backoff: Duration,
    /// Fire times due at most this long before a term starts are sent late, not treated as
    /// missed (see [`Plan::with_tolerance`]): a standby takes up to `acquire_interval` to
    /// notice a released lock, and a graceful handover must not lose the fire time due
    /// meanwhile, whatever the catch-up policy.
    pub takeover_tolerance: Duration,
    /// With an emitter that stages ([`Emitter::stages`]), how long before a fire time its
    /// messages may be encoded and parked in the store, so that at the instant one O(1)
    /// commit makes them visible. Large enough for 100,000 fires of one instant to be
    /// encoded and staged on a slow machine; staging starts only once the previous fire
    /// time is committed.
    pub stage_ahead: Duration,
    /// Fires encoded and staged per step; the loop renews the lease between steps. Small,
    /// because the Redis client keeps a write buffer as large as its largest command for
    /// good (500 fires: about 0.5 MB), and staging happens ahead of time anyway.
    pub stage_chunk: usize,
}

impl Default for BeatOptions {
    fn default() -> Self {
        Self {
            acquire_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            takeover_tolerance: Duration::from_secs(2),
            stage_ahead: Duration::from_secs(5),
            stage_chunk: 500,
        }
    }
}

/// After sending at least this many fires at once, the loop hands the freed encoding
/// buffers back to the kernel (a few ms, after the instant).
const BIG_BATCH: usize = 1_000;

/// How long before a fire time the loop wakes to sleep the rest precisely.
const PRECISE: Duration = Duration::from_millis(2);

/// The fires of one fire time being staged, popped from the plan (a replan rebuilds them).
struct Staging {
    /// Names the batch in the store.
    batch: BatchId,
    /// The fire time of every fire in it.
    at: DateTime<Utc>,
    /// The fires, all due at `at`.
    due: Vec<Due>,
    /// Outcomes of the fires staged so far (a prefix of `due`).
    outcomes: Vec<EmitOutcome>,
    /// Task ids of the fires staged so far, for the fire log lines.
    task_ids: Vec<String>,
}

impl Staging {
    fn complete(&self) -> bool {
        self.outcomes.len() == self.due.len()
    }
}

/// The parts a beat runs on.
pub struct Beat {
    /// Wall time.
    pub clock: SharedClock,
    /// Leadership.
    pub leader: Arc<dyn LeaderLock>,
    /// Atomic push-and-record.
    pub emitter: Arc<dyn Emitter>,
    /// Last runs.
    pub state: Arc<dyn StateStore>,
    /// Message encoder.
    pub encoder: Arc<dyn FireEncoder>,
    /// The current entries; a new value is a reload.
    pub entries: watch::Receiver<Arc<[Entry]>>,
    /// Shared status.
    pub status: Arc<BeatStatus>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Timing knobs.
    pub options: BeatOptions,
}

/// Why a leadership term ended.
enum TermEnd {
    /// Shutdown requested: release the lock and stop.
    Cancelled,
    /// The lease is gone: become a standby.
    LeaseLost,
    /// The store failed: back off, then compete again (and catch up).
    StoreError,
}

impl Beat {
    /// Runs until `shutdown` is cancelled; releases the lock on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.options.max_backoff);
        // A lease whose term ended on a store error: if the store comes back still holding
        // its token (a Redis restart with AOF, a short partition), leading resumes without
        // waiting out the TTL.
        let mut held: Option<Lease> = None;
        loop {
            let acquired = match held.take() {
                Some(lease) => self.resume(lease, &mut held).await,
                None => self.leader.try_acquire().await,
            };
            // A standby waits for a release announcement or the poll interval, whichever comes
            // first; after an error it only backs off.
            let (wait, standby) = match acquired {
                Ok(Some(lease)) => {
                    self.status.store_reachable.store(true, Ordering::Relaxed);
                    backoff.reset();
                    match self.lead(&lease, &shutdown).await {
                        TermEnd::Cancelled => {
                            self.step_down(&lease).await;
                            return;
                        }
                        TermEnd::LeaseLost => {
                            self.metrics.lock_losses.inc();
                            self.set_leader(false);
                            tracing::warn!(epoch = lease.epoch, "leadership lost; now standby");
                            (self.options.acquire_interval, true)
                        }
                        TermEnd::StoreError => {
                            self.set_leader(false);
                            held = Some(lease);
                            (backoff.next(), false)
                        }
                    }
                }
                Ok(None) => {
                    self.status.store_reachable.store(true, Ordering::Relaxed);
                    backoff.reset();
                    (self.options.acquire_interval, true)
                }
                Err(e) => {
                    self.store_failed(&e);
                    (backoff.next(), false)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {
                    if let Some(lease) = held.take() {
                        self.step_down(&lease).await;
                    }
                    return;
                }
                () = async {
                    if standby {
                        self.leader.wait_released(wait).await;
                    } else {
                        tokio::time::sleep(wait).await;
                    }
                } => {}
            }
        }
    }

    /// Tries to keep a lease across a store outage; falls back to a fresh acquisition when
    /// the lock no longer holds its token.
    async fn resume(
        &self,
        mut lease: Lease,
        held: &mut Option<Lease>,
    ) -> Result<Option<Lease>, Error> {
        let sent = Instant::now();
        match self.leader.renew(&lease).await {
            Ok(true) => {
                tracing::info!(epoch = lease.epoch, "store back; lease still held");
                lease.acquired_at = sent;
                Ok(Some(lease))
            }
            Ok(false) => self.leader.try_acquire().await,
            Err(e) => {
                *held = Some(lease);
                Err(e)
            }
        }
    }

    fn set_leader(&self, leader: bool) {
        self.status.is_leader.store(leader, Ordering::Relaxed);
        self.metrics.is_leader.set(i64::from(leader));
    }

    /// The store answered: readiness again after an outage (a leader that kept its lease
    /// through it never passes through `try_acquire`, which sets it too).
    fn store_ok(&self) {
        self.status.store_reachable.store(true, Ordering::Relaxed);
    }

    fn store_failed(&self, e: &Error) {
        self.metrics.redis_errors.inc();
        self.status.store_reachable.store(false, Ordering::Relaxed);
        tracing::warn!(error = %crate::error_chain(e), "store unavailable; retrying");
    }

    async fn step_down(&self, lease: &Lease) {
        self.set_leader(false);
        match tokio::time::timeout(Duration::from_secs(2), self.leader.release(lease)).await {
            Ok(Ok(())) => tracing::info!(epoch = lease.epoch, "leadership released"),
            Ok(Err(e)) => tracing::warn!(epoch = lease.epoch, error = %e, "release failed"),
            Err(_) => tracing::warn!(epoch = lease.epoch, "release timed out"),
        }
    }

    /// One leadership term: plan from the recorded state, then send what falls due, renew
    /// the lease every ttl/3, and stop the moment the lease may have run out.
    async fn lead(&mut self, lease: &Lease, shutdown: &CancellationToken) -> TermEnd {
        self.set_leader(true);
        self.status.epoch.store(lease.epoch, Ordering::Relaxed);
        self.metrics
            .epoch
            .set(i64::try_from(lease.epoch).unwrap_or(i64::MAX));
        self.metrics.lock_acquisitions.inc();
        tracing::info!(epoch = lease.epoch, "leadership acquired");
        let mut valid_until = lease.acquired_at + lease.ttl;
        let mut renew_at = lease.acquired_at + lease.ttl / 3;
        // Seen now: the plan below is made from the current entries.
        self.entries.borrow_and_update();
        let Some(mut plan) = self.replan(lease).await else {
            return TermEnd::StoreError;
        };
        // After a store error: replan (which reads the store) not before this instant.
        let mut retry_at: Option<Instant> = None;
        let mut retry = Backoff::new(Duration::from_secs(1));
        // The plan must be made again: the entries changed, or an emission failed.
        let mut replan_pending = false;
        // The next fire time's messages, being parked in the store ahead of it.
        let mut staging: Option<Staging> = None;
        let stages = self.emitter.stages();
        loop {
            // Timers wake up to a millisecond or two late: wake a little early and sleep the
            // rest precisely (see `reach`).
            let early = TimeDelta::from_std(PRECISE).unwrap_or_default();
            let wake = match &staging {
                Some(st) if !st.complete() => Some(Instant::now()),
                Some(st) => Some(self.instant_of(st.at - early)),
                None => plan.next_wake().map(|at| {
                    let ahead = if stages {
                        TimeDelta::from_std(self.options.stage_ahead).unwrap_or_default()
                    } else {
                        early
                    };
                    self.instant_of(at - ahead)
                }),
            }
            .map(|w| retry_at.map_or(w, |r| w.max(r)));
            let mut until = wake.map_or(renew_at, |w| w.min(renew_at));
            if replan_pending {
                until = retry_at.map_or(until, |r| until.min(r));
            }
            tokio::select! {
                () = shutdown.cancelled() => return TermEnd::Cancelled,
                () = tokio::time::sleep_until(until) => {}
                changed = self.entries.changed() => replan_pending |= changed.is_ok(),
            }
            if Instant::now() >= valid_until {
                // Paused or starved past the TTL: another replica may lead already.
                return TermEnd::LeaseLost;
            }
            if Instant::now() >= renew_at {
                let sent_at = Instant::now();
                match self.leader.renew(lease).await {
                    Ok(true) => {
                        self.store_ok();
                        self.metrics.lock_renewals.inc();
                        valid_until = sent_at + lease.ttl;
                        renew_at = sent_at + lease.ttl / 3;
                    }
                    Ok(false) => return TermEnd::LeaseLost,
                    Err(e) => {
                        self.store_failed(&e);
                        // Keep trying within the TTL; the check above ends the term in time.
                        renew_at = Instant::now() + Duration::from_millis(200);
                    }
                }
            }
            if replan_pending {
                // A batch staged from the old plan must not go out: the replan rolls it back.
                staging = None;
            }
            if replan_pending && retry_at.is_none_or(|r| Instant::now() >= r) {
                if let Some(new_plan) = self.reload(lease).await {
                    plan = new_plan;
                    replan_pending = false;
                    retry_at = None;
                    retry.reset();
                } else {
                    // Keep the lease (and the old plan), try again shortly.
                    retry_at = Some(Instant::now() + retry.next());
                    continue;
                }
            }
            if retry_at.is_some_and(|r| Instant::now() < r) {
                continue;
            }
            let step = match staging.as_ref().map(|st| (st.complete(), st.at)) {
                Some((false, _)) => {
                    let st = staging.as_mut().expect("staging checked above");
                    self.stage_step(lease, &plan, st).await
                }
                Some((true, at)) if self.clock.now() + early >= at => {
                    self.reach(at).await;
                    if Instant::now() >= valid_until {
                        return TermEnd::LeaseLost;
                    }
                    let st = staging.take().expect("staging checked above");
                    self.commit(lease, &mut plan, st, &mut replan_pending).await
                }
                Some(_) => continue,
                None => {
                    let now = self.clock.now();
                    match plan.next_wake() {
                        Some(at) if at <= now + early => {
                            self.reach(at).await;
                            let due = plan.pop_due(self.clock.now());
                            if Instant::now() >= valid_until {
                                return TermEnd::LeaseLost;
                            }
                            self.emit(lease, &mut plan, &due).await
                        }
                        Some(at)
                            if stages
                                && (at - now).to_std().unwrap_or_default()
                                    <= self.options.stage_ahead =>
                        {
                            let due = plan.pop_due(at);
                            staging = Some(Staging {
                                batch: BatchId {
                                    epoch: lease.epoch,
                                    at_ms: at.timestamp_millis(),
                                },
                                at,
                                outcomes: Vec::with_capacity(due.len()),
                                task_ids: Vec::with_capacity(due.len()),
                                due,
                            });
                            continue;
                        }
                        _ => continue,
                    }
                }
            };
            match step {
                Ok(()) => {
                    retry_at = None;
                    retry.reset();
                }
                // The store failed (the outcome is unknown): keep the lease and replan from
                // the store once it answers, as a new term would: what was recorded is not
                // sent again, what was staged and not committed is rolled back, fire times
                // due within the takeover tolerance go out late, older ones follow the
                // catch-up policy (the store was down). The lease deadline above still ends
                // the term in time. Stepping down instead would leave the lock,
                // unreleasable while the store is down, blocking every replica until the TTL
                // runs out.
                Err(TermEnd::StoreError) => {
                    staging = None;
                    replan_pending = true;
                    retry_at = Some(Instant::now() + retry.next());
                }
                Err(end) => return end,
            }
        }
    }

    /// Returns once the clock reads `at`. The last stretch (at most [`PRECISE`]) is slept
    /// on the thread, whose timer is exact to tens of microseconds where tokio's rounds up
    /// to the next millisecond tick; blocking the runtime that briefly, once per fire time,
    /// costs less than the lateness it saves. A clock that does not follow the thread's
    /// (tests on paused time) is then waited for on tokio's timer.
    async fn reach(&self, at: DateTime<Utc>) {
        let left = (at - self.clock.now()).to_std().unwrap_or_default();
        if left.is_zero() {
            return;
        }
        if left <= PRECISE {
            std::thread::sleep(left);
        }
        if self.clock.now() < at {
            tokio::time::sleep_until(self.instant_of(at)).await;
        }
    }

    /// The tokio instant at which the clock will read `at` (now if it already does).
    fn instant_of(&self, at: DateTime<Utc>) -> Instant {
        Instant::now() + (at - self.clock.now()).to_std().unwrap_or_default()
    }

    /// Encodes and stages the next chunk of a staging batch.
    async fn stage_step(
        &self,
        lease: &Lease,
        plan: &Plan,
        st: &mut Staging,
    ) -> Result<(), TermEnd> {
        let entries = plan.entries();
        let from = st.outcomes.len();
        let to = (from + self.options.stage_chunk.max(1)).min(st.due.len());
        let fires: Vec<Fire> = st.due[from..to]
            .iter()
            .map(|d| self.encoder.encode(&entries[d.idx], d.at, lease.epoch))
            .collect();
        match self.emitter.stage(lease, st.batch, &fires).await {
            Ok(outcomes) => {
                self.store_ok();
                st.outcomes.extend(outcomes);
                st.task_ids.extend(task_ids(&fires));
                Ok(())
            }
            Err(Error::LeaseLost) => Err(TermEnd::LeaseLost),
            Err(e) => {
                self.store_failed(&e);
                Err(TermEnd::StoreError)
            }
        }
    }

    /// Commits a fully staged batch at its fire time, then records it.
    async fn commit(
        &self,
        lease: &Lease,
        plan: &mut Plan,
        st: Staging,
        replan_pending: &mut bool,
    ) -> Result<(), TermEnd> {
        match self.emitter.commit(lease, st.batch).await {
            Ok(()) => self.store_ok(),
            Err(Error::LeaseLost) => return Err(TermEnd::LeaseLost),
            Err(e) => {
                self.store_failed(&e);
                return Err(TermEnd::StoreError);
            }
        }
        let now = self.clock.now();
        if let Err(e) = self.emitter.settle(st.batch).await {
            // Sent but not yet recorded: the replan's recovery records it before anything
            // else is sent.
            self.store_failed(&e);
            *replan_pending = true;
        }
        self.account(lease, plan, &st.due, &st.outcomes, &st.task_ids, now);
        if st.due.len() >= BIG_BATCH {
            drop(st);
            crate::ops::malloc::release_free_memory();
        }
        Ok(())
    }

    /// Loads the recorded state, forgets entries that are no longer in the files, and plans
    /// the current entries from it.
    ///
    /// Forgetting here, and not only on a reload seen by this process, is what removes the
    /// state of an entry deleted while no replica ran, or while this one was a standby: the
    /// state is shared, the plan is per process.
    async fn replan(&self, lease: &Lease) -> Option<Plan> {
        let entries = self.entries.borrow().clone();
        if let Err(e) = self.emitter.recover(lease).await {
            self.store_failed(&e);
            return None;
        }
        let mut last = match self.state.last_runs().await {
            Ok(last) => last,
            Err(e) => {
                self.store_failed(&e);
                return None;
            }
        };
        let names: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.name.as_str()).collect();
        let mut removed: Vec<String> = last
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        if !removed.is_empty() {
            removed.sort();
            if let Err(e) = self.state.forget(&removed).await {
                self.store_failed(&e);
                return None;
            }
            for name in &removed {
                last.remove(name);
            }
            tracing::info!(removed = ?removed, "state of entries no longer scheduled forgotten");
        }
        let plan = Plan::with_tolerance(
            entries,
            &last,
            self.clock.now(),
            self.options.takeover_tolerance,
        );
        tracing::info!(entries = plan.entries().len(), "schedule planned");
        drop(last);
        // The state read for a big schedule is freed here; hand it back (an idle beat's
        // footprint is a target).
        crate::ops::malloc::release_free_memory();
        Some(plan)
    }

    /// Replans from the current entries after a reload or a store error (the new plan
    /// forgets removed entries).
    async fn reload(&mut self, lease: &Lease) -> Option<Plan> {
        self.entries.borrow_and_update();
        self.replan(lease).await
    }

    async fn emit(&self, lease: &Lease, plan: &mut Plan, due: &[Due]) -> Result<(), TermEnd> {
        let entries = plan.entries().clone();
        let fires: Vec<Fire> = due
            .iter()
            .map(|d| self.encoder.encode(&entries[d.idx], d.at, lease.epoch))
            .collect();
        match self.emitter.emit(lease, &fires).await {
            Ok(outcomes) => {
                self.store_ok();
                let now = self.clock.now();
                let task_ids = task_ids(&fires);
                self.account(lease, plan, due, &outcomes, &task_ids, now);
                if due.len() >= BIG_BATCH {
                    drop((fires, task_ids, outcomes));
                    crate::ops::malloc::release_free_memory();
                }
                Ok(())
            }
            Err(Error::LeaseLost) => Err(TermEnd::LeaseLost),
            Err(e) => {
                self.store_failed(&e);
                Err(TermEnd::StoreError)
            }
        }
    }

    /// Counts, logs and completes fires whose outcome is known; `now` is when they became
    /// visible.
    fn account(
        &self,
        lease: &Lease,
        plan: &mut Plan,
        due: &[Due],
        outcomes: &[EmitOutcome],
        task_ids: &[String],
        now: DateTime<Utc>,
    ) {
        let entries = plan.entries().clone();
        for (i, (d, outcome)) in due.iter().zip(outcomes).enumerate() {
            let entry = &entries[d.idx];
            match outcome {
                EmitOutcome::Sent => {
                    self.status.sent.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .messages_sent
                        .get_or_create(&vec![("entry", entry.name.clone())])
                        .inc();
                    self.metrics
                        .emission_lateness
                        .observe((now - d.at).as_seconds_f64().max(0.0));
                    if tracing::enabled!(tracing::Level::INFO) {
                        tracing::info!(
                            entry = %entry.name, task = %entry.task,
                            task_id = %task_ids.get(i).map_or("", String::as_str),
                            scheduled = %crate::protocol::rfc3339_millis(d.at),
                            lateness_ms = (now - d.at).num_milliseconds(),
                            epoch = lease.epoch, catch_up = d.catch_up,
                            "fire"
                        );
                    }
                }
                EmitOutcome::AlreadySent => {
                    tracing::debug!(entry = %entry.name, scheduled = %d.at, "already sent");
                }
            }
            plan.complete(*d);
        }
    }
}

/// The task ids of `fires` for their log lines; none (and no parsing) when those lines are
/// not logged.
fn task_ids(fires: &[Fire]) -> Vec<String> {
    if tracing::enabled!(tracing::Level::INFO) {
        fires.iter().map(|f| task_id(&f.payload)).collect()
    } else {
        Vec::new()
    }
}

/// The Celery task id (`headers.id`) of an encoded envelope, for the fire log line; the
/// envelope is beatd's own, so a missing id only shows as empty.
fn task_id(payload: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        headers: Headers,
    }
    #[derive(serde::Deserialize)]
    struct Headers {
        id: String,
    }
    serde_json::from_slice::<Envelope>(payload)
        .map(|e| e.headers.id)
        .unwrap_or_default()
}

/// Capped exponential backoff.
#[derive(Debug)]
struct Backoff {
    /// The next wait.
    current: Duration,
    /// The cap.
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Self {
            current: Self::START,
            max,
        }
    }

    fn reset(&mut self) {
        self.current = Self::START;
    }

    fn next(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests;
