//! RQ jobs through the same scripts: the job hash and the id land together (RPUSH, as RQ
//! enqueues; `rq:queues` registered), once per (entry, fire time), direct or staged; a staged
//! batch rolled back leaves no job hash behind; a commit onto a busy queue keeps RQ's order.

use crate::*;
use beatd::emit::{BatchId, EmitOutcome, Emitter, Fire, RqJobHash, StagedEmitter};
use EmitOutcome::{AlreadySent, Sent};

fn job(entry: &str, at: i64, queue: &str) -> Fire {
    let id = format!("{entry}-{at}");
    Fire {
        entry: entry.into(),
        fire_at_ms: at,
        task_id: id.clone(),
        list_key: format!("rq:queue:{queue}"),
        payload: id.clone().into_bytes(),
        rq: Some(Box::new(RqJobHash {
            fields: vec![
                ("status", b"queued".to_vec()),
                ("origin", queue.as_bytes().to_vec()),
                // Binary, as zlib data is: every byte must survive msgpack and Lua.
                ("data", (0u8..=255).chain([0, 0xc4, 0xd9]).collect()),
                ("description", "x".repeat(300).into_bytes()),
            ],
            expire: (queue == "reports").then_some(600),
        })),
        schedule_fingerprint: format!("fp-{entry}"),
    }
}

async fn raw(conn: &RedisConn) -> redis::aio::MultiplexedConnection {
    redis::Client::open(conn_url(conn))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn hash(conn: &RedisConn, key: &str) -> std::collections::HashMap<String, Vec<u8>> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut raw(conn).await)
        .await
        .unwrap()
}

async fn queues(conn: &RedisConn) -> Vec<String> {
    let mut q: Vec<String> = redis::cmd("SMEMBERS")
        .arg("rq:queues")
        .query_async(&mut raw(conn).await)
        .await
        .unwrap();
    q.sort();
    q
}

#[tokio::test]
async fn a_direct_rq_fire_writes_the_hash_and_pushes_the_id_once() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let em = emitter(&conn);
    let fires = [
        job("a", 1_000, "default"),
        job("b", 1_000, "default"),
        fire("c", 1_000, "celery"),
    ];
    assert_eq!(em.emit(&lease, &fires).await.unwrap(), [Sent, Sent, Sent]);
    // RPUSH: RQ's worker LPOPs, so the first fire is at the head.
    assert_eq!(list(&conn, "rq:queue:default").await, ["a-1000", "b-1000"]);
    assert_eq!(list(&conn, "celery").await.len(), 1);
    assert_eq!(queues(&conn).await, ["rq:queue:default"]);
    let h = hash(&conn, "rq:job:a-1000").await;
    assert_eq!(h["status"], b"queued");
    assert_eq!(h["origin"], b"default");
    assert_eq!(
        h["data"],
        (0u8..=255).chain([0, 0xc4, 0xd9]).collect::<Vec<u8>>()
    );
    assert_eq!(h["description"].len(), 300);
    assert_eq!(h.len(), 4);
    // The same fire time again: nothing, not even a rewritten hash.
    assert_eq!(
        em.emit(&lease, &[job("a", 1_000, "default")])
            .await
            .unwrap(),
        [AlreadySent]
    );
    assert_eq!(list(&conn, "rq:queue:default").await.len(), 2);
}

