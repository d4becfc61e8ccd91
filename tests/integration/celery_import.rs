//! `scripts/celery-to-toml.py` on a real Celery app (the interop tests' Python, see
//! `interop::python`): the TOML it prints passes `beatd check`, and `beatd next` of every
//! cron entry gives the instants Celery's own `crontab.remaining_estimate` gives, from fixed
//! start times. Intervals are compared by their spacing only: beatd anchors them at the Unix
//! epoch while Celery counts from the last run, so their phases differ by design.
//! What the script cannot express is refused by name, with exit code 1.

use crate::interop::python;
use crate::util::{beatd, output, texts};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The Celery app, found by module name alone (`celery -A celeryimport_app` finds `app`).
const APP: &str = r#"
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

app = Celery("celeryimport")
app.conf.timezone = "Europe/Paris"
app.conf.task_routes = {"reports.*": {"queue": "reports"}}
app.conf.beat_schedule = {
    "nightly": {"task": "reports.nightly", "schedule": crontab(minute=0, hour=3)},
    "quarter-hour": {"task": "ping", "schedule": crontab(minute="*/15")},
    "standup": {
        "task": "chat.standup",
        "schedule": crontab(minute=30, hour=9, day_of_week="mon-fri"),
        "args": ["room-1", 2, 0.5, True, [1, "x"]],
        "kwargs": {"who": "ops", "nested": {"n": 1}, "odd key": "a \"quoted\"\nline"},
        "options": {"queue": "chat", "priority": 3, "expires": 120, "routing_key": "chat.rk",
                    "exchange": "chat-ex", "countdown": 5},
    },
    # Celery ANDs day_of_month and day_of_week: Friday the 13th, not "the 13th or a Friday".
    "friday-13th": {"task": "spooky", "schedule": crontab(0, 0, day_of_month=13, day_of_week=5)},
    # A wrap-around range and expanded sets: the script writes what Celery expanded.
    "late-weekend": {"task": "late", "schedule": crontab(minute={0, 20, 40}, hour="22-1",
                                                         day_of_week="fri-sun")},
    "five-minutes": {"task": "poll", "schedule": timedelta(minutes=5),
                     "options": {"expires": timedelta(seconds=90)}},
    "half-minute": {"task": "tick", "schedule": 30.0},
}
"#;

/// Celery's next fire times for every entry, from each start time given: the way
/// `celery beat` computes them, `remaining_estimate(last_run_at)` with the clock at
/// `last_run_at`, each fire becoming the next `last_run_at`.
const REFERENCE: &str = r#"
import json, sys
from datetime import datetime, timezone

from celery.schedules import maybe_schedule

from celeryimport_app import app

count = int(sys.argv[1])
out = {}
for start in sys.argv[2:]:
    t0 = datetime.fromisoformat(start)
    per_entry = {}
    for name, entry in app.conf.beat_schedule.items():
        sched = maybe_schedule(entry["schedule"], entry.get("relative", False), app=app)
        t, fires = t0, []
        for _ in range(count):
            sched.nowfun = lambda t=t: t
            # remaining_estimate is real elapsed time; aware + timedelta in Python is
            # wall-clock arithmetic, so add it in UTC.
            t = t.astimezone(timezone.utc) + sched.remaining_estimate(t)
            fires.append(t.isoformat())
        per_entry[name] = {"kind": type(sched).__name__, "fires": fires}
    out[start] = per_entry
print(json.dumps(out))
"#;

/// An app with entries the script must refuse, next to one it converts; found as
/// `MODULE:ATTR` with an attribute not named `app`.
const REFUSED_APP: &str = r#"
from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule, solar

# A real solar object without its `ephem` dependency: only its class and event matter here.
sunrise = solar.__new__(solar)
sunrise.event = "sunrise"

class EveryFullMoon(BaseSchedule):
    pass

application = Celery("refused")
application.conf.beat_schedule = {
    "sunrise": {"task": "lights.off", "schedule": sunrise},
    "full-moon": {"task": "howl", "schedule": EveryFullMoon()},
    "none-arg": {"task": "t", "schedule": 60, "args": [None]},
    "on-the-hour": {"task": "t", "schedule": schedule(3600, relative=True)},
    "ok": {"task": "t", "schedule": crontab(minute=7)},
}
"#;

