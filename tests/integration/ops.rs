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
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;

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

// ---------------------------------------------------------------------------------------
// HTTP endpoints and metrics
// ---------------------------------------------------------------------------------------

#[test]
fn beat_endpoints_and_metrics_move() {
    let mut server = redis();
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let http = port();
    let mut cmd = beatd(dir.path());
    cmd.args(["beat", "--redis-url", &server.url(), "--lock-ttl", "1s"])
        .arg("--schedules")
        .arg(&schedule)
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    let mut p = Proc::spawn(cmd);

    assert_eq!(wait_http(&p, http, "/healthz", 200), "ok\n");
    assert_eq!(wait_http(&p, http, "/readyz", 200), "ready\n");
    let (status, _) = http_get(http, "/nope").expect("answers");
    assert_eq!(status, 404);

    let text = wait_metric(&p, http, "beatd_messages_sent_total{entry=\"tick\"}", 2.0);
    let sent = metric(&text, "beatd_messages_sent_total{entry=\"tick\"}").unwrap();
    assert_eq!(metric(&text, "beatd_is_leader"), Some(1.0));
    assert!(
        metric(&text, "beatd_leader_epoch").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "beatd_lock_acquisitions_total"), Some(1.0));
    assert!(metric(&text, "beatd_emission_lateness_seconds_count").unwrap() >= sent);
    assert!(metric(&text, "beatd_emission_lateness_seconds_sum").is_some());
    assert_eq!(metric(&text, "beatd_reloads_total"), Some(0.0));
    assert_eq!(metric(&text, "beatd_reload_failures_total"), Some(0.0));
    assert_eq!(metric(&text, "beatd_lock_losses_total"), Some(0.0));
    assert_eq!(metric(&text, "beatd_redis_errors_total"), Some(0.0));
    // Every message counted is in Redis (the counter moves only after the push).
    let mut conn = redis_conn(&server.url());
    let queued = fires(&mut conn, "celery");
    assert!(queued.len() as f64 >= sent, "{queued:?} vs {sent}");
    assert!(queued.iter().all(|(e, _)| e == "tick"));
    // A renewal every third of the TTL.
    wait_metric(&p, http, "beatd_lock_renewals_total", 1.0);

    // Losing the lock (its key deleted) is counted, and the beat takes it back.
    let epoch = metric(&text, "beatd_leader_epoch").unwrap();
    let _: () = redis::cmd("DEL")
        .arg("beatd:leader")
        .query(&mut conn)
        .unwrap();
    wait_metric(&p, http, "beatd_lock_losses_total", 1.0);
    let text = wait_metric(&p, http, "beatd_lock_acquisitions_total", 2.0);
    assert!(
        metric(&text, "beatd_leader_epoch").unwrap() > epoch,
        "{text}"
    );

    // Redis down: errors counted and readiness drops; back up: ready again.
    server.kill();
    wait_metric(&p, http, "beatd_redis_errors_total", 1.0);
    assert_eq!(wait_http(&p, http, "/readyz", 503), "not ready\n");
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    let (_, text) = http_get(http, "/metrics").unwrap();
    let sent = metric(&text, "beatd_messages_sent_total{entry=\"tick\"}").unwrap();
    server.restart().unwrap();
    wait_http(&p, http, "/readyz", 200);
    // And it sends again: the restarted (empty) Redis receives new messages.
    let series = "beatd_messages_sent_total{entry=\"tick\"}";
    wait_metric(&p, http, series, sent + 2.0);
    let mut conn = redis_conn(&server.url());
    assert!(!fires(&mut conn, "celery").is_empty());

    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
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

