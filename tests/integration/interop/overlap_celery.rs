//! Overlap policies against a stock Celery worker: `beatd beat` (HA, Redis) sends a task that
//! sleeps 2.5 s every second to `celery worker` with four threads (room to run four at once),
//! with `overlap = "skip"` and with `"buffer_one"`. beatd learns that a run finished only from
//! the `SUCCESS` record the Celery worker stores in the result backend (Celery stores no
//! record while a task runs unless `task_track_started`, and beatd needs none: no final state
//! means still running). The `skip` test keeps Celery's results in another database than the
//! broker, as Celery deployments often do, named to beatd with `--result-backend`.
//!
//! Checked from what Celery recorded (each run's start and end, written by the task in order,
//! and its stored result) and what the beat logged, with the checks of
//! `crate::overlap`: runs never overlap, every fire time is sent or counted as skipped, the
//! counts in `beatd status` and `/metrics` agree with the log, and for `buffer_one` exactly
//! one waiting run per busy period, the first fire time due in it, sent once the previous
//! one's result was stored; and no fire time is held back that came due after the previous
//! run's result was stored (the state is read at the fire time, not when it is staged).

use super::*;
use crate::overlap::{
    assert_accounted, assert_buffer_one, assert_buffered_while_busy, assert_held_while_busy,
    assert_skip, decisions, fired_ids, print_gaps, serial_runs, Decision, Run, RunEvent,
};

/// The Celery worker with a thread pool of four: without the policy runs would overlap.
/// Results go to `backend`.
fn start_threaded_celery_worker(s: &mut Scene, backend: &str) {
    let mut cmd = s.command(python());
    cmd.env("INTEROP_BACKEND_URL", backend);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "pyapp",
        "worker",
        "--pool=threads",
        "-c",
        "4",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-l",
        "info",
        "-n",
        &format!("interop-{}@%h", uuid::Uuid::new_v4().simple()),
        "-Q",
        "celery",
    ]);
    s.spawn("celery-worker", cmd);
}

fn run_events(s: &Scene) -> Vec<RunEvent> {
    s.records()
        .into_iter()
        .filter(|r| r["phase"] == "start" || r["phase"] == "end")
        .map(|r| RunEvent {
            id: r["id"].as_str().expect("id").to_owned(),
            start: r["phase"] == "start",
            t: r["t"].as_f64().expect("t"),
        })
        .collect()
}

/// The stored result of `id` on `backend`.
fn result_on(backend: &str, id: &str) -> Option<Value> {
    let mut c = redis::Client::open(backend)
        .expect("url")
        .get_connection()
        .expect("connect to the result backend");
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query(&mut c)
        .expect("GET");
    raw.map(|s| serde_json::from_str(&s).expect("result is JSON"))
}

