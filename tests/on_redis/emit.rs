//! Emission and state against a real server.

use crate::*;
use beatd::emit::{EmitOptions, RedisEmitter};
use beatd::emit::{EmitOutcome, Emitter, Fire};
use beatd::redis::Keys;
use beatd::state::{RedisState, StateStore};
use std::time::Duration;
use EmitOutcome::{AlreadySent, Sent};

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
        beatd::emit::send_one(&conn, "celery", b"{}").await.unwrap(),
        1
    );
    let keys = Keys::default();
    let st = beatd::state::status(&conn, &keys).await.unwrap();
    assert!(st.leader.is_none() && st.last_runs.is_empty());
    let lease = acquire(&leader(&conn, 10_000)).await;
    emitter(&conn)
        .emit(&lease, &[fire("a", 10, "celery")])
        .await
        .unwrap();
    let st = beatd::state::status(&conn, &keys).await.unwrap();
    assert_eq!(
        st.leader.map(|l| (l.holder, l.epoch)),
        Some((lease.token, 1))
    );
    assert_eq!(st.last_runs["a"].fire_at_ms, 10);
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
async fn backend_wires_all_three_traits_under_one_namespace() {
    let (_s, conn) = server().await;
    let b = beatd::app::daemon::BeatPorts::redis(&conn, "other", Duration::from_secs(10));
    let lease = b.leader.try_acquire().await.unwrap().expect("free");
    b.emission
        .emitter()
        .emit(&lease, &[fire("a", 1, "celery")])
        .await
        .unwrap();
    assert_eq!(b.state.last_runs().await.unwrap()["a"].fire_at_ms, 1);
    let default_ns = beatd::state::status(&conn, &Keys::default()).await.unwrap();
    assert!(default_ns.leader.is_none() && default_ns.last_runs.is_empty());
    let other = beatd::state::status(&conn, &Keys::new("other"))
        .await
        .unwrap();
    assert_eq!(other.leader.map(|l| l.epoch), Some(1));
}
