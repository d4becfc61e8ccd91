//! Delivery semantics against a real redis-server: kombu priority order, ETA held unacked,
//! expiry → REVOKED, graceful shutdown returning prefetched messages, immediate shutdown
//! leaving them to the visibility-timeout restore.

use crate::util::*;
use beatd::protocol::TaskMessage;
use beatd::worker::{Registry, TaskKind, TaskSpec};
use chrono::Duration as ChronoDuration;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn recorder(order: &Arc<Mutex<Vec<i64>>>) -> Registry {
    let mut reg = Registry::new();
    let order = order.clone();
    reg.register("tasks.record", move |req| {
        let order = order.clone();
        async move {
            order
                .lock()
                .unwrap()
                .push(req.args[0].as_i64().unwrap_or(-1));
            Ok(json!(null))
        }
    });
    reg
}

fn sleeper(secs: &str) -> Registry {
    let mut reg = Registry::new();
    let kind = TaskKind::Exec {
        command: vec!["sleep".into(), secs.into()],
        env: BTreeMap::new(),
        cwd: None,
    };
    reg.add_spec("tasks.sleep", &TaskSpec::new(kind)).unwrap();
    reg
}

/// Like [`sleeper`], and each run appends a line to `marks` when it starts.
fn marked_sleeper(secs: &str, marks: &std::path::Path) -> Registry {
    let mut reg = Registry::new();
    let script = format!("echo started >> '{}'; sleep {secs}", marks.display());
    let kind = TaskKind::Exec {
        command: vec!["sh".into(), "-c".into(), script],
        env: BTreeMap::new(),
        cwd: None,
    };
    reg.add_spec("tasks.sleep", &TaskSpec::new(kind)).unwrap();
    reg
}