#[tokio::test]
async fn staged_rq_jobs_commit_in_order_and_a_rollback_leaves_no_hash() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let old = acquire(&lock).await;
    let em = emitter(&conn);
    // The queue already holds a job: the staged ones go behind it, oldest first.
    em.emit(&old, &[job("first", 500, "reports")])
        .await
        .unwrap();
    let at1 = BatchId {
        epoch: old.epoch,
        at_ms: 1_000,
    };
    let staged: Vec<Fire> = (0..5)
        .map(|i| job(&format!("e{i}"), 1_000, "reports"))
        .collect();
    assert!(em
        .stage(&old, at1, &staged)
        .await
        .unwrap()
        .iter()
        .all(|o| *o == Sent));
    assert_eq!(
        list(&conn, "rq:queue:reports").await,
        ["first-500"],
        "staged visible"
    );
    // The hashes exist already (invisible: no id in a queue names them).
    assert_eq!(hash(&conn, "rq:job:e0-1000").await["status"], b"queued");
    em.commit(&old, at1).await.unwrap();
    assert_eq!(
        list(&conn, "rq:queue:reports").await,
        [
            "first-500",
            "e0-1000",
            "e1-1000",
            "e2-1000",
            "e3-1000",
            "e4-1000"
        ]
    );
    assert_eq!(queues(&conn).await, ["rq:queue:reports"]);

    // Onto an empty queue: renamed whole, in order.
    let at2 = BatchId {
        epoch: old.epoch,
        at_ms: 2_000,
    };
    let fresh: Vec<Fire> = (0..3)
        .map(|i| job(&format!("n{i}"), 2_000, "empty"))
        .collect();
    em.stage(&old, at2, &fresh).await.unwrap();
    em.commit(&old, at2).await.unwrap();
    assert_eq!(
        list(&conn, "rq:queue:empty").await,
        ["n0-2000", "n1-2000", "n2-2000"]
    );

    // Staged, then the leader dies before the instant: the next term rolls it back, and
    // its job hashes go with it.
    let at3 = BatchId {
        epoch: old.epoch,
        at_ms: 3_000,
    };
    em.stage(&old, at3, &[job("late", 3_000, "reports")])
        .await
        .unwrap();
    assert!(!hash(&conn, "rq:job:late-3000").await.is_empty());
    lock.release(&old).await.unwrap();
    let new = acquire(&lock).await;
    em.recover(&new).await.unwrap();
    assert!(
        hash(&conn, "rq:job:late-3000").await.is_empty(),
        "orphan job hash"
    );
    assert_eq!(list(&conn, "rq:queue:reports").await.len(), 6);
    // Committed jobs keep theirs, with RQ's expiry for a job with a ttl.
    assert!(!hash(&conn, "rq:job:e4-1000").await.is_empty());
    let ttl: i64 = redis::cmd("TTL")
        .arg("rq:job:e4-1000")
        .query_async(&mut raw(&conn).await)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
    let none: i64 = redis::cmd("TTL")
        .arg("rq:job:n0-2000")
        .query_async(&mut raw(&conn).await)
        .await
        .unwrap();
    assert_eq!(none, -1);
}

#[tokio::test]
async fn a_prepared_commit_onto_a_busy_rq_queue_keeps_rqs_order() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 30_000)).await;
    let em = emitter(&conn);
    em.emit(&lease, &[job("first", 500, "reports")])
        .await
        .unwrap();
    let at = BatchId {
        epoch: lease.epoch,
        at_ms: 1_000,
    };
    // Two prepared transactions (5,000 + 1,000): RPUSHed behind the job already queued.
    let staged: Vec<Fire> = (0..6_000)
        .map(|i| job(&format!("e{i:04}"), 1_000, "reports"))
        .collect();
    for part in staged.chunks(500) {
        em.stage(&lease, at, part).await.unwrap();
    }
    em.prepare(&lease, at).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut raw(&conn).await)
        .await
        .unwrap();
    let in_multi = clients.lines().filter(|l| l.contains(" flags=x ")).count();
    assert_eq!(in_multi, 2, "two transactions prepared: {clients}");
    assert_eq!(list(&conn, "rq:queue:reports").await, ["first-500"]);
    em.commit(&lease, at).await.unwrap();
    let q = list(&conn, "rq:queue:reports").await;
    let want: Vec<String> = std::iter::once("first-500".to_string())
        .chain((0..6_000).map(|i| format!("e{i:04}-1000")))
        .collect();
    assert_eq!(q, want);
    assert_eq!(queues(&conn).await, ["rq:queue:reports"]);
    assert_eq!(hash(&conn, "rq:job:e5999-1000").await["status"], b"queued");
    assert_eq!(
        em.emit(&lease, &staged[..2]).await.unwrap(),
        [AlreadySent, AlreadySent]
    );
}
