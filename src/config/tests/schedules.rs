//! Schedule-file diagnostics: each checks the message and where it points (line:column).

use super::{at, diags, one, NOW};
use crate::config::{load_schedule_sources, load_schedule_str, Severity};
use std::path::PathBuf;

#[test]
fn toml_syntax_error_points_at_the_bad_token() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5s\nqueue = \"q\"\n");
    // toml reports the unterminated string where the line ends.
    assert_eq!((d.line, d.column), (4, 12), "{d}");
    assert_eq!(
        d.message,
        "invalid TOML: invalid basic string, expected `\"`"
    );
}

#[test]
fn unknown_key_suggests_the_closest_valid_key() {
    let d = one("[[entry]]\nname = \"a\"\ntsak = \"t\"\nevery = \"5s\"\n");
    assert_eq!(d.message, "unknown key `tsak` in [[entry]]");
    assert_eq!((d.line, d.column), (3, 1));
    assert_eq!(d.help.as_deref(), Some("did you mean `task`?"));
    assert!(
        d.to_string().contains("3 | tsak = \"t\"\n  | ^^^^\n"),
        "{d}"
    );
}

#[test]
fn unknown_key_in_defaults_explains_entry_only_keys() {
    let d = one("[defaults]\nargs = [1]\n[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5s\"\n");
    assert_eq!(d.message, "unknown key `args` in [defaults]");
    assert_eq!((d.line, d.column), (2, 1));
    assert!(d.help.unwrap().contains("only be set in an [[entry]]"));
}

#[test]
fn unknown_top_level_key() {
    let d = one("[[entrys]]\nname = \"a\"\n");
    assert_eq!(
        d.message,
        "unknown key `entrys` in the top level of a schedule file"
    );
    assert_eq!((d.line, d.column), (1, 3));
    assert_eq!(d.help.as_deref(), Some("did you mean `entry`?"));
}

#[test]
fn missing_name_and_task_point_at_the_entry_header() {
    let ds = diags(
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\n\n[[entry]]\nevery = \"5s\"\n",
    );
    assert_eq!(ds.len(), 2, "{ds:#?}");
    assert_eq!(ds[0].message, "entry has no `name`");
    assert_eq!(ds[1].message, "entry has no `task`");
    for d in &ds {
        assert_eq!((d.line, d.column), (6, 1), "{d}");
        assert_eq!(d.source_line.as_deref(), Some("[[entry]]"));
    }
}

#[test]
fn an_entry_without_a_schedule_is_an_error() {
    let d = one("\n[[entry]]\nname = \"a\"\ntask = \"t\"\n");
    assert_eq!(
        d.message,
        "entry has no schedule: none of `cron`, `every` or `at`"
    );
    assert_eq!((d.line, d.column), (2, 1));
}

#[test]
fn two_schedules_point_at_the_second() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\ncron = \"* * * * *\"\nevery = \"5s\"\n");
    assert_eq!(d.message, "entry has both `cron` and `every`");
    assert_eq!((d.line, d.column), (5, 9));
}

#[test]
fn invalid_cron_names_the_field_and_points_inside_the_string() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\ncron = \"30 25 * * *\"\n");
    assert!(d.message.starts_with("invalid `cron`: "), "{d}");
    assert!(
        d.message.contains("hour") && d.message.contains("25"),
        "{d}"
    );
    // `cron = "` is 8 characters; the hour field starts 3 characters into the string.
    assert_eq!((d.line, d.column), (4, 12), "{d}");
    assert!(
        d.to_string()
            .contains("4 | cron = \"30 25 * * *\"\n  |            ^^\n"),
        "{d}"
    );
}

#[test]
fn cron_with_the_wrong_number_of_fields() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\ncron = '* * *'\n");
    assert!(d.message.contains("3 fields"), "{d}");
    // The caret underlines the expression inside the quotes.
    assert_eq!((d.line, d.column), (4, 9));
    assert!(d.to_string().contains("  |         ^^^^^\n"), "{d}");
}

