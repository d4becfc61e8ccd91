//! The beat loop end to end in one process: paused tokio time, a clock that follows it, the
//! in-memory lock and emitter. No sleeping in real time.

use super::*;
use crate::clock::{Clock, TokioClock};
use crate::emit::{BatchId, MemoryEmitter};
use crate::leader::{MemoryLeader, Poll};
use crate::ops::liveness::Liveness;
use crate::schedule::{CatchUp, Schedule};
use crate::state::{LastRun, MemoryState};
use crate::store::Fault;
use serde_json::Map;
use std::collections::HashMap;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn every(name: &str, secs: u64, catch_up: CatchUp) -> Entry {
    Entry {
        name: name.into(),
        task: format!("tasks.{name}").into(),
        schedule: Schedule::Every {
            interval: Duration::from_secs(secs),
            anchor: DateTime::UNIX_EPOCH,
        },
        timezone: crate::schedule::Tz::UTC,
        args: vec![].into(),
        kwargs: Map::new().into(),
        queue: "celery".into(),
        rare: None,
        headers: Map::new().into(),
        jitter_offset: Duration::ZERO,
        catch_up,
        catch_up_window: Duration::from_secs(3600),
        enabled: true,
        overlap: crate::entry::Overlap::Allow,
        overlap_timeout: crate::entry::DEFAULT_OVERLAP_TIMEOUT,
        source: None,
        rq: None,
    }
}

/// Encodes a fire as `entry@ms` so tests can read pushes back.
struct TestEncoder;

impl FireEncoder for TestEncoder {
    fn encode(&self, entry: &Entry, at: DateTime<Utc>, epoch: u64) -> Fire {
        Fire {
            entry: entry.name.to_string(),
            fire_at_ms: at.timestamp_millis(),
            task_id: format!("{}@{}", entry.name, at.timestamp_millis()),
            rq: None,
            list_key: entry.queue.to_string(),
            payload: format!("{}@{}#{epoch}", entry.name, at.timestamp_millis()).into_bytes(),
            schedule_fingerprint: entry.fingerprint(),
        }
    }
}

/// The in-memory emitter a test reads back, its state, and which path the beat takes.
#[derive(Clone)]
struct Mem {
    em: Arc<MemoryEmitter>,
    state: MemoryState,
    staged: bool,
}

impl std::ops::Deref for Mem {
    type Target = MemoryEmitter;
    fn deref(&self) -> &MemoryEmitter {
        &self.em
    }
}

impl Mem {
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error> {
        self.state.last_runs().await
    }

    fn emission(&self) -> Emission {
        if self.staged {
            Emission::Staged(self.em.clone())
        } else {
            Emission::Direct(self.em.clone())
        }
    }
}

fn heartbeat() -> Heartbeat {
    Liveness::default().register("beat", Duration::from_secs(60))
}

