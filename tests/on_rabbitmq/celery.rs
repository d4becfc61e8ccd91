//! Real Celery 5.x on the node: `beatd beat` in the FastAPI layout (RabbitMQ broker and Redis
//! result backend from `CELERY_BROKER_URL` / `CELERY_RESULT_BACKEND`, no flag) feeding a stock
//! `celery worker` (tests/interop/pyapp.py), every fire run once with its args and kwargs.
//!
//! Python comes from `BEATD_TEST_PYTHON` (set by scripts/test.sh), else `.venv-celery`.
//! Every wait has a deadline and fails with the processes' logs.

use super::node;
use beatd::testkit::RedisServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const WAIT: Duration = Duration::from_secs(90);

pub(crate) fn python() -> PathBuf {
    let p = std::env::var_os("BEATD_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-celery/bin/python"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "these tests need Python with celery: set BEATD_TEST_PYTHON or run scripts/test.sh \
         (looked for {})",
        p.display()
    );
    p
}

pub(crate) struct Proc(pub(crate) Child, pub(crate) PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct Scene {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) redis: RedisServer,
    pub(crate) amqp: String,
    pub(crate) procs: Vec<(String, Proc)>,
}

impl Scene {
    pub(crate) fn new() -> Self {
        Self::on(node())
    }

