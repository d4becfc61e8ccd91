//! One leadership term as a value: the lease and its deadline, when to renew, and what the
//! loop is doing ([`Phase`]). The loop in `beat/mod.rs` only performs what the term says and
//! reports back; when it next wakes comes from one pure function, [`Term::wake`].
//!
//! Owns no I/O and reads no clock: every instant is passed in.

use super::plan::Due;
use crate::backoff::Backoff;
use crate::emit::{BatchId, EmitOutcome, StagedEmitter};
use crate::leader::Lease;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A renewal that failed is tried again this soon (the lease deadline still ends the term in
/// time if the store stays away).
const RENEW_RETRY: Duration = Duration::from_millis(200);

/// Longest replan retry wait after a store error.
const REPLAN_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the term is doing between two turns of the loop. Each phase carries exactly the data
/// it needs, so a staged batch cannot outlive a replan and a retry time cannot exist without
/// a pending replan.
pub(crate) enum Phase {
    /// Following the plan; nothing parked in the store.
    Planned,
    /// Parking the next fire time's messages in the store, one chunk per turn.
    Staging(Staging),
    /// Every message of the next fire time is parked; commit at the instant.
    Staged(Staging),
    /// The schedule files changed while a batch is parked: the batch stays if none of its
    /// entries changed (a reload must not make the next fire time late), else replan.
    Reload(Staging),
    /// The plan must be made again (the entries changed, or the store failed and the outcome
    /// of the last step is unknown); whatever was staged is rolled back by the replan.
    Replan {
        /// Not before this instant (after a store error); `None`: at once.
        not_before: Option<Instant>,
    },
}

/// The fires of one fire time being parked, popped from the plan (a replan rebuilds them).
pub(crate) struct Staging {
    /// The emitter that parks them: a term can only stage with one that stages.
    pub(crate) emitter: Arc<dyn StagedEmitter>,
    /// Names the batch in the store.
    pub(crate) batch: BatchId,
    /// The fire time of every fire in it.
    pub(crate) at: DateTime<Utc>,
    /// The fires: due at `at`, or (a burst already due when planned) at or before it.
    pub(crate) due: Vec<Due>,
    /// Outcomes of the fires staged so far (a prefix of `due`).
    pub(crate) outcomes: Vec<EmitOutcome>,
    /// Task ids of the fires staged so far, for the fire log lines.
    pub(crate) task_ids: Vec<String>,
    /// When staging began, to time it ([`Term::staged`]).
    started: Instant,
}

impl Staging {
    /// A batch of `due` (all at `at`) under `lease`.
    pub(crate) fn new(
        lease: &Lease,
        at: DateTime<Utc>,
        due: Vec<Due>,
        emitter: Arc<dyn StagedEmitter>,
    ) -> Self {
        Self {
            emitter,
            batch: BatchId {
                epoch: lease.epoch,
                at_ms: at.timestamp_millis(),
            },
            at,
            outcomes: Vec::with_capacity(due.len()),
            task_ids: Vec::with_capacity(due.len()),
            due,
            started: Instant::now(),
        }
    }

    /// Whether every fire is parked.
    pub(crate) fn complete(&self) -> bool {
        self.outcomes.len() == self.due.len()
    }
}

/// The timing facts [`Term::wake`] needs besides the term itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long before an instant the loop wakes to sleep the rest precisely.
    pub(crate) early: Duration,
    /// With a staged emitter: how long before a fire time staging starts. `None`: the
    /// emitter sends at the instant only.
    pub(crate) stage_ahead: Option<Duration>,
    /// The loop never sleeps longer than this, so its heartbeat shows it alive.
    pub(crate) max_sleep: Duration,
}

/// "Now" on both clocks, read once per turn: tokio's (for sleeping) and the beat's wall
/// clock (for fire times), so instants of one can be turned into the other.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// tokio's clock.
    pub(crate) instant: Instant,
    /// The beat's clock.
    pub(crate) wall: DateTime<Utc>,
}

impl Now {
    /// The tokio instant at which the wall clock will read `at` (now if it already does).
    pub(crate) fn instant_of(self, at: DateTime<Utc>) -> Instant {
        self.instant + (at - self.wall).to_std().unwrap_or_default()
    }
}

/// One leadership term.
pub(crate) struct Term {
    /// The lease this term runs under.
    pub(crate) lease: Lease,
    /// After this instant the lease may be gone: stop sending.
    valid_until: Instant,
    /// When to renew next.
    renew_at: Instant,
    /// What the loop is doing.
    pub(crate) phase: Phase,
    /// Replan retries after store errors.
    retry: Backoff,
    /// What staging one fire took in this term's last big staging (wall time, encoding and
    /// store calls), or a guess before one.
    stage_cost: Duration,
}

/// What one fire costs to encode and stage before any big staging was timed: 55 µs was
/// measured with 100,000 fires on a 2-core machine, beatd on one core and Redis on the
/// other.
const STAGE_COST_GUESS: Duration = Duration::from_micros(60);
/// Stagings of fewer fires are not timed: fixed costs would dominate.
const TIMED_STAGING: usize = 1_000;
/// Staged messages wait in the store at most about this long before their instant.
const MAX_STAGE_LEAD: Duration = Duration::from_secs(60);

