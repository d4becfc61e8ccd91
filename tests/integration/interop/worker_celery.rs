//! The worker as Celery users expect it, against real Python Celery and the real `celery`
//! command: progress polled with `AsyncResult(id).state` / `.info`, STARTED, task output in
//! the log, `celery inspect` / `celery control revoke`, chains across both kinds of worker,
//! and SIGHUP reloads of the task table. Steps are released by files the test creates, so
//! every state is observed while the task really is in it; nothing is timed.

use super::*;

/// `python -m celery -A pyapp ARGS`, stdout.
fn celery(s: &Scene, args: &[&str]) -> String {
    let mut cmd = s.command(python());
    cmd.args(["-m", "celery", "-A", "pyapp"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_bounded(cmd, &format!("celery {}", args.join(" ")))
}

/// `celery inspect|control ... --json`, retried until `ok` accepts the replies (a reply
/// later than the command's timeout on a loaded machine is just asked again).
fn celery_json(s: &Scene, args: &[&str], what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut full = args.to_vec();
    full.extend(["--json", "--timeout", "3"]);
    s.wait_for(what, || {
        let out = celery(s, &full);
        // One JSON document; Celery prints nothing else with --json. `inspect` prints one
        // object keyed by node, `control` a list of one-node objects: merged here.
        let v: Value = match serde_json::from_str(out.trim()).ok()? {
            Value::Array(replies) => Value::Object(
                replies
                    .into_iter()
                    .filter_map(|r| match r {
                        Value::Object(m) => Some(m),
                        _ => None,
                    })
                    .flatten()
                    .collect(),
            ),
            v => v,
        };
        ok(&v).then_some(v)
    })
}

fn pid_of(s: &Scene, name: &str) -> u32 {
    s.procs
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.child.id())
        .unwrap_or_else(|| panic!("no process {name}"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| !r.starts_with('Z')))
}

/// [`exec_config_with`], with `INTEROP_GO` (the directory of the release files) in every
/// task's environment.
fn exec_config_go(s: &Scene, tasks: &[(&str, &str)], options: &str) -> PathBuf {
    exec_config_with(s, tasks, options);
    let go = s.path("go");
    std::fs::create_dir_all(&go).unwrap();
    let toml = std::fs::read_to_string(s.path("beatd.toml"))
        .unwrap()
        .replace(
            "env = { INTEROP_RECORD",
            &format!(
                "env = {{ INTEROP_GO = {}, INTEROP_RECORD",
                toml_str(go.to_str().unwrap())
            ),
        );
    s.write("beatd.toml", &toml);
    go
}

fn touch(s: &Scene, name: &str) {
    s.write(&format!("go/{name}"), "");
}

/// Waits (in the task) for `go/<name>` to exist.
const WAIT_FN: &str = r#"
import json, os, sys, time
def wait(name):
    path = os.path.join(os.environ["INTEROP_GO"], name)
    while not os.path.exists(path):
        time.sleep(0.02)
"#;

const PROGRESS_SCRIPT: &str = r#"
progress = os.fdopen(int(os.environ["BEATD_TASK_PROGRESS_FD"]), "w", buffering=1)
d = json.load(sys.stdin)
wait("go0")
progress.write(json.dumps({"state": "PROGRESS", "meta": {"current": 1, "total": 2}}) + "\n")
sys.stderr.write("working on step 1\n")
sys.stderr.flush()
wait("go1")
progress.write("50% done\n")
progress.write(json.dumps({"state": "SUCCESS", "meta": "not from progress"}) + "\n")
progress.write(json.dumps({"state": "PROGRESS", "meta": {"current": 2, "total": 2}}) + "\n")
wait("go2")
print(json.dumps({"done": d["args"]}))
"#;

/// The tutorial's polling loop, unchanged: STARTED with Celery's `{pid, hostname}` meta, then
/// PROGRESS with each meta while the task runs, then SUCCESS with the result; malformed and
/// final-state progress lines are logged and ignored; each stderr line is logged with the
/// task id as it comes; one log line for the finished task.
#[test]
fn exec_progress_and_started_seen_by_asyncresult() {
    let mut s = Scene::new();
    let script = format!("{WAIT_FN}{PROGRESS_SCRIPT}");
    exec_config_go(
        &s,
        &[("interop.progress", &script)],
        "track_started = true\n",
    );
    s.start_beatd_worker_with("celery", &["--node-name", "beatd-progress@test"]);
    let id = s.client(
        "send",
        &json!({"task": "interop.progress", "args": [7], "kwargs": {}}),
    )["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let poll = |state: &str, info: Value| {
        let out = s.client(
            "wait_state",
            &json!({"id": id, "state": state, "info": info, "timeout": WAIT.as_secs()}),
        );
        assert!(out.get("timeout").is_none(), "{out}{}", s.logs());
    };
    let pid = pid_of(&s, "beatd-worker");
    poll(
        "STARTED",
        json!({"pid": pid, "hostname": "beatd-progress@test"}),
    );
    touch(&s, "go0");
    poll("PROGRESS", json!({"current": 1, "total": 2}));
    let stored = s.result(&id).expect("a record");
    assert_eq!(stored["date_done"], Value::Null, "{stored}");
    assert_eq!(stored["traceback"], Value::Null);
    touch(&s, "go1");
    poll("PROGRESS", json!({"current": 2, "total": 2}));
    touch(&s, "go2");
    let got = s.client("get", &json!({"id": id, "timeout": WAIT.as_secs()}));
    assert_eq!(got["value"], json!({"done": [7]}), "{got}");
    assert_eq!(got["state"], "SUCCESS");

    s.wait_log("beatd-worker", "ignored a malformed progress line");
    let log = s.log_of("beatd-worker");
    assert!(
        log.contains("state SUCCESS is final"),
        "the final state on the progress fd is refused{}",
        s.logs()
    );
    let stderr_line = log
        .lines()
        .find(|l| l.contains("working on step 1"))
        .unwrap_or_else(|| panic!("stderr line not logged{}", s.logs()));
    assert!(
        stderr_line.contains(&id) && stderr_line.contains("interop.progress"),
        "{stderr_line}"
    );
    let finished: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&id) && l.contains("task succeeded"))
        .collect();
    assert_eq!(
        finished.len(),
        1,
        "one line per finished task: {finished:?}"
    );
}

