//! Interim states (Celery's `update_state`, `task_track_started`) from Rust handlers, stored
//! in the real Redis result backend, and never over a final record.

use crate::util::*;
use beatd::protocol::{ResultRecord, StateRecord, TaskMessage};
use beatd::worker::{RedisResults, Registry, ResultSink, TaskOptions};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handler_update_state_then_success() {
    let release = Arc::new(Notify::new());
    let mut reg = Registry::new();
    let r = release.clone();
    reg.register("tasks.steps", move |req| {
        let r = r.clone();
        async move {
            req.update_state("PROGRESS", json!({"current": 1, "total": 2}))
                .unwrap();
            r.notified().await;
            Ok(json!("done"))
        }
    });
    let h = Harness::start(reg, opts()).await;
    let id = h.send(TaskMessage::new("tasks.steps")).await;
    let progress = h.wait_status(&id, "PROGRESS").await;
    assert_eq!(progress["result"], json!({"current": 1, "total": 2}));
    assert_eq!(progress["date_done"], serde_json::Value::Null);
    assert_eq!(progress["task_id"], json!(id));
    release.notify_one();
    let done = h.wait_status(&id, "SUCCESS").await;
    assert_eq!(done["result"], "done");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_started_stores_pid_and_node_name() {
    let release = Arc::new(Notify::new());
    let mut reg = Registry::new();
    let r = release.clone();
    let options = TaskOptions {
        track_started: true,
        ..TaskOptions::default()
    };
    reg.register_with("tasks.tracked", options, move |_req| {
        let r = r.clone();
        async move {
            r.notified().await;
            Ok(json!(1))
        }
    });
    let mut o = opts();
    o.node_name = "beatd@unit-test".into();
    let h = Harness::start(reg, o).await;
    let id = h.send(TaskMessage::new("tasks.tracked")).await;
    let started = h.wait_status(&id, "STARTED").await;
    assert_eq!(
        started["result"],
        json!({"pid": std::process::id(), "hostname": "beatd@unit-test"})
    );
    release.notify_one();
    h.wait_status(&id, "SUCCESS").await;
    h.stop().await;
}

/// An update racing the end of its task must not hide the result (Celery only guards
/// SUCCESS; every final state is guarded here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_is_never_stored_over_a_final_record() {
    let server = beatd::testkit::RedisServer::start().unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let sink = RedisResults::new(client.get_connection_manager().await.unwrap().into());
    let at = now();
    let exc = beatd::protocol::ExcInfo::new("ExecFailed", "x", "beatd");
    for (i, final_record) in [
        ResultRecord::success("t0", json!(1), at),
        ResultRecord::failure("t1", &exc, None, at),
        ResultRecord::revoked("t2", "revoked", at),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("t{i}");
        let progress = StateRecord {
            task_id: id.clone(),
            state: "PROGRESS".into(),
            meta: json!({"n": i}),
        };
        assert!(sink.store_state(&progress).await.unwrap(), "stored before");
        sink.store(&final_record).await.unwrap();
        assert!(!sink.store_state(&progress).await.unwrap(), "refused after");
        let mut c = connect(&server.url()).await;
        let raw: String = redis::cmd("GET")
            .arg(format!("celery-task-meta-{id}"))
            .query_async(&mut c)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["status"], final_record.state.as_str());
    }
}

/// An `http` task gets its own progress URL and token; what it POSTs there while the request
/// runs is stored as the task's state; a wrong token or a malformed state is refused, and the
/// URL stops working when the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_task_posts_progress_to_its_url() {
    use axum::routing::post;
    let release = Arc::new(Notify::new());
    let seen: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let (r, s) = (release.clone(), seen.clone());
    // The service the http task calls: reports progress, then waits for the test.
    let app = axum::Router::new().route(
        "/run",
        post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (r, s) = (r.clone(), s.clone());
            async move {
                let url = body["progress_url"].as_str().unwrap().to_owned();
                let token = body["progress_token"].as_str().unwrap().to_owned();
                let client = reqwest::Client::new();
                let send = |auth: String, state: serde_json::Value| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        client
                            .post(url)
                            .bearer_auth(auth)
                            .body(state.to_string())
                            .send()
                            .await
                            .unwrap()
                            .status()
                            .as_u16()
                    }
                };
                let progress = json!({"state": "PROGRESS", "meta": {"current": 1}});
                let codes = vec![
                    send("wrong".into(), progress.clone()).await,
                    send(token.clone(), json!({"state": "SUCCESS"})).await,
                    send(token.clone(), progress).await,
                ];
                s.lock()
                    .unwrap()
                    .push(json!({"codes": codes, "url": url, "token": token}));
                r.notified().await;
                "\"ok\""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = format!("http://{}/run", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut reg = Registry::new();
    reg.add_spec(
        "tasks.remote",
        &beatd::worker::TaskSpec::new(beatd::worker::TaskKind::Http {
            url: service,
            headers: std::collections::BTreeMap::new(),
            timeout: None,
        }),
    )
    .unwrap();
    let mut o = opts();
    o.progress_addr = Some("127.0.0.1:0".parse().unwrap());
    let h = Harness::start(reg, o).await;
    let id = h.send(TaskMessage::new("tasks.remote")).await;
    let state = h.wait_status(&id, "PROGRESS").await;
    assert_eq!(state["result"], json!({"current": 1}));
    // The service notes the answers it got right after the last one; wait for that note.
    let deadline = std::time::Instant::now() + WAIT;
    let posted = loop {
        if let Some(p) = seen.lock().unwrap().first().cloned() {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service never noted its posts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(posted["codes"], json!([401, 400, 204]), "{posted}");
    assert!(posted["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/tasks/{id}/state")));
    release.notify_one();
    assert_eq!(h.wait_status(&id, "SUCCESS").await["result"], "ok");
    // The run is over: its URL answers 404 and nothing is stored.
    let late = reqwest::Client::new()
        .post(posted["url"].as_str().unwrap())
        .bearer_auth(posted["token"].as_str().unwrap())
        .body(json!({"state": "PROGRESS"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 404);
    assert_eq!(h.try_result(&id).await.unwrap()["status"], "SUCCESS");
    h.stop().await;
}

/// A program that leaves a background child holding the progress fd (but not stdout or
/// stderr) finishes when the program does: the fd is not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_holding_the_progress_fd_does_not_hold_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let script = format!(
        "sleep 120 >/dev/null 2>&1 </dev/null & echo $! > {}; echo '\"done\"'",
        pidfile.display()
    );
    let mut reg = Registry::new();
    reg.add_spec(
        "tasks.bg",
        &beatd::worker::TaskSpec::new(beatd::worker::TaskKind::Exec {
            command: vec!["sh".into(), "-c".into(), script],
            env: std::collections::BTreeMap::new(),
            cwd: None,
        }),
    )
    .unwrap();
    let h = Harness::start(reg, opts()).await;
    let id = h.send(TaskMessage::new("tasks.bg")).await;
    let r = h.wait_status(&id, "SUCCESS").await;
    assert_eq!(r["result"], "done");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    h.stop().await;
}
