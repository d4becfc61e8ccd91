//! beatd's RQ wire format (`protocol::RqJob`) against real python-rq 3: jobs encoded in
//! Rust and written the way `Queue.enqueue` writes them (SADD, HSET, EXPIRE, RPUSH) on a
//! private redis-server are read back by `Job.fetch` field for field, and a stock
//! `rq worker --burst` runs them: a return value for a good call, the failed registry for
//! a raising one. Both serializers, pickle (RQ's default) and JSON.
//!
//! Python is the interop tests' (`interop::python`, from `BEATD_TEST_PYTHON`) with `rq`
//! installed (`scripts/test.sh` does); without `BEATD_TEST_PYTHON` the tests add `rq` to the
//! `.venv-celery` they create. They never skip.

use crate::interop::python;
use beatd::protocol::{RqJob, RqSerializer, RQ_QUEUES_KEY};
use beatd::testkit::RedisServer;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Deadline for one Python process (import time on a loaded machine included).
const WAIT: Duration = Duration::from_secs(90);

/// The functions the worker runs, importable as `rqwire_tasks` from the test's temp dir.
const TASKS: &str = r#"
def count_words(url, n, flag=False, sep="/"):
    return {"url": url, "n": n, "flag": flag, "words": len(url.split(sep)) * n}


def boom(*args, **kwargs):
    raise ValueError("boom %r %r" % (args, kwargs))
"#;

/// Reads a job back with `Job.fetch`; prints JSON of what the worker will see.
const FETCH: &str = r#"
import json, sys
import redis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import get_call_string

url, job_id, ser = sys.argv[1:4]
serializer = JSONSerializer if ser == "json" else None
r = redis.Redis.from_url(url)
job = Job.fetch(job_id, connection=r, serializer=serializer)
print(json.dumps({
    "func_name": job.func_name,
    "instance": repr(job.instance),
    "args": list(job.args),
    "args_type": type(job.args).__name__,
    "kwargs": job.kwargs,
    "meta": job.meta,
    "timeout": job.timeout,
    "result_ttl": job.result_ttl,
    "ttl": job.ttl,
    "failure_ttl": job.failure_ttl,
    "origin": job.origin,
    "status": job.get_status().value,
    "description": job.description,
    "call_string": get_call_string(job.func_name, job.args, job.kwargs, max_length=75),
    "created_at": job.created_at.isoformat(),
    "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
    "key_ttl": r.ttl(job.key),
    "queue": [x.decode() for x in r.lrange("rq:queue:" + job.origin, 0, -1)],
    "queues": sorted(x.decode() for x in r.smembers("rq:queues")),
}))
"#;

/// After the worker: each job's status and return value, and the failed registry.
const RESULTS: &str = r#"
import json, sys
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

url, queue, ser = sys.argv[1:4]
ids = sys.argv[4:]
serializer = JSONSerializer if ser == "json" else None
r = redis.Redis.from_url(url)
q = Queue(queue, connection=r, serializer=serializer)
out = {"failed": FailedJobRegistry(queue=q).get_job_ids(), "left": q.job_ids, "jobs": {}}
for job_id in ids:
    job = Job.fetch(job_id, connection=r, serializer=serializer)
    out["jobs"][job_id] = {"status": job.get_status().value, "return_value": job.return_value()}
print(json.dumps(out))
"#;

fn imports_rq(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import rq, redis; assert rq.VERSION.split('.')[0] == '3'",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The interop Python, with `rq` 3 importable.
pub(crate) fn rq_python() -> &'static Path {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let py = python();
    let ok = CHECKED.get_or_init(|| {
        if imports_rq(py) {
            return Ok(());
        }
        if std::env::var_os("BEATD_TEST_PYTHON").is_some() {
            return Err(format!(
                "BEATD_TEST_PYTHON={} cannot `import rq` (3.x); run scripts/test.sh or \
                 pip install 'rq>=3,<4' into it",
                py.display()
            ));
        }
        eprintln!("rq_wire: installing rq 3 into {} (once)", py.display());
        let status = Command::new(py)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg("rq>=3,<4")
            .status();
        match status {
            Ok(s) if s.success() && imports_rq(py) => Ok(()),
            Ok(s) => Err(format!("pip install rq into {} failed: {s}", py.display())),
            Err(e) => Err(format!("cannot run pip of {}: {e}", py.display())),
        }
    });
    match ok {
        Ok(()) => py,
        Err(why) => panic!("rq_wire tests need python-rq 3: {why}"),
    }
}

/// The venv's `rq` command, beside its Python.
pub(crate) fn rq_cli() -> PathBuf {
    let py = rq_python();
    let cli = py.parent().expect("python is in a bin dir").join("rq");
    assert!(cli.exists(), "no `rq` command beside {}", py.display());
    cli
}

