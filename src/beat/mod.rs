//! The scheduler loop: leadership, the plan, and emission, over the ports in [`crate::leader`],
//! [`crate::emit`] and [`crate::state`]. Owns when things are sent; owns no I/O of its own
//! (Redis, files and the queue are behind the ports) and reads wall time only through a
//! [`crate::clock::Clock`]. One leadership term is a [`term::Term`]; this loop performs what
//! it says.
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

pub mod controls;
pub mod message;
mod overlap;
pub mod plan;
pub(crate) mod term;

use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::emit::{Committed, EmitOutcome, Emitter, Fire, StagedEmitter};
use crate::entry::Entry;
use crate::leader::{Handover, LeaderLock, Lease};
use crate::ops::liveness::Heartbeat;
use crate::ops::metrics::Metrics;
use crate::state::StateStore;
use crate::store::Error;
use chrono::{DateTime, TimeDelta, Utc};
use plan::{Due, Plan};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use term::{Now, Phase, Staging, Term, Timing};
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
    /// With a staged emitter ([`Emission::Staged`]), how long before a fire time its
    /// messages may be encoded and parked in the store, so that at the instant one O(1)
    /// commit makes them visible: the shortest lead; a plan of many entries starts earlier,
    /// by what staging them takes (`Term::stage_lead`). Staging starts only once the
    /// previous fire time is committed.
    pub stage_ahead: Duration,
    /// Fires encoded and staged per step; the loop renews the lease between steps. The
    /// Redis client keeps a write buffer as large as its largest command for good (500
    /// fires: 0.7 MB), but steps of 100 left 100,000 fires unstaged at their instant
    /// (first seen 348 ms late in the bench), so 500 it stays.
    pub stage_chunk: usize,
    /// The loop never sleeps longer than this, leader or standby, so its heartbeat shows it
    /// alive (an embedded lease is renewed only every 20 minutes).
    pub max_sleep: Duration,
}

impl BeatOptions {
    /// The longest a healthy loop goes between two turns: its longest sleep, or a standby's
    /// longest backoff.
    #[must_use]
    pub fn longest_sleep(&self) -> Duration {
        self.max_sleep
            .max(self.max_backoff)
            .max(self.acquire_interval)
    }
}

impl Default for BeatOptions {
    fn default() -> Self {
        Self {
            acquire_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            takeover_tolerance: Duration::from_secs(2),
            stage_ahead: Duration::from_secs(5),
            stage_chunk: 500,
            max_sleep: Duration::from_secs(5),
        }
    }
}

/// After sending at least this many fires at once, the loop hands the freed encoding
/// buffers back to the kernel (a few ms, after the instant).
const BIG_BATCH: usize = 1_000;

/// Fires already due at once from this many on go through staging and one commit (see
/// `Beat::follow`); fewer are pushed directly, which costs one call.
const BURST: usize = 500;

/// A regular fire sent later than this after its fire time counts as late.
const LATE: TimeDelta = TimeDelta::seconds(1);

/// How long before a fire time the loop wakes to sleep the rest precisely.
const PRECISE: Duration = Duration::from_millis(2);

/// How fires reach the store, chosen when the daemon is wired.
#[derive(Clone)]
pub enum Emission {
    /// Encode and push each fire time's messages at the instant.
    Direct(Arc<dyn Emitter>),
    /// Park a fire time's messages up to [`BeatOptions::stage_ahead`] before it and make them
    /// visible at the instant with one commit; overdue fires (catch-up, a late term start)
    /// are still pushed directly.
    Staged(Arc<dyn StagedEmitter>),
}

impl Emission {
    /// The emitter that sends now (every emission has one).
    #[must_use]
    pub fn emitter(&self) -> &dyn Emitter {
        match self {
            Self::Direct(e) => e.as_ref(),
            Self::Staged(e) => e.as_ref(),
        }
    }
}

