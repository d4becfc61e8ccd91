//! `beatd worker` on RabbitMQ against real Celery clients: Python `send_task` → beatd worker
//! → `AsyncResult(id).get()` through the Redis backend (values, and failures raised with the
//! task's stderr); poison messages stored as FAILURE where an id is known and acked, the
//! worker going on.

use super::celery::{python, Scene, WAIT};
use serde_json::{json, Value};

const SUM_SCRIPT: &str = r#"
import json, os, sys
d = json.load(sys.stdin)
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"]}) + "\n")
print(json.dumps({"sum": sum(d["args"]) * d["kwargs"].get("scale", 1), "id": os.environ["BEATD_TASK_ID"]}))
"#;

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn exec_config(s: &Scene, tasks: &[(&str, &str)]) {
    let mut toml = String::from("[worker]\nshutdown_grace = \"10s\"\n");
    for (task, script) in tasks {
        let path = s.path(&format!("{task}.py"));
        std::fs::write(&path, script).unwrap();
        toml.push_str(&format!(
            "\n[worker.tasks.{}]\nkind = \"exec\"\ncommand = [{}, {}]\nenv = {{ INTEROP_RECORD = {} }}\n",
            toml_str(task),
            toml_str(python().to_str().unwrap()),
            toml_str(path.to_str().unwrap()),
            toml_str(s.path("record.jsonl").to_str().unwrap()),
        ));
    }
    std::fs::write(s.path("beatd.toml"), toml).unwrap();
}