#[test]
fn unknown_time_zone_suggests_the_closest_iana_name() {
    let d =
        one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5s\"\ntimezone = \"Europe/Pari\"\n");
    assert_eq!(d.message, "unknown time zone `Europe/Pari`");
    assert_eq!((d.line, d.column), (5, 12));
    assert_eq!(d.help.as_deref(), Some("did you mean `Europe/Paris`?"));
    let d = one("[defaults]\ntimezone = \"America/New York\"\n");
    assert_eq!((d.line, d.column), (2, 12));
    assert_eq!(d.help.as_deref(), Some("did you mean `America/New_York`?"));
}

#[test]
fn invalid_duration() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5 parsecs\"\n");
    assert!(
        d.message
            .starts_with("invalid duration `5 parsecs` for `every`"),
        "{d}"
    );
    assert_eq!((d.line, d.column), (4, 9));
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"0s\"\n");
    assert_eq!(d.message, "`every` must be longer than zero");
}

#[test]
fn a_value_of_the_wrong_type() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = 30\n");
    assert!(
        d.message
            .starts_with("invalid value for `every`: invalid type: integer"),
        "{d}"
    );
    assert_eq!((d.line, d.column), (4, 9));
}

#[test]
fn duplicate_names_across_files_name_both_places() {
    let a = "[[entry]]\nname = \"beat\"\ntask = \"t\"\nevery = \"5s\"\n";
    let b = "# b\n[[entry]]\nname   = \"beat\"\ntask = \"t\"\nevery = \"9s\"\n";
    let files = [
        (PathBuf::from("a.toml"), a.to_owned()),
        (PathBuf::from("b.toml"), b.to_owned()),
    ];
    let ds = load_schedule_sources(&files, NOW).unwrap_err().0;
    assert_eq!(ds.len(), 1, "{ds:#?}");
    let d = &ds[0];
    assert_eq!(d.message, "duplicate entry name `beat`");
    assert_eq!((d.path.to_str(), d.line, d.column), (Some("b.toml"), 3, 10));
    let note = &d.notes[0];
    assert_eq!(
        (note.path.to_str(), note.line, note.column),
        (Some("a.toml"), 2, 8)
    );
    assert_eq!(note.message, "first defined here");
    let shown = d.to_string();
    assert!(
        shown.starts_with("b.toml:3:10: error: duplicate entry name `beat`\n"),
        "{shown}"
    );
    assert!(
        shown.contains("a.toml:2:8: note: first defined here\n"),
        "{shown}"
    );
}

#[test]
fn priority_out_of_range() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5s\"\npriority = 12\n");
    assert_eq!(d.message, "priority 12 is out of range");
    assert_eq!((d.line, d.column), (5, 12));
}

#[test]
fn end_at_before_start_at() {
    let text = "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5s\"\n\
                start_at = \"2027-02-01T00:00:00\"\nend_at = 2027-01-01T00:00:00Z\n";
    let d = one(text);
    assert!(d
        .message
        .starts_with("`end_at` (2027-01-01T00:00:00+00:00) is not after `start_at`"));
    assert_eq!((d.line, d.column), (6, 10));
    assert_eq!((d.notes[0].line, d.notes[0].column), (5, 12));
}

#[test]
fn a_one_off_in_the_past_is_a_warning() {
    let text = "[[entry]]\nname = \"a\"\ntask = \"t\"\nat = \"2020-06-01T09:00:00\"\n";
    let s = load_schedule_str("x.toml", text, NOW).unwrap();
    assert_eq!(s.entries.len(), 1);
    let w = &s.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(
        w.message,
        "one-off `at` time 2020-06-01T09:00:00+00:00 is in the past"
    );
    assert_eq!((w.line, w.column), (4, 6));
    assert!(w.to_string().starts_with("x.toml:4:6: warning: one-off"));
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let text = "[defaults]\ntimezone = \"Mars/Olympus\"\n\n\
                [[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"5s\"\nqueue = 5\ntsak = 1\n\n\
                [[entry]]\nname = \"b\"\ntask = \"t\"\ncron = \"61 * * * *\"\npriority = -1\n\
                catch_up = \"lates\"\n";
    let ds = diags(text);
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.message.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "unknown time zone `Mars/Olympus`"),
            (8, "invalid value for `queue`"),
            (9, "unknown key `tsak` in [[entry]]"),
            (14, "invalid `cron`"),
            (15, "priority -1 is out of range"),
            (16, "unknown catch_up policy `lates`"),
        ]
    );
    assert_eq!(
        ds[5].help.as_deref(),
        Some("did you mean `latest`? (none | latest | all)")
    );
}

