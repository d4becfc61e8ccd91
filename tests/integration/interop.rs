//! beatd against real Python Celery: the `beatd` binary, a stock `celery worker`, `celery
//! beat` and a Python client (`send_task`, `AsyncResult.get`), all as separate processes on a
//! private `redis-server` per test. The Celery side is `tests/interop/pyapp.py`.
//!
//! Python comes from `BEATD_TEST_PYTHON` (set by `scripts/test.sh`); without it the tests
//! create or reuse `.venv-celery` with `celery[redis]`. They never skip: no Python with
//! Celery is a failure that says why.
//!
//! Every wait has a deadline and fails with the logs of every process of the test; nothing
//! asserts how long something took.

use beatd::testkit::RedisServer;
use serde_json::{json, Value};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Deadline for anything a test waits on (process start-up included; Python is slow to
/// import on a loaded machine).
const WAIT: Duration = Duration::from_secs(60);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/interop`, where `pyapp.py` lives.
fn pyapp_dir() -> PathBuf {
    manifest_dir().join("tests/interop")
}

/// The Python interpreter with `celery` and `redis` importable (also `celery_import`'s).
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(find_python) {
        Ok(p) => p,
        Err(why) => panic!("interop tests need Python with celery[redis]: {why}"),
    }
}

fn imports_celery(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import celery, redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn find_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BEATD_TEST_PYTHON") {
        let p = PathBuf::from(p);
        return if imports_celery(&p) {
            Ok(p)
        } else {
            Err(format!(
                "BEATD_TEST_PYTHON={} cannot `import celery, redis`; point it at a Python \
                 with celery[redis] or unset it to let the tests create .venv-celery",
                p.display()
            ))
        };
    }
    let venv = manifest_dir().join(".venv-celery");
    let python = venv.join("bin/python");
    if imports_celery(&python) {
        return Ok(python);
    }
    eprintln!(
        "interop: creating {} with celery[redis] (once)",
        venv.display()
    );
    let status = |cmd: &mut Command, what: &str| -> Result<(), String> {
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{what} failed: {s}")),
            Err(e) => Err(format!("cannot run {what}: {e}")),
        }
    };
    status(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "`python3 -m venv .venv-celery` (on Debian: apt-get install python3-venv)",
    )?;
    status(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "celery[redis]>=5.4,<6",
        ]),
        "`pip install celery[redis]` (needs network access to PyPI)",
    )?;
    if imports_celery(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} still cannot import celery after installing it",
            python.display()
        ))
    }
}

/// JSON string syntax is valid TOML basic-string syntax for what the tests write.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// A long-running child process whose output goes to a log file; killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Stopped on purpose (see [`Scene::stop`]).
    stopped: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's world: a temp dir, a private redis-server and the processes started on it.
struct Scene {
    dir: tempfile::TempDir,
    redis: RedisServer,
    procs: Vec<Proc>,
}

impl Scene {
    fn new() -> Self {
        // Resolve Python first: a missing Celery fails before anything starts.
        let _ = python();
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            redis: RedisServer::start().expect("redis-server"),
            procs: Vec::new(),
        }
    }

    fn url(&self) -> String {
        self.redis.url()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// File the Python tasks and the exec scripts append one JSON line per run to.
    fn record_file(&self) -> PathBuf {
        self.path("record.jsonl")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("connect to the test's redis-server")
    }

    /// A command with a clean environment: no broker URL or `BEATD_*` setting of the
    /// caller's leaks in. Runs in the test's temp dir (so no stray `beatd.toml` is read).
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .current_dir(self.dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("LC_ALL", "C.UTF-8")
            .env("PYTHONIOENCODING", "utf-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONPATH", pyapp_dir())
            .env("INTEROP_REDIS_URL", self.url())
            .env("INTEROP_RECORD", self.record_file())
            .env("BEATD_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = self.path(&format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push(Proc {
            name: name.into(),
            child,
            log,
            stopped: false,
        });
    }

    fn beatd_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(Path::new(env!("CARGO_BIN_EXE_beatd")));
        cmd.args(args);
        cmd
    }

    /// `beatd beat` on the schedules in `schedules/`.
    fn start_beatd_beat(&mut self) {
        let cmd = self.beatd_cmd(&[
            "beat",
            "--schedules",
            "schedules",
            "--redis-url",
            &self.url(),
            "--http-addr",
            "off",
        ]);
        self.spawn("beatd-beat", cmd);
    }

    /// `beatd worker` with `beatd.toml` (written by the test) on `queues`.
    fn start_beatd_worker(&mut self, queues: &str) {
        self.start_beatd_worker_with(queues, &[]);
    }

    fn start_beatd_worker_with(&mut self, queues: &str, extra: &[&str]) {
        let mut cmd = self.beatd_cmd(&[
            "--config",
            "beatd.toml",
            "worker",
            "--redis-url",
            &self.url(),
            "--http-addr",
            "off",
            "--queues",
            queues,
            "--concurrency",
            "2",
        ]);
        cmd.args(extra);
        self.spawn("beatd-worker", cmd);
    }

    /// A stock `celery worker` (solo pool, no mingle/gossip/heartbeat) on `queues`.
    fn start_celery_worker(&mut self, queues: &str) {
        self.start_celery_worker_env(queues, &[]);
    }

    fn start_celery_worker_env(&mut self, queues: &str, env: &[(&str, &str)]) {
        let mut cmd = self.command(python());
        cmd.envs(env.iter().copied());
        cmd.args([
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
            &format!("interop-{}@%h", uuid::Uuid::new_v4().simple()),
            "-Q",
            queues,
        ]);
        self.spawn("celery-worker", cmd);
    }

    /// Waits until the named process has logged `needle`.
    fn wait_log(&self, name: &str, needle: &str) {
        let log = self
            .procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.log.clone())
            .unwrap_or_else(|| panic!("no process {name}"));
        self.wait_for(&format!("{name} to log {needle:?}"), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains(needle))
        });
    }

    fn log_of(&self, name: &str) -> String {
        let p = self
            .procs
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    /// The end of every process's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let start = text.char_indices().rev().nth(6000).map_or(0, |(i, _)| i);
            out.push_str(&format!(
                "\n----- {} ({}) -----\n{}",
                p.name,
                p.log.display(),
                &text[start..]
            ));
        }
        out
    }

    /// Polls `f` until it gives a value; fails after [`WAIT`], or at once when a process of
    /// the scene has exited, with every log.
    fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            for p in self.procs.iter().filter(|p| !p.stopped) {
                // Not reaped yet, so an exited child shows as a zombie ('Z').
                let alive = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id()))
                    .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| !r.starts_with('Z')));
                assert!(
                    alive,
                    "{} exited while waiting for {what}{}",
                    p.name,
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the exit (killed after [`WAIT`]).
    fn stop(&mut self, name: &str) {
        let Some(i) = self.procs.iter().position(|p| p.name == name) else {
            panic!("no process {name}")
        };
        let mut p = self.procs.remove(i);
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while p.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                panic!("{name} ignored SIGTERM for {WAIT:?}{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Keep its log in the failure output of later waits.
        p.stopped = true;
        self.procs.push(p);
    }

    /// `kill -9`: no shutdown of any kind.
    fn kill9(&mut self, name: &str) {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let _ = p.child.kill();
        let _ = p.child.wait();
        p.stopped = true;
    }

    /// Waits until every message in `unacked_index` was delivered more than `age` ago
    /// (Redis's clock), so a consumer with a shorter visibility timeout restores them.
    fn wait_unacked_older_than(&self, age: Duration) {
        self.wait_for(&format!("an unacked message older than {age:?}"), || {
            let mut c = self.conn();
            let (secs, micros): (f64, f64) = redis::cmd("TIME").query(&mut c).expect("TIME");
            let now = secs + micros / 1e6;
            let young: usize = redis::cmd("ZCOUNT")
                .arg("unacked_index")
                .arg(now - age.as_secs_f64())
                .arg("+inf")
                .query(&mut c)
                .expect("ZCOUNT");
            let all: usize = redis::cmd("ZCARD")
                .arg("unacked_index")
                .query(&mut c)
                .expect("ZCARD");
            (all > 0 && young == 0).then_some(())
        });
    }

    /// Waits until nothing is left unacknowledged.
    fn wait_no_unacked(&self) {
        self.wait_for("an empty unacked hash and index", || {
            let mut c = self.conn();
            let h: usize = redis::cmd("HLEN")
                .arg("unacked")
                .query(&mut c)
                .expect("HLEN");
            let z: usize = redis::cmd("ZCARD")
                .arg("unacked_index")
                .query(&mut c)
                .expect("ZCARD");
            (h == 0 && z == 0).then_some(())
        });
    }

    /// Runs `pyapp.py COMMAND SPEC` (a Celery client) and returns the JSON it prints.
    fn client(&self, command: &str, spec: &Value) -> Value {
        let mut cmd = self.command(python());
        cmd.arg(pyapp_dir().join("pyapp.py"))
            .arg(command)
            .arg(spec.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run_bounded(cmd, &format!("pyapp.py {command}"));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "pyapp.py {command} printed no JSON ({e}): {out:?}{}",
                self.logs()
            )
        })
    }

    /// The JSON lines in the record file so far.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record_file())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record {l:?}: {e}")))
            .collect()
    }

    /// The stored result of a task, if any.
    fn result(&self, id: &str) -> Option<Value> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("celery-task-meta-{id}"))
            .query(&mut self.conn())
            .expect("GET");
        raw.map(|s| serde_json::from_str(&s).expect("result is JSON"))
    }

    /// Waits for a stored result with `status`.
    fn wait_result(&self, id: &str, status: &str) -> Value {
        self.wait_for(&format!("a {status} result for {id}"), || {
            self.result(id).filter(|r| r["status"] == status)
        })
    }

    /// Seconds left before a task's result expires.
    fn result_ttl(&self, id: &str) -> i64 {
        redis::cmd("TTL")
            .arg(format!("celery-task-meta-{id}"))
            .query(&mut self.conn())
            .expect("TTL")
    }

    fn list(&self, key: &str) -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut self.conn())
            .expect("LRANGE")
    }
}

/// Runs a one-shot command to completion within [`WAIT`]; returns stdout, fails with stderr.
fn run_bounded(mut cmd: Command, what: &str) -> String {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
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
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    assert!(status.success(), "{what} failed ({status}): {err}\n{out}");
    out
}

/// The decoded body `[args, kwargs, embed]` of an envelope.
fn body_of(envelope: &Value) -> Value {
    use base64::Engine as _;
    let b64 = envelope["body"].as_str().expect("body is a string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("body is base64");
    serde_json::from_slice(&bytes).expect("body is JSON")
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

fn celery_fixture(name: &str) -> Value {
    let path = manifest_dir().join("tests/fixtures/celery").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .to_utc()
}

// ---------------------------------------------------------------------------------------

/// `beatd beat` → stock `celery worker`: args, kwargs, a custom queue with a priority and a
/// custom header reach the Python task as sent, and its results land in the Redis backend.
#[test]
fn beatd_beat_feeds_a_celery_worker() {
    let mut s = Scene::new();
    s.write(
        "schedules/interop.toml",
        r#"
[[entry]]
name = "plain-args"
task = "interop.record"
every = "1s"
args = [2, 3]
kwargs = { x = 1, label = "plain" }
expires = "1h"

[[entry]]
name = "fast-priority"
task = "interop.record"
every = "1s"
args = ["a", { nested = [1, 2.5, true] }]
kwargs = { text = "héllo ☃ \"quoted\"", none = [] }
queue = "interop-fast"
priority = 7
headers = { team = "ops" }
"#,
    );
    s.start_beatd_beat();

    // Before any worker runs: the messages sit in the lists kombu's producer would use.
    let fast_key = "interop-fast\x06\x166";
    let plain = s.wait_for("a message in `celery`", || s.list("celery").pop());
    let fast = s.wait_for("a message in interop-fast's priority-6 list", || {
        s.list(fast_key).pop()
    });
    let plain: Value = serde_json::from_str(&plain).expect("envelope is JSON");
    let fast: Value = serde_json::from_str(&fast).expect("envelope is JSON");

    // Field for field the shape celery beat writes (celery-wire/fixtures/beat_entry.json),
    // plus beatd's headers.
    let fixture = celery_fixture("beat_entry.json");
    assert_eq!(keys(&plain), keys(&fixture));
    let mut want_headers = keys(&fixture["headers"]);
    want_headers.extend(["beatd_entry", "beatd_epoch", "beatd_scheduled_at"].map(String::from));
    want_headers.sort();
    assert_eq!(keys(&plain["headers"]), want_headers);
    let mut with_team = want_headers.clone();
    with_team.push("team".into());
    with_team.sort();
    assert_eq!(keys(&fast["headers"]), with_team);
    // The fixture entry had `expires`; so has plain-args. fast-priority has none.
    assert_eq!(keys(&plain["properties"]), keys(&fixture["properties"]));
    let mut no_expiration = keys(&fixture["properties"]);
    no_expiration.retain(|k| k != "expiration");
    assert_eq!(keys(&fast["properties"]), no_expiration);
    for (env, queue, priority) in [(&plain, "celery", 0), (&fast, "interop-fast", 7)] {
        assert_eq!(env["content-type"], "application/json");
        assert_eq!(env["headers"]["celery_beat_task"], true);
        assert_eq!(env["headers"]["lang"], "py");
        assert_eq!(env["properties"]["body_encoding"], "base64");
        assert_eq!(
            env["properties"]["delivery_info"],
            json!({"exchange": "", "routing_key": queue})
        );
        assert_eq!(env["properties"]["priority"], priority);
        assert_eq!(body_of(env)[2], body_of(&fixture)[2], "embed");
    }
    assert_eq!(
        body_of(&plain),
        json!([[2, 3], {"x": 1, "label": "plain"}, body_of(&fixture)[2]])
    );
    // expires = scheduled fire time + 1h.
    let at = parse_time(plain["headers"]["beatd_scheduled_at"].as_str().unwrap());
    let expires = parse_time(plain["headers"]["expires"].as_str().unwrap());
    assert_eq!(expires - at, chrono::Duration::hours(1));

    s.start_celery_worker("celery,interop-fast");
    let runs =
        |entry: &str, recs: &[Value]| recs.iter().filter(|r| r["beatd_entry"] == entry).count();
    let records = s.wait_for("two runs of each entry by the Python worker", || {
        let recs = s.records();
        (runs("plain-args", &recs) >= 2 && runs("fast-priority", &recs) >= 2).then_some(recs)
    });
    s.stop("beatd-beat");

    let mut fire_times = std::collections::HashSet::new();
    for rec in &records {
        let entry = rec["beatd_entry"]
            .as_str()
            .expect("beatd_entry header seen");
        let (args, kwargs, queue, priority, team) = match entry {
            "plain-args" => (
                json!([2, 3]),
                json!({"x": 1, "label": "plain"}),
                "celery",
                0,
                Value::Null,
            ),
            "fast-priority" => (
                json!(["a", {"nested": [1, 2.5, true]}]),
                json!({"text": "héllo ☃ \"quoted\"", "none": []}),
                "interop-fast",
                7,
                json!("ops"),
            ),
            other => panic!("unexpected entry {other:?}"),
        };
        assert_eq!(rec["task"], "interop.record");
        assert_eq!(rec["args"], args, "{rec}");
        assert_eq!(rec["kwargs"], kwargs, "{rec}");
        assert_eq!(rec["celery_beat_task"], true, "{rec}");
        assert_eq!(rec["team"], team, "{rec}");
        assert_eq!(rec["delivery_info"]["routing_key"], queue, "{rec}");
        assert_eq!(rec["delivery_info"]["priority"], priority, "{rec}");
        assert_eq!(rec["root_id"], rec["id"]);
        assert_eq!(rec["correlation_id"], rec["id"]);
        assert!(rec["beatd_epoch"].as_u64().is_some_and(|e| e >= 1), "{rec}");
        let at = rec["beatd_scheduled_at"]
            .as_str()
            .expect("scheduled_at seen");
        // every = "1s" is anchored to the epoch: whole seconds, each sent once.
        assert_eq!(parse_time(at).timestamp_subsec_millis(), 0, "{at}");
        assert!(
            fire_times.insert((entry.to_string(), at.to_string())),
            "{entry} ran twice for {at}"
        );
        assert_eq!(rec["expires"].is_null(), entry == "fast-priority", "{rec}");

        let id = rec["id"].as_str().unwrap();
        let result = s.wait_result(id, "SUCCESS");
        assert_eq!(
            result["result"],
            json!({"args": args, "kwargs": kwargs, "entry": entry})
        );
        assert_eq!(result["task_id"], id);
    }
}

/// Catch-up of a fire time whose `expires` has passed: the stock worker discards it
/// (REVOKED, "expired") and never runs it, while a sibling caught up with a long `expires`
/// runs.
#[test]
fn expired_catch_up_is_revoked_by_celery() {
    let mut s = Scene::new();
    let now = beatd::clock::Clock::now(&beatd::clock::SystemClock);
    // Fire times are anchor + k·1h: the latest one is the anchor, 30 minutes ago, the next
    // is 30 minutes away. The last recorded run is the one before: one missed fire each.
    let anchor = chrono::DateTime::from_timestamp(now.timestamp() - 1800, 0).unwrap();
    let anchor_text = anchor.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let schedule = s.write(
        "schedules/catchup.toml",
        &format!(
            r#"
[defaults]
queue = "catchup"
catch_up = "latest"
catch_up_window = "2h"

[[entry]]
name = "stale"
task = "interop.record"
every = "1h"
anchor = {anchor_text:?}
args = ["stale"]
expires = "1m"

[[entry]]
name = "fresh"
task = "interop.record"
every = "1h"
anchor = {anchor_text:?}
args = ["fresh"]
expires = "2h"
"#
        ),
    );
    // Seed the state a previous beat would have left: last run one period before the anchor,
    // under the current schedule's fingerprint.
    let loaded = beatd::config::load_schedules(&[schedule], now).unwrap_or_else(|d| panic!("{d}"));
    let mut c = s.conn();
    for entry in loaded.entries.iter() {
        let last = (anchor - chrono::Duration::hours(1)).timestamp_millis();
        let _: () = redis::pipe()
            .hset("beatd:last_run", &*entry.name, last)
            .hset("beatd:run_count", &*entry.name, 1)
            .hset("beatd:fingerprint", &*entry.name, entry.fingerprint())
            .query(&mut c)
            .expect("seed state");
    }
    s.start_beatd_beat();
    let sent = s.wait_for("both catch-up messages", || {
        let l = s.list("catchup");
        (l.len() >= 2).then_some(l)
    });
    assert_eq!(sent.len(), 2, "one catch-up per entry: {sent:?}");
    let mut ids = std::collections::HashMap::new();
    for raw in &sent {
        let env: Value = serde_json::from_str(raw).unwrap();
        let h = &env["headers"];
        assert_eq!(
            parse_time(h["beatd_scheduled_at"].as_str().unwrap()),
            anchor,
            "catch-up of the missed fire time"
        );
        ids.insert(
            h["beatd_entry"].as_str().unwrap().to_string(),
            h["id"].as_str().unwrap().to_string(),
        );
    }
    let stale_env: Value = serde_json::from_str(
        sent.iter()
            .find(|m| m.contains(&ids["stale"]))
            .expect("stale message"),
    )
    .unwrap();
    assert_eq!(
        parse_time(stale_env["headers"]["expires"].as_str().unwrap()),
        anchor + chrono::Duration::minutes(1)
    );
    assert_eq!(stale_env["properties"]["expiration"], "0");

    s.start_celery_worker("catchup");
    // The solo pool runs one message at a time: once both have a result, both were handled.
    let fresh = s.wait_result(&ids["fresh"], "SUCCESS");
    assert_eq!(fresh["result"]["args"], json!(["fresh"]));
    let revoked = s.wait_result(&ids["stale"], "REVOKED");
    assert_eq!(
        revoked["result"],
        json!({"exc_type": "TaskRevokedError", "exc_message": ["expired"],
               "exc_module": "celery.exceptions"})
    );
    let log = s.log_of("celery-worker");
    assert!(
        log.contains(&format!(
            "Discarding revoked task: interop.record[{}]",
            ids["stale"]
        )),
        "{}",
        s.logs()
    );
    let ran: Vec<Value> = s.records().into_iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ran, vec![json!(ids["fresh"])], "only the fresh one ran");
}

/// `beatd.toml` with exec tasks run by the venv's Python (a known interpreter).
fn exec_config(s: &Scene, tasks: &[(&str, &str)]) {
    exec_config_with(s, tasks, "");
}

/// As [`exec_config`], with `options` (TOML lines) added to every task.
fn exec_config_with(s: &Scene, tasks: &[(&str, &str)], options: &str) {
    let mut toml = String::from("[worker]\nshutdown_grace = \"10s\"\n");
    for (task, script) in tasks {
        let path = s.write(&format!("{task}.py"), script);
        toml.push_str(&format!(
            "\n[worker.tasks.{}]\nkind = \"exec\"\ncommand = [{}, {}]\nenv = {{ INTEROP_RECORD = {} }}\n",
            toml_str(task),
            toml_str(python().to_str().unwrap()),
            toml_str(path.to_str().unwrap()),
            toml_str(s.record_file().to_str().unwrap()),
        ));
        toml.push_str(options);
    }
    s.write("beatd.toml", &toml);
}

const SUM_SCRIPT: &str = r#"
import json, os, sys, time
d = json.load(sys.stdin)
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"], "time": time.time(),
                        "args": d["args"], "kwargs": d["kwargs"]}) + "\n")
print(json.dumps({"sum": sum(d["args"]) * d["kwargs"].get("scale", 1),
                  "tag": d["kwargs"].get("tag"), "id": os.environ["BEATD_TASK_ID"]}))
"#;

/// Python `send_task` → `beatd worker` (exec) → Python `AsyncResult.get()` has the value.
#[test]
fn python_send_task_runs_on_beatd_worker() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.sum", SUM_SCRIPT)]);
    s.start_beatd_worker("celery");
    let out = s.client(
        "call",
        &json!({"task": "interop.sum", "args": [1, 2, 3], "kwargs": {"scale": 10, "tag": "t☃"},
                "timeout": WAIT.as_secs()}),
    );
    let id = out["id"].as_str().expect("an id");
    assert_eq!(
        out["value"],
        json!({"sum": 60, "tag": "t☃", "id": id}),
        "{out}{}",
        s.logs()
    );
    let stored = s.result(id).expect("stored result");
    assert_eq!(stored["status"], "SUCCESS");
    assert_eq!(stored["task_id"], id);
    // Celery's result_expires default (one day), as a Celery worker sets it.
    let ttl = s.result_ttl(id);
    assert!(ttl > 86_000 && ttl <= 86_400, "result TTL {ttl}");
    // Celery parsed date_done into the same instant.
    assert_eq!(
        parse_time(out["date_done"].as_str().expect("date_done")),
        parse_time(stored["date_done"].as_str().unwrap())
    );
}

/// A failing exec task: Python's `get(propagate=True)` raises, with the stderr tail in the
/// message and the traceback.
#[test]
fn failing_beatd_task_raises_in_python() {
    let mut s = Scene::new();
    exec_config(
        &s,
        &[(
            "interop.fail",
            "import sys\nsys.stderr.write('step 1 ok\\nwidget 42 is broken\\n')\nsys.exit(3)\n",
        )],
    );
    s.start_beatd_worker("celery");
    let out = s.client(
        "call",
        &json!({"task": "interop.fail", "args": [], "kwargs": {}, "timeout": WAIT.as_secs()}),
    );
    assert!(out.get("value").is_none(), "get() returned: {out}");
    let raised = &out["raised"];
    assert_eq!(raised["type"], "ExecFailed", "{out}{}", s.logs());
    let msg = raised["str"].as_str().unwrap();
    assert!(msg.contains("exited with status 3"), "{msg}");
    assert!(msg.contains("widget 42 is broken"), "{msg}");
    assert_eq!(out["state"], "FAILURE");
    let tb = out["traceback"].as_str().expect("traceback text");
    assert!(
        tb.contains("step 1 ok") && tb.contains("widget 42 is broken"),
        "{tb}"
    );
}

/// A stock `celery beat` (every second) feeding `beatd worker`: its messages run, from the
/// plain list and from a priority sub-list, and their results are stored.
#[test]
fn celery_beat_feeds_beatd_worker() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.beat_sum", SUM_SCRIPT)]);
    s.start_beatd_worker("pybeat");
    let mut cmd = s.command(python());
    cmd.env(
        "INTEROP_BEAT_SCHEDULE",
        json!({
            "py-every-1s": {"task": "interop.beat_sum", "every": 1, "args": [4, 5],
                            "kwargs": {"tag": "from-celery-beat"}, "queue": "pybeat"},
            "py-priority-5": {"task": "interop.beat_sum", "every": 1, "args": [10, 20],
                              "kwargs": {"tag": "priority"}, "queue": "pybeat",
                              "priority": 5},
        })
        .to_string(),
    )
    .args(["-m", "celery", "-A", "pyapp", "beat", "-l", "info", "-s"])
    .arg(s.path("celerybeat-schedule"))
    .arg("--pidfile")
    .arg(s.path("celerybeat.pid"));
    s.spawn("celery-beat", cmd);

    let runs =
        |tag: &str, recs: &[Value]| recs.iter().filter(|r| r["kwargs"]["tag"] == tag).count();
    let records = s.wait_for("two runs of each celery beat entry", || {
        let r = s.records();
        (runs("from-celery-beat", &r) >= 2 && runs("priority", &r) >= 2).then_some(r)
    });
    s.stop("celery-beat");
    let mut seen = std::collections::HashSet::new();
    for rec in &records {
        assert_eq!(rec["who"], "beatd");
        let (args, sum) = match rec["kwargs"]["tag"].as_str() {
            Some("from-celery-beat") => (json!([4, 5]), 9),
            Some("priority") => (json!([10, 20]), 30),
            _ => panic!("unexpected run {rec}"),
        };
        assert_eq!(rec["args"], args);
        let id = rec["id"].as_str().unwrap();
        assert!(seen.insert(id.to_string()), "{id} ran twice");
        let result = s.wait_result(id, "SUCCESS");
        assert_eq!(
            result["result"],
            json!({"sum": sum, "tag": rec["kwargs"]["tag"], "id": id})
        );
    }
    // Python reads one of them back.
    let id = records[0]["id"].as_str().unwrap();
    let got = s.client("get", &json!({"id": id, "timeout": WAIT.as_secs()}));
    assert!(
        got["value"]["sum"] == 9 || got["value"]["sum"] == 30,
        "{got}"
    );
    assert_eq!(got["state"], "SUCCESS");
}

/// `beatd worker` and a stock `celery worker` on the same queue: every one of N tasks runs
/// exactly once, and both workers take part.
#[test]
fn beatd_and_celery_workers_share_a_queue() {
    const N: usize = 200;
    let mut s = Scene::new();
    exec_config(
        &s,
        &[(
            "interop.mark",
            "import json, os\nwith open(os.environ['INTEROP_RECORD'], 'a') as f:\n    \
             f.write(json.dumps({'who': 'beatd', 'id': os.environ['BEATD_TASK_ID'], \
             'n': json.loads(os.environ['BEATD_TASK_ARGS'])[0]}) + '\\n')\n\
             print(json.loads(os.environ['BEATD_TASK_ARGS'])[0])\n",
        )],
    );
    s.start_celery_worker("shared");
    s.wait_log("celery-worker", "ready.");
    s.start_beatd_worker("shared");
    s.wait_log("beatd-worker", "worker started");

    let sent = s.client(
        "send_many",
        &json!({"task": "interop.mark", "n": N, "queue": "shared"}),
    );
    let ids: Vec<String> = sent["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), N);
    for (n, id) in ids.iter().enumerate() {
        let r = s.wait_result(id, "SUCCESS");
        assert_eq!(r["result"], n, "task {n}");
    }
    // Stop both so the record file is final, then count.
    s.stop("beatd-worker");
    s.stop("celery-worker");
    let records = s.records();
    let mut runs: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    for r in &records {
        runs.entry(r["id"].as_str().unwrap())
            .or_default()
            .push(r["who"].as_str().unwrap());
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            runs.get(id.as_str()).map(Vec::len),
            Some(1),
            "task {n} ({id}) ran by {:?}",
            runs.get(id.as_str())
        );
    }
    assert_eq!(records.len(), N, "no run of anything else");
    let by_beatd = records.iter().filter(|r| r["who"] == "beatd").count();
    assert!(
        by_beatd > 0 && by_beatd < N,
        "both workers take part: beatd ran {by_beatd} of {N}"
    );
    assert!(s.list("shared").is_empty());
    let unacked: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query(&mut s.conn())
        .unwrap();
    assert_eq!(unacked, 0, "nothing left unacknowledged");
}

/// `beatd send` → stock `celery worker`: the task runs with the arguments and priority given,
/// and the id printed is the one its result is stored (and read back by Python) under.
#[test]
fn beatd_send_runs_on_celery_worker() {
    let mut s = Scene::new();
    let url = s.url();
    let cmd = s.beatd_cmd(&[
        "send",
        "interop.record",
        "--args",
        r#"[1, "two", {"three": [3.5]}]"#,
        "--kwargs",
        r#"{"k": "v", "n": null}"#,
        "--queue",
        "sendq",
        "--priority",
        "4",
        "--redis-url",
        &url,
    ]);
    let mut cmd = cmd;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let printed = run_bounded(cmd, "beatd send");
    let id = printed.trim();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "printed {printed:?}");
    // Priority 4 goes to kombu's step-3 sub-list, which the worker consumes too.
    let queued = s.list("sendq\x06\x163");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(queued[0].contains(id));

    s.start_celery_worker("sendq");
    let result = s.wait_result(id, "SUCCESS");
    let args = json!([1, "two", {"three": [3.5]}]);
    let kwargs = json!({"k": "v", "n": null});
    assert_eq!(
        result["result"],
        json!({"args": args, "kwargs": kwargs, "entry": null})
    );
    let recs = s.records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["id"], id);
    assert_eq!(recs[0]["delivery_info"]["routing_key"], "sendq");
    assert_eq!(recs[0]["delivery_info"]["priority"], 4);
    let ttl = s.result_ttl(id);
    assert!(ttl > 86_000 && ttl <= 86_400, "Celery's result TTL {ttl}");
    assert_eq!(recs[0]["celery_beat_task"], Value::Null);
    let got = s.client("get", &json!({"id": id, "timeout": WAIT.as_secs()}));
    assert_eq!(got["value"], result["result"]);
}

/// A message Python sent with an `expires` already past: `beatd worker` does not run it and
/// stores REVOKED the way Celery does, so Python's `get()` raises `TaskRevokedError`; an
/// unknown task name raises `NotRegistered`.
#[test]
fn python_expired_message_is_revoked_by_beatd_worker() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.sum", SUM_SCRIPT)]);
    s.start_beatd_worker("celery");
    let out = s.client(
        "call",
        &json!({"task": "interop.sum", "args": [1], "kwargs": {}, "expires": -60,
                "timeout": WAIT.as_secs()}),
    );
    assert_eq!(
        out["raised"]["type"],
        "TaskRevokedError",
        "{out}{}",
        s.logs()
    );
    assert_eq!(out["state"], "REVOKED");
    assert!(
        s.records().is_empty(),
        "the exec task ran: {:?}",
        s.records()
    );
}

/// The exec script of `interop.slow`: notes its start, and when `sleep_on` is "beatd" sleeps
/// (while its worker lives, so a `kill -9` of the worker leaves no sleeper behind).
const SLOW_SCRIPT: &str = r#"
import json, os, sys, time
seconds, sleep_on = json.load(sys.stdin)["args"]
with open(os.environ["INTEROP_RECORD"], "a") as f:
    f.write(json.dumps({"who": "beatd", "id": os.environ["BEATD_TASK_ID"], "phase": "start"}) + "\n")
if sleep_on == "beatd":
    parent, end = os.getppid(), time.time() + seconds
    while time.time() < end and os.getppid() == parent:
        time.sleep(0.1)
print(json.dumps("beatd"))
"#;

fn started_by(s: &Scene, who: &str, id: &str) {
    s.wait_for(&format!("{who} to start {id}"), || {
        s.records()
            .iter()
            .any(|r| r["who"] == who && r["id"] == id)
            .then_some(())
    });
}

/// A stock worker killed (`kill -9`) mid-task leaves its message in kombu's `unacked`;
/// `beatd worker` restores it after the visibility timeout and runs it.
#[test]
fn beatd_worker_restores_a_killed_celery_workers_message() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.slow", SLOW_SCRIPT)]);
    s.start_celery_worker("restore");
    let sent = s.client(
        "send",
        &json!({"task": "interop.slow", "args": [120, "python"], "queue": "restore"}),
    );
    let id = sent["id"].as_str().unwrap();
    started_by(&s, "python", id);
    s.kill9("celery-worker");
    s.wait_unacked_older_than(Duration::from_secs(2));
    s.start_beatd_worker_with("restore", &["--visibility-timeout", "1s"]);
    let result = s.wait_result(id, "SUCCESS");
    assert_eq!(result["result"], "beatd");
    s.wait_no_unacked();
    let who: Vec<Value> = s.records().iter().map(|r| r["who"].clone()).collect();
    assert_eq!(who, [json!("python"), json!("beatd")]);
}

/// `beatd worker` killed mid-task leaves its message in `unacked` the way kombu does; a
/// stock worker restores it after its visibility timeout and runs it.
#[test]
fn celery_worker_restores_a_killed_beatd_workers_message() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.slow", SLOW_SCRIPT)]);
    s.start_beatd_worker("restore");
    let sent = s.client(
        "send",
        &json!({"task": "interop.slow", "args": [60, "beatd"], "queue": "restore"}),
    );
    let id = sent["id"].as_str().unwrap();
    started_by(&s, "beatd", id);
    s.kill9("beatd-worker");
    s.wait_unacked_older_than(Duration::from_secs(2));
    s.start_celery_worker_env("restore", &[("INTEROP_VISIBILITY", "1")]);
    let result = s.wait_result(id, "SUCCESS");
    assert_eq!(result["result"], "python");
    s.wait_no_unacked();
    let who: Vec<Value> = s.records().iter().map(|r| r["who"].clone()).collect();
    assert_eq!(who, [json!("beatd"), json!("python")]);
}

/// A failing exec task with retries: Python's `get()` waits through the RETRY record and
/// raises the final failure; the task ran once plus its retries, under the same id.
#[test]
fn beatd_retries_then_fails_for_python() {
    let mut s = Scene::new();
    exec_config_with(
        &s,
        &[(
            "interop.flaky",
            "import json, os, sys\nwith open(os.environ['INTEROP_RECORD'], 'a') as f:\n    \
             f.write(json.dumps({'who': 'beatd', 'id': os.environ['BEATD_TASK_ID'], \
             'retries': int(os.environ['BEATD_TASK_RETRIES'])}) + '\\n')\n\
             sys.exit('still broken')\n",
        )],
        "max_retries = 2\nretry_backoff = \"100ms\"\n",
    );
    s.start_beatd_worker("celery");
    let out = s.client(
        "call",
        &json!({"task": "interop.flaky", "args": [], "kwargs": {}, "timeout": WAIT.as_secs()}),
    );
    assert_eq!(out["raised"]["type"], "ExecFailed", "{out}{}", s.logs());
    assert!(out["raised"]["str"]
        .as_str()
        .unwrap()
        .contains("still broken"));
    assert_eq!(out["state"], "FAILURE");
    let runs: Vec<(Value, Value)> = s
        .records()
        .iter()
        .map(|r| (r["id"].clone(), r["retries"].clone()))
        .collect();
    let id = out["id"].clone();
    assert_eq!(
        runs,
        [
            (id.clone(), json!(0)),
            (id.clone(), json!(1)),
            (id, json!(2))
        ]
    );
}

/// `countdown` (an ETA) from Python: `beatd worker` holds the message and runs it at or
/// after its ETA; `ignore_result=True` from Python: it runs and stores nothing.
#[test]
fn python_countdown_and_ignore_result_on_beatd_worker() {
    let mut s = Scene::new();
    exec_config(&s, &[("interop.sum", SUM_SCRIPT)]);
    s.start_beatd_worker("celery");
    let quiet = s.client(
        "send",
        &json!({"task": "interop.sum", "args": [7], "kwargs": {"tag": "quiet"},
                "ignore_result": true}),
    );
    let out = s.client(
        "call",
        &json!({"task": "interop.sum", "args": [2], "kwargs": {}, "countdown": 1,
                "timeout": WAIT.as_secs()}),
    );
    let id = out["id"].as_str().unwrap();
    assert_eq!(out["value"]["sum"], 2, "{out}{}", s.logs());
    let quiet_id = quiet["id"].as_str().unwrap();
    started_by(&s, "beatd", quiet_id);
    // The worker acks after storing: with nothing unacked, whatever it stores is stored.
    s.wait_no_unacked();
    assert_eq!(s.result(quiet_id), None, "ignore_result: nothing stored");
    let records = s.records();
    // The run started no earlier than the ETA: send time + 1 s (same host clock, both
    // read by Python's time.time()).
    let run = records
        .iter()
        .find(|r| r["id"] == id)
        .expect("run recorded");
    let started = run["time"].as_f64().unwrap();
    let sent_at = out["sent_at"].as_f64().unwrap();
    assert!(
        started >= sent_at + 1.0,
        "ran at {started}, before its ETA (sent at {sent_at} with countdown 1)"
    );
}

/// An exec task over its `time_limit`: Python's `get()` raises billiard's
/// `TimeLimitExceeded` with the limit in seconds as its argument, as for a Celery task
/// (`{"exc_type": "TimeLimitExceeded", "exc_message": [1], "exc_module": "billiard.exceptions"}`).
#[test]
fn time_limit_raises_celerys_exception_in_python() {
    let mut s = Scene::new();
    exec_config_with(
        &s,
        &[("interop.hang", "import time\ntime.sleep(60)\n")],
        "time_limit = \"1s\"\n",
    );
    s.start_beatd_worker("celery");
    let out = s.client(
        "call",
        &json!({"task": "interop.hang", "args": [], "kwargs": {}, "timeout": WAIT.as_secs()}),
    );
    assert_eq!(
        out["raised"],
        json!({"type": "TimeLimitExceeded", "module": "billiard.exceptions",
               "str": "TimeLimitExceeded(1,)", "args": [1]}),
        "{out}{}",
        s.logs()
    );
    assert_eq!(out["state"], "FAILURE");
}

// The worker as Celery users expect it: progress, STARTED, task logs, remote control, chains,
// reloads.
mod worker_celery;
// Overlap policies with slow tasks on a stock Celery worker.
mod overlap_celery;
