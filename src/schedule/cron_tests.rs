//! Cron parsing errors, syntax coverage and plain (UTC) fire times.

use super::*;
use crate::schedule::Tz;
const UTC: Tz = Tz::UTC;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn err(expr: &str) -> CronError {
    CronSchedule::parse(expr, UTC).unwrap_err()
}

#[test]
fn error_names_the_field_value_and_span() {
    let e = err("0 25 * * *");
    assert!(
        e.message.starts_with("invalid hour field \"25\": "),
        "{}",
        e.message
    );
    assert!(e.message.contains("0-23"), "{}", e.message);
    assert_eq!(e.span, Some(2..4));
    let e = err("*/5 * * 13 *");
    assert!(
        e.message.starts_with("invalid month field \"13\""),
        "{}",
        e.message
    );
    assert_eq!(e.span, Some(8..10));
    let e = err("61 * * * * *");
    assert!(
        e.message.starts_with("invalid second field \"61\""),
        "{}",
        e.message
    );
    assert_eq!(e.span, Some(0..2));
    let e = err("0 0 * * FUNDAY");
    assert!(
        e.message
            .starts_with("invalid day-of-week field \"FUNDAY\""),
        "{}",
        e.message
    );
    assert_eq!(e.span, Some(8..14));
    let e = err("0 0 1W-3 * *");
    assert!(
        e.message.starts_with("invalid day-of-month field"),
        "{}",
        e.message
    );
}

#[test]
fn error_messages_read_well() {
    let msg = |e: &str| err(e).message;
    assert_eq!(
        msg("0 25 * * *"),
        r#"invalid hour field "25": out of range (allowed: 0-23)"#
    );
    assert_eq!(
        msg("0 0 * * funday"),
        r#"invalid day-of-week field "funday": illegal character 'f' (allowed: 0-7 or SUN-SAT, L, #)"#
    );
    assert_eq!(
        msg("0 9-5 * * *"),
        r#"invalid hour field "9-5": range out of bounds or reversed (allowed: 0-23)"#
    );
    assert_eq!(
        msg("0 */0 * * *"),
        r#"invalid hour field "*/0": step cannot be zero (allowed: 0-23)"#
    );
}

