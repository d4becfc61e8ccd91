//! Task kinds beyond exec: `http` against a small local HTTP server, and the embedded
//! in-process pipeline (`run_local`) with results kept in memory.

use crate::util::*;
use beatd::clock::SystemClock;
use beatd::protocol::{beatd_headers, TaskMessage, TaskState};
use beatd::worker::{
    run_local, HeaderValue, MemoryResults, Pipeline, Registry, Shutdown, TaskError, TaskKind,
    TaskOptions, TaskSpec,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests seen by the test server: (path, headers text, body).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// Serves `/ok` (200, echoes the body), `/missing` (404), `/flaky` (500 once, then 200).
async fn http_server() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let flaky = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let head = text[..i].to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break (head, text[i + 4..i + 4 + len].to_string());
                        }
                    }
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock()
                    .unwrap()
                    .push((path.clone(), head.to_ascii_lowercase(), body.clone()));
                let (status, reply) = match path.as_str() {
                    "/ok" => ("200 OK", format!("{{\"echo\": {body}}}")),
                    "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) == 0 => {
                        ("500 Internal Server Error", "try later".to_string())
                    }
                    "/flaky" => ("200 OK", "plain text".to_string()),
                    _ => ("404 Not Found", "no such thing".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (base, seen)
}

fn http(url: String, retries: u32) -> TaskSpec {
    let mut headers = BTreeMap::new();
    headers.insert(
        "X-Token".to_string(),
        HeaderValue::Env("BEATD_TEST_TOKEN".into()),
    );
    headers.insert("X-Plain".to_string(), HeaderValue::Literal("v".into()));
    let mut spec = TaskSpec::new(TaskKind::Http {
        url,
        headers,
        timeout: Some(Duration::from_secs(5)),
    });
    spec.max_retries = retries;
    spec.retry_backoff = Duration::from_millis(100);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_task_success_failure_and_retry() {
    std::env::set_var("BEATD_TEST_TOKEN", "s3cret");
    let (base, seen) = http_server().await;
    let mut reg = Registry::new();
    reg.add_spec("hooks.ok", &http(format!("{base}/ok"), 0))
        .unwrap();
    reg.add_spec("hooks.missing", &http(format!("{base}/missing"), 3))
        .unwrap();
    reg.add_spec("hooks.flaky", &http(format!("{base}/flaky"), 2))
        .unwrap();
    let h = Harness::start(reg, opts()).await;

    let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
        .unwrap()
        .to_utc();
    let msg = TaskMessage::new("hooks.ok")
        .args(vec![json!(1)])
        .headers(beatd_headers("nightly", at, 3));
    let id = h.send(msg).await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "SUCCESS", "{r}");
    assert_eq!(
        r["result"]["echo"],
        json!({"id": id, "task": "hooks.ok", "args": [1], "kwargs": {},
               "scheduled_at": "2026-11-23T10:00:00.000Z"})
    );
    let (_, head, _) = seen.lock().unwrap()[0].clone();
    assert!(head.contains("x-token: s3cret") && head.contains("content-type: application/json"));
    assert!(head.contains("x-plain: v"));
    // A rotated secret applies on the next request, without a restart.
    std::env::set_var("BEATD_TEST_TOKEN", "rotated");

    // 4xx: FAILURE at once, not retried despite max_retries.
    let id = h.send(TaskMessage::new("hooks.missing")).await;
    let r = h.result(&id).await;
    assert_eq!(r["status"], "FAILURE");
    assert_eq!(r["result"]["exc_type"], "HttpError");
    assert!(r["result"]["exc_message"][0]
        .as_str()
        .unwrap()
        .contains("404"));
    assert!(seen.lock().unwrap()[1].1.contains("x-token: rotated"));

    // 5xx: RETRY, then SUCCESS on the new message (same id).
    let id = h.send(TaskMessage::new("hooks.flaky")).await;
    assert_eq!(h.wait_status(&id, "SUCCESS").await["result"], "plain text");
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/missing").count(), 1);
    assert_eq!(paths.iter().filter(|p| *p == "/flaky").count(), 2);
    h.assert_no_unacked().await;
    h.stop().await;
}

