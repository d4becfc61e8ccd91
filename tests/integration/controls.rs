//! Runtime controls end to end: `beatd pause`, `resume`, `trigger` and `backfill` against
//! `beatd beat` replicas on a real redis-server (including across a kill -9 of the leader),
//! and against `beatd run` through its HTTP port; their refusals and exit codes.

use crate::ha_util::{
    assert_exactly_once, dump_logs, leader_pid, now, queue, redis, wait_leader, wait_until, Beat,
    BeatOpts, Schedules,
};
use beatd::testkit::RedisServer;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

const SCHEDULE: &str = "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
    catch_up = \"all\"\ncatch_up_window = \"1m\"\n\n\
    [[entry]]\nname = \"off\"\ntask = \"ha.off\"\nevery = \"1s\"\nenabled = false\n";

/// Raw envelopes of the `celery` list, oldest first.
fn raw(url: &str) -> Vec<Value> {
    let mut c = redis(url);
    let list: Vec<String> = ::redis::cmd("LRANGE")
        .arg("celery")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .expect("LRANGE");
    list.iter()
        .rev()
        .map(|r| serde_json::from_str(r).expect("json"))
        .collect()
}

/// Messages of `entry` with `beatd_trigger` = `kind` (`None`: regular ones).
fn with_trigger(url: &str, entry: &str, kind: Option<&str>) -> Vec<Value> {
    raw(url)
        .into_iter()
        .filter(|m| m["headers"]["beatd_entry"] == entry)
        .filter(|m| m["headers"]["beatd_trigger"].as_str() == kind)
        .collect()
}

fn scheduled(m: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(m["headers"]["beatd_scheduled_at"].as_str().unwrap())
        .unwrap()
        .to_utc()
}

/// Runs `beatd <args>` against `url`.
fn ctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beatd"))
        .args(args)
        .env("BEATD_REDIS_URL", url)
        .env_remove("BEATD_CONTROL_URL")
        .env_remove("BEATD_CONTROL_TOKEN")
        .env("BEATD_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run beatd")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn logs(beats: &[Beat]) -> String {
    dump_logs(&beats.iter().collect::<Vec<_>>())
}

fn ttl3() -> BeatOpts {
    BeatOpts {
        lock_ttl: Some("3s"),
        ..BeatOpts::default()
    }
}