#[test]
fn anchor_only_applies_to_every() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\ncron = \"* * * * *\"\nanchor = \"2026-01-01T00:00:00Z\"\n");
    assert_eq!(d.message, "`anchor` only applies to `every` intervals");
    assert_eq!((d.line, d.column), (5, 10));
}

#[test]
fn invalid_datetime() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nat = \"next tuesday\"\n");
    assert_eq!(d.message, "invalid datetime `next tuesday` for `at`");
    assert_eq!((d.line, d.column), (4, 6));
}

#[test]
fn one_off_in_a_gap_fires_at_the_end_of_the_gap_and_in_a_fold_at_the_first() {
    let text = "[defaults]\ntimezone = \"Europe/Paris\"\n\
                [[entry]]\nname = \"gap\"\ntask = \"t\"\nat = \"2027-03-28T02:30:00\"\n\
                [[entry]]\nname = \"fold\"\ntask = \"t\"\nat = \"2027-10-31 02:30\"\n\
                [[entry]]\nname = \"offset\"\ntask = \"t\"\nat = \"2027-10-31T02:30:00-04:00\"\n";
    let s = load_schedule_str("x.toml", text, NOW).unwrap();
    let when: Vec<_> = s.entries.iter().map(|e| e.schedule.clone()).collect();
    use crate::schedule::Schedule::At;
    assert_eq!(
        when,
        [
            At(at("2027-03-28T01:00:00Z")),
            At(at("2027-10-31T00:30:00Z")),
            At(at("2027-10-31T06:30:00Z"))
        ]
    );
}

#[test]
fn an_entry_with_a_bad_key_is_still_checked_but_not_called_incomplete() {
    let ds = diags(
        "[[entry]]\nname = \"a\"\ntsak = \"t\"\ncron = \"61 * * * *\"\npriority = \"high\"\n",
    );
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.message.split(':').next().unwrap()))
        .collect();
    // `tsak` is reported as probably `task`, so "entry has no `task`" would only repeat it.
    assert_eq!(
        got,
        [
            (3, "unknown key `tsak` in [[entry]]"),
            (4, "invalid `cron`"),
            (5, "invalid value for `priority`")
        ]
    );
}

#[test]
fn a_duplicate_is_reported_even_when_the_entry_has_other_errors() {
    let ds = diags("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\n[[entry]]\nname = \"a\"\nevery = \"x\"\n");
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.column, d.message.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (5, 1, "entry has no `task`"),
            (6, 8, "duplicate entry name `a`"),
            (7, 9, "invalid duration `x` for `every`")
        ]
    );
}

#[test]
fn a_catch_up_window_without_catch_up_is_a_warning() {
    let text = "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\ncatch_up = \"none\"\ncatch_up_window = \"1h\"\n";
    let s = load_schedule_str("x.toml", text, NOW).unwrap();
    let w = &s.warnings[0];
    assert_eq!(
        w.message,
        "`catch_up_window` has no effect with catch_up = \"none\""
    );
    assert_eq!((w.severity, w.line, w.column), (Severity::Warning, 6, 19));
}

