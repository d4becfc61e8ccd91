//! Overlap policies with slow tasks on beatd's worker over a real redis-server: with
//! `overlap = "skip"` no run starts before the previous one finished (a worker with room for
//! four at once), and the fire times held back are counted; `buffer_one` sends a waiting one
//! when the previous finishes; `check` rejects both without a result backend.

use crate::util::{beatd, output, project, signal, spawn_logged, texts, wait_exit, wait_for};
use beatd::testkit::RedisServer;
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path) -> String {
    format!(
        "[worker.tasks.\"demo.slow\"]\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"echo S $(date +%s.%N) >> '{f}'; sleep 2.5; echo E $(date +%s.%N) >> '{f}'\"]\n",
        f = dir.join("runs.txt").display()
    )
}

/// (start, end) of each finished run, in start order.
fn runs(dir: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(dir.join("runs.txt")).unwrap_or_default();
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let (k, t) = l.split_once(' ').unwrap();
        let t: f64 = t.parse().unwrap();
        if k == "S" {
            starts.push(t)
        } else {
            ends.push(t)
        }
    }
    starts.sort_by(f64::total_cmp);
    ends.sort_by(f64::total_cmp);
    starts.into_iter().zip(ends).collect()
}

fn run_policy(policy: &str) -> (Vec<(f64, f64)>, String) {
    let server = RedisServer::start().expect("redis-server");
    let dir = project(&[(
        "schedules/s.toml",
        &format!(
            "[[entry]]\nname = \"slow\"\ntask = \"demo.slow\"\nevery = \"1s\"\noverlap = \"{policy}\"\n"
        ),
    )]);
    let d = dir.path();
    std::fs::write(d.join("beatd.toml"), config(d)).unwrap();
    let mut p = spawn_logged(
        beatd(d).args([
            "run",
            "--redis-url",
            &server.url(),
            "--http-addr",
            "off",
            "--concurrency",
            "4",
        ]),
        &d.join("run.log"),
    );
    let log = || std::fs::read_to_string(d.join("run.log")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(60), || runs(d).len() >= 3),
        "{}",
        log()
    );
    signal(&p, "TERM");
    assert!(
        wait_exit(&mut p, Duration::from_secs(30)).success(),
        "{}",
        log()
    );
    (runs(d), log())
}

#[test]
fn skip_never_starts_a_run_before_the_previous_one_finished_and_counts_the_rest() {
    let (runs, log) = run_policy("skip");
    for w in runs.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlapped: {runs:?}\n{log}");
    }
    let skipped = log
        .matches("fire time skipped: the previous run has not finished")
        .count();
    assert!(skipped >= 2, "no fire time skipped by overlap:\n{log}");
}

#[test]
fn buffer_one_sends_one_waiting_run_when_the_previous_finishes() {
    let (runs, log) = run_policy("buffer_one");
    for w in runs.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlapped: {runs:?}\n{log}");
    }
    assert!(
        log.contains("fire time buffered: the previous run has not finished"),
        "{log}"
    );
    assert!(
        log.contains("control=\"resume\"") || log.contains("catch_up=true"),
        "no buffered run sent:\n{log}"
    );
}

#[test]
fn check_rejects_skip_and_buffer_one_without_a_result_backend() {
    let dir = project(&[(
        "schedules/s.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t.a\"\nevery = \"1s\"\noverlap = \"skip\"\n\n\
         [[entry]]\nname = \"b\"\ntask = \"t.b\"\nevery = \"1s\"\noverlap = \"buffer_one\"\n\n\
         [[entry]]\nname = \"c\"\ntask = \"t.c\"\nevery = \"1s\"\noverlap = \"skp\"\n",
    )]);
    let out = output(beatd(dir.path()).arg("check"));
    let (_, err) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did you mean `skip`?"), "{err}");
    let fixed = "[[entry]]\nname = \"a\"\ntask = \"t.a\"\nevery = \"1s\"\noverlap = \"skip\"\n";
    std::fs::write(dir.path().join("schedules/s.toml"), fixed).unwrap();
    let out = output(beatd(dir.path()).arg("check"));
    let (_, err) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs a result backend"), "{err}");
    let out = output(
        beatd(dir.path())
            .arg("check")
            .env("BEATD_REDIS_URL", "redis://127.0.0.1:1/0"),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
}
