//! Leader lock: acquire, renew, release, expiry, contenders, fencing.

use crate::*;
use beatd::emit::{EmitOutcome::Sent, Emitter};
use beatd::leader::{Handover, LeaderLock, Lease};
use beatd::redis::{connect, ConnectOptions};
use beatd::store::Error as IoError;
use beatd::testkit::RedisServer;
use std::time::Duration;

#[tokio::test]
async fn lock_acquire_renew_release_with_epoch_increments() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let a = acquire(&lock).await;
    assert_eq!(a.epoch, 1);
    assert!(
        a.token.contains(&format!(":{}:", std::process::id())),
        "{}",
        a.token
    );
    let info = lock.holder().await.unwrap().expect("held");
    assert_eq!((info.holder.as_str(), info.epoch), (a.token.as_str(), 1));
    assert!(info.ttl_left > Duration::from_secs(9) && info.ttl_left <= Duration::from_secs(10));
    assert!(lock.renew(&a).await.unwrap());
    lock.release(&a).await.unwrap();
    assert!(lock.holder().await.unwrap().is_none());
    let b = acquire(&lock).await;
    assert_eq!(b.epoch, 2, "every acquisition bumps the epoch");
    assert_ne!(a.token, b.token, "tokens are unique per acquisition");
}

#[tokio::test]
async fn second_contender_cannot_acquire_while_held() {
    let (_s, conn) = server().await;
    let (one, two) = (leader(&conn, 10_000), leader(&conn, 10_000));
    let a = acquire(&one).await;
    assert!(two.try_acquire().await.unwrap().is_none());
    assert!(
        one.try_acquire().await.unwrap().is_none(),
        "not re-entrant either"
    );
    let fake = Lease {
        token: "someone-else".into(),
        ..a.clone()
    };
    assert!(!two.renew(&fake).await.unwrap());
    two.release(&fake).await.unwrap();
    assert_eq!(one.holder().await.unwrap().map(|h| h.holder), Some(a.token));
}

#[tokio::test]
async fn concurrent_contenders_on_separate_connections_exactly_one_wins() {
    let server = RedisServer::start().expect("redis-server");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let conn = connect(&url(&server.url()), ConnectOptions::default())
            .await
            .unwrap();
        set.spawn(async move { leader(&conn, 10_000).try_acquire().await });
    }
    let mut winners = Vec::new();
    while let Some(res) = set.join_next().await {
        winners.extend(res.unwrap().unwrap());
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].epoch, 1);
}

#[tokio::test]
async fn steal_after_expiry_fences_the_old_leader() {
    let (_s, conn) = server().await;
    let (one, two) = (leader(&conn, 300), leader(&conn, 10_000));
    let old = acquire(&one).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = acquire(&two).await;
    assert_eq!((old.epoch, new.epoch), (1, 2));
    assert!(
        !one.renew(&old).await.unwrap(),
        "renew after expiry and takeover fails"
    );
    one.release(&old).await.unwrap();
    assert_eq!(
        two.holder().await.unwrap().map(|h| h.holder),
        Some(new.token.clone())
    );
    let em = emitter(&conn);
    let err = em
        .emit(&old, &[fire("a", 1_000, "celery")])
        .await
        .unwrap_err();
    assert!(matches!(err, IoError::LeaseLost), "{err:?}");
    assert!(
        list(&conn, "celery").await.is_empty(),
        "stale leader pushed nothing"
    );
    assert_eq!(
        em.emit(&new, &[fire("a", 1_000, "celery")]).await.unwrap(),
        [Sent]
    );
}

#[tokio::test]
async fn a_release_wakes_a_waiting_standby_before_its_poll_interval() {
    let (_s, conn) = server().await;
    let (one, two) = (leader(&conn, 10_000), leader(&conn, 10_000));
    let a = acquire(&one).await;
    // The first wait starts the standby's subscription; give it time to be in place.
    two.released(Duration::from_millis(500)).await;
    let started = tokio::time::Instant::now();
    let waiting = tokio::spawn(async move {
        two.released(Duration::from_secs(30)).await;
        two
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    one.release(&a).await.unwrap();
    let two = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the wait ended only at its 30 s poll interval")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        two.try_acquire().await.unwrap().is_some(),
        "released lock is free"
    );
}