#[test]
fn worker_metrics_and_readiness_turns_503_before_draining() {
    let server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let http = port();
    let mut p = start_worker(&server, dir.path(), http);
    wait_http(&p, http, "/readyz", 200);

    send(dir.path(), &server.url(), "t.ok");
    send(dir.path(), &server.url(), "t.ok");
    send(dir.path(), &server.url(), "t.fail");
    let ok = "beatd_worker_tasks_total{task=\"t.ok\",state=\"success\"}";
    let failed = "beatd_worker_tasks_total{task=\"t.fail\",state=\"failure\"}";
    wait_metric(&p, http, ok, 2.0);
    let text = wait_metric(&p, http, failed, 1.0);
    assert_eq!(
        metric(
            &text,
            "beatd_worker_task_duration_seconds_count{task=\"t.ok\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(metric(&text, "beatd_worker_in_flight"), Some(0.0));
    assert_eq!(metric(&text, "beatd_redis_errors_total"), Some(0.0));

    // A task that runs until the test lets it go.
    send(dir.path(), &server.url(), "t.block");
    wait_metric(&p, http, "beatd_worker_in_flight", 1.0);
    p.signal("TERM");
    // 503 while the task still runs: the process cannot have drained yet.
    assert_eq!(wait_http(&p, http, "/readyz", 503), "draining\n");
    assert!(p.running(), "exited before the task was released");
    let (_, text) = http_get(http, "/metrics").expect("metrics still served while draining");
    assert_eq!(metric(&text, "beatd_worker_in_flight"), Some(1.0));
    std::fs::write(dir.path().join("release"), "").unwrap();
    assert!(p.wait_exit().success(), "{}", p.output());
    assert!(
        p.output().contains("task succeeded") && p.output().contains("t.block"),
        "the blocked task finished within the grace\n{}",
        p.output()
    );
}

fn start_worker(server: &RedisServer, dir: &Path, http: u16) -> Proc {
    let mut cmd = beatd(dir);
    cmd.args(["worker", "--redis-url", &server.url(), "--concurrency", "2"])
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    Proc::spawn(cmd)
}

#[test]
fn worker_counts_redis_errors_and_is_not_ready_while_redis_is_down() {
    let mut server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let http = port();
    let p = start_worker(&server, dir.path(), http);
    wait_http(&p, http, "/readyz", 200);
    server.kill();
    wait_metric(&p, http, "beatd_redis_errors_total", 1.0);
    assert_eq!(wait_http(&p, http, "/readyz", 503), "not ready\n");
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    server.restart().unwrap();
    wait_http(&p, http, "/readyz", 200);
}

/// After an outage of a few seconds the consumer fetches again (it used to stay stuck for
/// minutes in redis-rs's reconnect backoff while `/readyz` said ready).
#[test]
fn worker_consumes_again_after_a_redis_outage() {
    let mut server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let http = port();
    let p = start_worker(&server, dir.path(), http);
    wait_http(&p, http, "/readyz", 200);
    server.kill();
    wait_http(&p, http, "/readyz", 503);
    server.restart().unwrap();
    wait_http(&p, http, "/readyz", 200);
    send(dir.path(), &server.url(), "t.ok");
    wait_metric(
        &p,
        http,
        "beatd_worker_tasks_total{task=\"t.ok\",state=\"success\"}",
        1.0,
    );
}

#[test]
fn run_embedded_and_on_redis_serve_beat_and_worker_metrics() {
    for on_redis in [false, true] {
        let server = redis();
        let dir = tempdir();
        write(dir.path(), "beatd.toml", TASKS);
        let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
        let http = port();
        let mut cmd = beatd(dir.path());
        cmd.arg("run")
            .arg("--schedules")
            .arg(&schedule)
            .args(["--http-addr", &format!("127.0.0.1:{http}")]);
        if on_redis {
            cmd.args(["--redis-url", &server.url()]);
        } else {
            cmd.arg("--state-file").arg(dir.path().join("state.json"));
        }
        let mut p = Proc::spawn(cmd);
        assert_eq!(wait_http(&p, http, "/healthz", 200), "ok\n");
        wait_http(&p, http, "/readyz", 200);
        wait_metric(&p, http, "beatd_messages_sent_total{entry=\"tick\"}", 1.0);
        let text = wait_metric(
            &p,
            http,
            "beatd_worker_tasks_total{task=\"t.ok\",state=\"success\"}",
            1.0,
        );
        assert!(
            metric(
                &text,
                "beatd_worker_task_duration_seconds_count{task=\"t.ok\"}"
            )
            .unwrap()
                >= 1.0
        );
        assert_eq!(
            metric(&text, "beatd_is_leader"),
            Some(1.0),
            "on_redis={on_redis}"
        );
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
    }
}

#[test]
fn http_addr_off_disables_the_endpoint() {
    for off in [false, true] {
        let dir = tempdir();
        let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
        let http = port();
        let mut cmd = beatd(dir.path());
        // The flag wins over the environment.
        cmd.env("BEATD_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .arg("run")
            .arg("--schedules")
            .arg(&schedule)
            .arg("--state-file")
            .arg(dir.path().join("state.json"));
        if off {
            cmd.args(["--http-addr", "off"]);
        }
        let mut p = Proc::spawn(cmd);
        p.wait_line("the ready log line", |l| l.ends_with(": ready"));
        let listening = p.output().contains("http endpoint listening");
        assert_eq!(listening, !off, "{}", p.output());
        assert_eq!(http_get(http, "/healthz").is_some(), !off);
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
    }
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

/// The test's end of `NOTIFY_SOCKET`.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> (Self, PathBuf) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        (
            Self {
                sock,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Reads datagrams until one has the line `line`; returns that datagram.
    fn until(&mut self, line: &str) -> String {
        loop {
            let mut buf = [0u8; 4096];
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {line} (seen {:?}): {e}", self.seen));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }

    /// Datagrams already waiting, without blocking.
    fn drain(&mut self) -> Vec<String> {
        self.sock.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).unwrap();
        self.seen.extend(got.clone());
        got
    }
}

#[test]
fn systemd_notify_ready_reloading_watchdog_stopping() {
    let mut server = redis();
    server.kill(); // READY=1 must wait for Redis
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let (mut notify, sock) = Notify::bind(dir.path());
    // sd_notify honours WATCHDOG_USEC only when WATCHDOG_PID is the process's own pid, as
    // systemd sets it: the shell exports its pid and execs beatd, which keeps it.
    let mut cmd = Command::new("sh");
    clean_env(&mut cmd);
    cmd.current_dir(dir.path())
        .args([
            "-c",
            "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"",
        ])
        .arg(bin())
        .args(["beat", "--redis-url", &server.url(), "--http-addr", "off"])
        .arg("--schedules")
        .arg(&schedule)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "200000");
    let mut p = Proc::spawn(cmd);

    // Not ready while Redis is unreachable (the beat has tried and failed by now).
    p.wait_line("a failed store call", |l| l.contains("store unavailable"));
    let early = notify.drain();
    assert!(
        !early.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 before Redis was reachable: {early:?}"
    );
    // The watchdog is fed meanwhile: the process loop is alive.
    notify.until("WATCHDOG=1");
    // A reload before the start completed must not announce readiness for it.
    let mark = p.mark();
    p.signal("HUP");
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules unchanged"));
    let early = notify.drain();
    assert!(
        !early
            .iter()
            .any(|m| m.contains("READY=1") || m.contains("RELOADING=1")),
        "a reload during the start announced: {early:?}"
    );
    server.restart().unwrap();
    notify.until("READY=1");
    notify.until("WATCHDOG=1");

    p.signal("HUP");
    let reloading = notify.until("RELOADING=1");
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "Type=notify-reload wants MONOTONIC_USEC with RELOADING=1: {reloading:?}"
    );
    notify.until("READY=1");

    p.signal("TERM");
    notify.until("STOPPING=1");
    assert!(p.wait_exit().success(), "{}", p.output());
}

#[test]
fn systemd_notify_for_worker_and_run() {
    let server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    for sub in ["worker", "run"] {
        let own = dir.path().join(sub);
        std::fs::create_dir_all(&own).unwrap();
        let (mut notify, sock) = Notify::bind(&own);
        let mut cmd = beatd(dir.path());
        cmd.args([sub, "--http-addr", "off"])
            .env("NOTIFY_SOCKET", &sock);
        if sub == "worker" {
            cmd.args(["--redis-url", &server.url()]);
        } else {
            cmd.arg("--schedules")
                .arg(&schedule)
                .arg("--state-file")
                .arg(dir.path().join("state.json"));
        }
        let mut p = Proc::spawn(cmd);
        notify.until("READY=1");
        p.signal("TERM");
        notify.until("STOPPING=1");
        assert!(p.wait_exit().success(), "{sub}: {}", p.output());
    }
}

fn unit_value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_units_are_hardened_and_pass_systemd_analyze_verify() {
    let units = ["beatd-beat.service", "beatd-worker.service"];
    let src = repo().join("deploy/systemd");
    for name in units {
        let unit = std::fs::read_to_string(src.join(name)).unwrap();
        for (key, want) in [
            ("Type", "notify"),
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("StateDirectory", "beatd"),
            ("EnvironmentFile", "-/etc/default/beatd"),
        ] {
            assert_eq!(unit_value(&unit, key), [want], "{name}: {key}");
        }
        assert_eq!(
            unit_value(&unit, "ExecStartPre"),
            ["/usr/local/bin/beatd check"],
            "{name}"
        );
        let stop: u64 = unit_value(&unit, "TimeoutStopSec")[0]
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            stop > 30,
            "{name}: TimeoutStopSec must exceed the 30 s shutdown grace"
        );
        assert!(!unit_value(&unit, "WatchdogSec").is_empty(), "{name}");
    }
    let beat = std::fs::read_to_string(src.join("beatd-beat.service")).unwrap();
    assert_eq!(
        unit_value(&beat, "ExecReload"),
        ["/usr/local/bin/beatd check", "/bin/kill -HUP $MAINPID"],
        "check first, then SIGHUP"
    );
    // Every variable of the EnvironmentFile example is one beatd reads.
    let mut help = String::new();
    for sub in ["beat", "worker", "run"] {
        let out = Command::new(bin()).args([sub, "--help"]).output().unwrap();
        help.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let default = std::fs::read_to_string(src.join("beatd.default")).unwrap();
    for line in default
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let var = line.split('=').next().unwrap();
        let known = help.contains(&format!("env: {var}="))
            || ["BEATD_LOG", "BEATD_LOG_FORMAT", "BEATD_REDIS_URL"].contains(&var);
        assert!(known, "beatd.default sets {var}, which beatd does not read");
    }

    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        println!("NOTICE: systemd-analyze not installed; skipping `systemd-analyze verify`");
        return;
    };
    // verify wants every Exec binary to exist: point the units at the built binary.
    let tmp = tempdir();
    let mut paths = Vec::new();
    for name in units {
        let unit = std::fs::read_to_string(src.join(name))
            .unwrap()
            .replace("/usr/local/bin/beatd", &bin().display().to_string());
        paths.push(write(tmp.path(), name, &unit));
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stdout}{stderr}"
    );
    // Warnings about our units count as failures too.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("beatd"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warns:\n{}",
        ours.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

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

#[test]
fn sighup_reload_replaces_the_schedule_without_spurious_or_lost_fires() {
    let server = redis();
    let dir = tempdir();
    // The schedule path is a symlink into a directory the watcher does not see, so only the
    // SIGHUP can trigger this reload.
    let real = dir.path().join("real");
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::create_dir_all(&watched).unwrap();
    let target = write(&real, "s.toml", &entries(&["keep", "gone"]));
    let schedule = watched.join("s.toml");
    std::os::unix::fs::symlink(&target, &schedule).unwrap();
    let http = port();
    let mut p = start_beat(&server, dir.path(), &schedule, http);
    let mut conn = redis_conn(&server.url());
    wait_proc(&p, "two fires of keep and gone", || {
        (count(&mut conn, "keep") >= 2 && count(&mut conn, "gone") >= 1).then_some(())
    });

    write(&real, "s.toml", &entries(&["keep", "new"]));
    let mark = p.mark();
    p.signal("HUP");
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules reloaded"));
    wait_proc(&p, "two fires of new", || {
        (count(&mut conn, "new") >= 2).then_some(())
    });
    let text = wait_metric(&p, http, "beatd_reloads_total", 1.0);
    assert_eq!(metric(&text, "beatd_reload_failures_total"), Some(0.0));

    let all = fires(&mut conn, "celery");
    assert_consecutive(&all, "keep", chrono::Duration::seconds(1));
    assert_consecutive(&all, "new", chrono::Duration::seconds(1));
    let second_new = all
        .iter()
        .filter(|(e, _)| e == "new")
        .nth(1)
        .unwrap()
        .1
        .clone();
    assert!(
        all.iter()
            .all(|(e, t)| e != "gone" || at(t) < at(&second_new)),
        "a removed entry fired after the reload: {all:?}"
    );
    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}

const INVALID: &str = r#"[[entry]]
name = "keep"
task = "t.ok"
every = "1 fortnight"

[[entry]]
name = "other"
task = "t.ok"
cron = "61 * * * *"
"#;

#[test]
fn watched_file_reload_rejects_invalid_files_and_keeps_the_old_schedule() {
    let server = redis();
    let dir = tempdir();
    let schedules = dir.path().join("schedules");
    std::fs::create_dir_all(&schedules).unwrap();
    let file = write(&schedules, "s.toml", &entries(&["keep"]));
    let http = port();
    let mut p = start_beat(&server, dir.path(), &schedules, http);
    let mut conn = redis_conn(&server.url());
    wait_proc(&p, "a fire of keep", || {
        (count(&mut conn, "keep") >= 1).then_some(())
    });

    // Invalid: every error is logged with file:line:column; the old schedule stays.
    let mark = p.mark();
    write(&schedules, "s.toml", INVALID);
    p.wait_line_after(mark, "the rejected reload", |l| {
        l.contains("reload rejected")
    });
    let text = wait_metric(&p, http, "beatd_reload_failures_total", 1.0);
    assert_eq!(metric(&text, "beatd_reloads_total"), Some(0.0));
    let logged = p.lines()[mark..].join("\n");
    for at in [
        ":4:9: error: invalid duration",
        ":9:9: error: invalid `cron`",
    ] {
        let want = format!("{}{at}", file.display());
        assert!(logged.contains(&want), "missing {want:?} in\n{logged}");
    }
    let before = count(&mut conn, "keep");
    wait_proc(&p, "keep firing on after the failure", || {
        (count(&mut conn, "keep") >= before + 2).then_some(())
    });

    // Valid again: applied, with keep's history intact.
    let mark = p.mark();
    write(&schedules, "s.toml", &entries(&["keep", "added"]));
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules reloaded"));
    wait_proc(&p, "two fires of added", || {
        (count(&mut conn, "added") >= 2).then_some(())
    });
    wait_metric(&p, http, "beatd_reloads_total", 1.0);
    let all = fires(&mut conn, "celery");
    assert!(
        all.iter().all(|(e, _)| e != "other"),
        "the rejected entry fired"
    );
    assert_consecutive(&all, "keep", chrono::Duration::seconds(1));
    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}

#[test]
fn kubernetes_configmap_symlink_swap_reloads() {
    let server = redis();
    let dir = tempdir();
    // The layout kubelet writes for a ConfigMap volume:
    //   ..2026_11_23_a/s.toml, ..data -> ..2026_11_23_a, s.toml -> ..data/s.toml
    let cm = dir.path().join("schedules");
    let v1 = cm.join("..2026_11_23_a");
    std::fs::create_dir_all(&v1).unwrap();
    write(&v1, "s.toml", &entries(&["one"]));
    std::os::unix::fs::symlink("..2026_11_23_a", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/s.toml", cm.join("s.toml")).unwrap();
    let http = port();
    let mut p = start_beat(&server, dir.path(), &cm, http);
    let mut conn = redis_conn(&server.url());
    wait_proc(&p, "a fire of one", || {
        (count(&mut conn, "one") >= 1).then_some(())
    });

    // The update, as kubelet does it: new directory, new symlink, atomic rename over ..data.
    let v2 = cm.join("..2026_11_23_b");
    std::fs::create_dir_all(&v2).unwrap();
    write(&v2, "s.toml", &entries(&["two"]));
    std::os::unix::fs::symlink("..2026_11_23_b", cm.join("..data_tmp")).unwrap();
    let mark = p.mark();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules reloaded"));
    wait_proc(&p, "two fires of two", || {
        (count(&mut conn, "two") >= 2).then_some(())
    });
    let all = fires(&mut conn, "celery");
    let second = all
        .iter()
        .filter(|(e, _)| e == "two")
        .nth(1)
        .unwrap()
        .1
        .clone();
    assert!(
        all.iter().all(|(e, t)| e != "one" || at(t) < at(&second)),
        "{all:?}"
    );
    assert_eq!(
        metric(
            &http_get(http, "/metrics").unwrap().1,
            "beatd_reload_failures_total"
        ),
        Some(0.0)
    );
    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}

// ---------------------------------------------------------------------------------------
// Kubernetes manifests, Procfile
// ---------------------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_validate_against_the_schemas_offline() {
    let python = std::env::var_os("BEATD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-celery/bin/python"));
    assert!(
        python.exists(),
        "{} missing: run scripts/test.sh, which installs kubernetes-validate in the test venv",
        python.display()
    );
    let out = Command::new(&python)
        .arg(repo().join("scripts/check_k8s.py"))
        .arg(repo().join("deploy/k8s"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/k8s is invalid:\n{text}");
    assert!(text.starts_with("ok: "), "{text}");
}

#[test]
fn procfile_processes_start_and_become_ready() {
    let server = redis();
    let procfile = std::fs::read_to_string(repo().join("Procfile")).unwrap();
    let lines: Vec<(&str, &str)> = procfile
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once(':').expect("name: command"))
        .map(|(n, c)| (n.trim(), c.trim()))
        .collect();
    let names: Vec<&str> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["beat", "worker"]);
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut procs = Vec::new();
    for (name, command) in lines {
        let http = port();
        let mut cmd = Command::new("sh");
        clean_env(&mut cmd);
        // A platform (or foreman/honcho on one host) runs the line through a shell in the
        // app's root, with REDIS_URL and a PORT of its own for each process.
        cmd.current_dir(repo())
            .args(["-c", &format!("exec {command}")])
            .env("PATH", &path)
            .env("REDIS_URL", server.url())
            .env("PORT", http.to_string());
        let p = Proc::spawn(cmd);
        procs.push((name, p, http));
    }
    for (name, p, http) in &procs {
        assert_eq!(wait_http(p, *http, "/readyz", 200), "ready\n", "{name}");
    }
    for (name, p, _) in &mut procs {
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{name}: {}", p.output());
    }
}