const HOLD_SCRIPT: &str = r#"
import subprocess
d = json.load(sys.stdin)
child = subprocess.Popen(["sleep", "300"])
with open(os.path.join(os.environ["INTEROP_GO"], "pids-" + os.environ["BEATD_TASK_ID"]), "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
wait("never")
"#;

/// `celery inspect ping / registered / active / stats` list the beatd worker next to a
/// Python one; `celery control revoke <id>` makes it skip that task when it arrives later
/// (REVOKED); `revoke(terminate=True)` kills a running exec task's process group.
#[test]
fn remote_control_inspect_and_revoke() {
    let mut s = Scene::new();
    let script = format!("{WAIT_FN}{HOLD_SCRIPT}");
    // STARTED tells the Python worker, which also gets every revoke, that the task is
    // another worker's: Celery marks only PENDING tasks REVOKED on a revoke.
    let go = exec_config_go(&s, &[("rc.hold", &script)], "track_started = true\n");
    s.start_beatd_worker_with("beatd", &["--node-name", "beatd-rc@test"]);
    s.start_celery_worker("py");
    let both = |v: &Value| {
        let nodes: Vec<&String> = v
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        nodes.iter().any(|n| *n == "beatd-rc@test")
            && nodes.iter().any(|n| n.starts_with("interop-"))
    };
    let ping = celery_json(
        &s,
        &["inspect", "ping"],
        "both workers to answer ping",
        both,
    );
    assert_eq!(ping["beatd-rc@test"], json!({"ok": "pong"}));
    let registered = celery_json(&s, &["inspect", "registered"], "registered", both);
    assert_eq!(registered["beatd-rc@test"], json!(["rc.hold"]));

    let running = s.client(
        "send",
        &json!({"task": "rc.hold", "args": [1], "kwargs": {}, "queue": "beatd"}),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pids = s.wait_for("the task to start", || {
        std::fs::read_to_string(go.join(format!("pids-{running}"))).ok()
    });
    let active = celery_json(&s, &["inspect", "active"], "the running task listed", |v| {
        v["beatd-rc@test"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["id"] == json!(running)))
    });
    let task = &active["beatd-rc@test"][0];
    assert_eq!(task["name"], "rc.hold");
    assert_eq!(task["args"], json!([1]));
    assert_eq!(task["hostname"], "beatd-rc@test");
    let stats = celery_json(&s, &["inspect", "stats"], "stats", both);
    assert_eq!(
        stats["beatd-rc@test"]["pid"],
        json!(pid_of(&s, "beatd-worker"))
    );

    // Revoked before it is sent: skipped when it arrives, stored as Celery stores it.
    let later = uuid::Uuid::new_v4().to_string();
    let reply = celery_json(&s, &["control", "revoke", &later], "revoke replies", |v| {
        v.get("beatd-rc@test").is_some()
    });
    assert_eq!(
        reply["beatd-rc@test"],
        json!({"ok": format!("tasks {{'{later}'}} flagged as revoked")})
    );
    s.client(
        "send",
        &json!({"task": "rc.hold", "args": [2], "kwargs": {}, "queue": "beatd", "task_id": later}),
    );
    // Celery's own workers mark a PENDING task REVOKED at once; beatd's skips the message
    // when it comes, storing the same record.
    s.wait_log(
        "beatd-worker",
        &format!("discarding revoked task task_id={later}"),
    );
    let r = s.wait_result(&later, "REVOKED");
    assert_eq!(r["result"]["exc_type"], "TaskRevokedError");
    assert_eq!(r["result"]["exc_message"], json!(["revoked"]));
    assert!(!go.join(format!("pids-{later}")).exists(), "it never ran");
    let seen = s.client(
        "wait_state",
        &json!({"id": later, "state": "REVOKED", "timeout": WAIT.as_secs()}),
    );
    assert!(seen.get("timeout").is_none(), "{seen}");

    // terminate=True: the running task's process group is killed; REVOKED "terminated".
    let out = s.client(
        "revoke",
        &json!({"id": running, "terminate": true, "timeout": 5}),
    );
    assert!(
        out.to_string().contains(&format!("terminate: {running}")),
        "{out}"
    );
    let r = s.wait_result(&running, "REVOKED");
    assert_eq!(
        r["result"]["exc_message"],
        json!(["terminated"]),
        "{}",
        s.log_of("beatd-worker")
    );
    let pids: Vec<u32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    s.wait_for("the task and its child to be gone", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

/// `beatd beat` answers `celery inspect ping`: the health check Celery users ask of beat.
#[test]
fn beatd_beat_answers_ping() {
    let mut s = Scene::new();
    s.write(
        "schedules/one.toml",
        "[[entry]]\nname = \"daily\"\ntask = \"interop.record\"\ncron = \"0 3 * * *\"\n",
    );
    s.start_beatd_beat();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let node = format!("beatd-beat@{host}");
    let v = celery_json(
        &s,
        &["inspect", "ping", "--destination", &node],
        "the beat to answer ping",
        |v| v.get(&node).is_some(),
    );
    assert_eq!(v[&node], json!({"ok": "pong"}));
}

const DOUBLE_SCRIPT: &str =
    "import json, sys\nd = json.load(sys.stdin)\nprint(json.dumps(d['args'][0] * 2))\n";
const FAIL_SCRIPT: &str = "import sys\nsys.stderr.write('no way\\n')\nsys.exit(2)\n";

/// `chain(a.s(), beatd_task.s(), b.s())` runs to the end across a Python worker and beatd's;
/// a failing beatd step fails the chain for `get()` and calls the chain's errback with the
/// failed task's id; a chord header on beatd fails, saying chords are not supported.
#[test]
fn chains_across_python_and_beatd_workers() {
    let mut s = Scene::new();
    exec_config(
        &s,
        &[("chain.double", DOUBLE_SCRIPT), ("chain.fail", FAIL_SCRIPT)],
    );
    s.start_beatd_worker("beatd");
    s.start_celery_worker("py");
    let py = |task: &str, args: Value| json!({"task": task, "args": args, "queue": "py"});
    let bd = |task: &str| json!({"task": task, "queue": "beatd"});
    let out = s.client(
        "chain",
        &json!({"steps": [py("interop.add", json!([1, 2])), bd("chain.double"),
                          py("interop.add", json!([10]))],
                "timeout": WAIT.as_secs()}),
    );
    assert_eq!(out["value"], json!(16), "{out}{}", s.logs());
    let ids = out["ids"].as_array().unwrap();
    let step = s
        .result(ids[1].as_str().unwrap())
        .expect("beatd's step stored");
    assert_eq!(step["result"], json!(6));

    let out = s.client(
        "chain",
        &json!({"steps": [py("interop.add", json!([1, 2])), bd("chain.fail"),
                          py("interop.add", json!([10]))],
                "errback": py("interop.record_error", json!([])),
                "timeout": WAIT.as_secs()}),
    );
    assert_eq!(out["raised"]["type"], "ExecFailed", "{out}{}", s.logs());
    let failed = out["ids"][1].clone();
    s.wait_for("the errback to run", || {
        s.records()
            .iter()
            .any(|r| r["errback_for"] == failed)
            .then_some(())
    });

    let header = uuid::Uuid::new_v4().to_string();
    s.client(
        "chord",
        &json!({"header": [{"task": "chain.double", "args": [1], "queue": "beatd",
                            "task_id": header}],
                "body": py("interop.add", json!([]))}),
    );
    let r = s.wait_result(&header, "FAILURE");
    assert_eq!(r["result"]["exc_type"], "NotImplementedError");
    let msg = r["result"]["exc_message"][0].as_str().unwrap();
    assert!(msg.contains("chords are not supported"), "{msg}");
}

/// SIGHUP re-reads `beatd.toml`: new and changed tasks apply, a task in flight finishes as
/// it started, and an invalid file keeps the old table, logged with file:line:column.
#[test]
fn sighup_reloads_the_worker_task_table() {
    let mut s = Scene::new();
    let slow = format!(
        "{WAIT_FN}sys.stderr.write('slow started\\n')\nsys.stderr.flush()\nwait('go')\nprint(json.dumps('old'))\n"
    );
    exec_config_go(
        &s,
        &[("reload.a", "print('\"a1\"')\n"), ("reload.slow", &slow)],
        "",
    );
    s.start_beatd_worker("celery");
    let call = |task: &str| {
        s.client(
            "call",
            &json!({"task": task, "args": [], "kwargs": {}, "timeout": WAIT.as_secs()}),
        )
    };
    assert_eq!(call("reload.a")["value"], "a1");
    let in_flight = s.client(
        "send",
        &json!({"task": "reload.slow", "args": [], "kwargs": {}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_for("reload.slow to start", || {
        s.log_of("beatd-worker")
            .lines()
            .any(|l| l.contains(&in_flight) && l.contains("slow started"))
            .then_some(())
    });
    exec_config_go(
        &s,
        &[
            ("reload.a", "print('\"a2\"')\n"),
            ("reload.b", "print('\"b\"')\n"),
            ("reload.slow", "print('\"new\"')\n"),
        ],
        "",
    );
    let hup = |s: &Scene| {
        let status = Command::new("kill")
            .args(["-HUP", &pid_of(s, "beatd-worker").to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup(&s);
    s.wait_log("beatd-worker", "worker tasks reloaded");
    assert_eq!(call("reload.b")["value"], "b", "{}", s.logs());
    assert_eq!(call("reload.a")["value"], "a2");
    // Started before the reload: not disturbed, it finishes as it started.
    touch(&s, "go");
    let got = s.client("get", &json!({"id": in_flight, "timeout": WAIT.as_secs()}));
    assert_eq!(got["value"], "old", "{got}{}", s.logs());

    let mut broken = std::fs::read_to_string(s.path("beatd.toml")).unwrap();
    broken.push_str("\n[worker.tasks.\"reload.c\"]\nkind = \"exec\"\ncommand = 5\n");
    let line = broken.lines().count();
    s.write("beatd.toml", &broken);
    hup(&s);
    s.wait_log("beatd-worker", "task reload rejected");
    let log = s.log_of("beatd-worker");
    assert!(
        log.contains(&format!("beatd.toml:{line}:")),
        "diagnostic with file:line:column (line {line}){}",
        s.logs()
    );
    assert_eq!(call("reload.b")["value"], "b", "the old table stays");
}
