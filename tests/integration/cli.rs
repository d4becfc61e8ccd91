//! The command line as a user meets it: `check` reports every problem with file:line:column
//! and exits 1, `next` prints fire times (text and the documented JSON), usage errors exit 2.

use crate::util::{beatd, output, project, texts};
use serde_json::{json, Value};

const BROKEN_A: &str = r#"[[entry]]
name = "nightly"
task = "reports.generate"
cron = "30 25 * * *"
tmezone = "Europe/Paris"

[[entry]]
name = "beat"
task = "x"
every = "5 parsecs"
priority = 12
"#;

const BROKEN_B: &str = r#"[[entry]]
name = "beat"
task = "y"
every = "1s"
timezone = "Europe/Pari"
"#;

#[test]
fn check_reports_every_problem_with_file_line_column_and_exits_1() {
    let dir = project(&[
        ("schedules/a.toml", BROKEN_A),
        ("schedules/b.toml", BROKEN_B),
    ]);
    let out = output(beatd(dir.path()).arg("check"));
    let (stdout, stderr) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for expected in [
        "schedules/a.toml:4:12: error: invalid `cron`: invalid hour field \"25\"",
        "schedules/a.toml:5:1: error: unknown key `tmezone`",
        "did you mean `timezone`?",
        "schedules/a.toml:10:9: error: invalid duration `5 parsecs`",
        "schedules/a.toml:11:12: error: priority 12 is out of range",
        "schedules/b.toml:2:8: error: duplicate entry name `beat`",
        "schedules/a.toml:8:8: note: first defined here",
        "schedules/b.toml:5:12: error: unknown time zone `Europe/Pari`",
        "did you mean `Europe/Paris`?",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // The source line and a caret under the bad cron field.
    assert!(
        stderr.contains("4 | cron = \"30 25 * * *\"\n  |            ^^\n"),
        "{stderr}"
    );
}

#[test]
fn check_positional_paths_and_a_clean_file_exit_0() {
    let dir = project(&[(
        "ok.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\n",
    )]);
    let out = output(beatd(dir.path()).args(["check", "ok.toml"]));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("ok: 1 entry in ok.toml"), "{stdout}");
}

#[test]
fn check_of_the_shipped_schedules_passes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = output(beatd(root).args(["check", "schedules"]));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
}

#[test]
fn a_one_off_in_the_past_is_a_warning_not_an_error() {
    let dir = project(&[(
        "schedules/x.toml",
        "[[entry]]\nname = \"old\"\ntask = \"t\"\nat = \"2001-01-01T00:00:00\"\n",
    )]);
    let out = output(beatd(dir.path()).arg("check"));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("schedules/x.toml:4:6: warning:"),
        "{stderr}"
    );
}

const PARIS: &str = r#"[[entry]]
name = "paris-0230"
task = "t"
cron = "30 2 * * *"
timezone = "Europe/Paris"

[[entry]]
name = "half-minute"
task = "t"
every = "30s"
"#;

#[test]
fn next_json_is_the_documented_shape_across_a_dst_gap() {
    let dir = project(&[("schedules/p.toml", PARIS)]);
    let out = output(beatd(dir.path()).args([
        "next",
        "--from",
        "2026-03-27T12:00:00Z",
        "--count",
        "3",
        "--entry",
        "paris-0230",
        "--format",
        "json",
    ]));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let got: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        got,
        json!([{
            "entry": "paris-0230",
            "timezone": "Europe/Paris",
            // 02:30 does not exist on 2026-03-29: it fires at the first instant after the gap.
            "fires": [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00"
            ]
        }])
    );
}

#[test]
fn next_text_shows_local_and_utc_for_every_entry() {
    let dir = project(&[("schedules/p.toml", PARIS)]);
    let out =
        output(beatd(dir.path()).args(["next", "--from", "2026-11-23T10:00:10Z", "--count", "2"]));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("paris-0230 (Europe/Paris)"), "{stdout}");
    assert!(
        stdout.contains("2026-11-24T02:30:00+01:00  2026-11-24T01:30:00Z"),
        "{stdout}"
    );
    assert!(stdout.contains("half-minute (UTC)"), "{stdout}");
    assert!(
        stdout.contains("2026-11-23T10:00:30+00:00  2026-11-23T10:00:30Z"),
        "{stdout}"
    );
    assert!(stdout.contains("2026-11-23T10:01:00+00:00"), "{stdout}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = project(&[("schedules/p.toml", PARIS)]);
    let out = output(beatd(dir.path()).args(["next", "--entry", "nope"]));
    assert_eq!(out.status.code(), Some(2), "{:?}", texts(&out));
    assert!(texts(&out).1.contains("no entry named \"nope\""));
    let out = output(beatd(dir.path()).args(["next", "--from", "yesterday"]));
    assert_eq!(out.status.code(), Some(2), "{:?}", texts(&out));
    let out = output(beatd(dir.path()).arg("--no-such-flag"));
    assert_eq!(out.status.code(), Some(2), "{:?}", texts(&out));
}

