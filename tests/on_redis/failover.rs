//! Two replicas racing for the lock on one entry that fires every 100 ms, one of them paused
//! longer than the TTL between deciding to emit and emitting (a GC pause, SIGSTOP). Every fire
//! time must reach the queue exactly once: no duplicate from the stale leader, no gap after the
//! takeover (the new leader catches up on every missed fire time).

use crate::*;
use beatd::emit::{EmitOutcome, Emitter, Fire, RedisEmitter};
use beatd::leader::{LeaderLock, RedisLeader};
use beatd::redis::{connect, ConnectOptions, Keys};
use beatd::store::Error as IoError;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(300);
const PERIOD_MS: i64 = 100;

#[derive(Debug, Default)]
struct Stats {
    sent: usize,
    stale_emits_refused: usize,
    acquisitions: usize,
}

async fn replica(
    url: String,
    start: Instant,
    run_for: Duration,
    pause_at: Option<Duration>,
) -> Stats {
    let conn = connect(&crate::url(&url), ConnectOptions::default())
        .await
        .expect("connect");
    let lock = RedisLeader::new(conn.clone(), Keys::default(), TTL);
    let em = RedisEmitter::new(conn, Keys::default(), EmitOptions::default());
    let (mut lease, mut paused, mut stats) = (None, false, Stats::default());
    while start.elapsed() < run_for {
        let Some(mut l) = lease.take() else {
            if let Some(l) = lock.try_acquire().await.expect("redis answers") {
                stats.acquisitions += 1;
                lease = Some(l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if l.acquired_at.elapsed() >= l.renew_every() {
            let sent = Instant::now();
            if !lock.renew(&l).await.expect("redis answers") {
                continue; // lost: back to standby
            }
            l.acquired_at = sent;
        }
        let elapsed_ms = i64::try_from(start.elapsed().as_millis()).unwrap();
        let fires: Vec<Fire> = (0..=elapsed_ms / PERIOD_MS)
            .map(|k| Fire {
                entry: "every-100ms".into(),
                fire_at_ms: k * PERIOD_MS,
                task_id: String::new(),
                rq: None,
                list_key: "celery".into(),
                payload: (k * PERIOD_MS).to_string().into_bytes(),
                schedule_fingerprint: "fp".into(),
            })
            .collect();
        if pause_at.is_some_and(|p| !paused && start.elapsed() >= p) {
            paused = true;
            tokio::time::sleep(TTL * 3).await; // frozen after deciding, before emitting
        }
        match em.emit(&l, &fires).await {
            Ok(out) => {
                stats.sent += out.iter().filter(|o| **o == EmitOutcome::Sent).count();
                lease = Some(l);
            }
            Err(IoError::LeaseLost) => stats.stale_emits_refused += 1,
            Err(e) => panic!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(l) = lease {
        lock.release(&l).await.expect("redis answers");
    }
    stats
}

#[tokio::test]
async fn a_paused_leader_sends_nothing_stale_and_the_standby_leaves_no_gap() {
    let (_server, conn) = server().await;
    let url = conn_url(&conn);
    let start = Instant::now();
    let run_for = Duration::from_millis(2500);
    let a = replica(
        url.clone(),
        start,
        run_for,
        Some(Duration::from_millis(800)),
    );
    let b = async {
        tokio::time::sleep(Duration::from_millis(100)).await; // let `a` lead first
        replica(url.clone(), start, run_for, None).await
    };
    let (a, b) = tokio::join!(a, b);
    let queue = list(&conn, "celery").await;
    let times: BTreeSet<i64> = queue.iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(times.len(), queue.len(), "duplicates: {queue:?}");
    let last = *times.last().unwrap();
    let expected: BTreeSet<i64> = (0..=last / PERIOD_MS).map(|k| k * PERIOD_MS).collect();
    assert_eq!(times, expected, "gaps");
    assert!(last >= 2000, "kept sending until the end: last {last}");
    assert_eq!(a.sent + b.sent, queue.len());
    assert!(
        a.stale_emits_refused >= 1,
        "the paused leader tried and was refused: {a:?}"
    );
    assert!(
        b.acquisitions >= 1 && b.sent > 0,
        "the standby took over: {b:?}"
    );
}
