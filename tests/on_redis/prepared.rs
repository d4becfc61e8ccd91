//! Commits onto busy queues prepared before the instant (`emit/prepared.rs`): in order, once,
//! fenced by the epoch, and finished by script from every partial state.

use crate::*;
use beatd::emit::{BatchId, EmitOutcome, Emitter, StagedEmitter};
use beatd::redis::Keys;
use beatd::state::{RedisState, StateStore};

async fn raw(conn: &RedisConn) -> redis::aio::MultiplexedConnection {
    redis::Client::open(conn_url(conn))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Entry names of a kombu list in the order workers take them (BRPOP: from the right).
async fn taken_order(conn: &RedisConn, key: &str) -> Vec<String> {
    let mut q: Vec<String> = list(conn, key)
        .await
        .iter()
        .map(|m| m.split('"').nth(3).unwrap().to_string())
        .collect();
    q.reverse();
    q
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

async fn stage_all(em: &RedisEmitter, lease: &Lease, batch: BatchId, fires: &[beatd::emit::Fire]) {
    // As the beat stages: chunks of 500.
    for part in fires.chunks(500) {
        let out = em.stage(lease, batch, part).await.unwrap();
        assert!(out.iter().all(|o| *o == EmitOutcome::Sent));
    }
}

/// Clients of the server that are inside a `MULTI` (flag `x`), oldest connection first.
async fn clients_in_multi(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let listing: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(c)
        .await
        .unwrap();
    let mut ids: Vec<u64> = listing
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('x')))
        })
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids.into_iter().map(|i| i.to_string()).collect()
}

async fn assert_once_each(conn: &RedisConn, entries: &[String], at: i64) {
    let r = RedisState::new(conn.clone(), Keys::default())
        .last_runs()
        .await
        .unwrap();
    for e in entries {
        assert_eq!((r[e].fire_at_ms, r[e].count), (at, 1), "{e}");
    }
}

#[tokio::test]
async fn a_prepared_commit_pushes_onto_busy_queues_in_order_and_renames_the_empty_one() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 30_000)).await;
    let em = emitter(&conn);
    em.emit(&lease, &[fire("old", 500, "celery")])
        .await
        .unwrap();
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    // 12,000 onto the busy queue: three transactions (5,000, 5,000, 2,000); 10 onto an empty
    // one.
    let busy = names("b", 12_000);
    let empty = names("r", 10);
    let mut fires: Vec<_> = busy.iter().map(|e| fire(e, 1_000, "celery")).collect();
    fires.extend(empty.iter().map(|e| fire(e, 1_000, "reports")));
    stage_all(&em, &lease, batch, &fires).await;
    em.prepare(&lease, batch).await;
    let mut c = raw(&conn).await;
    assert_eq!(
        clients_in_multi(&mut c).await.len(),
        3,
        "three transactions queued"
    );
    // Queued, not run: nothing is visible before the commit.
    assert_eq!(list(&conn, "celery").await.len(), 1);
    assert!(list(&conn, "reports").await.is_empty());

    let committed = em.commit(&lease, batch).await.unwrap();
    assert!(matches!(committed, beatd::emit::Committed::Recorded));
    let mut want = vec!["old".to_string()];
    want.extend(busy.iter().cloned());
    assert_eq!(taken_order(&conn, "celery").await, want);
    assert_eq!(taken_order(&conn, "reports").await, empty);
    assert_once_each(&conn, &busy, 1_000).await;
    assert_once_each(&conn, &empty, 1_000).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("beatd:batch*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(clients_in_multi(&mut c).await.is_empty());
}

#[tokio::test]
async fn an_epoch_moved_after_preparing_runs_none_of_it_and_recovery_sends_the_rest_once() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 30_000);
    let lease = acquire(&lock).await;
    let em = emitter(&conn);
    em.emit(&lease, &[fire("old", 500, "celery")])
        .await
        .unwrap();
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    let busy = names("b", 5_000);
    let empty = names("r", 3);
    let mut fires: Vec<_> = busy.iter().map(|e| fire(e, 1_000, "celery")).collect();
    fires.extend(empty.iter().map(|e| fire(e, 1_000, "reports")));
    stage_all(&em, &lease, batch, &fires).await;
    em.prepare(&lease, batch).await;
    // Another acquisition bumps the epoch. The lock key is left as it was, so the commit
    // script still passes: only the watched epoch stops the transactions.
    let mut c = raw(&conn).await;
    let _: i64 = redis::cmd("INCR")
        .arg(&Keys::default().epoch)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(
        em.publish_prepared(&lease, batch).await,
        Err(beatd::redis::Error::LeaseLost)
    ));
    // The empty queue got its part by rename; the busy one got nothing.
    assert_eq!(taken_order(&conn, "reports").await, empty);
    assert_eq!(taken_order(&conn, "celery").await, ["old"]);
    // The next term's recovery finishes the partly committed batch by script.
    em.recover(&lease).await.unwrap();
    let mut want = vec!["old".to_string()];
    want.extend(busy.iter().cloned());
    assert_eq!(taken_order(&conn, "celery").await, want);
    assert_eq!(taken_order(&conn, "reports").await, empty);
    assert_once_each(&conn, &busy, 1_000).await;
    assert_once_each(&conn, &empty, 1_000).await;
    let again = em.emit(&lease, &fires[..10]).await.unwrap();
    assert!(again.iter().all(|o| *o == EmitOutcome::AlreadySent));
}