/// Runs the scene under `policy` until four runs ended, reads `/metrics`, stops the beat,
/// lets every run sent finish, and checks what is common to both policies. With
/// `split_backend`, Celery's results go to database 1 (Celery's common layout: broker and
/// backend apart), which beatd is told with `--result-backend`. Returns the decisions, the
/// runs and the context for messages.
fn celery_policy(policy: &str, split_backend: bool) -> (Vec<Decision>, Vec<Run>, Vec<f64>, String) {
    let mut s = Scene::new();
    let url = s.url();
    let backend = if split_backend {
        format!("{}1", url.trim_end_matches('0'))
    } else {
        url.clone()
    };
    s.write(
        "schedules/busy.toml",
        &format!(
            "[[entry]]\nname = \"busy\"\ntask = \"interop.busy\"\nevery = \"1s\"\n\
             args = [2.5]\noverlap = \"{policy}\"\n"
        ),
    );
    start_threaded_celery_worker(&mut s, &backend);
    s.wait_log("celery-worker", "ready.");
    let port = beatd::testkit::free_port().expect("free port");
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = s.beatd_cmd(&[
        "--log-format",
        "json",
        "beat",
        "--schedules",
        "schedules",
        "--redis-url",
        &url,
        "--http-addr",
        &addr,
    ]);
    if split_backend {
        cmd.args(["--result-backend", &backend]);
    }
    s.spawn("beatd-beat", cmd);
    s.wait_for("four runs ended on the Celery worker", || {
        (run_events(&s).iter().filter(|e| !e.start).count() >= 4).then_some(())
    });
    let series = "beatd_fires_skipped_total{entry=\"busy\",reason=\"overlap\"}";
    let metrics = s.wait_for("the overlap skips in /metrics", || {
        let (_, body) = crate::ops_util::http_get(port, "/metrics")?;
        crate::ops_util::metric(&body, series)
    });
    s.stop("beatd-beat");
    let log = s.log_of("beatd-beat");
    // A fire time whose only fire is held leaves an empty batch: it must not fail as a
    // store error (and be decided again by the replan).
    assert!(
        !log.contains("store unavailable"),
        "the beat saw store errors{}",
        s.logs()
    );
    let ds = decisions(&log, "busy");
    let fired = fired_ids(&ds);
    // What was sent before the stop still runs: wait for its result.
    for id in &fired {
        s.wait_for(&format!("a SUCCESS result of {id}"), || {
            result_on(&backend, id).filter(|r| r["status"] == "SUCCESS")
        });
    }
    s.stop("celery-worker");
    let ctx = s.logs();
    let runs = serial_runs(&run_events(&s), &ctx);
    let ran: Vec<String> = runs.iter().map(|r| r.0.clone()).collect();
    assert_eq!(ran, fired, "the runs are not the fires sent{ctx}");
    assert_accounted(&ds, 1000, &ctx);

    // The counts: the log's skips, the persisted count (written at the stop at the latest)
    // and the metric read before the stop.
    let skipped = ds
        .iter()
        .filter(|d| matches!(d, Decision::Skipped { .. }))
        .count();
    let mut status = s.beatd_cmd(&[
        "status",
        "--schedules",
        "schedules",
        "--redis-url",
        &url,
        "--format",
        "json",
    ]);
    status.stdout(Stdio::piped()).stderr(Stdio::piped());
    let st: Value = serde_json::from_str(&run_bounded(status, "beatd status"))
        .unwrap_or_else(|e| panic!("status is not JSON: {e}{ctx}"));
    let row = st["entries"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["entry"] == "busy"))
        .unwrap_or_else(|| panic!("no busy in {st:#}{ctx}"));
    assert_eq!(
        row["skipped"]["overlap"].as_u64(),
        Some(skipped as u64),
        "status {st:#}{ctx}"
    );
    assert!(
        metrics >= 1.0 && metrics <= skipped as f64,
        "{series} = {metrics}, {skipped} skips logged{ctx}"
    );
    // When each run's result was stored (Celery's task_postrun comes after the store).
    let records = s.records();
    let stored: Vec<f64> = ran
        .iter()
        .map(|id| {
            records
                .iter()
                .find(|r| r["phase"] == "stored" && r["id"] == id.as_str())
                .and_then(|r| r["t"].as_f64())
                .unwrap_or_else(|| panic!("no stored record of {id}{ctx}"))
        })
        .collect();
    (ds, runs, stored, ctx)
}

#[test]
fn skip_on_a_celery_worker_never_overlaps_and_counts_every_skip() {
    let (ds, runs, stored, ctx) = celery_policy("skip", true);
    assert_skip(&ds, &ctx);
    assert_held_while_busy(&ds, &stored, &ctx);
    // 2.5 s runs every second: at least one fire time skipped between two runs.
    for w in ds
        .iter()
        .filter(|d| matches!(d, Decision::Fire { .. }))
        .collect::<Vec<_>>()
        .windows(2)
    {
        let between = ds
            .iter()
            .filter(|d| matches!(d, Decision::Skipped { .. }))
            .filter(|d| (w[0].at_ms()..w[1].at_ms()).contains(&d.at_ms()))
            .count();
        assert!(between >= 1, "{w:?}: no skip between{ctx}");
    }
    print_gaps("skip on a Celery worker", &runs);
}

#[test]
fn buffer_one_on_a_celery_worker_sends_one_waiting_run_per_busy_period() {
    let (ds, runs, stored, ctx) = celery_policy("buffer_one", false);
    let released = assert_buffer_one(&ds, &ctx);
    assert_eq!(released, runs.len() - 1, "{ds:#?}{ctx}");
    assert_buffered_while_busy(&ds, &stored, &ctx);
    assert_held_while_busy(&ds, &stored, &ctx);
    print_gaps("buffer_one on a Celery worker", &runs);
}
