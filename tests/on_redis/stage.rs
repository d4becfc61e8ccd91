//! Two-phase emission against a real server: staged fires stay invisible, commit makes them
//! visible in order, settle records them once, recovery rolls back what was never committed
//! and settles what was, and every phase is fenced by the lease.

use crate::*;
use beatd::emit::{BatchId, EmitOutcome, Emitter, StagedEmitter};
use beatd::redis::Keys;
use beatd::state::RedisState;
use beatd::state::StateStore;
use EmitOutcome::{AlreadySent, Sent};

async fn keys_matching(conn: &RedisConn, pattern: &str) -> Vec<String> {
    let raw = redis::Client::open(conn_url(conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn runs(conn: &RedisConn) -> std::collections::HashMap<String, beatd::state::LastRun> {
    RedisState::new(conn.clone(), Keys::default())
        .last_runs()
        .await
        .unwrap()
}

#[tokio::test]
async fn staged_fires_are_invisible_until_committed_and_recorded_once_settled() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let em = emitter(&conn);
    // One entry already sent at 1000: its fire at 1000 is not staged again.
    em.emit(&lease, &[fire("old", 1_000, "celery")])
        .await
        .unwrap();
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    let first = [
        fire("a", 1_000, "celery"),
        fire("b", 1_000, "reports"),
        fire("old", 1_000, "celery"),
    ];
    assert_eq!(
        em.stage(&lease, batch, &first).await.unwrap(),
        [Sent, Sent, AlreadySent]
    );
    // A second chunk of the same batch; a repeat of a staged entry is not staged twice.
    let second = [fire("c", 1_000, "celery"), fire("a", 1_000, "celery")];
    assert_eq!(
        em.stage(&lease, batch, &second).await.unwrap(),
        [Sent, AlreadySent]
    );
    assert_eq!(list(&conn, "celery").await.len(), 1, "staged fires visible");
    assert!(list(&conn, "reports").await.is_empty());
    assert!(!runs(&conn).await.contains_key("a"));

    em.publish(&lease, batch).await.unwrap();
    // The queue already held "old": its messages were moved behind it in order; "reports"
    // was empty and got the staged list as is.
    let celery = list(&conn, "celery").await;
    assert_eq!(celery.len(), 3);
    assert_eq!(
        celery,
        [
            "{\"entry\":\"c\",\"at\":1000}",
            "{\"entry\":\"a\",\"at\":1000}",
            "{\"entry\":\"old\",\"at\":1000}",
        ]
    );
    assert_eq!(
        list(&conn, "reports").await,
        ["{\"entry\":\"b\",\"at\":1000}"]
    );
    // Committing again is a no-op.
    em.publish(&lease, batch).await.unwrap();
    assert_eq!(list(&conn, "celery").await.len(), 3);

    em.settle(batch).await.unwrap();
    em.settle(batch).await.unwrap();
    let r = runs(&conn).await;
    for e in ["a", "b", "c"] {
        assert_eq!((r[e].fire_at_ms, r[e].count), (1_000, 1), "{e}");
        assert_eq!(
            r[e].fingerprint.as_deref(),
            Some(format!("fp-{e}").as_str())
        );
    }
    assert_eq!(r["old"].count, 1);
    // Nothing of the batch is left, and the renamed queue kept no expiry.
    assert!(keys_matching(&conn, "beatd:batch*").await.is_empty());
    let raw = redis::Client::open(conn_url(&conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("reports")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "the queue inherited the staged list's expiry");
    // What was settled is not sent again, staged or emitted.
    assert_eq!(
        em.emit(&lease, &[fire("a", 1_000, "celery")])
            .await
            .unwrap(),
        [AlreadySent]
    );
}

#[tokio::test]
async fn every_phase_is_fenced_and_recovery_rolls_back_or_settles() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let old = acquire(&lock).await;
    let em = emitter(&conn);
    let staged_only = BatchId {
        epoch: old.epoch,
        at_ms: 2_000,
    };
    let committed = BatchId {
        epoch: old.epoch,
        at_ms: 1_000,
    };
    em.stage(&old, committed, &[fire("a", 1_000, "celery")])
        .await
        .unwrap();
    em.publish(&old, committed).await.unwrap(); // and the leader dies before settling
    em.stage(&old, staged_only, &[fire("a", 2_000, "celery")])
        .await
        .unwrap(); // and before committing this one

    // A new leader (the old lease expired, simulated by a release).
    lock.release(&old).await.unwrap();
    let new = acquire(&lock).await;
    assert!(matches!(
        em.commit(&old, staged_only).await,
        Err(beatd::store::Error::LeaseLost)
    ));
    assert!(matches!(
        em.stage(&old, staged_only, &[fire("b", 2_000, "celery")])
            .await,
        Err(beatd::store::Error::LeaseLost)
    ));
    assert!(matches!(
        em.recover(&old).await,
        Err(beatd::store::Error::LeaseLost)
    ));
    em.recover(&new).await.unwrap();
    // The committed batch is recorded; the staged one is gone, not recorded, not visible.
    let r = runs(&conn).await;
    assert_eq!((r["a"].fire_at_ms, r["a"].count), (1_000, 1));
    assert_eq!(
        list(&conn, "celery").await,
        ["{\"entry\":\"a\",\"at\":1000}"]
    );
    assert!(keys_matching(&conn, "beatd:batch*").await.is_empty());
    // The new leader sends the rolled-back fire time itself, once.
    assert_eq!(
        em.emit(&new, &[fire("a", 2_000, "celery")]).await.unwrap(),
        [Sent]
    );
    // A late commit of the rolled-back batch (even under the right token) finds it gone.
    let gone = BatchId {
        epoch: new.epoch,
        at_ms: 3_000,
    };
    em.stage(&new, gone, &[fire("a", 3_000, "celery")])
        .await
        .unwrap();
    em.recover(&new).await.unwrap();
    assert!(em.commit(&new, gone).await.is_err());
    assert_eq!(list(&conn, "celery").await.len(), 2);
    assert_eq!(runs(&conn).await["a"].count, 2);
}

#[tokio::test]
async fn a_large_batch_commits_onto_an_empty_queue_whole_and_in_order() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let em = emitter(&conn);
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 5_000,
    };
    let fires: Vec<_> = (0..5_000)
        .map(|i| fire(&format!("e{i:04}"), 5_000, "celery"))
        .collect();
    // Staged over three calls, as the beat does, plus the emitter's own chunking.
    for part in fires.chunks(2_000) {
        assert!(em
            .stage(&lease, batch, part)
            .await
            .unwrap()
            .iter()
            .all(|o| *o == Sent));
    }
    em.commit(&lease, batch).await.unwrap();
    em.settle(batch).await.unwrap();
    let q = list(&conn, "celery").await;
    assert_eq!(q.len(), 5_000);
    // BRPOP takes from the right: the first staged fire must be there.
    assert_eq!(q.last().unwrap(), "{\"entry\":\"e0000\",\"at\":5000}");
    assert_eq!(q[0], "{\"entry\":\"e4999\",\"at\":5000}");
    // Read back in HSCAN steps of about 1,000 (crate::redis::scan), each entry whole.
    let r = runs(&conn).await;
    assert_eq!(r.len(), 5_000);
    assert!(r
        .iter()
        .all(|(e, l)| (l.fire_at_ms, l.count, l.fingerprint.as_deref())
            == (5_000, 1, Some(format!("fp-{e}").as_str()))));
}