/// The parts a beat runs on.
pub struct Beat {
    /// Wall time.
    pub clock: SharedClock,
    /// Leadership.
    pub leader: Arc<dyn LeaderLock>,
    /// How a standby hears of a release.
    pub handover: Arc<dyn Handover>,
    /// Atomic push-and-record.
    pub emission: Emission,
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
    /// Beaten every turn of the loop, leader or standby (`/healthz`, the watchdog).
    pub heartbeat: Heartbeat,
    /// Pause, resume, trigger and backfill requests, and the pauses they leave.
    pub controls: controls::Controls,
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

/// [`PRECISE`] as a wall-clock span.
fn early() -> TimeDelta {
    TimeDelta::from_std(PRECISE).unwrap_or_default()
}

impl Beat {
    /// Runs until `shutdown` is cancelled; releases the lock on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.options.max_backoff);
        // A lease whose term ended on a store error: if the store comes back still holding
        // its token (a Redis restart with AOF, a short partition), leading resumes without
        // waiting out the TTL.
        let mut held: Option<Lease> = None;
        // Said once per stretch of standing by, at start and after each term.
        let mut standby_said = false;
        loop {
            self.heartbeat.beat();
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
                    standby_said = false;
                    match self.lead(lease, &shutdown).await {
                        (TermEnd::Cancelled, lease) => {
                            self.step_down(&lease).await;
                            return;
                        }
                        (TermEnd::LeaseLost, lease) => {
                            self.metrics.lock_losses.inc();
                            self.set_leader(false);
                            tracing::warn!(epoch = lease.epoch, "leadership lost; now standby");
                            (self.options.acquire_interval, true)
                        }
                        (TermEnd::StoreError, lease) => {
                            self.set_leader(false);
                            held = Some(lease);
                            (backoff.next_wait(), false)
                        }
                    }
                }
                Ok(None) => {
                    self.status.store_reachable.store(true, Ordering::Relaxed);
                    backoff.reset();
                    if !standby_said {
                        tracing::info!("standing by: another replica holds the leader lock");
                        standby_said = true;
                    }
                    (self.options.acquire_interval, true)
                }
                Err(e) => {
                    self.store_failed(&e);
                    (backoff.next_wait(), false)
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
                        self.handover.released(wait).await;
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
        // A batch parked for the next fire time goes with this term (its RQ job hashes too):
        // the next leader would roll it back anyway, and if none comes it would linger.
        // Still under the lease, so it cannot touch another leader's batch; best effort, the
        // next term's recovery covers a failure.
        if let Emission::Staged(emitter) = &self.emission {
            if let Ok(Err(e)) =
                tokio::time::timeout(Duration::from_secs(2), emitter.recover(lease)).await
            {
                tracing::warn!(epoch = lease.epoch, error = %e, "staged batch not rolled back");
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), self.leader.release(lease)).await {
            Ok(Ok(())) => tracing::info!(epoch = lease.epoch, "leadership released"),
            Ok(Err(e)) => tracing::warn!(epoch = lease.epoch, error = %e, "release failed"),
            Err(_) => tracing::warn!(epoch = lease.epoch, "release timed out"),
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            wall: self.clock.now(),
        }
    }

    /// One leadership term: plan from the recorded state, then do what the term says until
    /// it ends. Returns the lease as last renewed.
    async fn lead(&mut self, lease: Lease, shutdown: &CancellationToken) -> (TermEnd, Lease) {
        self.set_leader(true);
        self.status.epoch.store(lease.epoch, Ordering::Relaxed);
        self.metrics
            .epoch
            .set(i64::try_from(lease.epoch).unwrap_or(i64::MAX));
        self.metrics.lock_acquisitions.inc();
        tracing::info!(epoch = lease.epoch, "leadership acquired");
        // Seen now: the plan below is made from the current entries.
        self.entries.borrow_and_update();
        let Some(mut plan) = self.replan(&lease).await else {
            return (TermEnd::StoreError, lease);
        };
        let mut term = Term::new(lease);
        let stages = matches!(self.emission, Emission::Staged(_));
        let mut timing = Timing {
            early: PRECISE,
            stage_ahead: None,
            max_sleep: self.options.max_sleep,
        };
        let bell = self.controls.doorbell();
        loop {
            self.heartbeat.beat();
            let now = self.now();
            timing.stage_ahead =
                stages.then(|| term.stage_lead(plan.len(), self.options.stage_ahead));
            let mut until = term.wake(plan.next_wake(), now, timing);
            let heard = bell.as_ref().is_some_and(|b| b.is_listening());
            // Controls are polled only while the term follows a plan (see `turn`).
            if !matches!(term.phase, Phase::Replan { .. }) {
                until = until.min(self.controls.poll_at(now.instant, now.wall, heard));
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.flush_controls(&term.lease).await;
                    return (TermEnd::Cancelled, term.lease);
                }
                () = tokio::time::sleep_until(until) => {}
                changed = self.entries.changed() => {
                    if changed.is_ok() {
                        term.entries_changed();
                    }
                }
                () = async { match &bell {
                    Some(b) => b.rung().await,
                    None => std::future::pending().await,
                } } => self.controls.poll_now(),
            }
            let heard = bell.as_ref().is_some_and(|b| b.is_listening());
            if let Err(end) = self.turn(&mut term, &mut plan, heard).await {
                return (end, term.lease);
            }
        }
    }