fn ser_name(s: RqSerializer) -> &'static str {
    match s {
        RqSerializer::Pickle => "pickle",
        RqSerializer::Json => "json",
    }
}

/// Runs `cmd` to its end within [`WAIT`], output to files (no pipe to fill); returns
/// (success, stdout, stderr).
fn run(mut cmd: Command, dir: &Path, what: &str) -> (bool, String, String) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish in {WAIT:?}; stderr: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// One test's private Redis and temp dir (with the tasks module).
struct Scene {
    dir: tempfile::TempDir,
    redis: RedisServer,
}

impl Scene {
    fn new() -> Self {
        let _ = rq_python();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("rqwire_tasks.py"), TASKS).expect("tasks module");
        Self {
            dir,
            redis: RedisServer::start().expect("redis-server"),
        }
    }

    fn url(&self) -> String {
        self.redis.url()
    }

    /// A clean environment, the tasks module importable.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PYTHONPATH", self.dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs a Python script; its stdout as JSON.
    fn python(&self, script: &str, args: &[&str]) -> Value {
        let mut cmd = self.command(rq_python());
        cmd.arg("-c").arg(script).args(args);
        let (ok, out, err) = run(cmd, self.dir.path(), "python");
        assert!(ok, "python failed: {err}\n{out}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not json ({e}): {out}"))
    }

    /// Writes `job` as `Queue.enqueue` does: SADD rq:queues, then HSET, EXPIRE (with a
    /// ttl) and RPUSH in one MULTI.
    fn enqueue(&self, job: &RqJob) {
        let now = beatd::clock::Clock::now(&beatd::clock::SystemClock);
        let enc = job.encode(now).expect("job encodes");
        let mut conn = redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("connect to the test's redis-server");
        let _: () = redis::cmd("SADD")
            .arg(RQ_QUEUES_KEY)
            .arg(&enc.queue_key)
            .query(&mut conn)
            .expect("SADD");
        let mut pipe = redis::pipe();
        pipe.atomic();
        let hset = pipe.cmd("HSET").arg(&enc.job_key);
        for (name, value) in &enc.fields {
            hset.arg(*name).arg(value.as_slice());
        }
        hset.ignore();
        if let Some(secs) = enc.expire {
            pipe.cmd("EXPIRE").arg(&enc.job_key).arg(secs).ignore();
        }
        pipe.cmd("RPUSH").arg(&enc.queue_key).arg(&enc.id).ignore();
        let _: () = pipe.query(&mut conn).expect("MULTI HSET/EXPIRE/RPUSH");
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// Arguments covering each pickle opcode family: small and big ints (both signs, past
/// i64), floats, every string length class and non-ASCII text, nesting, empty containers,
/// and a list past one 1000-item batch.
fn wide_args() -> Vec<Value> {
    vec![
        json!("http://x"),
        json!(3),
        json!(true),
        json!(false),
        json!(null),
        json!(1.5),
        json!(-0.1),
        json!(2.0),
        json!(255),
        json!(65536),
        json!(-1),
        json!(-2_147_483_649_i64),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(""),
        json!("é漢🎉 'quote' \"dq\"\n"),
        json!("y".repeat(300)),
        json!("z".repeat(70_000)),
        json!({"a": [1, {"b": null}], "c": {}, "d": []}),
        Value::Array((0..1001).map(Value::from).collect()),
        json!([[]]),
    ]
}

fn fetch_matches(serializer: RqSerializer) {
    let s = Scene::new();
    let mut job = RqJob::new(
        uuid::Uuid::new_v4().to_string(),
        "rqwire_tasks.count_words",
        "reports",
    );
    job.args = wide_args();
    job.kwargs = obj(json!({"flag": true, "n": 0, "nested": {"k": ["v", 1.25]}}));
    job.timeout = Some(Duration::from_secs(30));
    job.result_ttl = Some(600);
    job.ttl = Some(Duration::from_secs(120));
    job.failure_ttl = Some(Duration::from_secs(3600));
    job.meta = obj(json!({"beatd_scheduled_at": "2026-12-01T10:00:00.000Z", "beatd_epoch": 7}));
    job.serializer = serializer;
    s.enqueue(&job);

    let got = s.python(FETCH, &[&s.url(), &job.id, ser_name(serializer)]);
    let want_args_type = match serializer {
        RqSerializer::Pickle => "tuple",
        RqSerializer::Json => "list",
    };
    assert_eq!(got["func_name"], "rqwire_tasks.count_words");
    assert_eq!(got["instance"], "None");
    let args = got["args"].as_array().expect("args list");
    assert_eq!(args.len(), job.args.len(), "args");
    for (i, (got, want)) in args.iter().zip(&job.args).enumerate() {
        assert_eq!(got, want, "args[{i}]");
    }
    assert_eq!(got["args_type"], want_args_type);
    assert_eq!(got["kwargs"], Value::Object(job.kwargs.clone()), "kwargs");
    assert_eq!(got["meta"], Value::Object(job.meta.clone()), "meta");
    assert_eq!(got["timeout"], 30);
    assert_eq!(got["result_ttl"], 600);
    assert_eq!(got["ttl"], 120);
    assert_eq!(got["failure_ttl"], 3600);
    assert_eq!(got["origin"], "reports");
    assert_eq!(got["status"], "queued");
    // No description given: RQ's own call string, computed by RQ from what it read.
    assert_eq!(got["description"], got["call_string"]);
    assert_eq!(got["description"], Value::from(job.default_description()));
    assert!(got["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with("+00:00")));
    assert_eq!(got["created_at"], got["enqueued_at"]);
    let key_ttl = got["key_ttl"].as_i64().expect("ttl");
    assert!((1..=120).contains(&key_ttl), "job key expires in {key_ttl}");
    assert_eq!(got["queue"], json!([job.id]));
    assert_eq!(got["queues"], json!(["rq:queue:reports"]));
}

#[test]
fn pickle_jobs_fetch_in_python_as_written() {
    fetch_matches(RqSerializer::Pickle);
}

#[test]
fn json_jobs_fetch_in_python_as_written() {
    fetch_matches(RqSerializer::Json);
}

/// Unset options are left out, and RQ reads its defaults for them.
#[test]
fn minimal_job_reads_as_rq_defaults() {
    let s = Scene::new();
    let job = RqJob::new("plain_id-1", "rqwire_tasks.count_words", "default");
    s.enqueue(&job);
    let got = s.python(FETCH, &[&s.url(), &job.id, "pickle"]);
    assert_eq!(got["args"], json!([]));
    assert_eq!(got["args_type"], "tuple");
    assert_eq!(got["kwargs"], json!({}));
    assert_eq!(got["meta"], json!({}));
    for unset in ["timeout", "result_ttl", "ttl", "failure_ttl"] {
        assert_eq!(got[unset], Value::Null, "{unset}");
    }
    assert_eq!(got["key_ttl"], -1);
    assert_eq!(got["description"], "rqwire_tasks.count_words()");
}

fn worker_runs(serializer: RqSerializer) {
    let s = Scene::new();
    let new_job = |func: &str| {
        let mut job = RqJob::new(uuid::Uuid::new_v4().to_string(), func, "reports");
        job.serializer = serializer;
        job.result_ttl = Some(600);
        job.timeout = Some(Duration::from_secs(60));
        job
    };
    let mut good = new_job("rqwire_tasks.count_words");
    good.args = vec![json!("http://a/b/c"), json!(2)];
    good.kwargs = obj(json!({"flag": true, "sep": "/"}));
    good.meta = obj(json!({"beatd_entry": "words"}));
    let mut bad = new_job("rqwire_tasks.boom");
    bad.args = vec![json!(1)];
    bad.kwargs = obj(json!({"k": "v"}));
    bad.failure_ttl = Some(Duration::from_secs(3600));
    s.enqueue(&good);
    s.enqueue(&bad);

    let mut cmd = s.command(&rq_cli());
    cmd.args(["worker", "--burst", "--url", &s.url(), "--name"])
        .arg(format!("rqwire-{}", ser_name(serializer)));
    if serializer == RqSerializer::Json {
        cmd.args(["--serializer", serializer.python_path()]);
    }
    cmd.arg("reports");
    let (ok, out, err) = run(cmd, s.dir.path(), "rq worker --burst");
    assert!(ok, "rq worker failed: {err}\n{out}");
    // A worker that meets a job it cannot read logs this and quits, leaving the rest.
    assert!(!err.contains("unhandled exception"), "rq worker: {err}");

    let got = s.python(
        RESULTS,
        &[&s.url(), "reports", ser_name(serializer), &good.id, &bad.id],
    );
    let logs = || format!("worker stderr:\n{err}\nstdout:\n{out}");
    assert_eq!(
        got["jobs"][&good.id]["return_value"],
        json!({"url": "http://a/b/c", "n": 2, "flag": true, "words": 10}),
        "{}",
        logs()
    );
    assert_eq!(got["jobs"][&good.id]["status"], "finished", "{}", logs());
    assert_eq!(got["jobs"][&bad.id]["status"], "failed", "{}", logs());
    assert_eq!(got["failed"], json!([bad.id]), "{}", logs());
    assert_eq!(got["left"], json!([]), "{}", logs());
    assert!(
        err.contains("ValueError: boom (1,) {'k': 'v'}"),
        "{}",
        logs()
    );
}

#[test]
fn stock_rq_worker_runs_pickle_jobs() {
    worker_runs(RqSerializer::Pickle);
}

#[test]
fn stock_rq_worker_runs_json_jobs() {
    worker_runs(RqSerializer::Json);
}