fn small_steps(conn: &RedisConn, moves: usize, settles: usize) -> beatd::emit::RedisEmitter {
    beatd::emit::RedisEmitter::new(
        conn.clone(),
        Keys::default(),
        beatd::emit::EmitOptions {
            max_moves_per_call: moves,
            max_settles_per_call: settles,
            ..beatd::emit::EmitOptions::default()
        },
    )
}

#[tokio::test]
async fn a_commit_into_a_busy_queue_goes_in_bounded_steps_and_recovery_finishes_it() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let old = acquire(&lock).await;
    let em = small_steps(&conn, 3, 4);
    // A busy queue: the staged messages cannot be renamed onto it.
    em.emit(&old, &[fire("busy", 500, "celery")]).await.unwrap();
    let batch = BatchId {
        epoch: old.epoch,
        at_ms: 1_000,
    };
    let fires: Vec<_> = (0..10)
        .map(|i| fire(&format!("e{i}"), 1_000, "celery"))
        .collect();
    em.stage(&old, batch, &fires).await.unwrap();
    // One step moves three, oldest first; the batch is now partly committed.
    assert!(!em.publish_step(&old, batch).await.unwrap());
    let q = list(&conn, "celery").await;
    assert_eq!(q.len(), 4);
    assert_eq!(q[0], "{\"entry\":\"e2\",\"at\":1000}");
    // Nothing more can be staged into it, and a stale lease cannot go on with it.
    assert!(em
        .stage(&old, batch, &[fire("late", 1_000, "celery")])
        .await
        .is_err());
    lock.release(&old).await.unwrap();
    let new = acquire(&lock).await;
    assert!(matches!(
        em.publish_step(&old, batch).await,
        Err(beatd::redis::Error::LeaseLost)
    ));
    // The leader died here. The next term finishes the commit (never rolls it back: part of
    // it is visible) and records every run once.
    em.recover(&new).await.unwrap();
    let q = list(&conn, "celery").await;
    assert_eq!(q.len(), 11, "{q:?}");
    let mut entries: Vec<String> = q
        .iter()
        .map(|m| m.split('"').nth(3).unwrap().to_string())
        .collect();
    // Oldest at the right (BRPOP's end): busy, then e0..e9 in order.
    entries.reverse();
    let want: Vec<String> = std::iter::once("busy".to_string())
        .chain((0..10).map(|i| format!("e{i}")))
        .collect();
    assert_eq!(entries, want);
    let r = runs(&conn).await;
    for i in 0..10 {
        assert_eq!(
            (r[&format!("e{i}")].fire_at_ms, r[&format!("e{i}")].count),
            (1_000, 1)
        );
    }
    assert!(keys_matching(&conn, "beatd:batch*").await.is_empty());
    // Sent and recorded: the next plan sends none of it again.
    assert_eq!(
        em.emit(&new, &fires[..3]).await.unwrap(),
        [AlreadySent, AlreadySent, AlreadySent]
    );
}