struct Harness {
    leader: Arc<MemoryLeader>,
    emitter: Mem,
    status: Arc<BeatStatus>,
    entries: watch::Sender<Arc<[Entry]>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(
    origin: DateTime<Utc>,
    entries: Vec<Entry>,
    leader: Arc<MemoryLeader>,
    emitter: Mem,
) -> Harness {
    let store = Arc::new(crate::control::LocalControls::in_memory());
    start_with_controls(origin, entries, leader, emitter, store)
}

fn start_with_controls(
    origin: DateTime<Utc>,
    entries: Vec<Entry>,
    leader: Arc<MemoryLeader>,
    emitter: Mem,
    store: Arc<dyn crate::control::ControlStore>,
) -> Harness {
    let (tx, rx) = watch::channel::<Arc<[Entry]>>(entries.into());
    let status = Arc::new(BeatStatus::default());
    let shutdown = CancellationToken::new();
    let beat = Beat {
        clock: Arc::new(TokioClock::starting_at(origin)),
        leader: leader.clone(),
        handover: Arc::new(Poll),
        emission: emitter.emission(),
        state: Arc::new(emitter.state.clone()),
        encoder: Arc::new(TestEncoder),
        entries: rx,
        status: status.clone(),
        metrics: Arc::new(Metrics::default()),
        options: BeatOptions::default(),
        heartbeat: heartbeat(),
        controls: controls::Controls::new(store),
    };
    let task = tokio::spawn(beat.run(shutdown.clone()));
    Harness {
        leader,
        emitter,
        status,
        entries: tx,
        shutdown,
        task,
    }
}

impl Harness {
    /// Graceful stop, waiting for the beat to release its lease and return.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// Fire times of `entry` as whole seconds after `origin`.
fn fired_secs(emitter: &MemoryEmitter, entry: &str, origin: DateTime<Utc>) -> Vec<i64> {
    fired(emitter, entry)
        .iter()
        .map(|ms| (ms - origin.timestamp_millis()) / 1000)
        .collect()
}

fn fired(emitter: &MemoryEmitter, entry: &str) -> Vec<i64> {
    emitter
        .pushed()
        .iter()
        .filter(|p| p.entry == entry)
        .map(|p| p.fire_at_ms)
        .collect()
}

async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

/// An emitter fenced by `leader`; the beat takes the two-phase path when `staged`.
fn mem_emitter(leader: &Arc<MemoryLeader>, staged: bool) -> Mem {
    let state = MemoryState::default();
    Mem {
        em: Arc::new(MemoryEmitter::new(leader.clone(), state.clone())),
        state,
        staged,
    }
}

/// A beat on the staging emitter with one entry `name` every 10 s, from `origin`.
fn start_staged(origin: DateTime<Utc>, name: &str) -> (Harness, Arc<MemoryLeader>, Mem) {
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, true);
    let h = start(
        origin,
        vec![every(name, 10, CatchUp::All)],
        leader.clone(),
        emitter.clone(),
    );
    (h, leader, emitter)
}

/// Runs a test body `name(staged: bool)` twice: emitting at the instant, and staging ahead
/// and committing at the instant (the Redis path).
macro_rules! both_paths {
    ($name:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn at_the_instant() {
                super::$name(false).await;
            }
            #[tokio::test(start_paused = true)]
            async fn staged_ahead() {
                super::$name(true).await;
            }
        }
    };
}

