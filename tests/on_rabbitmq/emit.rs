//! The exactly-once scheme on a real node and a real Redis: intent under the lease, publish
//! with confirm, sent under the lease; nothing published without the lease or its margin; a
//! new leader republishing an unconfirmed intent with its task id; an unroutable return as
//! an error, counted, and the fire kept until a publish is confirmed.

use super::{channel, drain, emitter, lease, redis, vhost};
use beatd::emit::{AmqpOptions, EmitOutcome, Emitter, Fire};
use beatd::leader::LeaderLock;
use beatd::protocol::TaskMessage;
use beatd::store::Error;
use redis::Commands as _;
use std::time::Duration;

fn fire(entry: &str, at: i64, queue: &str) -> Fire {
    let enc = TaskMessage::new("tasks.add")
        .args(vec![serde_json::json!(at)])
        .queue(queue)
        .encode(beatd::clock::Clock::now(&beatd::clock::SystemClock));
    Fire {
        entry: entry.into(),
        fire_at_ms: at,
        task_id: enc.id,
        list_key: enc.list_key,
        payload: enc.payload.into_bytes(),
        rq: None,
        schedule_fingerprint: format!("fp-{entry}"),
    }
}

fn task_id(m: &lapin::message::BasicGetMessage) -> String {
    let h = m.delivery.properties.headers().as_ref().expect("headers");
    beatd::amqp::wire::json(h.inner().get("id").expect("id"))
        .as_str()
        .unwrap()
        .to_owned()
}