#[tokio::test]
async fn settle_records_in_bounded_steps_and_recovery_records_the_rest_once() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let old = acquire(&lock).await;
    let em = small_steps(&conn, 3, 4);
    let batch = BatchId {
        epoch: old.epoch,
        at_ms: 2_000,
    };
    let fires: Vec<_> = (0..10)
        .map(|i| fire(&format!("s{i}"), 2_000, "reports"))
        .collect();
    em.stage(&old, batch, &fires).await.unwrap();
    // Onto an empty queue: one rename, whatever the step size.
    assert!(em.publish_step(&old, batch).await.unwrap());
    assert_eq!(list(&conn, "reports").await.len(), 10);
    // One settle step records four; the leader dies before the rest.
    assert!(!em.settle_step(batch).await.unwrap());
    assert_eq!(runs(&conn).await.len(), 4);
    lock.release(&old).await.unwrap();
    let new = acquire(&lock).await;
    em.recover(&new).await.unwrap();
    let r = runs(&conn).await;
    assert_eq!(r.len(), 10);
    assert!(
        r.values().all(|l| (l.fire_at_ms, l.count) == (2_000, 1)),
        "{r:?}"
    );
    assert_eq!(list(&conn, "reports").await.len(), 10, "nothing sent twice");
    assert!(keys_matching(&conn, "beatd:batch*").await.is_empty());
    // A whole settle in steps also records each once.
    let b2 = BatchId {
        epoch: new.epoch,
        at_ms: 3_000,
    };
    let more: Vec<_> = (0..10)
        .map(|i| fire(&format!("s{i}"), 3_000, "reports"))
        .collect();
    em.stage(&new, b2, &more).await.unwrap();
    em.commit(&new, b2).await.unwrap();
    let r = runs(&conn).await;
    assert!(
        r.values().all(|l| (l.fire_at_ms, l.count) == (3_000, 2)),
        "{r:?}"
    );
}