#[tokio::test]
async fn a_transaction_lost_midway_leaves_a_partial_batch_that_recovery_finishes_once() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 30_000);
    let old = acquire(&lock).await;
    let em = emitter(&conn);
    em.emit(&old, &[fire("old", 500, "celery")]).await.unwrap();
    let batch = BatchId {
        epoch: old.epoch,
        at_ms: 1_000,
    };
    let busy = names("b", 12_000);
    let fires: Vec<_> = busy.iter().map(|e| fire(e, 1_000, "celery")).collect();
    stage_all(&em, &old, batch, &fires).await;
    em.prepare(&old, batch).await;
    // The connections of the second and third transactions die before the instant.
    let mut c = raw(&conn).await;
    let queued = clients_in_multi(&mut c).await;
    assert_eq!(queued.len(), 3);
    for id in &queued[1..] {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // The prepared half runs the first transaction and stops at the lost one.
    assert!(!em.publish_prepared(&old, batch).await.unwrap());
    let mut want = vec!["old".to_string()];
    want.extend(busy[..5_000].iter().cloned());
    assert_eq!(taken_order(&conn, "celery").await, want);
    // The leader dies here. The next one finishes the batch from what Redis holds.
    lock.release(&old).await.unwrap();
    let new = acquire(&lock).await;
    em.recover(&new).await.unwrap();
    let mut want = vec!["old".to_string()];
    want.extend(busy.iter().cloned());
    assert_eq!(taken_order(&conn, "celery").await, want);
    assert_once_each(&conn, &busy, 1_000).await;
    let again = em.emit(&new, &fires[11_990..]).await.unwrap();
    assert!(again.iter().all(|o| *o == EmitOutcome::AlreadySent));
}

#[tokio::test]
async fn a_busy_queue_drained_before_the_instant_gets_each_message_once() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 30_000)).await;
    let em = emitter(&conn);
    em.emit(
        &lease,
        &[fire("old", 500, "celery"), fire("old2", 500, "reports")],
    )
    .await
    .unwrap();
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    let busy = names("b", 4_500);
    let other = names("r", 100);
    let mut fires: Vec<_> = busy.iter().map(|e| fire(e, 1_000, "celery")).collect();
    fires.extend(other.iter().map(|e| fire(e, 1_000, "reports")));
    stage_all(&em, &lease, batch, &fires).await;
    em.prepare(&lease, batch).await;
    // A worker takes the one old message of "celery": that queue is empty at the instant,
    // "reports" is still busy, and the commit must not rename the staged list onto "celery"
    // as well as push it there.
    let mut c = raw(&conn).await;
    let _: Option<String> = redis::cmd("RPOP")
        .arg("celery")
        .query_async(&mut c)
        .await
        .unwrap();
    em.commit(&lease, batch).await.unwrap();
    assert_eq!(taken_order(&conn, "celery").await, busy);
    let mut want = vec!["old2".to_string()];
    want.extend(other.iter().cloned());
    assert_eq!(taken_order(&conn, "reports").await, want);
    assert_once_each(&conn, &busy, 1_000).await;
}

#[tokio::test]
async fn staging_more_after_preparing_voids_the_transactions_and_commits_by_script() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 30_000)).await;
    let em = emitter(&conn);
    em.emit(&lease, &[fire("old", 500, "celery")])
        .await
        .unwrap();
    let batch = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    let first = names("a", 1_000);
    let fires: Vec<_> = first.iter().map(|e| fire(e, 1_000, "celery")).collect();
    stage_all(&em, &lease, batch, &fires).await;
    em.prepare(&lease, batch).await;
    let mut c = raw(&conn).await;
    assert_eq!(clients_in_multi(&mut c).await.len(), 1);
    // A reload adds an entry to the parked batch: what was prepared no longer matches.
    em.stage(&lease, batch, &[fire("late", 1_000, "celery")])
        .await
        .unwrap();
    // Dropping a prepared connection closes it (the server notices at once on loopback).
    for _ in 0..50 {
        if clients_in_multi(&mut c).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(clients_in_multi(&mut c).await.is_empty());
    em.commit(&lease, batch).await.unwrap();
    let mut want = vec!["old".to_string()];
    want.extend(first.iter().cloned());
    want.push("late".into());
    assert_eq!(taken_order(&conn, "celery").await, want);
}
