//! RQ entries end to end: three `beatd beat` replicas enqueue RQ jobs that stock
//! `rq worker`s run (pickle and JSON serializers), the leader is killed with `kill -9`, the
//! next one paused past its TTL and resumed, and every fire time is executed exactly once,
//! with no gap; a raising function lands in RQ's
//! failed registry; `Job.fetch(id).return_value()` gives the function's result.

use crate::ha_util::{leader_pid, wait_leader, wait_until, Beat, BeatOpts, Schedules};
use crate::rq_wire::{rq_cli, rq_python};
use beatd::testkit::RedisServer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const TASKS: &str = r#"
from rq import get_current_job


def record(label, times=1):
    job = get_current_job()
    at = job.meta["beatd_scheduled_at"]
    job.connection.rpush("executed", at)
    return "%s x%d at %s" % (label, times, at)


def add(a, b, extra=0):
    return a + b + extra


def boom():
    raise RuntimeError("boom")
"#;

const SCHEDULE: &str = r#"
[defaults]
protocol = "rq"
catch_up = "all"
catch_up_window = "1m"

[[entry]]
name = "tick"
task = "rqbeat_tasks.record"
queue = "ticks"
every = "1s"
args = ["tick"]
kwargs = { times = 2 }
result_ttl = "1h"

[[entry]]
name = "sum"
task = "rqbeat_tasks.add"
queue = "sums"
every = "2s"
serializer = "json"
args = [2, 3]
kwargs = { extra = 4 }

[[entry]]
name = "fail"
task = "rqbeat_tasks.boom"
queue = "failing"
every = "3s"
failure_ttl = "1h"
"#;

/// What the worker and the registries say, read with RQ itself.
const REPORT: &str = r#"
import json, sys
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

r = redis.Redis.from_url(sys.argv[1])
out = {"executed": [x.decode() for x in r.lrange("executed", 0, -1)]}
ticks = FinishedJobRegistry("ticks", connection=r).get_job_ids()
out["tick_results"] = [Job.fetch(i, connection=r).return_value() for i in ticks[:3]]
sums = FinishedJobRegistry("sums", connection=r, serializer=JSONSerializer).get_job_ids()
jobs = [Job.fetch(i, connection=r, serializer=JSONSerializer) for i in sums]
out["sum_results"] = sorted({j.return_value() for j in jobs})
out["sum_meta"] = sorted({j.meta.get("beatd_entry") for j in jobs})
out["sum_count"] = len(jobs)
out["failed"] = len(FailedJobRegistry("failing", connection=r).get_job_ids())
out["left"] = {q: r.llen("rq:queue:" + q) for q in ("ticks", "sums", "failing")}
print(json.dumps(out))
"#;

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn llen(url: &str, key: &str) -> i64 {
    let mut c = crate::ha_util::redis(url);
    redis::cmd("LLEN").arg(key).query(&mut c).unwrap_or(-1)
}

#[test]
fn three_beats_feed_stock_rq_workers_exactly_once_through_kill_9_and_sigstop() {
    let python = rq_python();
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rqbeat_tasks.py"), TASKS).unwrap();
    let worker = |queue: &str, json: bool| {
        let mut cmd = Command::new(rq_cli());
        cmd.current_dir(dir.path())
            .env("PYTHONPATH", dir.path())
            .args(["worker", "--url", &url, "--name", queue, "--with-scheduler"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if json {
            cmd.args(["--serializer", "rq.serializers.JSONSerializer"]);
        }
        cmd.arg(queue);
        cmd.spawn().expect("rq worker")
    };
    let _workers = Workers(vec![
        worker("ticks", false),
        worker("failing", false),
        worker("sums", true),
    ]);
    let schedules = Schedules::new(SCHEDULE);
    let opts = BeatOpts {
        lock_ttl: Some("3s"),
        ..BeatOpts::default()
    };
    let mut beats: Vec<Beat> = (0..3)
        .map(|_| Beat::spawn(&url, &schedules, &opts))
        .collect();
    let pids: Vec<u32> = beats.iter().map(|b| b.pid).collect();
    let first = wait_leader(&url, &pids, WAIT);
    wait_until("a few ticks executed", WAIT, || llen(&url, "executed") >= 4);
    beats.iter_mut().find(|b| b.pid == first).unwrap().kill9();
    let others: Vec<u32> = pids.iter().copied().filter(|p| *p != first).collect();
    wait_until("a new leader", WAIT, || {
        leader_pid(&url).is_some_and(|p| others.contains(&p))
    });
    let after_kill = llen(&url, "executed");
    wait_until("ticks after the kill", WAIT, || {
        llen(&url, "executed") >= after_kill + 3
    });
    // The new leader paused past its TTL: the last replica takes over; the paused one,
    // resumed, is fenced and sends nothing stale.
    let second = leader_pid(&url).expect("a leader");
    let paused = beats.iter().find(|b| b.pid == second).unwrap();
    paused.signal("STOP");
    let last: Vec<u32> = others.iter().copied().filter(|p| *p != second).collect();
    wait_until("the third replica leads", WAIT, || {
        leader_pid(&url).is_some_and(|p| last.contains(&p))
    });
    paused.signal("CONT");
    let after_stop = llen(&url, "executed");
    wait_until("ticks after the pause", WAIT, || {
        llen(&url, "executed") >= after_stop + 3
    });
    for b in &mut beats {
        if b.running() {
            b.terminate(Duration::from_secs(15));
        }
    }
    wait_until("the workers drain the queues", WAIT, || {
        ["ticks", "sums", "failing"]
            .iter()
            .all(|q| llen(&url, &format!("rq:queue:{q}")) == 0)
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = Command::new(python)
        .args(["-c", REPORT, &url])
        .env("PYTHONPATH", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Every tick fire time executed once, one second apart, through the kill.
    let executed: Vec<String> = report["executed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for at in &executed {
        *counts.entry(at.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed twice: {twice:?}");
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        counts.keys().map(|t| t.parse().unwrap()).collect();
    assert!(times.len() >= 10, "{times:?}");
    for w in times.windows(2) {
        assert_eq!((w[1] - w[0]).num_milliseconds(), 1_000, "a gap: {times:?}");
    }
    assert_eq!(
        report["tick_results"][0]
            .as_str()
            .map(|s| s.starts_with("tick x2 at ")),
        Some(true),
        "{report}"
    );
    assert_eq!(report["sum_results"], serde_json::json!([9]), "{report}");
    assert_eq!(report["sum_meta"], serde_json::json!(["sum"]), "{report}");
    assert!(report["sum_count"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["failed"].as_u64().unwrap() >= 1, "{report}");
}