fn raw(server: &beatd::testkit::RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_is_published_once_and_recorded_on_its_confirm() {
    let url = vhost();
    let (server, conn) = redis().await;
    let (_l, lease) = lease(&conn, Duration::from_secs(30)).await;
    let (em, metrics) = emitter(&url, &conn, AmqpOptions::default());
    let f = fire("e", 1_000, "q1");
    assert_eq!(
        em.emit(&lease, std::slice::from_ref(&f)).await.unwrap(),
        [EmitOutcome::Sent]
    );
    // Again, and an older fire of the same entry: recorded already.
    let older = fire("e", 500, "q1");
    assert_eq!(
        em.emit(&lease, &[f.clone(), older]).await.unwrap(),
        [EmitOutcome::AlreadySent, EmitOutcome::AlreadySent]
    );
    let (_c, ch) = channel(&url).await;
    let got = drain(&ch, "q1").await;
    assert_eq!(got.len(), 1);
    assert_eq!(task_id(&got[0]), f.task_id);
    let mut r = raw(&server);
    let last: Option<String> = r.hget("beatd:last_run", "e").unwrap();
    assert_eq!(last.as_deref(), Some("1000"));
    let count: Option<String> = r.hget("beatd:run_count", "e").unwrap();
    assert_eq!(count.as_deref(), Some("1"));
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 0, "the intent is gone once sent");
    assert_eq!(metrics.amqp_publishes.get(), 1);
    assert_eq!(metrics.amqp_confirms.get(), 1);
    assert_eq!(metrics.amqp_returns.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lease_nothing_is_published_or_recorded() {
    let url = vhost();
    let (server, conn) = redis().await;
    let (_l, stale) = lease(&conn, Duration::from_secs(30)).await;
    // Another replica took the lock (the first one's lease expired unnoticed).
    let mut r = raw(&server);
    let _: () = r.del("beatd:leader").unwrap();
    let (_l2, _current) = lease(&conn, Duration::from_secs(30)).await;
    let (em, metrics) = emitter(&url, &conn, AmqpOptions::default());
    let err = em
        .emit(&stale, &[fire("e", 1_000, "q2")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost), "{err:?}");
    assert_eq!(metrics.amqp_publishes.get(), 0);
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 0);
    let last: Option<String> = r.hget("beatd:last_run", "e").unwrap();
    assert_eq!(last, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_republishes_an_unconfirmed_fire_with_its_task_id() {
    let url = vhost();
    let (server, conn) = redis().await;
    let (leader, first) = lease(&conn, Duration::from_secs(30)).await;
    // A leader whose lease has less than the margin left records its intent, then refuses to
    // publish: the state a leader leaves when it dies between intent and confirm.
    let (tight, _) = emitter(
        &url,
        &conn,
        AmqpOptions {
            margin: Some(Duration::from_secs(60)),
            ..AmqpOptions::default()
        },
    );
    let f = fire("e", 2_000, "q3");
    let err = tight
        .emit(&first, std::slice::from_ref(&f))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost), "{err:?}");
    let mut r = raw(&server);
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 1);
    let (c, ch) = channel(&url).await;
    // The queue a worker declared: empty, nothing was published past the margin.
    let ch = beatd::amqp::declare_queue(&c, ch, &url, "q3", &Default::default())
        .await
        .expect("declare");
    assert!(
        drain(&ch, "q3").await.is_empty(),
        "nothing published past the margin"
    );
    leader.release(&first).await.unwrap();

    // The next leader's term starts by publishing it, with the same task id, then records it.
    let (_l2, second) = lease(&conn, Duration::from_secs(30)).await;
    assert!(second.epoch > first.epoch);
    let (em, metrics) = emitter(&url, &conn, AmqpOptions::default());
    em.resume(&second).await.unwrap();
    let got = drain(&ch, "q3").await;
    assert_eq!(got.len(), 1);
    assert_eq!(task_id(&got[0]), f.task_id, "the same task id");
    assert_eq!(metrics.amqp_republishes.get(), 1);
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 0);
    let last: Option<String> = r.hget("beatd:last_run", "e").unwrap();
    assert_eq!(last.as_deref(), Some("2000"));
    // Planned again by the new leader (with a new id): recorded, so not sent twice.
    assert_eq!(
        em.emit(&second, &[fire("e", 2_000, "q3")]).await.unwrap(),
        [EmitOutcome::AlreadySent]
    );
    assert!(drain(&ch, "q3").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error_counted_and_kept_until_confirmed() {
    let url = vhost();
    let (server, conn) = redis().await;
    let (_l, lease) = lease(&conn, Duration::from_secs(30)).await;
    let (em, metrics) = emitter(&url, &conn, AmqpOptions::default());
    em.emit(&lease, &[fire("a", 1, "gone")]).await.unwrap();
    // Someone deletes the queue under the running beat.
    super::node()
        .ctl(&["delete_queue", "-p", url.vhost(), "gone"])
        .expect("delete_queue");
    let f = fire("b", 2, "gone");
    let err = em.emit(&lease, std::slice::from_ref(&f)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(
        beatd::error_chain(&err).contains("unroutable"),
        "{}",
        beatd::error_chain(&err)
    );
    assert_eq!(metrics.amqp_returns.get(), 1);
    let mut r = raw(&server);
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 1, "the fire is kept, not lost");
    // The replan's resume declares the queue again and delivers it, same id.
    em.resume(&lease).await.unwrap();
    let (_c, ch) = channel(&url).await;
    let got = drain(&ch, "gone").await;
    assert_eq!(got.len(), 1);
    assert_eq!(task_id(&got[0]), f.task_id);
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_hashes_are_small_listpacks_a_round_goes_in_parts_each_fire_once() {
    let url = vhost();
    let (server, conn) = redis().await;
    let (_l, lease) = lease(&conn, Duration::from_secs(30)).await;
    let (em, metrics) = emitter(&url, &conn, AmqpOptions::default());
    // A fresh namespace: the last runs are a listpack, so the intents and the sent marks of
    // one round of 400 take several script calls; every fire still goes exactly once.
    let fires: Vec<Fire> = (0..400)
        .map(|i| fire(&format!("e{i:03}"), 1_000, "q1"))
        .collect();
    let mut r = raw(&server);
    let calls = |r: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(r).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    // Both scripts once, so that counting calls does not count a first NOSCRIPT.
    let warm = fire("warm", 500, "q1");
    em.emit(&lease, std::slice::from_ref(&warm)).await.unwrap();
    let before = calls(&mut r);
    let outcomes = em.emit(&lease, &fires).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == EmitOutcome::Sent));
    assert!(
        calls(&mut r) - before > 2,
        "one call for the intents and one for sent"
    );
    let (_c, ch) = channel(&url).await;
    let mut got: Vec<String> = drain(&ch, "q1").await.iter().map(task_id).collect();
    got.sort();
    let mut want: Vec<String> = fires.iter().map(|f| f.task_id.clone()).collect();
    want.push(warm.task_id.clone());
    want.sort();
    assert_eq!(got, want);
    let counts: std::collections::HashMap<String, String> = r.hgetall("beatd:run_count").unwrap();
    assert_eq!(counts.len(), 1 + 400);
    assert!(counts.values().all(|c| c == "1"), "{counts:?}");
    let intents: usize = r.hlen("beatd:amqp_intents").unwrap();
    assert_eq!(intents, 0);
    assert_eq!(metrics.amqp_publishes.get(), 1 + 400);
    // Again: all recorded, nothing published twice.
    assert!(em
        .emit(&lease, &fires)
        .await
        .unwrap()
        .iter()
        .all(|o| *o == EmitOutcome::AlreadySent));
    assert_eq!(metrics.amqp_publishes.get(), 1 + 400);
}