both_paths!(fires_every_second_exactly_once_on_time);
async fn fires_every_second_exactly_once_on_time(staged: bool) {
    let origin = t("2026-11-23T10:00:00.500Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, staged);
    let h = start(
        origin,
        vec![every("tick", 1, CatchUp::Latest)],
        leader,
        emitter,
    );
    settle(Duration::from_millis(10_000)).await;
    let base = t("2026-11-23T10:00:01Z").timestamp_millis();
    let expected: Vec<i64> = (0..10).map(|k| base + k * 1000).collect();
    assert_eq!(fired(&h.emitter, "tick"), expected);
    assert!(h.status.is_leader.load(Ordering::Relaxed));
    let leader = h.leader.clone();
    h.stop().await;
    // Shutdown released the lock so a standby can take over at once.
    assert_eq!(leader.current_token(), None);
}

both_paths!(a_restart_neither_repeats_nor_loses_a_fire);
async fn a_restart_neither_repeats_nor_loses_a_fire(staged: bool) {
    let origin = t("2026-11-23T10:00:00Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, staged);
    let h = start(
        origin,
        vec![every("tick", 2, CatchUp::All)],
        leader.clone(),
        emitter.clone(),
    );
    settle(Duration::from_millis(4_500)).await; // fires at :02 and :04
    h.stop().await;
    // Down for 5.5 s (fires :06, :08, :10 missed), then a new beat on the same state.
    settle(Duration::from_millis(5_500)).await;
    let h2 = start(
        origin + chrono::Duration::seconds(10),
        vec![every("tick", 2, CatchUp::All)],
        leader,
        emitter,
    );
    settle(Duration::from_millis(3_000)).await;
    let got = fired_secs(&h2.emitter, "tick", origin);
    assert_eq!(got, vec![2, 4, 6, 8, 10, 12]);
    h2.stop().await;
}

both_paths!(catch_up_latest_sends_only_the_most_recent_missed_fire);
async fn catch_up_latest_sends_only_the_most_recent_missed_fire(staged: bool) {
    let origin = t("2026-11-23T10:00:00Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, staged);
    let h = start(
        origin,
        vec![every("tick", 2, CatchUp::Latest)],
        leader.clone(),
        emitter.clone(),
    );
    settle(Duration::from_millis(2_500)).await;
    h.stop().await;
    settle(Duration::from_millis(7_000)).await; // :04 :06 :08 missed; now :09.5
    let h2 = start(
        origin + chrono::Duration::milliseconds(9_500),
        vec![every("tick", 2, CatchUp::Latest)],
        leader,
        emitter,
    );
    settle(Duration::from_millis(1_000)).await;
    let got = fired_secs(&h2.emitter, "tick", origin);
    assert_eq!(got, vec![2, 8, 10]);
    h2.stop().await;
}

both_paths!(a_lost_lease_stops_emission_until_reacquired);
async fn a_lost_lease_stops_emission_until_reacquired(staged: bool) {
    let origin = t("2026-11-23T10:00:00Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(3)));
    let emitter = mem_emitter(&leader, staged);
    let h = start(
        origin,
        vec![every("tick", 1, CatchUp::None)],
        leader.clone(),
        emitter.clone(),
    );
    settle(Duration::from_millis(2_500)).await;
    assert_eq!(fired(&emitter, "tick").len(), 2);
    // Another replica takes the lock: this one is fenced at its next emission.
    leader.revoke();
    let other = leader
        .try_acquire()
        .await
        .unwrap()
        .expect("free after revoke");
    settle(Duration::from_millis(2_000)).await;
    assert_eq!(
        fired(&emitter, "tick").len(),
        2,
        "a fenced beat sent something"
    );
    assert!(!h.status.is_leader.load(Ordering::Relaxed));
    // The other replica goes away without releasing: its lease expires, ours comes back.
    drop(other);
    settle(Duration::from_millis(4_000)).await;
    assert!(h.status.is_leader.load(Ordering::Relaxed));
    let after = fired(&emitter, "tick");
    assert!(after.len() > 2, "no fire after re-acquiring");
    let mut dedup = after.clone();
    dedup.dedup();
    assert_eq!(after, dedup, "a fire time was sent twice");
    h.stop().await;
}

both_paths!(reload_adds_and_removes_entries_without_spurious_fires);
async fn reload_adds_and_removes_entries_without_spurious_fires(staged: bool) {
    let origin = t("2026-11-23T10:00:00.200Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, staged);
    let h = start(
        origin,
        vec![every("a", 1, CatchUp::All)],
        leader,
        emitter.clone(),
    );
    settle(Duration::from_millis(3_000)).await; // a: :01 :02 :03
    h.entries
        .send(vec![every("b", 5, CatchUp::All)].into())
        .unwrap();
    settle(Duration::from_millis(3_000)).await; // b: :05 only
    assert_eq!(fired(&emitter, "a").len(), 3);
    assert_eq!(
        fired(&emitter, "b"),
        vec![t("2026-11-23T10:00:05Z").timestamp_millis()]
    );
    // The removed entry's state is gone.
    assert!(!emitter.last_runs().await.unwrap().contains_key("a"));
    h.stop().await;
}

both_paths!(ten_thousand_entries_due_together_go_out_in_one_batch);
async fn ten_thousand_entries_due_together_go_out_in_one_batch(staged: bool) {
    let origin = t("2026-11-23T10:00:00.900Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, staged);
    let entries: Vec<Entry> = (0..10_000)
        .map(|i| every(&format!("e{i}"), 60, CatchUp::None))
        .collect();
    let h = start(origin, entries, leader, emitter.clone());
    settle(Duration::from_millis(59_200)).await;
    let pushed = emitter.pushed();
    assert_eq!(pushed.len(), 10_000);
    let due = t("2026-11-23T10:01:00Z").timestamp_millis();
    assert!(pushed.iter().all(|p| p.fire_at_ms == due));
    h.stop().await;
}

both_paths!(a_store_outage_shorter_than_the_ttl_resumes_the_same_lease_and_catches_up);
async fn a_store_outage_shorter_than_the_ttl_resumes_the_same_lease_and_catches_up(staged: bool) {
    let origin = t("2026-11-23T10:00:00.500Z");
    // One fault switch for the lock, the emitter and the state: the store goes down whole.
    let down = Fault::default();
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)).with_fault(down.clone()));
    let state = MemoryState::default().with_fault(down.clone());
    let emitter = Mem {
        em: Arc::new(MemoryEmitter::new(leader.clone(), state.clone()).with_fault(down.clone())),
        state,
        staged,
    };
    let (_tx, rx) = watch::channel::<Arc<[Entry]>>(vec![every("tick", 1, CatchUp::All)].into());
    let status = Arc::new(BeatStatus::default());
    let shutdown = CancellationToken::new();
    let beat = Beat {
        clock: Arc::new(TokioClock::starting_at(origin)),
        leader: leader.clone(),
        handover: Arc::new(Poll),
        emission: emitter.emission(),
        state: Arc::new(emitter.state.clone()),
        encoder: Arc::new(TestEncoder),
        entries: rx,
        status: status.clone(),
        metrics: Arc::new(Metrics::default()),
        options: BeatOptions::default(),
        heartbeat: heartbeat(),
        controls: controls::Controls::new(Arc::new(crate::control::LocalControls::in_memory())),
    };
    let task = tokio::spawn(beat.run(shutdown.clone()));
    settle(Duration::from_millis(2_000)).await; // :01 :02
    down.set_down(true);
    settle(Duration::from_millis(3_000)).await; // :03 :04 :05 fail
    assert!(
        !status.store_reachable.load(Ordering::Relaxed),
        "outage not noticed"
    );
    // Nothing can go out while the store is down; the lease is kept for the TTL.
    assert_eq!(fired(&emitter, "tick").len(), 2, "sent through an outage");
    down.set_down(false);
    settle(Duration::from_millis(3_000)).await;
    assert!(status.is_leader.load(Ordering::Relaxed));
    // Same lease: no new acquisition, so the epoch did not move.
    assert_eq!(status.epoch.load(Ordering::Relaxed), 1);
    let base = t("2026-11-23T10:00:01Z").timestamp_millis();
    let got: Vec<i64> = fired(&emitter, "tick")
        .iter()
        .map(|ms| (ms - base) / 1000 + 1)
        .collect();
    assert_eq!(
        got,
        (1..=8).collect::<Vec<i64>>(),
        "missed or repeated fire times"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn a_fire_time_due_within_the_takeover_tolerance_is_sent_late_even_without_catch_up() {
    let entry = every("tick", 1, CatchUp::None);
    let last = HashMap::from([(
        "tick".to_string(),
        LastRun {
            fire_at_ms: t("2026-01-01T10:00:00Z").timestamp_millis(),
            count: 1,
            fingerprint: Some(entry.fingerprint()),
        },
    )]);
    let now = t("2026-01-01T10:00:01.800Z");
    let entries: Arc<[Entry]> = vec![entry.clone()].into();
    // Without tolerance, `none` skips 10:00:01, which fell due before the term started.
    let mut strict = Plan::new(entries.clone(), &last, now);
    assert!(strict.pop_due(now).is_empty());
    // Within it, 10:00:01 is a late regular fire.
    let mut lenient = Plan::with_tolerance(entries.clone(), &last, now, Duration::from_secs(2));
    let due = lenient.pop_due(now);
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].at, due[0].catch_up),
        (t("2026-01-01T10:00:01Z"), false)
    );
    // Older than the tolerance: missed, per the policy (:01 and :02 are skipped).
    let later = t("2026-01-01T10:00:04.500Z");
    let mut old = Plan::with_tolerance(entries.clone(), &last, later, Duration::from_secs(2));
    let due: Vec<_> = old.pop_due(later).iter().map(|d| d.at).collect();
    assert_eq!(due, [t("2026-01-01T10:00:03Z")]);
    // An entry that never ran still starts from now.
    let mut fresh = Plan::with_tolerance(entries, &HashMap::new(), now, Duration::from_secs(2));
    assert!(fresh.pop_due(now).is_empty());
}

#[tokio::test(start_paused = true)]
async fn staged_fires_stay_invisible_until_their_instant_then_are_recorded() {
    let origin = t("2026-11-23T10:00:00Z");
    let (h, _, emitter) = start_staged(origin, "tick");
    // stage_ahead is 5 s: the :10 fire is parked at :05, not pushed.
    settle(Duration::from_millis(6_000)).await;
    let epoch = h.status.epoch.load(Ordering::Relaxed);
    let at10 = t("2026-11-23T10:00:10Z").timestamp_millis();
    let staged = BatchId { epoch, at_ms: at10 };
    assert_eq!(emitter.batches(), [(staged, false, 1)]);
    assert!(emitter.pushed().is_empty(), "visible before its instant");
    assert!(emitter.last_runs().await.unwrap().is_empty());
    settle(Duration::from_millis(4_500)).await; // :10.5
    assert_eq!(fired(&emitter, "tick"), [at10]);
    let runs = emitter.last_runs().await.unwrap();
    assert_eq!((runs["tick"].fire_at_ms, runs["tick"].count), (at10, 1));
    // The :10 batch is settled and gone; :20 is staged from :15 on.
    assert!(emitter.batches().is_empty());
    settle(Duration::from_millis(5_000)).await;
    assert_eq!(emitter.batches().len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_between_staging_and_the_instant_rolls_the_batch_back() {
    let origin = t("2026-11-23T10:00:00Z");
    let (h, _, emitter) = start_staged(origin, "a");
    settle(Duration::from_millis(6_000)).await; // a@:10 staged
    assert_eq!(emitter.batches().len(), 1);
    // The schedule changes to every 4 s: :10 must not go out, :08 and :12 must.
    h.entries
        .send(vec![every("a", 4, CatchUp::All)].into())
        .unwrap();
    settle(Duration::from_millis(7_000)).await; // :13
    let secs = fired_secs(&emitter, "a", origin);
    assert_eq!(secs, [8, 12], "the old schedule's staged fire went out");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_after_staging_sends_nothing_and_the_next_leader_sends_the_fire() {
    let origin = t("2026-11-23T10:00:00Z");
    let (h, leader, emitter) = start_staged(origin, "a");
    settle(Duration::from_millis(6_000)).await; // a@:10 staged by epoch 1
    leader.revoke();
    let other = leader
        .try_acquire()
        .await
        .unwrap()
        .expect("free after revoke");
    settle(Duration::from_millis(4_500)).await; // :10.5: the commit was fenced
    assert!(emitter.pushed().is_empty(), "a fenced leader committed");
    assert!(!h.status.is_leader.load(Ordering::Relaxed));
    // The new leader's term starts with recovery: the stale batch is rolled back and the
    // fire time is not recorded, so its own plan sends it (late, within its catch-up).
    emitter.recover(&other).await.unwrap();
    assert!(emitter.batches().is_empty());
    assert!(emitter.last_runs().await.unwrap().is_empty());
    let at10 = t("2026-11-23T10:00:10Z").timestamp_millis();
    let fire = TestEncoder.encode(&every("a", 10, CatchUp::All), t("2026-11-23T10:00:10Z"), 2);
    assert_eq!(
        emitter.emit(&other, &[fire]).await.unwrap(),
        [EmitOutcome::Sent]
    );
    assert_eq!(fired(&emitter, "a"), [at10]);
    leader.release(&other).await.unwrap();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_leaves_the_parked_entries_unchanged_keeps_the_batch() {
    let origin = t("2026-11-23T10:00:00Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, true);
    let entries: Vec<Entry> = (0..1_000)
        .map(|i| every(&format!("e{i}"), 10, CatchUp::All))
        .collect();
    let h = start(origin, entries.clone(), leader, emitter.clone());
    settle(Duration::from_millis(6_000)).await; // the :10 batch is parked
    assert_eq!(emitter.staging_counts(), (1_000, 0));
    // A new entry in the files, and the old ones in another order: none of the parked
    // entries changed, so nothing is restaged.
    let mut reloaded: Vec<Entry> = entries.iter().rev().cloned().collect();
    reloaded.push(every("late-comer", 60, CatchUp::All));
    h.entries.send(reloaded.into()).unwrap();
    settle(Duration::from_millis(4_500)).await; // :10.5
    assert_eq!(
        emitter.staging_counts(),
        (1_000, 0),
        "the batch was restaged"
    );
    let pushed = emitter.pushed();
    assert_eq!(pushed.len(), 1_000);
    let at10 = t("2026-11-23T10:00:10Z").timestamp_millis();
    assert!(pushed.iter().all(|p| p.fire_at_ms == at10));
    // The regular chain goes on from the kept batch, once per entry and fire time.
    settle(Duration::from_millis(10_000)).await; // :20.5
    for i in [0, 500, 999] {
        assert_eq!(fired_secs(&emitter, &format!("e{i}"), origin), [10, 20]);
    }
    assert_eq!(emitter.pushed().len(), 2_000);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_one_parked_entry_restages_the_batch() {
    let origin = t("2026-11-23T10:00:00Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, true);
    let entries: Vec<Entry> = (0..3)
        .map(|i| every(&format!("e{i}"), 10, CatchUp::All))
        .collect();
    let h = start(origin, entries.clone(), leader, emitter.clone());
    settle(Duration::from_millis(6_000)).await;
    let mut changed = entries.clone();
    changed[1].args = vec![serde_json::json!("new")].into();
    h.entries.send(changed.into()).unwrap();
    settle(Duration::from_millis(4_500)).await; // :10.5
                                                // Rolled back and staged again with the new message; each fire time still once.
    assert_eq!(emitter.staging_counts(), (6, 3));
    for i in 0..3 {
        assert_eq!(fired_secs(&emitter, &format!("e{i}"), origin), [10]);
    }
    h.stop().await;
}

/// `n` entries every minute with `catch_up = "latest"`, each last run at 09:00 (returned, in
/// ms) as recorded in `emitter`'s state: at 10:00:00.300 the 10:00 fire time is due for all.
fn ran_an_hour_ago(emitter: &Mem, n: usize) -> (Vec<Entry>, i64) {
    let entries: Vec<Entry> = (0..n)
        .map(|i| every(&format!("e{i}"), 60, CatchUp::Latest))
        .collect();
    let hour_ago = t("2026-11-23T09:00:00Z").timestamp_millis();
    emitter.state.with(|last| {
        for e in &entries {
            last.insert(
                e.name.to_string(),
                LastRun {
                    fire_at_ms: hour_ago,
                    count: 1,
                    fingerprint: Some(e.fingerprint()),
                },
            );
        }
    });
    (entries, hour_ago)
}

#[tokio::test(start_paused = true)]
async fn a_burst_already_due_is_staged_and_made_visible_in_one_commit() {
    let origin = t("2026-11-23T10:00:00.300Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, true);
    // Each ran last an hour ago: the latest missed fire time (10:00:00) is due at start.
    let (entries, _) = ran_an_hour_ago(&emitter, 2_000);
    let h = start(origin, entries, leader, emitter.clone());
    settle(Duration::from_millis(1_000)).await;
    let at = t("2026-11-23T10:00:00Z").timestamp_millis();
    let pushed = emitter.pushed();
    assert_eq!(pushed.len(), 2_000);
    assert!(pushed.iter().all(|p| p.fire_at_ms == at));
    // Through staging (every fire parked once, nothing rolled back), so one commit made
    // them all visible: nothing trickled out through the direct path first.
    assert_eq!(emitter.staging_counts(), (2_000, 0));
    // Recorded: a restart would not send them again.
    let runs = emitter.last_runs().await.unwrap();
    assert!(runs.values().all(|r| r.fire_at_ms == at && r.count == 2));
    h.stop().await;
}

/// A control store whose writes each take `delay`, as a Redis write of 200 counts takes a
/// few milliseconds, noting how many messages were visible when each write began.
struct SlowWrites {
    inner: Arc<crate::control::LocalControls>,
    delay: Duration,
    emitter: Mem,
    visible_at_write: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl crate::control::ControlStore for SlowWrites {
    async fn submit(
        &self,
        request: &crate::control::Request,
        wait: Duration,
    ) -> Result<Option<crate::control::Reply>, Error> {
        self.inner.submit(request, wait).await
    }
    async fn pending(&self) -> Result<Vec<crate::control::Request>, Error> {
        self.inner.pending().await
    }
    async fn answer(
        &self,
        request: &crate::control::Request,
        reply: &crate::control::Reply,
    ) -> Result<(), Error> {
        self.inner.answer(request, reply).await
    }
    async fn read(&self) -> Result<crate::control::Persisted, Error> {
        self.inner.read().await
    }
    async fn missed(&self, entry: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>, Error> {
        self.inner.missed(entry, from_ms, to_ms).await
    }
    async fn write(&self, lease: &Lease, update: &crate::control::Update) -> Result<(), Error> {
        self.visible_at_write
            .lock()
            .unwrap()
            .push(self.emitter.pushed().len());
        tokio::time::sleep(self.delay).await;
        self.inner.write(lease, update).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_counts_of_a_catch_up_start_are_written_behind_the_burst_not_before_it() {
    let origin = t("2026-11-23T10:00:00.300Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, true);
    // Each ran last an hour ago: 59 fire times each are left out (counted, marked missed),
    // the latest is due at once: 118,000 missed fire times, 590 writes of 200.
    let (entries, hour_ago) = ran_an_hour_ago(&emitter, 2_000);
    let inner = Arc::new(crate::control::LocalControls::in_memory());
    let store = Arc::new(SlowWrites {
        inner: inner.clone(),
        delay: Duration::from_millis(5),
        emitter: emitter.clone(),
        visible_at_write: std::sync::Mutex::default(),
    });
    let h = start_with_controls(
        origin,
        entries,
        leader.clone(),
        emitter.clone(),
        store.clone(),
    );
    settle(Duration::from_secs(1)).await;
    // The burst went out at once; written in one go, the counts alone would have held it
    // back 3 s (590 writes of 5 ms), past the lease's renewal.
    let at = t("2026-11-23T10:00:00Z").timestamp_millis();
    assert_eq!(emitter.pushed().len(), 2_000);
    assert!(emitter.pushed().iter().all(|p| p.fire_at_ms == at));
    {
        let seen = store.visible_at_write.lock().unwrap();
        assert!(
            seen.len() < 590,
            "only part of the counts written in the first second"
        );
        assert_eq!(seen.last(), Some(&2_000), "writes go on after the burst");
    }
    // The rest follows, poll by poll: every count and mark, once.
    settle(Duration::from_secs(60)).await;
    use crate::control::ControlStore;
    let persisted = inner.read().await.unwrap();
    assert_eq!(persisted.skips.len(), 2_000);
    assert!(persisted
        .skips
        .values()
        .all(|by| by.get(&crate::control::SkipReason::CatchUp) == Some(&59)));
    let missed = inner.missed("e7", hour_ago, at).await.unwrap();
    assert_eq!(missed.len(), 59);
    assert_eq!(
        leader.holder().map(|l| l.epoch),
        Some(1),
        "one term: the lease was never lost"
    );
    h.stop().await;
}

/// A staging emitter whose commit takes `delay` after making the batch visible, as Redis'
/// settle of 100,000 last runs takes about a second.
struct SlowSettle {
    em: Arc<MemoryEmitter>,
    delay: Duration,
}

#[async_trait::async_trait]
impl crate::emit::Emitter for SlowSettle {
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        self.em.emit(lease, fires).await
    }
}

#[async_trait::async_trait]
impl StagedEmitter for SlowSettle {
    async fn stage(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error> {
        self.em.stage(lease, batch, fires).await
    }
    async fn commit(&self, lease: &Lease, batch: BatchId) -> Result<Committed, Error> {
        let done = self.em.commit(lease, batch).await;
        tokio::time::sleep(self.delay).await;
        done
    }
    async fn prepare(&self, lease: &Lease, batch: BatchId) {
        self.em.prepare(lease, batch).await;
    }
    async fn recover(&self, lease: &Lease) -> Result<(), Error> {
        self.em.recover(lease).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_committed_on_time_is_not_late_however_long_its_settle_takes() {
    let origin = t("2026-11-23T10:00:00Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let mem = mem_emitter(&leader, true);
    let slow = Arc::new(SlowSettle {
        em: mem.em.clone(),
        delay: Duration::from_secs(2),
    });
    let entries: Vec<Entry> = (0..3)
        .map(|i| every(&format!("e{i}"), 10, CatchUp::All))
        .collect();
    let (_tx, rx) = watch::channel::<Arc<[Entry]>>(entries.into());
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let beat = Beat {
        clock: Arc::new(TokioClock::starting_at(origin)),
        leader: leader.clone(),
        handover: Arc::new(Poll),
        emission: Emission::Staged(slow),
        state: Arc::new(mem.state.clone()),
        encoder: Arc::new(TestEncoder),
        entries: rx,
        status: Arc::new(BeatStatus::default()),
        metrics: metrics.clone(),
        options: BeatOptions::default(),
        heartbeat: heartbeat(),
        controls: controls::Controls::new(Arc::new(crate::control::LocalControls::in_memory())),
    };
    let task = tokio::spawn(beat.run(shutdown.clone()));
    settle(Duration::from_millis(23_000)).await;
    let at10 = t("2026-11-23T10:00:10Z").timestamp_millis();
    let at20 = t("2026-11-23T10:00:20Z").timestamp_millis();
    assert_eq!(fired(&mem, "e0"), [at10, at20]);
    // Each commit ended 2 s after its instant; the messages were visible at it.
    assert_eq!(
        metrics.fires_late.get(),
        0,
        "counted late by the settle's length"
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// An idle leader polls its requests seldom ([`controls::IDLE_POLL`]), yet answers at once a
/// request that rings its doorbell, and still ends a pause at its end.
#[tokio::test(start_paused = true)]
async fn an_idle_leader_answers_a_rung_request_at_once_and_ends_a_pause_on_time() {
    use crate::control::{Action, ControlStore, Request};
    let origin = t("2026-11-23T10:00:00.500Z");
    let leader = Arc::new(MemoryLeader::new(Duration::from_secs(10)));
    let emitter = mem_emitter(&leader, false);
    let store = Arc::new(crate::control::LocalControls::in_memory());
    let h = start_with_controls(
        origin,
        vec![every("hourly", 3600, CatchUp::Latest)],
        leader,
        emitter,
        store.clone(),
    );
    // The beat's clock: both started at this tokio instant.
    let clock = TokioClock::starting_at(origin);
    // Idle: planned, nothing due for an hour.
    settle(Duration::from_millis(7_300)).await;
    let ask = |id: &str, action: Action| {
        let now = clock.now().timestamp_millis();
        Request {
            id: id.into(),
            entry: "hourly".into(),
            action,
            by: "test".into(),
            at_ms: now,
            deadline_ms: now + 60_000,
        }
    };
    for (i, gap) in [1_300u64, 2_100, 700].into_iter().enumerate() {
        settle(Duration::from_millis(gap)).await;
        let asked = tokio::time::Instant::now();
        let action = if i % 2 == 0 {
            Action::Pause { until_ms: None }
        } else {
            Action::Resume {
                catch_up: crate::control::ResumeCatchUp::None,
            }
        };
        let reply = store
            .submit(&ask(&format!("r{i}"), action), Duration::from_secs(30))
            .await
            .unwrap()
            .expect("answered");
        assert!(reply.refused.is_none(), "{reply:?}");
        let took = asked.elapsed();
        assert!(
            took < Duration::from_millis(50),
            "request {i} answered after {took:?} of tokio time (the idle poll is {:?})",
            controls::IDLE_POLL
        );
    }
    // A pause that ends by itself in 2 s ends then, not at the next idle poll.
    let until = clock.now().timestamp_millis() + 2_000;
    let reply = store
        .submit(
            &ask(
                "timed",
                Action::Pause {
                    until_ms: Some(until),
                },
            ),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .expect("answered");
    assert!(reply.refused.is_none(), "{reply:?}");
    settle(Duration::from_millis(1_800)).await;
    assert!(store.read().await.unwrap().pauses.contains_key("hourly"));
    settle(Duration::from_millis(500)).await;
    assert!(
        !store.read().await.unwrap().pauses.contains_key("hourly"),
        "the pause outlived its end"
    );
    h.stop().await;
}