    /// A scene on a vhost of `server` (a node of its own, for a test that restarts it).
    pub(crate) fn on(server: &beatd::testkit::RabbitServer) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            redis: RedisServer::start().expect("redis-server"),
            amqp: server
                .vhost(&format!("c-{}", uuid::Uuid::new_v4().simple()))
                .unwrap(),
            procs: Vec::new(),
        }
    }

    /// `kill -9` the named process.
    pub(crate) fn kill9(&mut self, name: &str) {
        let (_, p) = self
            .procs
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let _ = p.0.kill();
        let _ = p.0.wait();
    }

    /// The named process's log.
    pub(crate) fn log_of(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| std::fs::read_to_string(&p.1).unwrap_or_default())
            .unwrap_or_default()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .current_dir(self.dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("LC_ALL", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env(
                "PYTHONPATH",
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop"),
            )
            .env("INTEROP_REDIS_URL", self.redis.url())
            .env("INTEROP_BROKER_URL", &self.amqp)
            .env("INTEROP_RECORD", self.path("record.jsonl"))
            .env("BEATD_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    pub(crate) fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = self.path(&format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push((name.into(), Proc(child, log)));
    }

    pub(crate) fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|(name, p)| {
                let t = std::fs::read_to_string(&p.1).unwrap_or_default();
                let start = t.len().saturating_sub(4000);
                format!("--- {name}\n{}", &t[start..])
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("record line"))
            .collect()
    }

    pub(crate) fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Scene {
    /// `python pyapp.py COMMAND SPEC` (send_task, AsyncResult.get) on the scene's broker.
    pub(crate) fn client(&self, command: &str, spec: &Value) -> Value {
        let out = self
            .command(&python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pyapp.py"))
            .args([command, &spec.to_string()])
            .output()
            .expect("python client");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|_| {
            panic!(
                "client {command} failed: {}{}\n{}",
                text,
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            )
        })
    }

    /// `beatd worker` on RabbitMQ with `beatd.toml`, results in the scene's Redis.
    pub(crate) fn start_beatd_worker(&mut self, name: &str) {
        let mut cmd = self.command(Path::new(env!("CARGO_BIN_EXE_beatd")));
        cmd.args([
            "--config",
            "beatd.toml",
            "worker",
            "--http-addr",
            "off",
            "--queues",
            "celery",
            "--concurrency",
            "2",
        ])
        .env("CELERY_BROKER_URL", &self.amqp)
        .env("CELERY_RESULT_BACKEND", self.redis.url());
        self.spawn(name, cmd);
    }

    /// The stored result of `id`, if any.
    pub(crate) fn result(&self, id: &str) -> Option<Value> {
        let mut c = redis::Client::open(self.redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("celery-task-meta-{id}"))
            .query(&mut c)
            .unwrap();
        raw.map(|r| serde_json::from_str(&r).unwrap())
    }
}

#[test]
fn beatd_beat_on_rabbitmq_feeds_a_celery_worker_with_no_flag() {
    let mut s = Scene::new();
    std::fs::create_dir_all(s.path("schedules")).unwrap();
    std::fs::write(
        s.path("schedules/amqp.toml"),
        r#"
[[entry]]
name = "plain-args"
task = "interop.record"
every = "1s"
args = [2, 3]
kwargs = { x = 1, label = "plain" }
expires = "1h"

[[entry]]
name = "priority-headers"
task = "interop.record"
every = "1s"
args = ["a", { nested = [1, 2.5, true] }]
kwargs = { text = "héllo ☃", none = [] }
priority = 7
headers = { team = "ops" }
"#,
    )
    .unwrap();
    // The FastAPI layout: the broker and the result backend from Celery's own variables.
    let mut beat = s.command(Path::new(env!("CARGO_BIN_EXE_beatd")));
    beat.args(["beat", "--schedules", "schedules", "--http-addr", "off"])
        .env("CELERY_BROKER_URL", &s.amqp)
        .env("CELERY_RESULT_BACKEND", s.redis.url());
    s.spawn("beatd-beat", beat);
    let mut worker = s.command(&python());
    worker.args([
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
        &format!("amqp-{}@%h", uuid::Uuid::new_v4().simple()),
        "-Q",
        "celery",
    ]);
    s.spawn("celery-worker", worker);

    let runs =
        |entry: &str, recs: &[Value]| recs.iter().filter(|r| r["beatd_entry"] == entry).count();
    let records = s.wait_for("three runs of each entry by the Python worker", || {
        let recs = s.records();
        (runs("plain-args", &recs) >= 3 && runs("priority-headers", &recs) >= 3).then_some(recs)
    });
    let log = std::fs::read_to_string(&s.procs[0].1 .1).unwrap();
    assert!(log.contains("tasks to rabbitmq"), "{log}");
    assert!(
        !log.contains(":guest@"),
        "the password is never printed: {log}"
    );

    let mut seen = std::collections::HashSet::new();
    for rec in &records {
        let entry = rec["beatd_entry"].as_str().expect("beatd_entry header");
        let (args, kwargs, priority, team) = match entry {
            "plain-args" => (
                json!([2, 3]),
                json!({"x": 1, "label": "plain"}),
                0,
                Value::Null,
            ),
            "priority-headers" => (
                json!(["a", {"nested": [1, 2.5, true]}]),
                json!({"text": "héllo ☃", "none": []}),
                7,
                json!("ops"),
            ),
            other => panic!("unexpected entry {other:?}"),
        };
        assert_eq!(rec["args"], args, "{rec}");
        assert_eq!(rec["kwargs"], kwargs, "{rec}");
        assert_eq!(rec["team"], team, "{rec}");
        assert_eq!(rec["celery_beat_task"], true, "{rec}");
        assert_eq!(rec["delivery_info"]["routing_key"], "celery", "{rec}");
        assert_eq!(rec["delivery_info"]["exchange"], "", "{rec}");
        assert_eq!(rec["delivery_info"]["priority"], priority, "{rec}");
        assert_eq!(rec["correlation_id"], rec["id"], "{rec}");
        assert_eq!(
            rec["expires"].is_null(),
            entry == "priority-headers",
            "{rec}"
        );
        let at = rec["beatd_scheduled_at"].as_str().expect("scheduled_at");
        assert!(
            seen.insert((entry.to_owned(), at.to_owned())),
            "{entry} ran twice for {at}"
        );
        assert!(
            seen.insert((rec["id"].as_str().unwrap().to_owned(), String::new())),
            "id reused"
        );
    }
}