    /// One turn of a term: end it if the lease may be gone, renew when due, then the phase's
    /// work. A store failure keeps the lease and replans from the store once it answers, as
    /// a new term would: what was recorded is not sent again, what was staged and not
    /// committed is rolled back, fire times due within the takeover tolerance go out late,
    /// older ones follow the catch-up policy. The lease deadline still ends the term in time.
    /// Stepping down instead would leave the lock, unreleasable while the store is down,
    /// blocking every replica until the TTL runs out.
    async fn turn(
        &mut self,
        term: &mut Term,
        plan: &mut Plan,
        bell_heard: bool,
    ) -> Result<(), TermEnd> {
        let now = Instant::now();
        if term.expired(now) {
            // Paused or starved past the TTL: another replica may lead already.
            return Err(TermEnd::LeaseLost);
        }
        if term.renew_due(now) {
            self.renew(term).await?;
        }
        if !matches!(term.phase, Phase::Replan { .. }) {
            self.control_turn(term, plan, bell_heard).await?;
        }
        let step = match std::mem::replace(&mut term.phase, Phase::Planned) {
            Phase::Replan {
                not_before: Some(r),
            } if Instant::now() < r => {
                term.phase = Phase::Replan {
                    not_before: Some(r),
                };
                return Ok(());
            }
            Phase::Replan { .. } => {
                self.entries.borrow_and_update();
                match self.replan(&term.lease).await {
                    Some(new_plan) => {
                        *plan = new_plan;
                        Ok(())
                    }
                    None => Err(TermEnd::StoreError),
                }
            }
            Phase::Reload(st) if st.complete() && self.clock.now() + early() >= st.at => {
                // The reload came at the instant: this fire time goes out as parked, the new
                // files apply from the next one.
                tracing::info!(batch = %st.batch, "reload at the parked batch's instant: committing it first");
                self.reach(st.at).await;
                if term.expired(Instant::now()) {
                    return Err(TermEnd::LeaseLost);
                }
                let step = self.commit(term, plan, st).await;
                if step.is_ok() && !matches!(term.phase, Phase::Replan { .. }) {
                    term.phase = Phase::Replan { not_before: None };
                }
                step
            }
            Phase::Reload(st) => {
                let entries = self.entries.borrow_and_update().clone();
                match self.keep_staged(&term.lease, plan, entries, st).await {
                    Ok(Some((new_plan, st))) => {
                        *plan = new_plan;
                        term.phase = if st.complete() {
                            Phase::Staged(st)
                        } else {
                            Phase::Staging(st)
                        };
                        Ok(())
                    }
                    Ok(None) => match self.replan(&term.lease).await {
                        Some(new_plan) => {
                            *plan = new_plan;
                            Ok(())
                        }
                        None => Err(TermEnd::StoreError),
                    },
                    Err(end) => Err(end),
                }
            }
            Phase::Staging(mut st) => {
                let step = self.stage_step(&term.lease, plan, &mut st).await;
                if step.is_ok() {
                    term.phase = if st.complete() {
                        term.staged(&st);
                        // Parked whole: the emitter may now ready the commit (onto busy
                        // queues, the pushes themselves) so the instant costs less.
                        st.emitter.prepare(&term.lease, st.batch).await;
                        Phase::Staged(st)
                    } else {
                        Phase::Staging(st)
                    };
                }
                step
            }
            Phase::Staged(st) if self.clock.now() + early() < st.at => {
                term.phase = Phase::Staged(st);
                return Ok(());
            }
            Phase::Staged(st) => {
                self.reach(st.at).await;
                if term.expired(Instant::now()) {
                    return Err(TermEnd::LeaseLost);
                }
                self.commit(term, plan, st).await
            }
            Phase::Planned => self.follow(term, plan).await,
        };
        match step {
            Ok(()) => {
                term.store_ok();
                Ok(())
            }
            Err(TermEnd::StoreError) => {
                term.store_failed(Instant::now());
                Ok(())
            }
            Err(end) => Err(end),
        }
    }

