//! The worker against a real, private redis-server (testkit): results, kombu bookkeeping,
//! restores, priorities, ETA, expiry, malformed input and shutdown.

use crate::util::*;
use beatd::protocol::{dumps, TaskMessage};
use beatd::worker::{Registry, TaskError, TaskKind, TaskSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn exec(cmd: &[&str]) -> TaskSpec {
    TaskSpec::new(TaskKind::Exec {
        command: cmd.iter().map(ToString::to_string).collect(),
        env: BTreeMap::new(),
        cwd: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_success_stores_stdout_json() {
    let mut reg = Registry::new();
    // Echo what the task got on stdin and in the environment: `sh` is the program itself.
    let script = r#"read -r input; printf '{"stdin": %s, "id": "%s", "args": %s}' "$input" "$BEATD_TASK_ID" "$BEATD_TASK_ARGS""#;
    reg.add_spec("tasks.echo", &exec(&["sh", "-c", script]))
        .unwrap();
    let h = Harness::start(reg, opts()).await;
    let id = h
        .send(TaskMessage::new("tasks.echo").args(vec![json!(2), json!("x")]))
        .await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "SUCCESS", "{r}");
    assert_eq!(
        r["result"]["stdin"],
        json!({"args": [2, "x"], "kwargs": {}})
    );
    assert_eq!(r["result"]["id"], json!(id));
    assert_eq!(r["result"]["args"], json!([2, "x"]));
    assert_eq!(r["children"], json!([]));
    assert_eq!(r["task_id"], json!(id));
    assert!(r["date_done"].as_str().unwrap().ends_with("+00:00"));
    h.assert_no_unacked().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failure_stores_stderr_tail() {
    let mut reg = Registry::new();
    reg.add_spec(
        "tasks.fail",
        &exec(&["sh", "-c", "echo started; echo 'it broke' >&2; exit 3"]),
    )
    .unwrap();
    reg.add_spec("tasks.plain", &exec(&["echo", "hello world"]))
        .unwrap();
    let h = Harness::start(reg, opts()).await;
    let id = h.send(TaskMessage::new("tasks.fail")).await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "FAILURE");
    assert_eq!(r["result"]["exc_type"], "ExecFailed");
    assert_eq!(r["result"]["exc_module"], "beatd");
    let msg = r["result"]["exc_message"][0].as_str().unwrap();
    assert!(
        msg.contains("status 3") && msg.contains("it broke"),
        "{msg}"
    );
    assert_eq!(r["traceback"], "it broke\n");
    let id = h.send(TaskMessage::new("tasks.plain")).await;
    assert_eq!(h.result(&id).await["result"], "hello world");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_kills_the_child_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let mut spec = exec(&["sh", "-c", &script]);
    spec.time_limit = Some(Duration::from_millis(500));
    let mut reg = Registry::new();
    reg.add_spec("tasks.slow", &spec).unwrap();
    let h = Harness::start(reg, opts()).await;
    let started = std::time::Instant::now();
    let id = h.send(TaskMessage::new("tasks.slow")).await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "FAILURE");
    assert_eq!(r["result"]["exc_type"], "TimeLimitExceeded");
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !gone() {
        assert!(
            std::time::Instant::now() < deadline,
            "grandchild {pid} survived the time limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_sends_new_message_then_fails() {
    let mut spec = exec(&["sh", "-c", "echo \"try $BEATD_TASK_RETRIES\" >&2; exit 1"]);
    spec.max_retries = 2;
    spec.retry_backoff = Duration::from_millis(100);
    let mut reg = Registry::new();
    reg.add_spec("tasks.flaky", &spec).unwrap();
    let h = Harness::start(reg, opts()).await;
    let id = h.send(TaskMessage::new("tasks.flaky")).await;
    let r = h.wait_status(&id, "FAILURE").await;
    assert!(r["traceback"].as_str().unwrap().contains("try 2"), "{r}");
    h.assert_no_unacked().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handler_and_unknown_task() {
    let mut reg = Registry::new();
    reg.register("tasks.add", |req| async move {
        let sum: i64 = req.args.iter().filter_map(Value::as_i64).sum();
        Ok(json!(sum))
    });
    reg.register("tasks.nope", |_req| async move {
        Err(TaskError::fatal("Nope", "no"))
    });
    let h = Harness::start(reg, opts()).await;
    let id = h
        .send(TaskMessage::new("tasks.add").args(vec![json!(2), json!(4)]))
        .await;
    assert_eq!(h.result(&id).await["result"], 6);
    let id = h.send(TaskMessage::new("tasks.does_not_exist")).await;
    let r = h.result(&id).await;
    assert_eq!(
        r["result"],
        json!({"exc_type": "NotRegistered", "exc_message": ["tasks.does_not_exist"],
               "exc_module": "celery.exceptions"})
    );
    let id = h.send(TaskMessage::new("tasks.nope")).await;
    assert_eq!(h.result(&id).await["result"]["exc_type"], "Nope");
    h.assert_no_unacked().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_bookkeeping_while_running() {
    let mut reg = Registry::new();
    reg.add_spec("tasks.sleep", &exec(&["sleep", "1"])).unwrap();
    let h = Harness::start(reg, opts()).await;
    let msg = TaskMessage::new("tasks.sleep");
    let tag = msg.delivery_tag.clone();
    let id = h.send(msg).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut conn = h.conn().await;
    let stored: String = redis::cmd("HGET")
        .arg("unacked")
        .arg(&tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(v[0]["headers"]["id"], json!(id));
    assert_eq!((v[1].clone(), v[2].clone()), (json!(""), json!("celery")));
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("unacked_index")
        .arg(&tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(score.unwrap() > 1.7e9);
    assert_eq!(h.result(&id).await["status"], "SUCCESS");
    h.assert_no_unacked().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_a_dead_workers_message_after_visibility_timeout() {
    let server = beatd::testkit::RedisServer::start().unwrap();
    let mut conn = connect(&server.url()).await;
    // What a worker killed with -9 leaves behind (celery-wire crash fixture shape).
    let msg = TaskMessage::new("tasks.add").args(vec![json!(1), json!(1)]);
    let tag = msg.delivery_tag.clone();
    let enc = msg.encode(now());
    let stored = dumps(&json!([
        serde_json::from_str::<Value>(&enc.payload).unwrap(),
        "",
        "celery"
    ]));
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("unacked")
        .arg(&tag)
        .arg(&stored)
        .cmd("ZADD")
        .arg("unacked_index")
        .arg(1_000_000.0)
        .arg(&tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register("tasks.add", |req| async move {
        Ok(json!({"redelivered": req.redelivered}))
    });
    let mut o = opts();
    o.visibility_timeout = Duration::from_secs(1);
    let h = Harness::start_on(server, reg, o).await;
    let r = h.result(&enc.id).await;
    assert_eq!(r["result"], json!({"redelivered": true}));
    h.assert_no_unacked().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_writes_kombu_bytes() {
    // The captured restored message, minus its redelivered marks, stored as unacked: our
    // restore must push back exactly what kombu pushed back.
    let want = fixture("restored_after_visibility_timeout.json");
    let mut env: Value = serde_json::from_str(&want).unwrap();
    env["headers"]
        .as_object_mut()
        .unwrap()
        .remove("redelivered");
    env["properties"]["delivery_info"]
        .as_object_mut()
        .unwrap()
        .remove("redelivered");
    let tag = env["properties"]["delivery_tag"]
        .as_str()
        .unwrap()
        .to_string();
    let server = beatd::testkit::RedisServer::start().unwrap();
    let mut conn = connect(&server.url()).await;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("unacked")
        .arg(&tag)
        .arg(dumps(&json!([env, "", "celery"])))
        .cmd("ZADD")
        .arg("unacked_index")
        .arg(1_000_000.0)
        .arg(&tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut o = opts();
    o.visibility_timeout = Duration::from_secs(1);
    o.queues = vec!["elsewhere".into()]; // restore runs whatever this worker consumes
    let h = Harness::start_on(server, Registry::new(), o).await;
    let got = h.wait_list("celery").await;
    assert_eq!(got, vec![want]);
    h.stop().await;
}

/// A message stored with a named exchange goes back through kombu's binding set; without a
/// binding (where kombu would drop it) it goes to the queue named by its routing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_routes_named_exchanges_through_bindings() {
    let server = beatd::testkit::RedisServer::start().unwrap();
    let mut conn = connect(&server.url()).await;
    let mut ids = Vec::new();
    for (exchange, rk) in [("celery", "to-bound"), ("nobinding", "fallback")] {
        let msg = TaskMessage::new("tasks.x")
            .exchange(exchange)
            .routing_key(rk);
        let tag = msg.delivery_tag.clone();
        let enc = msg.encode(now());
        let env: Value = serde_json::from_str(&enc.payload).unwrap();
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg("unacked")
            .arg(&tag)
            .arg(dumps(&json!([env, exchange, rk])))
            .cmd("ZADD")
            .arg("unacked_index")
            .arg(1_000_000.0)
            .arg(&tag)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(enc.id);
    }
    let _: () = redis::cmd("SADD")
        .arg("_kombu.binding.celery")
        .arg("to-bound\x06\x16\x06\x16bound-queue")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut o = opts();
    o.visibility_timeout = Duration::from_secs(1);
    o.queues = vec!["elsewhere".into()];
    let h = Harness::start_on(server, Registry::new(), o).await;
    let bound = h.wait_list("bound-queue").await;
    assert!(bound[0].contains(&ids[0]) && bound[0].contains("\"redelivered\": true"));
    let fallback = h.wait_list("fallback").await;
    assert!(fallback[0].contains(&ids[1]));
    h.assert_no_unacked().await;
    h.stop().await;
}