impl Term {
    /// A term that starts with a plan made from the store (the caller made it).
    pub(crate) fn new(lease: Lease) -> Self {
        Self {
            valid_until: lease.acquired_at + lease.ttl,
            renew_at: lease.acquired_at + lease.renew_every(),
            lease,
            phase: Phase::Planned,
            retry: Backoff::new(REPLAN_BACKOFF_MAX),
            stage_cost: STAGE_COST_GUESS,
        }
    }

    /// How long before a fire time staging starts in a plan of `entries`: `ahead`, or twice
    /// what staging all of them would take if they were all due at once, whichever is
    /// longer (at most [`MAX_STAGE_LEAD`]). A fixed lead left 100,000 fires unstaged at
    /// their instant when beatd had one core to itself (5.5 s to stage them).
    pub(crate) fn stage_lead(&self, entries: usize, ahead: Duration) -> Duration {
        let all = self
            .stage_cost
            .saturating_mul(u32::try_from(entries).unwrap_or(u32::MAX));
        all.saturating_mul(2)
            .clamp(ahead, MAX_STAGE_LEAD.max(ahead))
    }

    /// Notes that `st` is parked whole, timing it if it was a big one.
    pub(crate) fn staged(&mut self, st: &Staging) {
        if st.due.len() >= TIMED_STAGING {
            let n = u32::try_from(st.due.len()).unwrap_or(u32::MAX);
            self.stage_cost = st.started.elapsed() / n;
        }
    }

    /// When the loop must next wake: the earliest of the renewal, the work of the phase, and
    /// `max_sleep` from now. `next_fire` is the plan's next fire time.
    pub(crate) fn wake(&self, next_fire: Option<DateTime<Utc>>, now: Now, t: Timing) -> Instant {
        let early = chrono::TimeDelta::from_std(t.early).unwrap_or_default();
        let work = match &self.phase {
            Phase::Staging(_) | Phase::Reload(_) => Some(now.instant),
            Phase::Staged(st) => Some(now.instant_of(st.at - early)),
            Phase::Planned => next_fire.map(|at| {
                let ahead = t
                    .stage_ahead
                    .and_then(|a| chrono::TimeDelta::from_std(a).ok())
                    .unwrap_or(early);
                now.instant_of(at - ahead)
            }),
            Phase::Replan { not_before } => Some(not_before.unwrap_or(now.instant)),
        };
        let until = work.map_or(self.renew_at, |w| w.min(self.renew_at));
        until.min(now.instant + t.max_sleep)
    }