#[test]
fn names_only_count_in_their_own_field() {
    let e = err("0 MON * * *");
    assert!(
        e.message
            .starts_with(r#"invalid hour field "MON": illegal character 'M'"#),
        "{}",
        e.message
    );
    assert_eq!(e.span, Some(2..5));
    let e = err("0 0 * * JAN");
    assert!(
        e.message.starts_with(r#"invalid day-of-week field "JAN""#),
        "{}",
        e.message
    );
    let e = err("0 0 * MON *");
    assert!(
        e.message.starts_with(r#"invalid month field "MON""#),
        "{}",
        e.message
    );
    // Lower case names are fine where they belong.
    assert!(CronSchedule::parse("0 0 * jan-mar mon,fri", UTC).is_ok());
}

#[test]
fn wrong_field_count_and_impossible_dates_are_errors() {
    assert!(err("* * * *").message.contains("has 4 fields"));
    assert!(err("0 0 0 * * * 2030").message.contains("has 7 fields"));
    assert!(err("").message.contains("has 0 fields"));
    assert!(err("0 0 30 2 *").message.contains("never matches"));
    assert!(err("@reboot").message.contains("unknown cron nickname"));
}

#[test]
fn accepts_names_ranges_steps_lists_and_specials() {
    for expr in [
        "0 9 * * MON-FRI",
        "0 0 1 JAN,JUL *",
        "*/10 * * * * *",
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 * * 5#3",
        "0 0 * * 5L",
        "0 0 ? * 7",
        "5-55/10 1,2,3 * * *",
        "@hourly",
    ] {
        CronSchedule::parse(expr, UTC).unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
}

fn fires(expr: &str, from: &str, n: usize) -> Vec<String> {
    let s = CronSchedule::parse(expr, UTC).unwrap();
    let mut t = utc(from);
    (0..n)
        .map(|_| {
            t = s.next_after(t).unwrap();
            t.to_rfc3339()
        })
        .collect()
}

#[test]
fn special_characters_fire_on_the_expected_days() {
    // Last day of February in a leap year, then a common year.
    assert_eq!(
        fires("0 12 L 2 *", "2028-01-01T00:00:00Z", 2),
        ["2028-02-29T12:00:00+00:00", "2029-02-28T12:00:00+00:00"]
    );
    // Third Friday; 2026-11-20 and 2026-12-18 are third Fridays.
    assert_eq!(
        fires("0 8 * * FRI#3", "2026-11-01T00:00:00Z", 2),
        ["2026-11-20T08:00:00+00:00", "2026-12-18T08:00:00+00:00"]
    );
    // Weekday nearest the 1st: 2026-11-01 is a Sunday, so Monday the 2nd.
    assert_eq!(
        fires("0 0 1W * *", "2026-10-31T00:00:00Z", 1),
        ["2026-11-02T00:00:00+00:00"]
    );
    // Vixie OR: the 1st of the month or any Monday.
    assert_eq!(
        fires("0 0 1 * MON", "2026-11-28T00:00:00Z", 3),
        [
            "2026-11-30T00:00:00+00:00",
            "2026-12-01T00:00:00+00:00",
            "2026-12-07T00:00:00+00:00"
        ]
    );
    // A `+` day-of-week ANDs the day fields, as Celery's crontab() does: the first Monday.
    assert_eq!(
        fires("0 0 1-7 * +MON", "2026-11-03T00:00:00Z", 2),
        ["2026-12-07T00:00:00+00:00", "2027-01-04T00:00:00+00:00"]
    );
    assert_eq!(
        fires("0 0 1-7 * MON", "2026-11-03T00:00:00Z", 1),
        ["2026-11-04T00:00:00+00:00"]
    );
    // Six fields: seconds first.
    assert_eq!(
        fires("*/20 * * * * *", "2026-11-23T10:00:00.5Z", 3),
        [
            "2026-11-23T10:00:20+00:00",
            "2026-11-23T10:00:40+00:00",
            "2026-11-23T10:01:00+00:00"
        ]
    );
}

#[test]
fn next_and_latest_are_strict_and_inclusive() {
    let s = CronSchedule::parse("30 2 * * *", UTC).unwrap();
    let fire = utc("2026-11-23T02:30:00Z");
    assert_eq!(s.next_after(fire), Some(utc("2026-11-24T02:30:00Z")));
    assert_eq!(s.next_after(fire - TimeDelta::nanoseconds(1)), Some(fire));
    assert_eq!(s.latest_at_or_before(fire), Some(fire));
    assert_eq!(
        s.latest_at_or_before(fire - TimeDelta::nanoseconds(1)),
        Some(utc("2026-11-22T02:30:00Z"))
    );
}

#[test]
fn classifies_elapsed_time_entries_by_the_hour_field() {
    let elapsed = |e: &str| CronSchedule::parse(e, UTC).unwrap().follows_elapsed_time();
    assert!(elapsed("*/15 * * * *"));
    assert!(elapsed("0 * * * *"));
    assert!(elapsed("0 */2 * * *"));
    assert!(elapsed("0 1-23/2 * * *"));
    assert!(elapsed("@hourly"));
    assert!(!elapsed("0 2,14 * * *"));
    assert!(!elapsed("* 2 * * *"));
    assert!(!elapsed("0 1-3 * * *"));
    assert!(!elapsed("@daily"));
}

#[test]
fn a_misspelt_day_or_month_name_gets_the_closest_real_one() {
    let e = err("0 9 * * MOM");
    assert!(
        e.message
            .contains("unknown day name \"MOM\"; did you mean MON?"),
        "{}",
        e.message
    );
    let e = err("0 9 1 JNA *");
    assert!(
        e.message
            .contains("unknown month name \"JNA\"; did you mean JAN?"),
        "{}",
        e.message
    );
    // Names that are right stay accepted, and letters of other fields keep their message.
    assert!(CronSchedule::parse("0 9 * * MON-FRI", UTC).is_ok());
    assert!(err("0 x * * *").message.contains("illegal character 'x'"));
}
