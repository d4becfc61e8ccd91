//! Operations, end to end with the real binary: `/healthz`, `/readyz` and `/metrics` of
//! `beat`, `worker` and `run`; systemd notifications over a real `NOTIFY_SOCKET`;
//! `systemd-analyze verify` of the units; schedule reloads by SIGHUP, by file change and by a
//! Kubernetes ConfigMap symlink swap; offline validation of the Kubernetes manifests; the
//! Procfile; JSON logs; and that no secret ever reaches any output.

use crate::ops_util::{
    beatd, bin, clean_env, fires, http_get, metric, port, redis_conn, tempdir, wait_http,
    wait_metric, wait_proc, write, Proc, PATIENCE,
};
use beatd::testkit::RedisServer;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::process::Command;

mod deploy;
mod http;
mod liveness;
mod logs;
mod reload;
mod systemd;

const EVERY_SECOND: &str = r#"
[[entry]]
name = "tick"
task = "t.ok"
every = "1s"
"#;

const TASKS: &str = r#"
[worker.tasks."t.ok"]
kind = "exec"
command = ["true"]

[worker.tasks."t.fail"]
kind = "exec"
command = ["false"]
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn redis() -> RedisServer {
    RedisServer::start().expect("start a private redis-server")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .to_utc()
}

/// Asserts that `entry`'s fires are exactly one interval apart: no duplicate (a spurious
/// fire) and no gap (a lost one).
fn assert_consecutive(all: &[(String, String)], entry: &str, every: chrono::Duration) {
    let times: Vec<DateTime<Utc>> = all
        .iter()
        .filter(|(e, _)| e == entry)
        .map(|(_, t)| at(t))
        .collect();
    assert!(times.len() >= 2, "{entry}: too few fires: {times:?}");
    for w in times.windows(2) {
        assert_eq!(
            w[1] - w[0],
            every,
            "{entry}: fires not one interval apart: {times:?}"
        );
    }
}

fn worker_config(dir: &Path) -> PathBuf {
    let release = dir.join("release");
    let block = format!(
        r#"
[worker.tasks."t.block"]
kind = "exec"
command = ["sh", "-c", "while [ ! -e '{}' ]; do sleep 0.05; done"]
"#,
        release.display()
    );
    write(dir, "beatd.toml", &format!("{TASKS}{block}"))
}

fn send(dir: &Path, url: &str, task: &str) {
    let out = beatd(dir)
        .args(["send", task, "--redis-url", url])
        .output()
        .expect("beatd send");
    assert!(out.status.success(), "{out:?}");
}

fn start_worker(server: &RedisServer, dir: &Path, http: u16) -> Proc {
    let mut cmd = beatd(dir);
    cmd.args(["worker", "--redis-url", &server.url(), "--concurrency", "2"])
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    Proc::spawn(cmd)
}

fn entries(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("[[entry]]\nname = \"{n}\"\ntask = \"t.ok\"\nevery = \"1s\"\n\n"))
        .collect()
}

fn start_beat(server: &RedisServer, dir: &Path, schedules: &Path, http: u16) -> Proc {
    let mut cmd = beatd(dir);
    cmd.args(["beat", "--redis-url", &server.url()])
        .arg("--schedules")
        .arg(schedules)
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    Proc::spawn(cmd)
}

fn count(conn: &mut redis::Connection, entry: &str) -> usize {
    fires(conn, "celery")
        .iter()
        .filter(|(e, _)| e == entry)
        .count()
}
