//! `beatd send` and `beatd status` against a private redis-server and a running beat.

use crate::util::{beatd, output, project, signal, spawn_logged, texts, wait_exit, wait_for};
use beatd::testkit::RedisServer;
use serde_json::Value;
use std::time::Duration;

fn lrange(server: &RedisServer, key: &str) -> Vec<String> {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap()
}

#[test]
fn send_enqueues_one_celery_message_and_prints_its_id() {
    let server = RedisServer::start().unwrap();
    let dir = project(&[]);
    let out = output(beatd(dir.path()).args([
        "send",
        "tasks.add",
        "--args",
        "[2, 3]",
        "--kwargs",
        "{\"x\": 1}",
        "--queue",
        "reports",
        "--priority",
        "5",
        "--redis-url",
        &server.url(),
    ]));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let id = stdout.trim();
    // Priority 5 goes to kombu's priority sub-queue for step 3.
    let msgs = lrange(&server, "reports\x06\x163");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let env: Value = serde_json::from_str(&msgs[0]).unwrap();
    assert_eq!(env["headers"]["id"], id);
    assert_eq!(env["headers"]["task"], "tasks.add");
    assert_eq!(env["headers"]["argsrepr"], "[2, 3]");
    assert_eq!(env["headers"]["kwargsrepr"], "{'x': 1}");
    assert_eq!(env["properties"]["delivery_info"]["routing_key"], "reports");
    assert_eq!(env["properties"]["priority"], 5);
}

#[test]
fn send_rejects_bad_json_with_a_usage_error() {
    let dir = project(&[]);
    let out = output(beatd(dir.path()).args([
        "send",
        "t",
        "--args",
        "{not json",
        "--redis-url",
        "redis://127.0.0.1:1/0",
    ]));
    assert_eq!(out.status.code(), Some(2), "{:?}", texts(&out));
    assert!(texts(&out).1.contains("--args is not JSON"));
}

#[test]
fn status_shows_the_leader_and_last_and_next_runs() {
    let server = RedisServer::start().unwrap();
    let dir = project(&[(
        "schedules/s.toml",
        "[[entry]]\nname = \"tick\"\ntask = \"t\"\nevery = \"1s\"\n",
    )]);
    let mut beat = spawn_logged(
        beatd(dir.path()).args(["beat", "--http-addr", "off", "--redis-url", &server.url()]),
        &dir.path().join("beat.log"),
    );
    let status = || {
        let out = output(beatd(dir.path()).args([
            "status",
            "--format",
            "json",
            "--redis-url",
            &server.url(),
        ]));
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    assert!(
        wait_for(Duration::from_secs(20), || status()["entries"][0]["runs"]
            .as_u64()
            .is_some_and(|n| n >= 2)),
        "no runs recorded: {:?}",
        std::fs::read_to_string(dir.path().join("beat.log"))
    );
    let st = status();
    let holder = st["leader"]["holder"].as_str().unwrap();
    assert!(holder.contains(&format!(":{}:", beat.id())), "{holder}");
    assert!(st["leader"]["epoch"].as_u64().unwrap() >= 1);
    assert!(st["entries"][0]["last_run"]
        .as_str()
        .unwrap()
        .ends_with(".000Z"));
    assert!(st["entries"][0]["next_run"].is_string());
    signal(&beat, "TERM");
    assert!(wait_exit(&mut beat, Duration::from_secs(20)).success());
    // The lock was released on SIGTERM.
    assert!(status()["leader"]["holder"].is_null(), "{}", status());
}
