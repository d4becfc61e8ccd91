//! The Redis edge against real `redis-server` processes the tests start on free ports:
//! leader lock and fencing, exactly-once emission, state, outages, passwords.

use beatd::beat_io::{EmitOutcome, Emitter, Error as IoError, Fire, LeaderLock, Lease, StateStore};
use beatd::redis_edge::{
    self, connect, BrokerUrl, ConnectOptions, EmitOptions, Error, Keys, RedisConn, RedisEmitter,
    RedisLeader, RedisState,
};
use beatd::testkit::RedisServer;
use std::time::{Duration, Instant};

use EmitOutcome::{AlreadySent, Sent};

async fn server() -> (RedisServer, RedisConn) {
    let server = RedisServer::start().expect("redis-server");
    let conn = connect(&url(&server.url()), ConnectOptions::default())
        .await
        .expect("connect");
    (server, conn)
}

fn url(s: &str) -> BrokerUrl {
    BrokerUrl::parse(s).expect("valid url")
}

fn leader(conn: &RedisConn, ttl_ms: u64) -> RedisLeader {
    RedisLeader::new(conn.clone(), Keys::default(), Duration::from_millis(ttl_ms))
}

fn emitter(conn: &RedisConn) -> RedisEmitter {
    RedisEmitter::new(conn.clone(), Keys::default(), EmitOptions::default())
}

fn fire(entry: &str, at: i64, list: &str) -> Fire {
    Fire {
        entry: entry.into(),
        fire_at_ms: at,
        list_key: list.into(),
        payload: format!("{{\"entry\":\"{entry}\",\"at\":{at}}}").into_bytes(),
        schedule_fingerprint: format!("fp-{entry}"),
    }
}

async fn list(conn: &RedisConn, key: &str) -> Vec<String> {
    let raw = redis::Client::open(conn_url(conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("LRANGE")
        .arg(key.as_bytes())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Tests run without passwords, so the redacted URL is the real one.
fn conn_url(conn: &RedisConn) -> String {
    conn.url().to_string()
}

async fn acquire(lock: &RedisLeader) -> Lease {
    lock.try_acquire()
        .await
        .expect("redis answers")
        .expect("lock is free")
}

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
async fn emit_pushes_exactly_once_per_entry_and_fire_time() {
    let (_s, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let lease = acquire(&lock).await;
    let em = emitter(&conn);
    let fires = [
        fire("a", 1_000, "celery"),
        fire("b", 1_000, "celery"),
        fire("a", 2_000, "celery"),
    ];
    assert_eq!(em.emit(&lease, &fires).await.unwrap(), [Sent, Sent, Sent]);
    assert_eq!(em.emit(&lease, &fires).await.unwrap(), [AlreadySent; 3]);
    // An older fire time after a newer one, and a repeat within one batch, are not sent.
    let late = [
        fire("a", 1_500, "celery"),
        fire("c", 5, "celery"),
        fire("c", 5, "celery"),
    ];
    assert_eq!(
        em.emit(&lease, &late).await.unwrap(),
        [AlreadySent, Sent, AlreadySent]
    );
    // Concurrent calls with the same fires: each fire goes out once in total.
    let more: Vec<Fire> = (0..200)
        .map(|i| fire(&format!("n{i}"), 7_000, "celery"))
        .collect();
    let other = emitter(&conn);
    let (x, y) = tokio::join!(em.emit(&lease, &more), other.emit(&lease, &more));
    let sent = x
        .unwrap()
        .into_iter()
        .chain(y.unwrap())
        .filter(|o| *o == Sent)
        .count();
    assert_eq!(sent, 200);
    let queue = list(&conn, "celery").await;
    assert_eq!(queue.len(), 3 + 1 + 200);
    // LPUSH + BRPOP is FIFO: the oldest push sits at the right end.
    assert_eq!(
        queue.last().map(String::as_str),
        Some("{\"entry\":\"a\",\"at\":1000}")
    );
    let runs = RedisState::new(conn.clone(), Keys::default())
        .last_runs()
        .await
        .unwrap();
    assert_eq!(runs["a"].fire_at_ms, 2_000);
    assert_eq!(runs["a"].count, 2);
    assert_eq!(runs["a"].fingerprint.as_deref(), Some("fp-a"));
}

#[tokio::test]
async fn emit_reaches_kombu_priority_sub_queues() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let fires = [
        fire("p0", 1, "celery"),
        fire("p9", 1, "celery\x06\x169"),
        fire("p3", 1, "q\x06\x163"),
    ];
    let small = EmitOptions {
        max_fires_per_call: 2,
        ..EmitOptions::default()
    };
    let em = RedisEmitter::new(conn.clone(), Keys::default(), small);
    assert_eq!(em.emit(&lease, &fires).await.unwrap(), [Sent; 3]);
    assert_eq!(list(&conn, "celery").await.len(), 1);
    assert_eq!(list(&conn, "celery\x06\x169").await.len(), 1);
    assert_eq!(list(&conn, "q\x06\x163").await.len(), 1);
}

#[tokio::test]
async fn state_reads_all_three_hashes_and_forgets_entries() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let fires = [
        fire("a", 10, "celery"),
        fire("b", 20, "celery"),
        fire("a", 30, "celery"),
    ];
    emitter(&conn).emit(&lease, &fires).await.unwrap();
    let state = RedisState::new(conn.clone(), Keys::default());
    let runs = state.last_runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs["b"].fire_at_ms, runs["b"].count), (20, 1));
    state.forget(&["a".into()]).await.unwrap();
    let runs = state.last_runs().await.unwrap();
    assert_eq!(runs.keys().collect::<Vec<_>>(), ["b"]);
    // A forgotten entry starts over: its next fire is sent.
    let again = emitter(&conn)
        .emit(&lease, &[fire("a", 30, "celery")])
        .await
        .unwrap();
    assert_eq!(again, [Sent]);
    state.forget(&[]).await.unwrap();
}

