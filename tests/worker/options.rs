//! Per-task options and handler edge cases: ignore_result (task default and header), exec
//! env/cwd, a panicking Rust handler, and two workers sharing one queue.

use crate::util::*;
use beatd::protocol::TaskMessage;
use beatd::worker::{Registry, TaskKind, TaskOptions, TaskSpec};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_result_from_task_and_header() {
    let mut reg = Registry::new();
    let quiet = TaskOptions {
        ignore_result: true,
        ..TaskOptions::default()
    };
    reg.register_with("tasks.quiet", quiet, |_req| async move { Ok(json!(1)) });
    reg.register("tasks.loud", |_req| async move { Ok(json!(2)) });
    let h = Harness::start(reg, opts()).await;
    let quiet = h.send(TaskMessage::new("tasks.quiet")).await;
    // The message's own header wins over the task default, both ways.
    let quiet_but_asked = h
        .send(TaskMessage::new("tasks.quiet").ignore_result(Some(false)))
        .await;
    let loud_but_told = h
        .send(TaskMessage::new("tasks.loud").ignore_result(Some(true)))
        .await;
    let loud = h.send(TaskMessage::new("tasks.loud")).await;
    assert_eq!(h.result(&loud).await["result"], 2);
    assert_eq!(h.result(&quiet_but_asked).await["result"], 1);
    h.assert_no_unacked().await;
    assert!(h.try_result(&quiet).await.is_none());
    assert!(h.try_result(&loud_but_told).await.is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_string(), "hi".to_string());
    let kind = TaskKind::Exec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"$GREETING $BEATD_TASK_NAME $(pwd)\"".into(),
        ],
        env,
        cwd: Some(dir.path().to_path_buf()),
    };
    let mut reg = Registry::new();
    reg.add_spec("tasks.env", &TaskSpec::new(kind)).unwrap();
    let h = Harness::start(reg, opts()).await;
    let id = h.send(TaskMessage::new("tasks.env")).await;
    let want = format!(
        "hi tasks.env {}",
        dir.path().canonicalize().unwrap().display()
    );
    assert_eq!(h.result(&id).await["result"], json!(want));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_is_a_failure_not_a_crash() {
    let mut reg = Registry::new();
    reg.register("tasks.panic", |_req| async move {
        if true {
            panic!("handler bug");
        }
        Ok(Value::Null)
    });
    reg.register("tasks.ok", |_req| async move { Ok(json!("fine")) });
    let h = Harness::start(reg, opts()).await;
    let id = h.send(TaskMessage::new("tasks.panic")).await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "FAILURE");
    assert_eq!(r["result"]["exc_type"], "TaskPanicked");
    let id = h.send(TaskMessage::new("tasks.ok")).await;
    assert_eq!(h.result(&id).await["result"], "fine");
    h.assert_no_unacked().await;
    h.stop().await;
}

/// Two workers on one queue: every message runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_queue_without_loss_or_duplicates() {
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let registry = || {
        let mut reg = Registry::new();
        let runs = runs.clone();
        reg.register("tasks.count", move |req| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(req.id).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(Value::Null)
            }
        });
        reg
    };
    let a = Harness::start(registry(), opts()).await;
    let shutdown = beatd::worker::Shutdown::default();
    let b = tokio::spawn(beatd::worker::run(
        opts(),
        registry(),
        beatd_conn(&a.server.url()),
        Arc::new(beatd::clock::SystemClock),
        shutdown.clone(),
    ));
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            a.send(TaskMessage::new("tasks.count").args(vec![json!(i)]))
                .await,
        );
    }
    let deadline = Instant::now() + WAIT;
    while runs.lock().unwrap().len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "only {} ran",
            runs.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.assert_no_unacked().await;
    shutdown.graceful.cancel();
    b.await.unwrap().unwrap();
    a.stop().await;
    let runs = runs.lock().unwrap();
    assert!(
        ids.iter().all(|id| runs.get(id) == Some(&1)),
        "a message ran twice or never"
    );
}

/// Arguments too big for an environment variable still reach the program, on stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_big_arguments_go_on_stdin_only() {
    let kind = TaskKind::Exec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "wc -c; echo \"${BEATD_TASK_ARGS:-unset}\" >&2; exit 1".into(),
        ],
        env: BTreeMap::new(),
        cwd: None,
    };
    let mut reg = Registry::new();
    reg.add_spec("tasks.big", &TaskSpec::new(kind)).unwrap();
    let h = Harness::start(reg, opts()).await;
    let big = "y".repeat(300_000);
    let id = h
        .send(TaskMessage::new("tasks.big").args(vec![json!(big)]))
        .await;
    let r = h.result(&id).await;
    assert_eq!(r["traceback"], "unset\n", "{r}");
    h.stop().await;
}
