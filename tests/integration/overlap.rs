//! Overlap policies with slow tasks on beatd's worker over a real redis-server: with
//! `overlap = "skip"` no run starts before the previous one finished (a worker with room for
//! four at once), and the fire times held back are counted; with `buffer_one` exactly one
//! waiting run per busy period, the first fire time that came due in it, sent once the
//! previous run finished, and every fire time is sent or counted as skipped, none lost;
//! overlap holds for an entry among more than a thousand due at once (the staged burst);
//! `check` rejects both policies without a result backend.
//!
//! The checks (also used with a stock Celery worker, `interop::overlap_celery`) read what
//! the tasks wrote (start and end of each run, in the order written) and what the beat
//! logged (each fire time's decision, in order); nothing asserts how long anything took. The
//! delays between a run's end and the next start are printed as figures.

use crate::util::{beatd, output, project, signal, spawn_logged, texts, wait_exit, wait_for};
use beatd::testkit::RedisServer;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A run as (task id, start, end), the instants in seconds since the epoch.
pub(crate) type Run = (String, f64, f64);

/// A start or an end of one run, in the order the tasks wrote them.
#[derive(Debug, Clone)]
pub(crate) struct RunEvent {
    /// The task id.
    pub id: String,
    /// Start (`true`) or end.
    pub start: bool,
    /// When, seconds since the epoch (the task's clock; for figures and the buffered check).
    pub t: f64,
}

/// What the beat decided about one fire time of the entry, in the order it logged them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Sent with task `id`; `released`: a buffered fire time sent when the previous finished.
    Fire { id: String, at: i64, released: bool },
    /// Kept waiting by `buffer_one`.
    Buffered { at: i64 },
    /// Not sent, counted as skipped by overlap.
    Skipped { at: i64 },
}

impl Decision {
    /// The fire time decided, ms since the epoch.
    pub(crate) fn at_ms(&self) -> i64 {
        match self {
            Self::Fire { at, .. } | Self::Buffered { at } | Self::Skipped { at } => *at,
        }
    }
}

fn ms_of(rfc: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc)
        .unwrap_or_else(|e| panic!("{rfc:?}: {e}"))
        .timestamp_millis()
}

/// The decisions about `entry` in a JSON log.
pub(crate) fn decisions(log: &str, entry: &str) -> Vec<Decision> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["entry"] == entry)
        .filter_map(|v| {
            let at = ms_of(v["scheduled"].as_str()?);
            let msg = v["message"].as_str()?;
            if msg == "fire" {
                Some(Decision::Fire {
                    id: v["task_id"].as_str()?.to_owned(),
                    at,
                    released: v.get("control").is_some(),
                })
            } else if msg.starts_with("fire time buffered") {
                Some(Decision::Buffered { at })
            } else if msg.starts_with("fire time skipped") {
                Some(Decision::Skipped { at })
            } else {
                None
            }
        })
        .collect()
}

/// The runs as (id, start, end), in order, after asserting that each started only once the
/// previous one had ended: the events alternate start, end of the same id.
pub(crate) fn serial_runs(events: &[RunEvent], ctx: &str) -> Vec<(String, f64, f64)> {
    assert!(
        events.len().is_multiple_of(2),
        "a run did not end: {events:#?}\n{ctx}"
    );
    events
        .chunks(2)
        .map(|p| {
            assert!(
                p[0].start && !p[1].start && p[0].id == p[1].id,
                "runs overlapped: {p:#?} in {events:#?}\n{ctx}"
            );
            (p[0].id.clone(), p[0].t, p[1].t)
        })
        .collect()
}