// ---------------------------------------------------------------------------------------
// Logs and secrets
// ---------------------------------------------------------------------------------------

#[test]
fn json_logs_carry_fire_fields_and_levels_come_from_the_environment() {
    let server = redis();
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let mut conn = redis_conn(&server.url());
    let run = |env: &[(&str, &str)], conn: &mut redis::Connection| {
        let _: () = redis::cmd("FLUSHALL").query(conn).unwrap();
        let mut cmd = beatd(dir.path());
        cmd.args(["--log-format", "json", "beat", "--redis-url", &server.url()])
            .args(["--http-addr", "off", "--schedules"])
            .arg(&schedule)
            .envs(env.iter().copied());
        let mut p = Proc::spawn(cmd);
        wait_proc(&p, "two messages", || {
            (count(conn, "tick") >= 2).then_some(())
        });
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
        p
    };

    let p = run(&[("BEATD_LOG", "info"), ("RUST_LOG", "warn")], &mut conn);
    let mut fire = None;
    for line in p.lines() {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"));
        assert!(v.is_object() && v["level"].is_string(), "{line}");
        if v["message"] == "fire" {
            fire = Some(v);
        }
    }
    let fire = fire.unwrap_or_else(|| panic!("no fire line (BEATD_LOG wins)\n{}", p.output()));
    assert_eq!(fire["entry"], "tick");
    assert_eq!(fire["task"], "t.ok");
    assert!(fire["epoch"].as_u64().unwrap() >= 1, "{fire}");
    // The same RFC 3339 form as the message's beatd_scheduled_at header.
    let scheduled = fire["scheduled"].as_str().expect("scheduled");
    at(scheduled);
    assert!(
        fires(&mut conn, "celery")
            .iter()
            .any(|(_, t)| t == scheduled),
        "{fire}"
    );
    // The logged task id is the id of a message in Redis.
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg("celery")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let ids: Vec<String> = raw
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap()["headers"]["id"].to_string())
        .collect();
    assert!(
        ids.contains(&fire["task_id"].to_string()),
        "{fire} not in {ids:?}"
    );

    // RUST_LOG alone sets the level: at warn, no info line although messages were sent.
    let p = run(&[("RUST_LOG", "warn")], &mut conn);
    assert!(
        p.lines().iter().all(|l| !l.contains("\"INFO\"")),
        "{}",
        p.output()
    );
}