    /// Renews the lease; a store error keeps the old deadline and retries shortly.
    async fn renew(&self, term: &mut Term) -> Result<(), TermEnd> {
        let sent_at = Instant::now();
        match self.leader.renew(&term.lease).await {
            Ok(true) => {
                self.store_ok();
                self.metrics.lock_renewals.inc();
                term.renewed(sent_at);
                Ok(())
            }
            Ok(false) => Err(TermEnd::LeaseLost),
            Err(e) => {
                self.store_failed(&e);
                term.renew_failed(Instant::now());
                Ok(())
            }
        }
    }

    /// Follows the plan: sends what is due now, or starts staging the next fire time when it
    /// is close enough and the emitter stages.
    async fn follow(&self, term: &mut Term, plan: &mut Plan) -> Result<(), TermEnd> {
        let now = self.clock.now();
        let Some(at) = plan.next_wake() else {
            return Ok(());
        };
        if at <= now + early() {
            self.reach(at).await;
            let now = self.clock.now();
            let due = plan.pop_due(now);
            let due = self.hold_paused(plan, due);
            let due = self
                .hold_overlapping(&term.lease, plan, due)
                .await
                .map_err(|e| self.failed(e))?;
            if term.expired(Instant::now()) {
                return Err(TermEnd::LeaseLost);
            }
            if let Emission::Staged(emitter) = &self.emission {
                if due.len() >= BURST {
                    // A burst already due (catch-up after an outage, a late term start): staged
                    // and committed at once, so it becomes visible in one step as a regular fire
                    // time does, instead of trickling out over many emit calls.
                    term.phase =
                        Phase::Staging(Staging::new(&term.lease, now, due, emitter.clone()));
                    return Ok(());
                }
            }
            return self.emit(&term.lease, plan, &due).await;
        }
        if let Emission::Staged(emitter) = &self.emission {
            let lead = term.stage_lead(plan.len(), self.options.stage_ahead);
            if (at - now).to_std().unwrap_or_default() <= lead {
                let due = plan.pop_due(at);
                let due = self.hold_paused(plan, due);
                let due = self
                    .hold_overlapping(&term.lease, plan, due)
                    .await
                    .map_err(|e| self.failed(e))?;
                term.phase = Phase::Staging(Staging::new(&term.lease, at, due, emitter.clone()));
            }
        }
        Ok(())
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
            tokio::time::sleep_until(self.now().instant_of(at)).await;
        }
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
        match st.emitter.stage(lease, st.batch, &fires).await {
            Ok(outcomes) => {
                self.store_ok();
                st.outcomes.extend(outcomes);
                st.task_ids.extend(fires.into_iter().map(|f| f.task_id));
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Maps a port error onto how the term goes on.
    fn failed(&self, e: Error) -> TermEnd {
        match e {
            Error::LeaseLost => TermEnd::LeaseLost,
            e @ Error::Unavailable(_) => {
                self.store_failed(&e);
                TermEnd::StoreError
            }
        }
    }

    /// Commits a fully staged batch at its fire time (which records it).
    async fn commit(&self, term: &mut Term, plan: &mut Plan, st: Staging) -> Result<(), TermEnd> {
        if st.due.is_empty() {
            // Every fire of the instant was held (paused, or put back to be decided at the
            // instant by the overlap policy): nothing was staged, so the store knows no such
            // batch and committing it would fail as rolled back.
            return Ok(());
        }
        // Lateness counts to the commit, not to the end of the settle that follows it in the
        // same call (about a second at 100,000 fires, long after the messages were visible):
        // else a batch on time was counted late, entry by entry.
        let committing = self.clock.now();
        match st.emitter.commit(&term.lease, st.batch).await {
            Ok(Committed::Recorded) => self.store_ok(),
            Ok(Committed::Unrecorded(e)) => {
                // Sent but not yet recorded: the replan's recovery records it before anything
                // else is sent.
                self.store_failed(&e);
                term.phase = Phase::Replan { not_before: None };
            }
            Err(e) => return Err(self.failed(e)),
        }
        self.account(
            &term.lease,
            plan,
            &st.due,
            &st.outcomes,
            &st.task_ids,
            committing,
        );
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
        let finished = match &self.emission {
            Emission::Staged(emitter) => emitter.recover(lease).await,
            Emission::Direct(emitter) => emitter.resume(lease).await,
        };
        if let Err(e) = finished {
            self.store_failed(&e);
            return None;
        }
        self.plan_from_store(lease, entries).await
    }

    /// A reload while a batch is parked. When every entry of the batch is unchanged in the
    /// new files, its parked messages are exactly what the new schedule sends at that instant:
    /// the batch stays, remapped onto the new entries, and the new plan is made around it
    /// (staging 100,000 messages again could make them late). Otherwise `None`: the caller
    /// replans, which rolls the batch back.
    async fn keep_staged(
        &self,
        lease: &Lease,
        old: &Plan,
        entries: Arc<[Entry]>,
        mut st: Staging,
    ) -> Result<Option<(Plan, Staging)>, TermEnd> {
        let index: std::collections::HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_ref(), i))
            .collect();
        let before = old.entries();
        let mut due = Vec::with_capacity(st.due.len());
        for d in &st.due {
            let entry = &before[d.idx];
            match index.get(entry.name.as_ref()) {
                Some(&idx) if entries[idx] == *entry => due.push(Due { idx, ..*d }),
                _ => return Ok(None),
            }
        }
        drop(index);
        let Some(mut plan) = self.plan_from_store(lease, entries).await else {
            return Err(TermEnd::StoreError);
        };
        if !plan.take_staged(&mut due) {
            return Ok(None);
        }
        tracing::info!(batch = %st.batch, fires = due.len(), "reload kept the parked batch: none of its entries changed");
        st.due = due;
        Ok(Some((plan, st)))
    }