#[test]
fn diagnostics_render_like_rustc() {
    let text = "[defaults]\ntimezone = \"Europe/Pari\"\n\n[[entry]]\nname = \"a\"\ntsak = \"t\"\nevery = \"1m\"\n";
    let all = load_schedule_str("schedules/reports.toml", text, NOW).unwrap_err();
    let want = r#"schedules/reports.toml:2:12: error: unknown time zone `Europe/Pari`
  |
2 | timezone = "Europe/Pari"
  |            ^^^^^^^^^^^^^
  = help: did you mean `Europe/Paris`?

schedules/reports.toml:6:1: error: unknown key `tsak` in [[entry]]
  |
6 | tsak = "t"
  | ^^^^
  = help: did you mean `task`?
"#;
    assert_eq!(all.to_string(), want);
    assert_eq!(all.summary(), "2 errors");
}

#[test]
fn an_interval_below_one_second_is_an_error_with_a_hint() {
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"500ms\"\n");
    assert_eq!(d.message, "`every` of 500ms is below the 1s minimum");
    assert_eq!((d.line, d.column), (4, 9));
    assert!(d.help.unwrap().contains("loop inside a task"));
    let d = one("[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1ns\"\n");
    assert!(d.message.contains("below the 1s minimum"), "{d}");
    assert!(load_schedule_str(
        "x.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\n",
        NOW
    )
    .is_ok());
}

#[test]
fn a_jitter_not_shorter_than_the_period_is_a_warning() {
    let s = load_schedule_str(
        "x.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\njitter = \"2m\"\n\
         [[entry]]\nname = \"b\"\ntask = \"t\"\ncron = \"*/5 * * * *\"\njitter = \"5m\"\n\
         [[entry]]\nname = \"c\"\ntask = \"t\"\ncron = \"0 * * * *\"\njitter = \"5m\"\n",
        NOW,
    )
    .unwrap();
    let w: Vec<_> = s
        .warnings
        .iter()
        .map(|d| (d.line, d.message.clone()))
        .collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        w[0],
        (
            5,
            "`jitter` of 2m is not shorter than the entry's period (1m)".to_string()
        )
    );
    assert_eq!(w[1].0, 10);
    assert!(w[1].1.contains("period (5m)"), "{w:?}");
}

#[test]
fn an_abbreviation_gets_the_iana_zone_people_mean() {
    let d =
        one("[[entry]]\nname = \"a\"\ntask = \"t\"\ncron = \"0 9 * * *\"\ntimezone = \"CEST\"\n");
    assert_eq!(d.message, "unknown time zone `CEST`");
    let help = d.help.unwrap();
    assert!(help.contains("\"Europe/Paris\""), "{help}");
    assert!(!help.contains("`CET`"), "{help}");
}

#[test]
fn the_app_wide_zone_applies_where_file_and_entry_set_none() {
    use crate::config::load_schedules_in;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[[entry]]\nname = \"plain\"\ntask = \"t\"\ncron = \"0 9 * * *\"\n\
         [[entry]]\nname = \"own\"\ntask = \"t\"\ncron = \"0 9 * * *\"\ntimezone = \"Asia/Tokyo\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[defaults]\ntimezone = \"America/New_York\"\n\
         [[entry]]\nname = \"file\"\ntask = \"t\"\ncron = \"0 9 * * *\"\n",
    )
    .unwrap();
    let paris: crate::schedule::Tz = "Europe/Paris".parse().unwrap();
    let s = load_schedules_in(&[dir.path().to_path_buf()], NOW, Some(paris)).unwrap();
    let zone = |n: &str| {
        s.entries
            .iter()
            .find(|e| *e.name == *n)
            .unwrap()
            .timezone
            .name()
            .to_string()
    };
    assert_eq!(zone("plain"), "Europe/Paris");
    assert_eq!(zone("own"), "Asia/Tokyo");
    assert_eq!(zone("file"), "America/New_York");
    let utc = load_schedules_in(&[dir.path().to_path_buf()], NOW, None).unwrap();
    assert_eq!(
        utc.entries
            .iter()
            .find(|e| &*e.name == "plain")
            .unwrap()
            .timezone,
        crate::schedule::Tz::UTC
    );
    let _ = at;
}