/// Every fire time of the entry (every `step_ms`) from its first sent to the last decided is
/// sent exactly once or skipped exactly once, and each buffered one is later sent or
/// skipped: none lost, none twice.
pub(crate) fn assert_accounted(ds: &[Decision], step_ms: i64, ctx: &str) {
    let mut decided: Vec<i64> = ds
        .iter()
        .filter(|d| !matches!(d, Decision::Buffered { .. }))
        .map(Decision::at_ms)
        .collect();
    decided.sort_unstable();
    for w in decided.windows(2) {
        assert_eq!(
            w[1] - w[0],
            step_ms,
            "a fire time lost or decided twice around {}: {ds:#?}\n{ctx}",
            w[0]
        );
    }
    for (i, d) in ds.iter().enumerate() {
        if let Decision::Buffered { at } = d {
            assert!(
                ds[i + 1..].iter().any(|later| matches!(later,
                    Decision::Fire { at: a, .. } | Decision::Skipped { at: a } if a == at)),
                "buffered fire time {at} neither sent nor counted: {ds:#?}\n{ctx}"
            );
        }
    }
}

/// `buffer_one`: after each run, the decisions up to the next run are either none (the
/// previous had finished at the next fire time) or one buffered fire time then skipped ones,
/// and the next run is that buffered one, released; after the last run, at most one buffered
/// (counted as skipped at the stop). Returns the number of released runs.
pub(crate) fn assert_buffer_one(ds: &[Decision], ctx: &str) -> usize {
    let fires: Vec<usize> = ds
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, Decision::Fire { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(!fires.is_empty(), "nothing sent: {ds:#?}\n{ctx}");
    let mut released = 0;
    for (k, &f) in fires.iter().enumerate() {
        let end = fires.get(k + 1).copied().unwrap_or(ds.len());
        let between = &ds[f + 1..end];
        let next = fires.get(k + 1).map(|&n| &ds[n]);
        match (between.first(), next) {
            (None, Some(Decision::Fire { released: r, .. })) => {
                assert!(!r, "released with nothing buffered: {ds:#?}\n{ctx}");
            }
            (None, _) => {}
            (Some(Decision::Buffered { at: b }), next) => {
                assert!(
                    between[1..]
                        .iter()
                        .all(|d| matches!(d, Decision::Skipped { .. })),
                    "more than one waiting run in one busy period: {between:#?}\n{ctx}"
                );
                match next {
                    Some(Decision::Fire {
                        at, released: r, ..
                    }) => {
                        assert!(
                            *r && at == b,
                            "the next run is not the buffered one ({b}): {ds:#?}\n{ctx}"
                        );
                        released += 1;
                    }
                    _ => assert!(
                        between[1..].contains(&Decision::Skipped { at: *b }),
                        "buffered at the stop and not counted: {ds:#?}\n{ctx}"
                    ),
                }
            }
            (Some(other), _) => {
                panic!("skipped with no run waiting: {other:?} in {ds:#?}\n{ctx}")
            }
        }
    }
    released
}

/// `skip`: nothing buffered, nothing released, the decisions between two runs all skips.
pub(crate) fn assert_skip(ds: &[Decision], ctx: &str) {
    for d in ds {
        match d {
            Decision::Buffered { .. } | Decision::Fire { released: true, .. } => {
                panic!("buffered under skip: {d:?} in {ds:#?}\n{ctx}")
            }
            _ => {}
        }
    }
}

/// The runs are the fires, in the order sent; the last one sent may not have started when
/// the beat stopped. Returns the ids run.
pub(crate) fn assert_ran_as_fired(
    runs: &[(String, f64, f64)],
    ds: &[Decision],
    ctx: &str,
) -> Vec<String> {
    let ran: Vec<String> = runs.iter().map(|r| r.0.clone()).collect();
    let fired = fired_ids(ds);
    assert!(
        fired.len() <= ran.len() + 1 && fired.starts_with(&ran),
        "ran {ran:?}, sent {fired:?}\n{ctx}"
    );
    ran
}

/// The ids of the fires in order.
pub(crate) fn fired_ids(ds: &[Decision]) -> Vec<String> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Fire { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Each released run's fire time came due while the previous run was busy: after the
/// previous run's fire time and no later than its result was stored (`stored`: per run in
/// order, that instant on the tasks' clock, the same host's).
pub(crate) fn assert_buffered_while_busy(ds: &[Decision], stored: &[f64], ctx: &str) {
    let fires: Vec<&Decision> = ds
        .iter()
        .filter(|d| matches!(d, Decision::Fire { .. }))
        .collect();
    for (k, w) in fires.windows(2).enumerate() {
        let (Decision::Fire { at: prev, .. }, Decision::Fire { at, released, .. }) = (w[0], w[1])
        else {
            unreachable!()
        };
        if !released {
            continue;
        }
        let Some(done) = stored.get(k) else {
            continue;
        };
        #[allow(clippy::cast_possible_truncation)]
        let done_ms = (done * 1000.0).ceil() as i64;
        assert!(
            prev < at && *at <= done_ms,
            "buffered fire time {at} did not come due while run {k} was busy (fire time \
             {prev}, result stored {done_ms}): {ds:#?}\n{ctx}"
        );
    }
}

/// Every fire time held back (skipped or buffered) came due while the run sent before it was
/// busy, no later than that run's result was stored (`stored`, as for
/// [`assert_buffered_while_busy`]): a fire time decided ahead of its instant (staged) could be
/// skipped although the run had finished by then.
pub(crate) fn assert_held_while_busy(ds: &[Decision], stored: &[f64], ctx: &str) {
    let mut run: Option<usize> = None;
    let mut buffered = std::collections::HashSet::new();
    for d in ds {
        let at = match d {
            Decision::Fire { .. } => {
                run = Some(run.map_or(0, |k| k + 1));
                continue;
            }
            // Counted at the stop: checked when it was buffered.
            Decision::Skipped { at } if buffered.contains(at) => continue,
            Decision::Buffered { at } => {
                buffered.insert(*at);
                *at
            }
            Decision::Skipped { at } => *at,
        };
        let k = run.unwrap_or_else(|| panic!("held before any run: {ds:#?}\n{ctx}"));
        let Some(done) = stored.get(k) else {
            continue;
        };
        #[allow(clippy::cast_possible_truncation)]
        let done_ms = (done * 1000.0).ceil() as i64;
        assert!(
            at <= done_ms,
            "fire time {at} held back after run {k}'s result was stored ({done_ms}): \
             {ds:#?}\n{ctx}"
        );
    }
}

/// Prints the delays between each run's end and the next one's start (figures, not checks).
pub(crate) fn print_gaps(what: &str, runs: &[(String, f64, f64)]) {
    let gaps: Vec<String> = runs
        .windows(2)
        .map(|w| format!("{:.0}", (w[1].1 - w[0].2) * 1000.0))
        .collect();
    eprintln!(
        "{what}: {} runs; ms from an end to the next start: [{}]",
        runs.len(),
        gaps.join(", ")
    );
}

fn config(dir: &Path) -> String {
    format!(
        "[worker.tasks.\"demo.slow\"]\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"echo S $BEATD_TASK_ID $(date +%s.%N) >> '{f}'; sleep 2.5; \
         echo E $BEATD_TASK_ID $(date +%s.%N) >> '{f}'\"]\n",
        f = dir.join("runs.txt").display()
    )
}

/// The events the exec task wrote, in order.
fn events(dir: &Path) -> Vec<RunEvent> {
    let text = std::fs::read_to_string(dir.join("runs.txt")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.split(' ');
            let (k, id, t) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            RunEvent {
                id: id.to_owned(),
                start: k == "S",
                t: t.parse().unwrap(),
            }
        })
        .collect()
}

/// Runs `slow` (2.5 s, every second) under `policy` until four runs ended, stops the beat,
/// lets what was sent finish; (events, JSON log).
fn run_policy(policy: &str) -> (Vec<RunEvent>, String) {
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
            "--log-format",
            "json",
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
    let ended = || events(d).iter().filter(|e| !e.start).count();
    assert!(
        wait_for(Duration::from_secs(60), || ended() >= 4),
        "{}",
        log()
    );
    signal(&p, "TERM");
    assert!(
        wait_exit(&mut p, Duration::from_secs(30)).success(),
        "{}",
        log()
    );
    // A fire time whose only fire is held leaves an empty batch: no store error for it.
    assert!(!log().contains("store unavailable"), "{}", log());
    (events(d), log())
}

#[test]
fn skip_never_starts_a_run_before_the_previous_one_finished_and_counts_the_rest() {
    let (events, log) = run_policy("skip");
    let runs = serial_runs(&events, &log);
    let ds = decisions(&log, "slow");
    assert_skip(&ds, &log);
    assert_accounted(&ds, 1000, &log);
    let ran = assert_ran_as_fired(&runs, &ds, &log);
    let skipped = ds
        .iter()
        .filter(|d| matches!(d, Decision::Skipped { .. }))
        .count();
    assert!(skipped >= ran.len() - 1, "{ds:#?}\n{log}");
    print_gaps("skip on beatd's worker", &runs);
}

#[test]
fn buffer_one_sends_one_waiting_run_when_the_previous_finishes() {
    let (events, log) = run_policy("buffer_one");
    let runs = serial_runs(&events, &log);
    let ds = decisions(&log, "slow");
    assert_accounted(&ds, 1000, &log);
    let released = assert_buffer_one(&ds, &log);
    assert_ran_as_fired(&runs, &ds, &log);
    // Each run takes 2.5 s on a 1 s schedule: every busy period has a fire time to buffer,
    // so every run after the first is a buffered one.
    assert_eq!(released, fired_ids(&ds).len() - 1, "{ds:#?}\n{log}");
    print_gaps("buffer_one on beatd's worker", &runs);
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

/// An entry with `overlap = "skip"` among more than a thousand due at the same instant (one
/// staged batch, the path that once noted no task ids): no worker runs, so its first run
/// never finishes and each later fire time is skipped, on the leader that sent it and, from
/// the task id settling recorded, on the next one after a `kill -9`.
#[test]
fn skip_holds_for_an_entry_in_a_batch_of_more_than_a_thousand() {
    use crate::ha_util::{redis, wait_leader, Beat, BeatOpts, Schedules};
    const MANY: usize = 1_100;
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let mut toml = String::from(
        "[[entry]]\nname = \"held\"\ntask = \"t.held\"\nevery = \"2s\"\nqueue = \"heldq\"\n\
         overlap = \"skip\"\n",
    );
    for i in 0..MANY {
        toml.push_str(&format!(
            "\n[[entry]]\nname = \"e{i}\"\ntask = \"t.e\"\nevery = \"2s\"\n"
        ));
    }
    let schedules = Schedules::new(&toml);
    let opts = BeatOpts {
        lock_ttl: Some("3s"),
        ..BeatOpts::default()
    };
    let mut first = Beat::spawn(&url, &schedules, &opts);
    let leader = wait_leader(&url, &[first.pid], Duration::from_secs(30));
    assert_eq!(leader, first.pid);
    let second = Beat::spawn(&url, &schedules, &opts);
    let skipped = |b: &Beat| {
        b.log_events("fire time skipped: the previous run has not finished")
            .iter()
            .filter(|e| e["entry"] == "held")
            .count()
    };
    let ctx = |beats: &[&Beat]| crate::ha_util::dump_logs(beats);
    assert!(
        wait_for(Duration::from_secs(60), || skipped(&first) >= 2),
        "the held entry was never skipped{}",
        ctx(&[&first, &second])
    );
    let mut c = redis(&url);
    let held: Vec<String> = ::redis::cmd("LRANGE")
        .arg("heldq")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        held.len(),
        1,
        "held entry sent while its run had not finished"
    );
    let id = serde_json::from_str::<Value>(&held[0]).unwrap()["headers"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Settling recorded every entry's last task id, not only the one with a policy.
    let tasks: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg("beatd:control:last_task")
        .query(&mut c)
        .unwrap();
    assert_eq!(tasks.get("held"), Some(&id), "{}", ctx(&[&first, &second]));
    assert_eq!(tasks.len(), MANY + 1, "{}", ctx(&[&first, &second]));

    first.kill9();
    let next = wait_leader(&url, &[second.pid], Duration::from_secs(30));
    assert_eq!(next, second.pid);
    assert!(
        wait_for(Duration::from_secs(60), || skipped(&second) >= 2),
        "the next leader did not hold the entry{}",
        ctx(&[&first, &second])
    );
    let len: usize = ::redis::cmd("LLEN").arg("heldq").query(&mut c).unwrap();
    assert_eq!(
        len,
        1,
        "sent again after the failover{}",
        ctx(&[&first, &second])
    );
}