#[test]
fn http_header_from_missing_env_fails_at_registration() {
    let mut headers = BTreeMap::new();
    headers.insert(
        "X-Token".to_string(),
        HeaderValue::Env("BEATD_TEST_SURELY_UNSET".into()),
    );
    let spec = TaskSpec::new(TaskKind::Http {
        url: "http://x".into(),
        headers,
        timeout: None,
    });
    let err = Registry::new().add_spec("t", &spec).unwrap_err();
    assert!(err.to_string().contains("BEATD_TEST_SURELY_UNSET"), "{err}");
    let empty = TaskSpec::new(TaskKind::Exec {
        command: vec![],
        env: BTreeMap::new(),
        cwd: None,
    });
    assert!(Registry::new().add_spec("t", &empty).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pipeline_runs_envelopes_from_a_channel() {
    let tries = Arc::new(AtomicUsize::new(0));
    let mut reg = Registry::new();
    reg.register("tasks.add", |req| async move {
        Ok(json!(req
            .args
            .iter()
            .filter_map(Value::as_i64)
            .sum::<i64>()))
    });
    let t = tries.clone();
    let opts = TaskOptions {
        max_retries: 1,
        retry_backoff: Duration::from_millis(50),
        ..TaskOptions::default()
    };
    reg.register_with("tasks.once_flaky", opts, move |_req| {
        let t = t.clone();
        async move {
            if t.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(TaskError::retryable("Flaky", "first try fails"))
            } else {
                Ok(json!("second try"))
            }
        }
    });
    let results = MemoryResults::default();
    let pipeline = Pipeline::new(
        Arc::new(reg),
        Arc::new(results.clone()),
        Arc::new(SystemClock),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = Shutdown::default();
    let runner = tokio::spawn(run_local(
        pipeline,
        rx,
        2,
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    let add = TaskMessage::new("tasks.add")
        .args(vec![json!(2), json!(3)])
        .encode(now());
    let flaky = TaskMessage::new("tasks.once_flaky").encode(now());
    tx.send(add.payload.into_bytes()).unwrap();
    tx.send(flaky.payload.into_bytes()).unwrap();
    tx.send(b"garbage".to_vec()).unwrap();
    let deadline = Instant::now() + WAIT;
    while results.records().len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", results.records());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recs = results.records();
    let of = |id: &str| {
        recs.iter()
            .filter(|r| r.task_id == id)
            .map(|r| r.state)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&add.id), vec![TaskState::Success]);
    assert_eq!(of(&flaky.id), vec![TaskState::Retry, TaskState::Success]);
    shutdown.graceful.cancel();
    tokio::time::timeout(WAIT, runner).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome() {
    let mut reg = Registry::new();
    reg.register("tasks.ok", |_req| async move { Ok(json!(1)) });
    reg.register("tasks.bad", |_req| async move {
        Err(TaskError::fatal("Bad", "bad"))
    });
    let metrics = Arc::new(beatd::ops::metrics::Metrics::default());
    let server = beatd::testkit::RedisServer::start().unwrap();
    let shutdown = Shutdown::default();
    let run = tokio::spawn(
        beatd::worker::Worker {
            metrics: metrics.clone(),
            ..beatd::worker::Worker::new(
                opts(),
                reg,
                crate::util::beatd_conn(&server.url()),
                Arc::new(SystemClock),
                shutdown.clone(),
            )
        }
        .run(),
    );
    // (task, outcome, whether it ran) per handled message, from the daemon's metrics.
    let counts = || {
        let text = metrics.render();
        let ran = |task: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "beatd_worker_task_duration_seconds_count{{task=\"{task}\"}} "
                    ))
                })
                .map_or(0, |n| n.trim().parse::<u64>().unwrap())
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("beatd_worker_tasks_total{task=\"") else {
                continue;
            };
            let (task, rest) = rest.split_once("\",state=\"").unwrap();
            let (state, n) = rest.split_once("\"} ").unwrap();
            let task = if task == "<malformed>" { "" } else { task };
            for _ in 0..n.trim().parse::<u64>().unwrap() {
                let state: &'static str = Box::leak(state.to_string().into_boxed_str());
                // A message ran when its outcome is one a run produces (durations are
                // counted per task, checked below).
                out.push((
                    task.to_string(),
                    state,
                    matches!(state, "success" | "failure"),
                ));
            }
        }
        (out, ran("tasks.ok"), ran("tasks.bad"))
    };
    let h = Harness {
        server,
        shutdown,
        handle: run,
    };
    let expired = now() - chrono::Duration::seconds(1);
    for msg in [
        TaskMessage::new("tasks.ok"),
        TaskMessage::new("tasks.bad"),
        TaskMessage::new("tasks.unknown"),
        TaskMessage::new("tasks.ok").expires(Some(expired)),
    ] {
        let id = h.send(msg).await;
        h.result(&id).await;
    }
    h.push_raw("celery", b"garbage").await;
    let deadline = Instant::now() + WAIT;
    while counts().0.len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", counts().0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut got, ok_ran, bad_ran) = counts();
    got.sort();
    // tasks.ok ran once (the expired one did not), tasks.bad once.
    assert_eq!((ok_ran, bad_ran), (1, 1));
    let want = [
        ("", "rejected", false),
        ("tasks.bad", "failure", true),
        ("tasks.ok", "revoked", false),
        ("tasks.ok", "success", true),
        ("<unregistered>", "unregistered", false),
    ];
    let mut want: Vec<_> = want
        .iter()
        .map(|(t, o, r)| (t.to_string(), *o, *r))
        .collect();
    want.sort();
    assert_eq!(got, want);
    h.stop().await;
}