#[test]
fn pause_survives_a_kill9_failover_trigger_and_backfill_during_it_send_once() {
    let redis_server = RedisServer::start().expect("redis-server");
    let url = redis_server.url();
    let s = Schedules::new(SCHEDULE);
    let mut beats: Vec<Beat> = (0..2).map(|_| Beat::spawn(&url, &s, &ttl3())).collect();
    let pids: Vec<u32> = beats.iter().map(|b| b.pid).collect();
    let leader = wait_leader(&url, &pids, WAIT);
    wait_until("3 regular fires", WAIT, || {
        with_trigger(&url, "tick", None).len() >= 3
    });

    let out = ctl(&url, &["pause", "tick"]);
    assert!(out.status.success(), "{}", text(&out));
    let paused_at = now();
    // Effective within a second: nothing scheduled later than that is sent.
    std::thread::sleep(Duration::from_secs(3));
    let late: Vec<_> = with_trigger(&url, "tick", None)
        .into_iter()
        .filter(|m| scheduled(m) > paused_at + TimeDelta::seconds(1))
        .collect();
    assert!(
        late.is_empty(),
        "sent while paused: {late:#?}\n{}",
        logs(&beats)
    );

    // Kill the leader; ask for a trigger while no replica leads (the request waits).
    beats.iter_mut().find(|b| b.pid == leader).unwrap().kill9();
    let trig = ctl(&url, &["trigger", "tick", "--wait", "20s"]);
    assert!(trig.status.success(), "{}\n{}", text(&trig), logs(&beats));
    let survivor = *pids.iter().find(|p| **p != leader).unwrap();
    assert_eq!(leader_pid(&url), Some(survivor));
    assert_eq!(
        with_trigger(&url, "tick", Some("manual")).len(),
        1,
        "{}",
        logs(&beats)
    );

    // The pause held across the failover: the new leader sent no regular fire.
    std::thread::sleep(Duration::from_secs(2));
    let late: Vec<_> = with_trigger(&url, "tick", None)
        .into_iter()
        .filter(|m| scheduled(m) > paused_at + TimeDelta::seconds(1))
        .collect();
    assert!(
        late.is_empty(),
        "sent while paused after failover: {late:#?}\n{}",
        logs(&beats)
    );
    let status = ctl(
        &url,
        &[
            "status",
            "--schedules",
            s.path().to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    let st: Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|_| panic!("{}", text(&status)));
    let tick = st["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entry"] == "tick")
        .unwrap();
    assert!(tick["paused"].is_object(), "status: {st:#}");
    assert!(
        tick["skipped"]["pause"].as_u64().unwrap() >= 2,
        "status: {st:#}"
    );

    // Backfill the paused stretch twice: the second sends nothing new.
    let (from, to) = (rfc(paused_at - TimeDelta::seconds(10)), rfc(now()));
    let b1 = ctl(&url, &["backfill", "tick", "--from", &from, "--to", &to]);
    assert!(b1.status.success(), "{}", text(&b1));
    let first = with_trigger(&url, "tick", Some("backfill")).len();
    assert!(first >= 4, "{}\n{}", text(&b1), logs(&beats));
    let b2 = ctl(&url, &["backfill", "tick", "--from", &from, "--to", &to]);
    assert!(b2.status.success(), "{}", text(&b2));
    assert_eq!(
        with_trigger(&url, "tick", Some("backfill")).len(),
        first,
        "{}",
        text(&b2)
    );

    // Resume: regular fires flow again. No (entry, fire time) is in the queue twice, the
    // backfilled ones included (a regular fire time is never backfilled).
    let r = ctl(&url, &["resume", "tick"]);
    assert!(r.status.success(), "{}", text(&r));
    let resumed = now();
    wait_until("regular fires after resume", WAIT, || {
        with_trigger(&url, "tick", None)
            .iter()
            .filter(|m| scheduled(m) > resumed)
            .count()
            >= 2
    });
    let msgs: Vec<_> = queue(&url).into_iter().collect();
    let not_manual: Vec<_> = msgs
        .iter()
        .zip(raw(&url))
        .filter(|(_, m)| m["headers"]["beatd_trigger"] != "manual")
        .map(|(m, _)| m.clone())
        .collect();
    let ctx = logs(&beats);
    assert_exactly_once(&not_manual, &ctx);
    for b in &mut beats {
        if b.running() {
            b.terminate(Duration::from_secs(15));
        }
    }
}