#[test]
fn no_secret_is_ever_printed() {
    const PASSWORD: &str = "pw-Zq81-s3cret";
    const WRONG: &str = "pw-Zq81-wrong";
    const HEADER: &str = "hdr-Zq81-value";
    let mut server = RedisServer::start_with(&["--requirepass", PASSWORD]).unwrap();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", server.port());
    let wrong = format!("redis://:{WRONG}@127.0.0.1:{}/0", server.port());
    let dir = tempdir();
    let schedule = write(
        dir.path(),
        "s.toml",
        "[[entry]]\nname = \"hook\"\ntask = \"hooks.x\"\nevery = \"1s\"\n",
    );
    // Nothing listens on this port: the task fails with a connection error.
    write(
        dir.path(),
        "beatd.toml",
        &format!(
            "[worker.tasks.\"hooks.x\"]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/hook\"\n\
             headers = {{ Authorization = \"Bearer {HEADER}\", X-Token = {{ env = \"HOOK_TOKEN\" }} }}\n",
            port()
        ),
    );
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let http = port();
        let mut cmd = beatd(dir.path());
        cmd.args(["--log-format", format, "run", "--redis-url", &url])
            .arg("--schedules")
            .arg(&schedule)
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .env("HOOK_TOKEN", HEADER)
            .env("BEATD_LOG", "trace");
        let mut p = Proc::spawn(cmd);
        wait_http(&p, http, "/readyz", 200);
        let text = wait_metric(
            &p,
            http,
            "beatd_worker_tasks_total{task=\"hooks.x\",state=\"failure\"}",
            1.0,
        );
        outputs.push(text);
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
        let out = p.output();
        assert!(
            out.contains("hooks.x") && out.contains("127.0.0.1"),
            "{out}"
        );
        outputs.push(out);
    }
    // One-shot commands, with the right and a wrong password.
    for (args, ok) in [
        (
            vec!["status", "--schedules", "s.toml", "--redis-url", &url],
            true,
        ),
        (vec!["send", "hooks.x", "--redis-url", &url], true),
        (
            vec!["status", "--schedules", "s.toml", "--redis-url", &wrong],
            false,
        ),
        (
            vec![
                "beat",
                "--http-addr",
                "off",
                "--schedules",
                "s.toml",
                "--redis-url",
                &wrong,
            ],
            false,
        ),
    ] {
        let out = beatd(dir.path()).args(&args).output().unwrap();
        assert_eq!(out.status.success(), ok, "{args:?}: {out:?}");
        outputs.push(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Redis down: the retry warnings name the server, not its password.
    server.kill();
    let mut cmd = beatd(dir.path());
    cmd.args([
        "beat",
        "--http-addr",
        "off",
        "--schedules",
        "s.toml",
        "--redis-url",
        &url,
    ])
    .env("BEATD_LOG", "debug");
    let mut p = Proc::spawn(cmd);
    p.wait_line("a retry warning", |l| l.contains("store unavailable"));
    p.signal("TERM");
    p.wait_exit();
    outputs.push(p.output());

    let all = outputs.join("\n");
    // The URL does reach the logs, redacted: the check below is not vacuous.
    assert!(
        all.contains(&format!("redis://:***@127.0.0.1:{}", server.port())),
        "{all}"
    );
    for secret in [PASSWORD, WRONG, HEADER] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_tzdata_and_a_build_time_check() {
    // No container engine here: check the facts the image relies on, and run the build's
    // `beatd check` step against what it copies.
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(text.contains("tzdata"), "time zone data installed");
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "runs as root: {user}"
    );
    // `COPY schedules <dest>` then `RUN beatd check <dest>`.
    let dest = lines
        .iter()
        .find_map(|l| l.strip_prefix("COPY schedules "))
        .expect("schedules copied into the image")
        .trim();
    assert!(
        lines.contains(&format!("RUN beatd check {dest}").as_str()),
        "{text}"
    );
    let out = Command::new(bin())
        .args(["check"])
        .arg(repo().join("schedules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the image's build-time check fails: {out:?}"
    );
}

#[test]
fn a_standby_is_ready_and_takes_over_after_the_leader_stops() {
    let server = redis();
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let (a, b) = (port(), port());
    let mut first = start_beat(&server, dir.path(), &schedule, a);
    wait_metric(&first, a, "beatd_is_leader", 1.0);
    let second = start_beat(&server, dir.path(), &schedule, b);
    assert_eq!(wait_http(&second, b, "/readyz", 200), "ready\n");
    let (_, text) = http_get(b, "/metrics").unwrap();
    assert_eq!(metric(&text, "beatd_is_leader"), Some(0.0), "two leaders");
    first.signal("TERM");
    assert!(first.wait_exit().success(), "{}", first.output());
    let text = wait_metric(&second, b, "beatd_is_leader", 1.0);
    assert_eq!(metric(&text, "beatd_lock_acquisitions_total"), Some(1.0));
}

#[test]
fn readme_metrics_table_lists_exactly_the_exported_metrics() {
    let m = beatd::ops::metrics::Metrics::default();
    // Families list no TYPE line until they have a series.
    let labels = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let _ = m.messages_sent.get_or_create(&labels(&[("entry", "e")]));
    let _ = m
        .worker_tasks
        .get_or_create(&labels(&[("task", "t"), ("state", "success")]));
    let _ = m.task_duration.get_or_create(&labels(&[("task", "t")]));
    let exported: std::collections::BTreeSet<String> = m
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `beatd_"))
        .map(|l| {
            let name = l.split('`').next().unwrap();
            format!("beatd_{}", name.trim_end_matches("_total"))
        })
        .collect();
    assert_eq!(
        documented, exported,
        "README's metrics table drifted from src/ops/metrics.rs"
    );
}