/// Start times away from DST changes (Celery and beatd resolve gaps differently; see the
/// README), one in winter and one in summer time.
const STARTS: [&str; 2] = ["2026-01-01T00:00:00+01:00", "2026-07-10T12:34:00+02:00"];
const COUNT: usize = 3;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/celery-to-toml.py")
}

fn run_python(dir: &Path, args: &[&str]) -> Output {
    Command::new(python())
        .args(args)
        .current_dir(dir)
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .output()
        .expect("run python")
}

/// Runs the script on `app` in `dir`; returns (exit code, stdout, stderr).
fn convert(dir: &Path, app: &str) -> (Option<i32>, String, String) {
    let script = script();
    let out = run_python(dir, &[script.to_str().unwrap(), app]);
    let (stdout, stderr) = texts(&out);
    (out.status.code(), stdout, stderr)
}

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn instants(v: &Value) -> Vec<DateTime<Utc>> {
    v.as_array()
        .expect("fires is an array")
        .iter()
        .map(|f| instant(f.as_str().expect("fire is a string")))
        .collect()
}

fn gaps(t: &[DateTime<Utc>]) -> Vec<i64> {
    t.windows(2).map(|w| (w[1] - w[0]).num_seconds()).collect()
}

/// `beatd next` of every entry of `file` from `start`: entry → (zone, fire instants).
fn beatd_next(
    dir: &Path,
    file: &Path,
    start: &str,
) -> BTreeMap<String, (String, Vec<DateTime<Utc>>)> {
    let count = COUNT.to_string();
    let out = output(
        beatd(dir)
            .args(["next", "--schedules"])
            .arg(file)
            .args(["--from", start, "--count", &count, "--format", "json"]),
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "beatd next: {stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["entry"].as_str().unwrap().to_owned(),
                (
                    e["timezone"].as_str().unwrap().to_owned(),
                    instants(&e["fires"]),
                ),
            )
        })
        .collect()
}

fn entry<'a>(doc: &'a toml::Table, name: &str) -> &'a toml::Table {
    doc["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no entry {name}"))
}

