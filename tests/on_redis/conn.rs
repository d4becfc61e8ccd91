//! Connection behaviour: outages, timeouts, passwords, config warnings.

use crate::*;
use beatd::emit::{EmitOutcome::Sent, Emitter};
use beatd::leader::LeaderLock;
use beatd::redis::{connect, ConnectOptions, Error};
use beatd::store::Error as IoError;
use beatd::testkit::RedisServer;
use std::time::{Duration, Instant};

#[tokio::test]
async fn emit_fails_while_redis_is_down_then_works_after_reconnect() {
    let (mut server, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let em = emitter(&conn);
    let lease = acquire(&lock).await;
    em.emit(&lease, &[fire("a", 1, "celery")]).await.unwrap();
    server.kill();
    assert!(conn.is_connected().await, "not noticed before the next use");
    let t = Instant::now();
    let err = em
        .emit(&lease, &[fire("a", 2, "celery")])
        .await
        .unwrap_err();
    assert!(matches!(err, IoError::Unavailable(_)), "{err:?}");
    assert!(lock.renew(&lease).await.is_err());
    // While down, calls fail at once (no waiting out the backoff inside a call).
    for _ in 0..10 {
        let err: IoError = lock.holder().await.unwrap_err().into();
        assert!(matches!(err, IoError::Unavailable(_)), "{err:?}");
    }
    let elapsed = t.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "fails fast while down: {elapsed:?}"
    );
    assert!(!conn.is_connected().await);
    server.restart().expect("restart");
    // Nothing persisted across the restart: the old lease is gone, a new one is needed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let lease = loop {
        match lock.try_acquire().await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("nobody else holds the lock"),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnect within 15 s: {e:?}"),
        }
    };
    assert_eq!(
        em.emit(&lease, &[fire("a", 2, "celery")]).await.unwrap(),
        [Sent]
    );
}

#[tokio::test]
async fn unreachable_redis_is_reported_as_unreachable() {
    let port = beatd::testkit::free_port().unwrap();
    let err = connect(
        &url(&format!("redis://127.0.0.1:{port}/0")),
        ConnectOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn password_protected_server_accepts_the_right_url_and_rejects_a_wrong_one() {
    let server = RedisServer::start_with(&["--requirepass", "s3cr@t"]).expect("redis-server");
    let at = |auth: &str, db: u8| url(&format!("redis://{auth}127.0.0.1:{}/{db}", server.port()));
    let ok = connect(&at(":s3cr%40t@", 2), ConnectOptions::default())
        .await
        .expect("right password");
    beatd::emit::send_one(&ok, "celery", b"{}").await.unwrap();
    // Without a password, db 2 fails in the handshake's SELECT and db 0 at the first PING.
    for (auth, db) in [(":badpw123@", 2), ("", 2), ("", 0), (":badpw123@", 0)] {
        let err = connect(&at(auth, db), ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AuthFailed { .. }), "{auth}: {err:?}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("badpw123") && !shown.contains("s3cr"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn a_stalled_server_times_out_then_the_connection_recovers() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]).expect("redis");
    let opts = ConnectOptions {
        response_timeout: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let conn = connect(&url(&server.url()), opts).await.expect("connect");
    let raw = redis::Client::open(server.url()).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.8")
            .query_async::<()>(&mut c)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = conn.check().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    stall.await.unwrap().unwrap();
    conn.check().await.expect("reconnected after the stall");
}

#[tokio::test]
async fn an_evicting_memory_policy_is_warned_about() {
    let (_s, conn) = server().await;
    assert!(conn.config_warnings().await.unwrap().is_empty());
    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).expect("redis");
    let conn = connect(&url(&lru.url()), ConnectOptions::default())
        .await
        .unwrap();
    let warnings = conn.config_warnings().await.unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].contains("allkeys-lru"),
        "{warnings:?}"
    );
}