#[tokio::test]
async fn send_one_and_status() {
    let (_s, conn) = server().await;
    assert_eq!(
        redis_edge::send_one(&conn, "celery", b"{}").await.unwrap(),
        1
    );
    let keys = Keys::default();
    let st = redis_edge::status(&conn, &keys).await.unwrap();
    assert!(st.leader.is_none() && st.last_runs.is_empty());
    let lease = acquire(&leader(&conn, 10_000)).await;
    emitter(&conn)
        .emit(&lease, &[fire("a", 10, "celery")])
        .await
        .unwrap();
    let st = redis_edge::status(&conn, &keys).await.unwrap();
    assert_eq!(
        st.leader.map(|l| (l.holder, l.epoch)),
        Some((lease.token, 1))
    );
    assert_eq!(st.last_runs["a"].fire_at_ms, 10);
}

#[tokio::test]
async fn emit_fails_while_redis_is_down_then_works_after_reconnect() {
    let (mut server, conn) = server().await;
    let lock = leader(&conn, 10_000);
    let em = emitter(&conn);
    let lease = acquire(&lock).await;
    em.emit(&lease, &[fire("a", 1, "celery")]).await.unwrap();
    server.kill();
    let t = Instant::now();
    let err = em
        .emit(&lease, &[fire("a", 2, "celery")])
        .await
        .unwrap_err();
    assert!(matches!(err, IoError::Unavailable(_)), "{err:?}");
    assert!(lock.renew(&lease).await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        t.elapsed()
    );
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
    redis_edge::send_one(&ok, "celery", b"{}").await.unwrap();
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
async fn emit_keeps_payload_bytes_entry_names_and_millisecond_precision() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 10_000)).await;
    let odd = "réports:nightly {ns} \"quoted\"";
    let at = 1_798_765_432_109;
    let mut f = fire(odd, at, "celery");
    f.payload = vec![0, 0xff, b'{', 0x06, 0x16];
    let em = emitter(&conn);
    assert_eq!(em.emit(&lease, &[f.clone()]).await.unwrap(), [Sent]);
    let next = fire(odd, at + 1, "celery");
    assert_eq!(
        em.emit(&lease, &[f.clone(), next]).await.unwrap(),
        [AlreadySent, Sent]
    );
    let runs = RedisState::new(conn.clone(), Keys::default())
        .last_runs()
        .await
        .unwrap();
    assert_eq!((runs[odd].fire_at_ms, runs[odd].count), (at + 1, 2));
    let raw = redis::Client::open(conn_url(&conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    let oldest: Vec<u8> = redis::cmd("RPOP")
        .arg("celery")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(oldest, f.payload);
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
async fn backend_wires_all_three_traits_under_one_namespace() {
    let (_s, conn) = server().await;
    let b = redis_edge::Backend::new(&conn, "other", Duration::from_secs(10));
    let lease = b.leader.try_acquire().await.unwrap().expect("free");
    b.emitter
        .emit(&lease, &[fire("a", 1, "celery")])
        .await
        .unwrap();
    assert_eq!(b.state.last_runs().await.unwrap()["a"].fire_at_ms, 1);
    let default_ns = redis_edge::status(&conn, &Keys::default()).await.unwrap();
    assert!(default_ns.leader.is_none() && default_ns.last_runs.is_empty());
    let other = redis_edge::status(&conn, &Keys::new("other"))
        .await
        .unwrap();
    assert_eq!(other.leader.map(|l| l.epoch), Some(1));
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

/// Not a timed assertion: prints how long 10,000 fires of ~1 KB take, as Redis main-thread
/// CPU time (robust on a busy machine), Redis wall time (commandstats) and end to end from this
/// client, for several chunk sizes; the best of three rounds each. Run with `--nocapture`.
#[tokio::test]
async fn emit_10k_fires_timing() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 600_000)).await;
    let mut raw = redis::Client::open(conn_url(&conn))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut at = 1_800_000_000_000;
    for per_call in [10_000, 5_000, 2_000, 1_000] {
        let opts = EmitOptions {
            max_fires_per_call: per_call,
            max_bytes_per_call: usize::MAX,
        };
        let em = RedisEmitter::new(conn.clone(), Keys::default(), opts);
        let mut best = (f64::MAX, f64::MAX, Duration::MAX);
        for _ in 0..3 {
            at += 1_000;
            let fires = herd(at);
            em.emit(&lease, &fires[..1]).await.unwrap(); // loads the script
            let _: () = redis::cmd("DEL")
                .arg("celery")
                .arg("reports")
                .query_async(&mut raw)
                .await
                .unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut raw)
                .await
                .unwrap();
            let cpu0 = redis_cpu_ms(&mut raw).await;
            let t = Instant::now();
            let out = em.emit(&lease, &fires[1..]).await.unwrap();
            let wall = t.elapsed();
            let cpu = redis_cpu_ms(&mut raw).await - cpu0;
            assert!(out.iter().all(|o| *o == Sent));
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut raw)
                .await
                .unwrap();
            let usec: f64 = info
                .lines()
                .find(|l| l.starts_with("cmdstat_evalsha:"))
                .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            best = (best.0.min(cpu), best.1.min(usec / 1000.0), best.2.min(wall));
        }
        println!(
            "emit 9,999 fires of 900 B, {per_call} per call: redis cpu {:.1} ms, redis wall {:.1} ms, \
             end to end {:?} (debug build)",
            best.0, best.1, best.2
        );
    }
}

/// 10,000 distinct entries due at `at`, over two queues.
fn herd(at: i64) -> Vec<Fire> {
    (0..10_000)
        .map(|i| Fire {
            entry: format!("entry-{i:05}"),
            fire_at_ms: at,
            list_key: if i % 2 == 0 {
                "celery".into()
            } else {
                "reports".into()
            },
            payload: vec![b'x'; 900], // about a Celery envelope with small args
            schedule_fingerprint: "0123456789abcdef".into(),
        })
        .collect()
}

/// Redis main-thread CPU time (user + system), in ms.
async fn redis_cpu_ms(raw: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user_main_thread:")
                .or_else(|| l.strip_prefix("used_cpu_sys_main_thread:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum::<f64>()
        * 1000.0
}