fn started_runs(marks: &std::path::Path) -> usize {
    std::fs::read_to_string(marks).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_number_runs_first() {
    let server = beatd::testkit::RedisServer::start().unwrap();
    let mut conn = connect(&server.url()).await;
    // Celery's capture: sent 9,6,3,0,9,0 → executed 0,0,3,6,9,9.
    for p in [9u8, 6, 3, 0, 9, 0] {
        let enc = TaskMessage::new("tasks.record")
            .args(vec![json!(p)])
            .priority(Some(p))
            .encode(now());
        let _: () = redis::cmd("LPUSH")
            .arg(&enc.list_key)
            .arg(&enc.payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut o = opts();
    o.concurrency = 1;
    let h = Harness::start_on(server, recorder(&order), o).await;
    let deadline = Instant::now() + WAIT;
    while order.lock().unwrap().len() < 6 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 0, 3, 6, 9, 9]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_is_held_unacked_until_due() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let h = Harness::start(recorder(&order), opts()).await;
    let eta = now() + ChronoDuration::milliseconds(1500);
    let sent = Instant::now();
    let id = h
        .send(
            TaskMessage::new("tasks.record")
                .args(vec![json!(1)])
                .eta(Some(eta)),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(h.try_result(&id).await.is_none(), "ran before its eta");
    assert_eq!(h.unacked_count().await, (1, 1));
    assert!(h.list("celery").await.is_empty());
    assert_eq!(h.result(&id).await["status"], "SUCCESS");
    assert!(sent.elapsed() >= Duration::from_millis(1400));
    h.assert_no_unacked().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_revoked_not_run() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let h = Harness::start(recorder(&order), opts()).await;
    let expires = now() - ChronoDuration::seconds(1);
    let id = h
        .send(
            TaskMessage::new("tasks.record")
                .args(vec![json!(1)])
                .expires(Some(expires)),
        )
        .await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "REVOKED");
    assert_eq!(
        r["result"],
        json!({"exc_type": "TaskRevokedError", "exc_message": ["expired"],
               "exc_module": "celery.exceptions"})
    );
    assert!(order.lock().unwrap().is_empty());
    h.assert_no_unacked().await;
    h.stop().await;
}

/// SIGTERM-like stop: the running task finishes, nothing new starts, prefetched messages go
/// back to the queue in their order, nothing stays unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_returns_prefetched_messages() {
    let mut o = opts();
    o.concurrency = 1;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("started");
    let h = Harness::start(marked_sleeper("1", &marks), o).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.send(TaskMessage::new("tasks.sleep")).await);
    }
    // Stop once all three are taken and the first one is running (on a loaded machine the
    // first start can come well after the prefetch).
    let deadline = Instant::now() + WAIT;
    while h.unacked_count().await != (3, 3) || started_runs(&marks) == 0 {
        assert!(
            Instant::now() < deadline,
            "not prefetched and started: {:?}, {} started",
            h.unacked_count().await,
            started_runs(&marks)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown.graceful.cancel();
    // Returned while the running one is still going (it sleeps a second).
    let deadline = Instant::now() + WAIT;
    let back = loop {
        let back = h.list("celery").await;
        if back.len() >= 2 || Instant::now() > deadline {
            break back;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        back.len(),
        2,
        "unstarted messages returned before the running one ended"
    );
    assert_eq!(
        h.unacked_count().await,
        (1, 1),
        "the running one stays unacked"
    );
    let Harness { server, handle, .. } = h;
    tokio::time::timeout(WAIT, handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let h = Harness {
        server,
        shutdown: Default::default(),
        handle: tokio::spawn(async { Ok(()) }),
    };
    assert_eq!(h.result(&ids[0]).await["status"], "SUCCESS");
    assert!(h.try_result(&ids[1]).await.is_none() && h.try_result(&ids[2]).await.is_none());
    assert_eq!(started_runs(&marks), 1, "nothing started after the stop");
    assert_eq!(h.unacked_count().await, (0, 0));
    // The returned messages keep their order: the next one taken is the second sent.
    assert!(back[1].contains(&ids[1]) && back[0].contains(&ids[2]));
}

/// Second-SIGINT-like stop: returns at once, leaves the messages unacked; a later worker
/// restores and runs every one of them after the visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_shutdown_leaves_messages_for_restore() {
    let mut o = opts();
    o.concurrency = 1;
    let h = Harness::start(sleeper("5"), o.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.send(TaskMessage::new("tasks.sleep")).await);
    }
    let deadline = Instant::now() + WAIT;
    while h.unacked_count().await != (3, 3) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = Instant::now();
    h.shutdown.immediate.cancel();
    let Harness { server, handle, .. } = h;
    tokio::time::timeout(WAIT, handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "immediate stop waited for the task"
    );
    let mut o2 = o;
    o2.concurrency = 3;
    o2.visibility_timeout = Duration::from_secs(1);
    let h = Harness::start_on(server, sleeper("0"), o2).await;
    for id in &ids {
        assert_eq!(h.result(id).await["status"], "SUCCESS");
    }
    h.assert_no_unacked().await;
    h.stop().await;
}

/// Redis going away and coming back: the worker neither exits nor stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut h = Harness::start(recorder(&order), opts()).await;
    let id = h
        .send(TaskMessage::new("tasks.record").args(vec![json!(1)]))
        .await;
    assert_eq!(h.result(&id).await["status"], "SUCCESS");
    h.server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !h.handle.is_finished(),
        "worker exited while Redis was down"
    );
    h.server.restart().unwrap();
    let id = h
        .send(TaskMessage::new("tasks.record").args(vec![json!(2)]))
        .await;
    assert_eq!(h.result(&id).await["status"], "SUCCESS");
    h.stop().await;
}

/// A task running longer than the visibility timeout is not restored (and run twice) while
/// its worker is alive: the worker keeps its own unacked scores fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_task_outlives_visibility_timeout_without_duplicate() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut reg = Registry::new();
    let r = runs.clone();
    reg.register("tasks.long", move |req| {
        let r = r.clone();
        async move {
            r.lock().unwrap().push(req.redelivered);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok(json!(null))
        }
    });
    let mut o = opts();
    o.visibility_timeout = Duration::from_secs(1);
    let h = Harness::start(reg, o).await;
    let id = h.send(TaskMessage::new("tasks.long")).await;
    assert_eq!(h.result(&id).await["status"], "SUCCESS");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *runs.lock().unwrap(),
        vec![false],
        "ran again after a restore"
    );
    h.assert_no_unacked().await;
    h.stop().await;
}