    /// Plans `entries` from the recorded last runs, forgetting the state of entries that are
    /// no longer scheduled.
    async fn plan_from_store(&self, lease: &Lease, entries: Arc<[Entry]>) -> Option<Plan> {
        let mut last = match self.state.last_runs().await {
            Ok(last) => last,
            Err(e) => {
                self.store_failed(&e);
                return None;
            }
        };
        let names: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.name.as_ref()).collect();
        // A trigger's or backfill's record goes with its entry.
        let mut removed: Vec<String> = last
            .keys()
            .filter(|name| !names.contains(crate::control::entry_of_key(name)))
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
        self.control_replan(&entries, &mut last, lease).await?;
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

    async fn emit(&self, lease: &Lease, plan: &mut Plan, due: &[Due]) -> Result<(), TermEnd> {
        let entries = plan.entries().clone();
        let fires: Vec<Fire> = due
            .iter()
            .map(|d| self.encoder.encode(&entries[d.idx], d.at, lease.epoch))
            .collect();
        match self.emission.emitter().emit(lease, &fires).await {
            Ok(outcomes) => {
                self.store_ok();
                let now = self.clock.now();
                let task_ids: Vec<String> = fires.into_iter().map(|f| f.task_id).collect();
                self.account(lease, plan, due, &outcomes, &task_ids, now);
                if due.len() >= BIG_BATCH {
                    drop((task_ids, outcomes));
                    crate::ops::malloc::release_free_memory();
                }
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
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
        let (mut late, mut latest) = (0u64, TimeDelta::zero());
        for (i, (d, outcome)) in due.iter().zip(outcomes).enumerate() {
            let entry = &entries[d.idx];
            match outcome {
                EmitOutcome::Sent => {
                    // A catch-up run is late by design; a regular one a second late means
                    // the beat is falling behind its schedule.
                    if !d.catch_up && now - d.at > LATE {
                        late += 1;
                        latest = latest.max(now - d.at);
                        self.controls
                            .count(&entry.name, crate::control::SkipReason::Late, 1);
                        self.metrics.count_skip(&entry.name, "late", 1);
                    }
                    self.status.sent.fetch_add(1, Ordering::Relaxed);
                    // A big batch is written through the control store only for the
                    // entries with an overlap policy (that many ids would make the next control
                    // write a large one); the rest are noted in the leader's copy, and on Redis
                    // settling a staged batch records every task id itself.
                    if let Some(id) = task_ids.get(i) {
                        let at = d.at.timestamp_millis();
                        let overlap = entry.overlap != crate::entry::Overlap::Allow;
                        if due.len() < BIG_BATCH || overlap {
                            self.controls.sent(&entry.name, id, Some(at));
                        } else {
                            self.controls.first_ran(&entry.name, at);
                        }
                    }
                    self.metrics.count_sent(&entry.name);
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
        if late > 0 {
            self.metrics.fires_late.inc_by(late);
            tracing::warn!(
                late,
                latest_ms = latest.num_milliseconds(),
                "fire times sent more than a second late: a takeover, or the beat falling behind its schedule"
            );
        }
    }
}

#[cfg(test)]
mod tests;