#[test]
fn python_send_task_over_rabbitmq_runs_on_beatd_worker() {
    let mut s = Scene::new();
    exec_config(
        &s,
        &[
            ("interop.sum", SUM_SCRIPT),
            (
                "interop.fail",
                "import sys\nsys.stderr.write('widget 42 is broken\\n')\nsys.exit(3)\n",
            ),
        ],
    );
    s.start_beatd_worker("beatd-worker");
    let out = s.client(
        "call",
        &json!({"task": "interop.sum", "args": [1, 2, 3], "kwargs": {"scale": 10},
                "timeout": WAIT.as_secs()}),
    );
    let id = out["id"].as_str().expect("an id");
    assert_eq!(
        out["value"],
        json!({"sum": 60, "id": id}),
        "{out}\n{}",
        s.logs()
    );
    assert_eq!(s.result(id).expect("stored")["status"], "SUCCESS");

    let out = s.client(
        "call",
        &json!({"task": "interop.fail", "args": [], "kwargs": {}, "timeout": WAIT.as_secs()}),
    );
    assert_eq!(out["raised"]["type"], "ExecFailed", "{out}\n{}", s.logs());
    let msg = out["raised"]["str"].as_str().unwrap();
    assert!(msg.contains("widget 42 is broken"), "{msg}");
    assert_eq!(out["state"], "FAILURE");
    let log = s.logs();
    assert!(log.contains("consuming from rabbitmq"), "{log}");
    assert!(
        !log.contains(":guest@"),
        "the password is never printed: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_failed_and_acked_and_the_worker_goes_on() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.sum", SUM_SCRIPT)]);
    s.start_beatd_worker("beatd-worker");
    let url = beatd::amqp::AmqpUrl::parse(&s.amqp).unwrap();
    let (c, ch) = super::channel(&url).await;
    let ch = beatd::amqp::declare_queue(&c, ch, &url, "celery", &Default::default())
        .await
        .unwrap();
    let headers = |pairs: Value| beatd::amqp::wire::table(pairs.as_object().unwrap());
    let props = |h: Value| {
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers(h))
    };
    let poison: Vec<(&str, lapin::BasicProperties, Vec<u8>)> = vec![
        (
            "bad-json",
            props(json!({"id": "p-bad-json", "task": "interop.sum"})),
            b"not json".to_vec(),
        ),
        (
            "no-id",
            props(json!({"task": "interop.sum"})),
            b"[[1], {}, {}]".to_vec(),
        ),
        (
            "unknown",
            props(json!({"id": "p-unknown", "task": "interop.nope"})),
            b"[[1], {}, {}]".to_vec(),
        ),
        (
            "pickle",
            props(json!({"id": "p-pickle", "task": "interop.sum"}))
                .with_content_type("application/x-python-serialize".into()),
            b"\x80\x04N.".to_vec(),
        ),
        (
            "huge",
            props(json!({"id": "p-huge", "task": "interop.sum"})),
            format!("[[\"{}\"], {{}}, {{}}]", "x".repeat(11 << 20)).into_bytes(),
        ),
        (
            "no-headers",
            lapin::BasicProperties::default().with_content_type("application/json".into()),
            b"[[1], {}, {}]".to_vec(),
        ),
    ];
    for (_, p, body) in &poison {
        ch.basic_publish(
            "".into(),
            "celery".into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            p.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // A good one after them still runs.
    let out = s.client(
        "call",
        &json!({"task": "interop.sum", "args": [4], "kwargs": {}, "timeout": WAIT.as_secs()}),
    );
    assert_eq!(out["value"]["sum"], 4, "{out}\n{}", s.logs());
    for id in ["p-bad-json", "p-unknown", "p-pickle", "p-huge"] {
        let r = s.wait_for(&format!("FAILURE of {id}"), || s.result(id));
        assert_eq!(r["status"], "FAILURE", "{id}: {r}");
    }
    // Every poison message was acked: the queue is empty and stays so (no redelivery loop).
    s.wait_for("the queue to be empty with nothing unacked", || {
        let out = super::node()
            .ctl(&[
                "list_queues",
                "-p",
                url.vhost(),
                "name",
                "messages",
                "--formatter",
                "json",
            ])
            .ok()?;
        let v: Vec<Value> = serde_json::from_str(&out).ok()?;
        v.iter().all(|q| q["messages"] == 0).then_some(())
    });
    let ran = s.records().len();
    assert_eq!(ran, 1, "only the good message ran: {:?}", s.records());
}

/// Holds its first run (a marker file says which run it is) until the worker running it is
/// killed.
const SLOW_ONCE: &str = r#"
import json, os, sys, time
json.load(sys.stdin)
marker = os.environ["INTEROP_RECORD"] + ".started"
first = not os.path.exists(marker)
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"], "first": first}) + "\n")
open(marker, "a").close()
if first:
    # Held until the worker running it is killed (then this exits too: no stray process).
    parent = os.getppid()
    deadline = time.time() + 600
    while os.getppid() == parent and time.time() < deadline:
        time.sleep(0.2)
    sys.exit(1)
print(json.dumps("done"))
"#;

#[test]
fn a_killed_worker_loses_nothing_and_a_restarted_rabbitmq_is_reconnected() {
    // A node of its own: this test restarts it.
    let mut own = beatd::testkit::RabbitServer::start().expect("rabbitmq-server");
    let mut s = Scene::on(&own);
    exec_config(
        &s,
        &[("interop.slow", SLOW_ONCE), ("interop.sum", SUM_SCRIPT)],
    );
    s.start_beatd_worker("worker-a");
    let sent = s.client(
        "send",
        &json!({"task": "interop.slow", "args": [], "kwargs": {}}),
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    s.wait_for("worker-a to start the slow task", || {
        s.records().iter().any(|r| r["first"] == true).then_some(())
    });
    s.kill9("worker-a");
    // Never acked: RabbitMQ gives it to the next consumer.
    s.start_beatd_worker("worker-b");
    let r = s.wait_for("the redelivered task's result", || {
        s.result(&id).filter(|r| r["status"] == "SUCCESS")
    });
    assert_eq!(r["result"], "done");
    let runs: Vec<Value> = s
        .records()
        .into_iter()
        .filter(|r| r["id"] == id.as_str())
        .collect();
    assert_eq!(runs.len(), 2, "started by a, run again by b: {runs:?}");

    // RabbitMQ restarts under the worker: it reconnects and consumes again.
    own.restart().expect("restart rabbitmq");
    s.wait_for("worker-b to reconnect", || {
        let log = s.log_of("worker-b");
        (log.matches("consuming from rabbitmq").count() >= 2).then_some(())
    });
    let out = s.client(
        "call",
        &json!({"task": "interop.sum", "args": [5, 6], "kwargs": {}, "timeout": WAIT.as_secs()}),
    );
    assert_eq!(out["value"]["sum"], 11, "{out}\n{}", s.logs());
    assert!(s.log_of("worker-b").contains("rabbitmq connection lost"));
}

const MARK_SCRIPT: &str = r#"
import json, os, sys
d = json.load(sys.stdin)
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"], "n": d["args"][0]}) + "\n")
print(json.dumps(d["args"][0]))
"#;

/// As pyapp's `interop.slow`: notes its start, and when `sleep_on` is "beatd" is held until
/// the worker running it is killed.
const SLOW_SCRIPT: &str = r#"
import json, os, sys, time
d = json.load(sys.stdin)
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"], "phase": "start"}) + "\n")
if d["args"][1] == "beatd":
    parent = os.getppid()
    deadline = time.time() + 600
    while os.getppid() == parent and time.time() < deadline:
        time.sleep(0.2)
    sys.exit(1)
print(json.dumps("beatd"))
"#;

fn celery_worker(s: &mut Scene, name: &str) {
    let mut w = s.command(&python());
    w.args([
        "-m",
        "celery",
        "-A",
        "pyapp",
        "worker",
        "--pool=solo",
        "-c",
        "1",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-l",
        "info",
        "-n",
        &format!("{name}-{}@%h", uuid::Uuid::new_v4().simple()),
        "-Q",
        "celery",
    ]);
    s.spawn(name, w);
}

#[test]
fn beatd_and_celery_workers_share_a_queue_each_message_once() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.mark", MARK_SCRIPT)]);
    s.start_beatd_worker("beatd-worker");
    celery_worker(&mut s, "celery-worker");
    s.wait_for("celery to consume", || {
        s.log_of("celery-worker").contains("ready.").then_some(())
    });
    let sent = s.client("send_many", &json!({"task": "interop.mark", "n": 30}));
    let ids: Vec<String> = sent["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    let records = s.wait_for("all 30 to run", || {
        let r = s.records();
        (r.len() >= 30).then_some(r)
    });
    let mut seen = std::collections::HashMap::new();
    for r in &records {
        *seen
            .entry(r["id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    for id in &ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} ran {:?} times\n{}",
            seen.get(id),
            s.logs()
        );
    }
    let by = |who: &str| records.iter().filter(|r| r["who"] == who).count();
    eprintln!(
        "shared queue: beatd ran {}, celery ran {}",
        by("beatd"),
        by("python")
    );
    assert!(
        by("beatd") >= 1 && by("python") >= 1,
        "both consumed: {records:?}"
    );
}

#[test]
fn each_worker_gets_the_message_of_the_other_killed_mid_task() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.slow", SLOW_SCRIPT)]);
    // Celery runs it and is killed: beatd's worker gets it from RabbitMQ and finishes it.
    celery_worker(&mut s, "celery-1");
    let a = s.client(
        "send",
        &json!({"task": "interop.slow", "args": [600, "python"]}),
    );
    let a = a["id"].as_str().unwrap().to_owned();
    let started = |s: &Scene, who: &str, id: &str| {
        s.records()
            .iter()
            .any(|r| r["who"] == who && r["id"] == id && r["phase"] == "start")
    };
    s.wait_for("celery to start it", || {
        started(&s, "python", &a).then_some(())
    });
    s.kill9("celery-1");
    s.start_beatd_worker("beatd-1");
    let r = s.wait_for("beatd to finish it", || {
        s.result(&a).filter(|r| r["status"] == "SUCCESS")
    });
    assert_eq!(r["result"], "beatd");
    // beatd runs one and is killed: a Celery worker gets it and finishes it.
    let b = s.client(
        "send",
        &json!({"task": "interop.slow", "args": [600, "beatd"]}),
    );
    let b = b["id"].as_str().unwrap().to_owned();
    s.wait_for("beatd to start it", || {
        started(&s, "beatd", &b).then_some(())
    });
    s.kill9("beatd-1");
    celery_worker(&mut s, "celery-2");
    let r = s.wait_for("celery to finish it", || {
        s.result(&b).filter(|r| r["status"] == "SUCCESS")
    });
    assert_eq!(r["result"], "python");
}