    /// Whether the lease may have run out: the term must end now.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.valid_until
    }

    /// Whether a renewal is due.
    pub(crate) fn renew_due(&self, now: Instant) -> bool {
        now >= self.renew_at
    }

    /// The renewal sent at `sent_at` succeeded: the deadline moves to `sent_at + ttl`.
    pub(crate) fn renewed(&mut self, sent_at: Instant) {
        self.lease.acquired_at = sent_at;
        self.valid_until = sent_at + self.lease.ttl;
        self.renew_at = sent_at + self.lease.renew_every();
    }

    /// The renewal failed with a store error: try again shortly, keep the old deadline.
    pub(crate) fn renew_failed(&mut self, now: Instant) {
        self.renew_at = now + RENEW_RETRY;
    }

    /// The schedule files changed: replan (a retry already scheduled keeps its time), or
    /// check a parked batch against the new entries first.
    pub(crate) fn entries_changed(&mut self) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Planned) {
            retry @ Phase::Replan { .. } => retry,
            Phase::Staging(st) | Phase::Staged(st) | Phase::Reload(st) => Phase::Reload(st),
            Phase::Planned => Phase::Replan { not_before: None },
        };
    }

    /// A store call failed, so the outcome of the step is unknown: replan from the store once
    /// it answers, after a backoff.
    pub(crate) fn store_failed(&mut self, now: Instant) {
        self.phase = Phase::Replan {
            not_before: Some(now + self.retry.next_wait()),
        };
    }

    /// A store call succeeded: the next failure backs off from the start again.
    pub(crate) fn store_ok(&mut self) {
        self.retry.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn setup() -> (Term, Now, Timing) {
        let start = Instant::now();
        let lease = Lease {
            token: "t".into(),
            epoch: 3,
            acquired_at: start,
            ttl: Duration::from_secs(9),
        };
        let now = Now {
            instant: start,
            wall: at("2026-12-01T10:00:00Z"),
        };
        let timing = Timing {
            early: Duration::from_millis(2),
            stage_ahead: None,
            max_sleep: Duration::from_secs(5),
        };
        (Term::new(lease), now, timing)
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_for_the_earliest_of_fire_renewal_and_the_sleep_cap() {
        let (mut term, now, mut t) = setup();
        let ms = Duration::from_millis;
        // A fire in 1 s: wake 2 ms before it.
        let fire = Some(at("2026-12-01T10:00:01Z"));
        assert_eq!(term.wake(fire, now, t), now.instant + ms(998));
        // Staged emitter: wake 5 s ahead to stage, but never after the renewal (ttl/3 = 3 s).
        t.stage_ahead = Some(Duration::from_secs(5));
        let later = Some(at("2026-12-01T10:00:06Z"));
        assert_eq!(term.wake(later, now, t), now.instant + ms(1_000));
        let far = Some(at("2026-12-01T11:00:00Z"));
        assert_eq!(term.wake(far, now, t), now.instant + ms(3_000));
        // Nothing planned and a long lease: the sleep cap keeps the loop turning.
        term.renewed(now.instant + Duration::from_secs(100));
        assert_eq!(term.wake(None, now, t), now.instant + ms(5_000));
        // A fire time already past wakes at once.
        let past = Some(at("2026-12-01T09:59:00Z"));
        assert_eq!(term.wake(past, now, t), now.instant);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_of_many_entries_starts_staging_earlier_by_what_staging_costs() {
        let (mut term, _, _) = setup();
        let ahead = Duration::from_secs(5);
        // Few entries: the configured lead.
        assert_eq!(term.stage_lead(10_000, ahead), ahead);
        // 100,000 at the guessed 60 µs a fire: twice the 6 s staging them all would take.
        assert_eq!(term.stage_lead(100_000, ahead), Duration::from_secs(12));
        assert_eq!(term.stage_lead(10_000_000, ahead), MAX_STAGE_LEAD);
        // A timed staging replaces the guess; fewer than TIMED_STAGING fires are not timed.
        let lease = term.lease.clone();
        let leader = Arc::new(crate::leader::MemoryLeader::default());
        let em: Arc<dyn StagedEmitter> = Arc::new(crate::emit::MemoryEmitter::new(
            leader,
            crate::state::MemoryState::default(),
        ));
        let small = Staging::new(&lease, at("2026-12-01T10:00:02Z"), Vec::new(), em);
        tokio::time::advance(Duration::from_secs(1)).await;
        term.staged(&small);
        assert_eq!(term.stage_lead(100_000, ahead), Duration::from_secs(12));
        term.stage_cost = Duration::from_micros(20);
        assert_eq!(term.stage_lead(100_000, ahead), ahead);
        assert_eq!(term.stage_lead(1_000_000, ahead), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn phases_wake_for_their_own_work() {
        let (mut term, now, t) = setup();
        let fire_at = at("2026-12-01T10:00:02Z");
        let lease = term.lease.clone();
        let leader = Arc::new(crate::leader::MemoryLeader::default());
        let em: Arc<dyn StagedEmitter> = Arc::new(crate::emit::MemoryEmitter::new(
            leader,
            crate::state::MemoryState::default(),
        ));
        term.phase = Phase::Staging(Staging::new(&lease, fire_at, Vec::new(), em.clone()));
        assert_eq!(
            term.wake(None, now, t),
            now.instant,
            "staging goes on at once"
        );
        term.phase = Phase::Staged(Staging::new(&lease, fire_at, Vec::new(), em));
        assert_eq!(
            term.wake(None, now, t),
            now.instant + Duration::from_millis(1_998),
            "commit 2 ms before the instant"
        );
        // A store error: replan after the backoff, not before, whatever the plan says.
        term.store_failed(now.instant);
        assert!(matches!(
            term.phase,
            Phase::Replan {
                not_before: Some(_)
            }
        ));
        let fire = Some(at("2026-12-01T10:00:00.010Z"));
        assert_eq!(
            term.wake(fire, now, t),
            now.instant + Duration::from_millis(100)
        );
        // A reload meanwhile keeps the retry time; the next failure waits longer.
        term.entries_changed();
        assert_eq!(
            term.wake(None, now, t),
            now.instant + Duration::from_millis(100)
        );
        term.store_failed(now.instant);
        assert_eq!(
            term.wake(None, now, t),
            now.instant + Duration::from_millis(200)
        );
        term.store_ok();
        term.store_failed(now.instant);
        assert_eq!(
            term.wake(None, now, t),
            now.instant + Duration::from_millis(100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_deadline_follows_renewals_not_failures() {
        let (mut term, now, _) = setup();
        let s = Duration::from_secs;
        assert!(!term.renew_due(now.instant + s(2)));
        assert!(term.renew_due(now.instant + s(3)));
        term.renew_failed(now.instant + s(3));
        assert!(!term.renew_due(now.instant + s(3)));
        assert!(!term.expired(now.instant + s(8)));
        assert!(
            term.expired(now.instant + s(9)),
            "a failed renewal moves nothing"
        );
        term.renewed(now.instant + s(4));
        assert!(!term.expired(now.instant + s(12)));
        assert!(term.expired(now.instant + s(13)));
        assert_eq!(term.lease.acquired_at, now.instant + s(4));
    }
}