#[test]
fn beat_without_redis_says_how_to_configure_it() {
    let dir = project(&[("schedules/p.toml", PARIS)]);
    let out = output(beatd(dir.path()).args(["beat", "--http-addr", "off"]));
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("beatd beat needs Redis"), "{stderr}");
    assert!(stderr.contains("beatd run"), "{stderr}");
}

#[test]
fn check_with_nothing_to_check_fails_naming_the_path() {
    // Run from a directory with no schedules/: a CI step in the wrong place must fail.
    let dir = project(&[]);
    let out = output(beatd(dir.path()).arg("check"));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("schedules: error: no such file or directory: nothing to check"),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("check failed: 1 error"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    // A directory without one *.toml file is nothing to check either.
    let empty = project(&[("schedules/README", "not a schedule")]);
    let out = output(beatd(empty.path()).arg("check"));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("directory has no *.toml schedule files"),
        "{stderr}"
    );
}

#[test]
fn check_ends_with_a_summary_also_for_beatd_toml_and_warns_about_unhandled_tasks() {
    let dir = project(&[
        ("beatd.toml", "namespce = \"x\"\n"),
        (
            "schedules/a.toml",
            "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\n",
        ),
    ]);
    let out = output(beatd(dir.path()).arg("check"));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("beatd.toml:1:1: error: unknown key `namespce`"),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("check failed: 1 error"),
        "{stderr}"
    );

    let ok = project(&[
        (
            "beatd.toml",
            "[worker.tasks.\"t.known\"]\nkind = \"exec\"\ncommand = [\"true\"]\n",
        ),
        (
            "schedules/a.toml",
            "[[entry]]\nname = \"a\"\ntask = \"t.known\"\nevery = \"1m\"\n\
             [[entry]]\nname = \"b\"\ntask = \"t.python\"\nevery = \"1m\"\n",
        ),
    ]);
    let out = output(beatd(ok.path()).arg("check"));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("task \"t.python\" of entry \"b\" has no handler in beatd.toml"),
        "{stderr}"
    );
    assert!(!stderr.contains("\"t.known\""), "{stderr}");
    assert_eq!(stdout.trim(), "ok: 2 entries in schedules (1 warning)");
}

#[test]
fn next_reads_a_local_from_and_refuses_a_zero_count() {
    let dir = project(&[(
        "schedules/a.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t\"\ncron = \"0 12 * * *\"\n",
    )]);
    let out = output(beatd(dir.path()).args([
        "next",
        "--from",
        "2027-03-26T12:00:00",
        "--count",
        "1",
        "--format",
        "json",
    ]));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    // Strictly after 12:00 UTC (the default zone): the next day's noon.
    assert_eq!(v[0]["fires"], json!(["2027-03-27T12:00:00+00:00"]));
    // With an app-wide zone, a local --from is read in it.
    let out = output(
        beatd(dir.path())
            .env("CELERY_TIMEZONE", "Europe/Paris")
            .args([
                "next",
                "--from",
                "2027-03-26T12:30",
                "--count",
                "1",
                "--format",
                "json",
            ]),
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    // The entry's zone is now Paris too: 12:30 Paris is after noon, so the 27th at noon.
    assert_eq!(v[0]["fires"], json!(["2027-03-27T12:00:00+01:00"]));
    let out = output(beatd(dir.path()).args(["next", "--count", "0"]));
    assert_eq!(out.status.code(), Some(2), "{:?}", texts(&out));
    let out = output(beatd(dir.path()).args(["next", "--from", "tomorrow"]));
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("2027-03-26T12:00:00+01:00"), "{stderr}");
}

#[test]
fn a_broker_url_that_is_not_redis_names_the_variable_it_came_from() {
    let dir = project(&[(
        "schedules/a.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\n",
    )]);
    // A broker beatd does not speak, and an AMQP URL with an option it cannot honour (a
    // valid amqp:// URL would be used: see tests/on_rabbitmq).
    for url in [
        "sqs://key:secret@",
        "amqp://guest:secret@localhost:5672//?ssl_options=1",
    ] {
        let out = output(beatd(dir.path()).env("CELERY_BROKER_URL", url).args([
            "beat",
            "--http-addr",
            "off",
        ]));
        let (_, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("(set by CELERY_BROKER_URL)"), "{stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}