const NAP_SCRIPT: &str = r#"
import json, os, sys, time
json.load(sys.stdin)
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"], "phase": "start"}) + "\n")
time.sleep(3)
print(json.dumps("napped"))
"#;

/// The same task id delivered twice (the beat's same-id republish) to two beatd workers at
/// once, and once more after it finished: it runs once; every copy is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_delivered_three_times_runs_once() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.nap", NAP_SCRIPT)]);
    s.start_beatd_worker("beatd-a");
    s.start_beatd_worker("beatd-b");
    s.wait_for("both workers to consume", || {
        (s.log_of("beatd-a").contains("consuming from rabbitmq")
            && s.log_of("beatd-b").contains("consuming from rabbitmq"))
        .then_some(())
    });
    let url = beatd::amqp::AmqpUrl::parse(&s.amqp).unwrap();
    let publisher =
        beatd::emit::AmqpPublisher::new(url.clone(), Default::default(), std::sync::Arc::default());
    let enc = beatd::protocol::TaskMessage::new("interop.nap")
        .encode(beatd::clock::Clock::now(&beatd::clock::SystemClock));
    let env = enc.payload.as_bytes();
    publisher.publish(&[env, env]).await.expect("publish twice");
    let r = s.wait_for("the result", || {
        s.result(&enc.id).filter(|r| r["status"] == "SUCCESS")
    });
    assert_eq!(r["result"], "napped");
    publisher
        .publish(&[env])
        .await
        .expect("publish a third time");
    s.wait_for("every copy acked", || {
        let out = super::node()
            .ctl(&[
                "list_queues",
                "-p",
                url.vhost(),
                "name",
                "messages",
                "--formatter",
                "json",
            ])
            .ok()?;
        let v: Vec<Value> = serde_json::from_str(&out).ok()?;
        v.iter().all(|q| q["messages"] == 0).then_some(())
    });
    let starts = s
        .records()
        .iter()
        .filter(|r| r["id"] == enc.id.as_str())
        .count();
    assert_eq!(starts, 1, "ran once: {:?}\n{}", s.records(), s.logs());
}