#[test]
fn bad_requests_are_refused_with_their_exit_codes_and_send_nothing() {
    let redis_server = RedisServer::start().expect("redis-server");
    let url = redis_server.url();
    let s = Schedules::new(SCHEDULE);

    // No leader yet: the request is not answered (exit 4) and expires unapplied.
    let stale = ctl(&url, &["trigger", "tick", "--wait", "1s"]);
    assert_eq!(stale.status.code(), Some(4), "{}", text(&stale));

    let mut beat = Beat::spawn(&url, &s, &ttl3());
    wait_leader(&url, &[beat.pid], WAIT);
    // The stale trigger is refused by the new leader, not sent.
    wait_until("stale request refused", WAIT, || {
        beat.log_events("control request refused: request reached the leader")
            .len()
            + beat
                .log_text()
                .lines()
                .filter(|l| l.contains("\"reason\":\"Some(Stale)\""))
                .count()
            >= 1
    });
    let cases: [(&[&str], &str); 6] = [
        (&["pause", "nope"], "no entry named \"nope\""),
        (&["trigger", "tik"], "did you mean \"tick\""),
        (&["pause", "off"], "disabled"),
        (
            &[
                "backfill",
                "tick",
                "--from",
                "2026-01-02T00:00:00Z",
                "--to",
                "2026-01-01T00:00:00Z",
            ],
            "is after --to",
        ),
        (
            &[
                "backfill",
                "tick",
                "--from",
                "2026-01-01T00:00:00Z",
                "--to",
                "2026-01-01T00:10:00Z",
            ],
            "confirm with --yes",
        ),
        (
            &[
                "backfill",
                "tick",
                "--from",
                "2026-01-01T00:00:00Z",
                "--to",
                "2026-01-02T00:00:00Z",
                "--yes",
            ],
            "more than 10000",
        ),
    ];
    for (args, says) in cases {
        let out = ctl(&url, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let future = rfc(now() + TimeDelta::hours(1));
    let out = ctl(&url, &["pause", "tick", "--until", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = ctl(
        &url,
        &["backfill", "tick", "--from", &rfc(now()), "--to", &future],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let sent: Vec<_> = raw(&url)
        .into_iter()
        .filter(|m| !m["headers"]["beatd_trigger"].is_null())
        .collect();
    assert!(
        sent.is_empty(),
        "refused requests sent: {sent:#?}\n{}",
        beat.log_text()
    );
    beat.terminate(Duration::from_secs(15));
}

/// `beatd run` (embedded) whose task appends its scheduled time and task id to `runs.txt`.
mod embedded {
    use super::text;
    use crate::util::{beatd, output, project, signal, spawn_logged, wait_exit, wait_for};
    use std::path::Path;
    use std::time::Duration;

    const TOKEN: &str = "s3cret-token";

    fn config(dir: &Path) -> String {
        format!(
            "[worker.tasks.\"demo.record\"]\nkind = \"exec\"\n\
             command = [\"sh\", \"-c\", \"echo \\\"$BEATD_TASK_SCHEDULED_AT $BEATD_TASK_ID\\\" >> '{}'\"]\n",
            dir.join("runs.txt").display()
        )
    }

    fn runs(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("runs.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn start(dir: &Path, port: u16, log: &str) -> std::process::Child {
        spawn_logged(
            beatd(dir).args([
                "run",
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--control-token",
                TOKEN,
            ]),
            &dir.join(log),
        )
    }

    fn ctl(dir: &Path, port: u16, token: &str, args: &[&str]) -> std::process::Output {
        output(beatd(dir).args(args).args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--control-token",
            token,
        ]))
    }

    #[test]
    fn pause_over_http_survives_a_restart_trigger_sends_one_wrong_token_none() {
        let dir = project(&[(
            "schedules/s.toml",
            "[[entry]]\nname = \"tick\"\ntask = \"demo.record\"\nevery = \"1s\"\n",
        )]);
        let d = dir.path();
        std::fs::write(d.join("beatd.toml"), config(d)).unwrap();
        let port = beatd::testkit::free_port().unwrap();
        let mut first = start(d, port, "first.log");
        let log = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
        assert!(
            wait_for(Duration::from_secs(30), || runs(d).len() >= 2),
            "{}",
            log("first.log")
        );
        let out = ctl(d, port, TOKEN, &["pause", "tick"]);
        assert!(out.status.success(), "{}\n{}", text(&out), log("first.log"));
        // Restart: the pause is in the controls file beside the state file.
        signal(&first, "TERM");
        assert!(wait_exit(&mut first, Duration::from_secs(20)).success());
        let before = runs(d).len();
        let mut second = start(d, port, "second.log");
        assert!(
            wait_for(Duration::from_secs(20), || log("second.log")
                .contains("fire time skipped: entry paused")),
            "{}",
            log("second.log")
        );
        assert_eq!(
            runs(d).len(),
            before,
            "ran while paused:\n{}",
            log("second.log")
        );
        let status = output(beatd(d).args(["status", "--format", "json"]));
        let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert!(st["entries"][0]["paused"].is_object(), "{st:#}");

        // A wrong token sends nothing; the right one exactly one run.
        let bad = ctl(d, port, "wrong", &["trigger", "tick"]);
        assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
        let ok = ctl(d, port, TOKEN, &["trigger", "tick"]);
        assert!(ok.status.success(), "{}", text(&ok));
        assert!(
            wait_for(Duration::from_secs(20), || runs(d).len() == before + 1),
            "{}",
            log("second.log")
        );
        // Still paused after the trigger: the count stays.
        assert!(
            wait_for(Duration::from_secs(10), || log("second.log")
                .matches("fire time skipped: entry paused")
                .count()
                >= 3),
            "{}",
            log("second.log")
        );
        assert_eq!(runs(d).len(), before + 1, "{}", log("second.log"));
        let resume = ctl(d, port, TOKEN, &["resume", "tick"]);
        assert!(resume.status.success(), "{}", text(&resume));
        assert!(
            wait_for(Duration::from_secs(20), || runs(d).len() >= before + 3),
            "{}",
            log("second.log")
        );
        let metrics = crate::ops_util::http_get(port, "/metrics").unwrap().1;
        assert!(
            metrics.contains("beatd_fires_skipped_total{entry=\"tick\",reason=\"pause\"}"),
            "{metrics}"
        );
        signal(&second, "TERM");
        assert!(wait_exit(&mut second, Duration::from_secs(20)).success());
    }
}