#[test]
fn converted_schedule_passes_check_and_fires_when_celery_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("celeryimport_app.py"), APP).unwrap();
    std::fs::write(dir.path().join("reference.py"), REFERENCE).unwrap();

    let (code, toml_text, stderr) = convert(dir.path(), "celeryimport_app");
    assert_eq!(code, Some(0), "celery-to-toml: {stderr}\n{toml_text}");
    let file = dir.path().join("celery.toml");
    std::fs::write(&file, &toml_text).unwrap();

    let out = output(beatd(dir.path()).arg("check").arg(&file));
    let (check_out, check_err) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "beatd check failed:\n{check_out}{check_err}\n--- TOML ---\n{toml_text}"
    );

    // The mapping itself: the AND of the day fields, names kept, options carried over.
    let doc: toml::Table = toml::from_str(&toml_text).unwrap();
    assert_eq!(doc["defaults"]["timezone"].as_str(), Some("Europe/Paris"));
    assert_eq!(
        entry(&doc, "friday-13th")["cron"].as_str(),
        Some("0 0 13 * +5")
    );
    assert_eq!(
        entry(&doc, "standup")["cron"].as_str(),
        Some("30 9 * * MON-FRI")
    );
    assert_eq!(
        entry(&doc, "nightly")["queue"].as_str(),
        Some("reports"),
        "task_routes"
    );
    assert_eq!(entry(&doc, "five-minutes")["every"].as_str(), Some("5m"));
    assert_eq!(
        entry(&doc, "five-minutes")["expires"].as_str(),
        Some("1m 30s")
    );
    assert_eq!(entry(&doc, "half-minute")["every"].as_str(), Some("30s"));
    let standup = entry(&doc, "standup");
    let json = |v: &toml::Value| serde_json::to_value(v).unwrap();
    assert_eq!(
        json(&standup["args"]),
        serde_json::json!(["room-1", 2, 0.5, true, [1, "x"]])
    );
    assert_eq!(
        json(&standup["kwargs"]),
        serde_json::json!({"who": "ops", "nested": {"n": 1}, "odd key": "a \"quoted\"\nline"})
    );
    assert_eq!(standup["queue"].as_str(), Some("chat"));
    assert_eq!(standup["priority"].as_integer(), Some(3));
    assert_eq!(standup["expires"].as_str(), Some("2m"));
    assert_eq!(standup["routing_key"].as_str(), Some("chat.rk"));
    assert_eq!(standup["exchange"].as_str(), Some("chat-ex"));
    assert!(
        toml_text.contains("# not carried over: countdown=5"),
        "{toml_text}"
    );

    // Celery's own fire times against beatd's.
    let count = COUNT.to_string();
    let mut args = vec!["reference.py", count.as_str()];
    args.extend(STARTS);
    let out = run_python(dir.path(), &args);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "reference.py: {stderr}");
    let celery: Value = serde_json::from_str(&stdout).unwrap();

    for start in STARTS {
        let ours = beatd_next(dir.path(), &file, start);
        let theirs = celery[start].as_object().unwrap();
        assert_eq!(
            ours.keys().collect::<BTreeSet<_>>(),
            theirs.keys().collect::<BTreeSet<_>>(),
            "every beat_schedule entry is in the TOML"
        );
        for (name, reference) in theirs {
            let celery_fires = instants(&reference["fires"]);
            let (zone, beatd_fires) = &ours[name];
            assert_eq!(beatd_fires.len(), COUNT, "{name} from {start}");
            match reference["kind"].as_str().unwrap() {
                "crontab" => {
                    assert_eq!(zone, "Europe/Paris", "{name}");
                    assert_eq!(
                        beatd_fires, &celery_fires,
                        "{name} from {start}: beatd next vs Celery's remaining_estimate\n{toml_text}"
                    );
                }
                "schedule" => {
                    // Anchored at the epoch vs counted from the last run: only the spacing
                    // can agree, and it must.
                    let spacing = gaps(&celery_fires);
                    assert_eq!(gaps(beatd_fires), spacing, "{name} from {start}");
                    let first = (celery_fires[0] - instant(start)).num_seconds();
                    assert_eq!(spacing, vec![first; COUNT - 1], "{name}: a fixed interval");
                }
                other => panic!("{name}: unexpected schedule kind {other}"),
            }
        }
    }

    // The case the AND semantics decide, spelled out: the next three Fridays the 13th
    // (with OR, beatd would also fire on Friday 2026-01-02 and on Tuesday 2026-01-13).
    let fires = &beatd_next(dir.path(), &file, STARTS[0])["friday-13th"].1;
    let expected: Vec<_> = [
        "2026-02-13T00:00:00+01:00",
        "2026-03-13T00:00:00+01:00",
        "2026-11-13T00:00:00+01:00",
    ]
    .map(instant)
    .into();
    assert_eq!(fires, &expected);
}

#[test]
fn what_cannot_be_expressed_is_refused_by_name_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("refused_app.py"), REFUSED_APP).unwrap();

    let (code, toml_text, stderr) = convert(dir.path(), "refused_app:application");
    assert_eq!(code, Some(1), "{stderr}\n{toml_text}");
    for (name, why) in [
        ("sunrise", "solar"),
        ("full-moon", "EveryFullMoon"),
        ("none-arg", "None"),
        ("on-the-hour", "relative=True"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("entry '{name}' not converted")))
            .unwrap_or_else(|| panic!("no refusal of {name} in:\n{stderr}"));
        assert!(line.contains(why), "{line}");
        assert!(toml_text.contains(&format!("#   {name}: ")), "{toml_text}");
    }

    // What could be converted is still printed, valid, with UTC (Celery's default zone).
    let doc: toml::Table = toml::from_str(&toml_text).unwrap();
    assert_eq!(doc["defaults"]["timezone"].as_str(), Some("UTC"));
    assert_eq!(doc["entry"].as_array().unwrap().len(), 1);
    assert_eq!(entry(&doc, "ok")["cron"].as_str(), Some("7 * * * *"));
    let file = dir.path().join("partial.toml");
    std::fs::write(&file, &toml_text).unwrap();
    let out = output(beatd(dir.path()).arg("check").arg(&file));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));

    // An app that cannot be loaded is exit 2.
    let (code, _, stderr) = convert(dir.path(), "no_such_module");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot load the Celery app"), "{stderr}");
}