async fn hash(conn: &RedisConn, key: &str) -> std::collections::HashMap<String, String> {
    let raw = redis::Client::open(conn_url(conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Settling records each entry's task id (what the overlap policies wait for) and first run
/// with its last run, in bounded steps and in recovery alike; the fingerprint stays as it
/// was; a fire without a task id leaves the last task as it was.
#[tokio::test]
async fn settle_records_task_ids_and_first_runs_with_the_runs() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let old = acquire(&lock).await;
    let em = small_steps(&conn, 3, 4);
    let batch = BatchId {
        epoch: old.epoch,
        at_ms: 2_000,
    };
    let fires: Vec<_> = (0..10)
        .map(|i| fire(&format!("s{i}"), 2_000, "reports"))
        .collect();
    em.stage(&old, batch, &fires).await.unwrap();
    assert!(em.publish_step(&old, batch).await.unwrap());
    assert!(hash(&conn, "beatd:control:last_task").await.is_empty());
    // One step records four; the leader dies; recovery records the rest.
    assert!(!em.settle_step(batch).await.unwrap());
    assert_eq!(hash(&conn, "beatd:control:last_task").await.len(), 4);
    lock.release(&old).await.unwrap();
    let new = acquire(&lock).await;
    em.recover(&new).await.unwrap();
    let tasks = hash(&conn, "beatd:control:last_task").await;
    let first = hash(&conn, "beatd:control:first_run").await;
    for i in 0..10 {
        let e = format!("s{i}");
        assert_eq!(tasks.get(&e), Some(&format!("s{i}@2000")), "{tasks:?}");
        assert_eq!(first.get(&e).map(String::as_str), Some("2000"), "{first:?}");
    }
    let r = runs(&conn).await;
    assert!(
        r.iter()
            .all(|(e, l)| l.fingerprint.as_deref() == Some(format!("fp-{e}").as_str())),
        "{r:?}"
    );
    // The next run: a new task id, the first run kept; a fire without a task id leaves it.
    let b2 = BatchId {
        epoch: new.epoch,
        at_ms: 3_000,
    };
    let mut more: Vec<_> = (0..10)
        .map(|i| fire(&format!("s{i}"), 3_000, "reports"))
        .collect();
    more[0].task_id.clear();
    em.stage(&new, b2, &more).await.unwrap();
    em.commit(&new, b2).await.unwrap();
    let tasks = hash(&conn, "beatd:control:last_task").await;
    let first = hash(&conn, "beatd:control:first_run").await;
    assert_eq!(tasks["s0"], "s0@2000");
    assert_eq!(tasks["s1"], "s1@3000");
    assert!(first.values().all(|v| v == "2000"), "{first:?}");
    let r = runs(&conn).await;
    assert!(r.values().all(|l| l.fire_at_ms == 3_000), "{r:?}");
    assert_eq!(r["s0"].fingerprint.as_deref(), Some("fp-s0"));
}

/// Calls of EVALSHA the server has served so far.
async fn evalsha_calls(conn: &RedisConn) -> u64 {
    let raw = redis::Client::open(conn_url(conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn entry_of(message: &str) -> String {
    message.split('"').nth(3).unwrap().to_string()
}

#[tokio::test]
async fn while_the_hashes_are_small_listpacks_calls_take_part_and_the_rest_follows_once() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let em = emitter(&conn);
    // Every script once, so that counting calls does not count a first NOSCRIPT.
    let warm = BatchId {
        epoch: lease.epoch,
        at_ms: 500,
    };
    em.emit(&lease, &[fire("w1", 500, "warm")]).await.unwrap();
    em.stage(&lease, warm, &[fire("w2", 500, "warm")])
        .await
        .unwrap();
    em.commit(&lease, warm).await.unwrap();
    em.settle(warm).await.unwrap();
    // Emission without staging into a namespace that has recorded (almost) nothing: its
    // hashes are listpacks, so the one chunk of 400 goes in several calls.
    let direct: Vec<_> = (0..400)
        .map(|i| fire(&format!("d{i:03}"), 1_000, "celery"))
        .collect();
    let before = evalsha_calls(&conn).await;
    assert!(em
        .emit(&lease, &direct)
        .await
        .unwrap()
        .iter()
        .all(|o| *o == Sent));
    assert!(evalsha_calls(&conn).await - before > 1, "taken in one call");
    let q: Vec<String> = list(&conn, "celery")
        .await
        .iter()
        .map(|m| entry_of(m))
        .collect();
    let mut want: Vec<String> = direct.iter().map(|f| f.entry.to_string()).collect();
    want.reverse();
    assert_eq!(q, want, "each once, oldest at BRPOP's end");

    // Staged, with every third fire one already sent: the outcomes of the calls that took
    // part of the chunk must line up with the fires they took.
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    let fires: Vec<_> = (0..500)
        .map(|i| match i % 3 {
            0 => fire(&format!("d{:03}", i / 3), 1_000, "reports"),
            _ => fire(&format!("s{i:03}"), 1_000, "reports"),
        })
        .collect();
    let before = evalsha_calls(&conn).await;
    let outcomes = em.stage(&lease, batch, &fires).await.unwrap();
    assert!(
        evalsha_calls(&conn).await - before > 1,
        "staged in one call"
    );
    let want: Vec<EmitOutcome> = (0..500)
        .map(|i| if i % 3 == 0 { AlreadySent } else { Sent })
        .collect();
    assert_eq!(outcomes, want);
    em.commit(&lease, batch).await.unwrap();
    em.settle(batch).await.unwrap();
    let q: Vec<String> = list(&conn, "reports")
        .await
        .iter()
        .map(|m| entry_of(m))
        .collect();
    let mut want: Vec<String> = (0..500)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("s{i:03}"))
        .collect();
    want.reverse();
    assert_eq!(q, want);
    let r = runs(&conn).await;
    assert_eq!(r.len(), 2 + 400 + 333);
    assert!(
        r.iter()
            .all(|(e, l)| e.starts_with('w') || (l.fire_at_ms, l.count) == (1_000, 1)),
        "{r:?}"
    );
    assert!(keys_matching(&conn, "beatd:batch*").await.is_empty());
}
