//! DST table tests: for each zone, gap and fold cases for fixed-time, hour-`*` and step
//! entries, with the expected fire instants written out (wall clock and UTC offset).
//!
//! Every table is checked four ways: walking `next_after` from the start, `next_after` from
//! just before and from midway to each fire (a restart at any instant), and walking
//! `latest_at_or_before` back from the last fire.

use super::CronSchedule;
use crate::schedule::Tz;
use chrono::{DateTime, TimeDelta, Utc};

fn paris() -> Tz {
    Tz::named("Europe/Paris").unwrap()
}

fn new_york() -> Tz {
    Tz::named("America/New_York").unwrap()
}

fn lord_howe() -> Tz {
    Tz::named("Australia/Lord_Howe").unwrap()
}

fn apia() -> Tz {
    Tz::named("Pacific/Apia").unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

#[track_caller]
fn check(expr: &str, tz: Tz, from: &str, expected: &[&str]) {
    let s = CronSchedule::parse(expr, tz).unwrap();
    let show = |t: DateTime<Utc>| t.with_timezone(&tz).to_rfc3339();
    let mut t = at(from);
    let got: Vec<String> = expected
        .iter()
        .map(|_| {
            t = s.next_after(t).unwrap();
            show(t)
        })
        .collect();
    assert_eq!(got, expected, "{expr} in {tz} from {from}");

    let fires: Vec<_> = expected.iter().map(|e| at(e)).collect();
    let one = TimeDelta::nanoseconds(1);
    for pair in fires.windows(2) {
        let mid = pair[0] + (pair[1] - pair[0]) / 2;
        assert_eq!(
            s.next_after(mid).map(show),
            Some(show(pair[1])),
            "{expr}: after {mid}"
        );
        assert_eq!(
            s.next_after(pair[1] - one).map(show),
            Some(show(pair[1])),
            "{expr}"
        );
        assert_eq!(
            s.latest_at_or_before(mid).map(show),
            Some(show(pair[0])),
            "{expr}: {mid}"
        );
    }
    let mut back = vec![fires[fires.len() - 1]];
    while back.len() < fires.len() {
        let before = *back.last().unwrap() - one;
        back.push(s.latest_at_or_before(before).unwrap());
    }
    back.reverse();
    assert_eq!(
        back.into_iter().map(show).collect::<Vec<_>>(),
        expected,
        "{expr} backwards"
    );
}

// Europe/Paris 2026: gap 02:00 -> 03:00 on 29 March, fold 03:00 -> 02:00 on 25 October.

#[test]
#[rustfmt::skip]
fn paris_gap() {
    let p = paris();
    // Fixed time: the nonexistent 02:30 runs at the first instant after the gap.
    check("30 2 * * *", p, "2026-03-28T23:00:00Z",
        &["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]);
    // Fixed hour: three nonexistent times collapse into one fire.
    check("*/20 2 * * *", p, "2026-03-28T23:00:00Z",
        &["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00", "2026-03-30T02:20:00+02:00"]);
    // Elapsed time: one fire per real hour, the nonexistent 02:30 is skipped.
    check("30 * * * *", p, "2026-03-29T01:00:00+01:00",
        &["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"]);
    check("0 * * * *", p, "2026-03-29T00:30:00+01:00",
        &["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]);
    check("*/15 * * * *", p, "2026-03-29T01:30:00+01:00",
        &["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00"]);
    check("0 */2 * * *", p, "2026-03-28T23:30:00+01:00",
        &["2026-03-29T00:00:00+01:00", "2026-03-29T04:00:00+02:00", "2026-03-29T06:00:00+02:00"]);
}

#[test]
#[rustfmt::skip]
fn paris_fold() {
    let p = paris();
    check("30 2 * * *", p, "2026-10-24T12:00:00Z",
        &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]);
    // A list of hours is fixed-time: once, where croner alone would fire twice.
    check("0 2,14 * * *", p, "2026-10-24T11:00:00Z",
        &["2026-10-24T14:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T14:00:00+01:00"]);
    // A fixed hour with a minute step runs in the first pass only.
    check("*/20 2 * * *", p, "2026-10-24T12:00:00Z", &[
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:20:00+02:00", "2026-10-25T02:40:00+02:00",
        "2026-10-26T02:00:00+01:00",
    ]);
    check("0 * * * *", p, "2026-10-25T00:30:00+02:00", &[
        "2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]);
    check("*/30 * * * *", p, "2026-10-25T01:45:00+02:00", &[
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00",
    ]);
    check("30 */2 * * *", p, "2026-10-25T00:00:00+02:00", &[
        "2026-10-25T00:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00",
        "2026-10-25T04:30:00+01:00",
    ]);
}

#[test]
fn paris_searches_from_inside_the_fold() {
    let fixed = CronSchedule::parse("50 2 * * *", paris()).unwrap();
    // 02:20 in the second pass: the first pass already showed 02:50.
    let second_pass = at("2026-10-25T02:20:00+01:00");
    assert_eq!(
        fixed.latest_at_or_before(second_pass),
        Some(at("2026-10-25T02:50:00+02:00"))
    );
    assert_eq!(
        fixed.next_after(second_pass),
        Some(at("2026-10-26T02:50:00+01:00"))
    );
    let elapsed = CronSchedule::parse("10 * * * *", paris()).unwrap();
    // 02:50 in the first pass: the repeat of 02:10 is next, though its wall clock is earlier.
    let first_pass = at("2026-10-25T02:50:00+02:00");
    assert_eq!(
        elapsed.next_after(first_pass),
        Some(at("2026-10-25T02:10:00+01:00"))
    );
    assert_eq!(
        elapsed.latest_at_or_before(first_pass),
        Some(at("2026-10-25T02:10:00+02:00"))
    );
    assert_eq!(
        elapsed.latest_at_or_before(second_pass),
        Some(at("2026-10-25T02:10:00+01:00"))
    );
}

// America/New_York 2026: gap 02:00 -> 03:00 on 8 March, fold 02:00 -> 01:00 on 1 November.

#[test]
#[rustfmt::skip]
fn new_york_gap() {
    let ny = new_york();
    check("30 2 * * *", ny, "2026-03-07T12:00:00-05:00",
        &["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]);
    check("0 * * * *", ny, "2026-03-08T00:30:00-05:00",
        &["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"]);
    check("*/20 * * * *", ny, "2026-03-08T01:30:00-05:00",
        &["2026-03-08T01:40:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:20:00-04:00"]);
    // An hour step skips the nonexistent 02:15.
    check("15 */2 * * *", ny, "2026-03-08T00:30:00-05:00",
        &["2026-03-08T04:15:00-04:00", "2026-03-08T06:15:00-04:00"]);
}

#[test]
#[rustfmt::skip]
fn new_york_fold() {
    let ny = new_york();
    check("30 1 * * *", ny, "2026-10-31T12:00:00-04:00",
        &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]);
    check("0 * * * *", ny, "2026-11-01T00:30:00-04:00",
        &["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]);
    // The same hours as a step follow elapsed time; as a list they are fixed.
    check("0 1-23/12 * * *", ny, "2026-10-31T20:00:00-04:00",
        &["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T13:00:00-05:00"]);
    check("0 1,13 * * *", ny, "2026-10-31T20:00:00-04:00",
        &["2026-11-01T01:00:00-04:00", "2026-11-01T13:00:00-05:00"]);
}

// Australia/Lord_Howe 2026 (a 30-minute shift): fold 02:00 -> 01:30 on 5 April, gap
// 02:00 -> 02:30 on 4 October.

#[test]
#[rustfmt::skip]
fn lord_howe_gap() {
    let lh = lord_howe();
    check("15 2 * * *", lh, "2026-10-03T12:00:00+10:30",
        &["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]);
    // Elapsed time: 02:00 never happens, so 03:00 follows 01:00 (1.5 real hours).
    check("0 * * * *", lh, "2026-10-04T00:30:00+10:30",
        &["2026-10-04T01:00:00+10:30", "2026-10-04T03:00:00+11:00", "2026-10-04T04:00:00+11:00"]);
    check("*/15 * * * *", lh, "2026-10-04T01:40:00+10:30",
        &["2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"]);
}

#[test]
#[rustfmt::skip]
fn lord_howe_fold() {
    let lh = lord_howe();
    check("45 1 * * *", lh, "2026-04-04T12:00:00+11:00",
        &["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]);
    check("*/15 * * * *", lh, "2026-04-05T01:20:00+11:00", &[
        "2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-05T01:30:00+10:30",
        "2026-04-05T01:45:00+10:30", "2026-04-05T02:00:00+10:30",
    ]);
    check("0 * * * *", lh, "2026-04-05T00:30:00+11:00",
        &["2026-04-05T01:00:00+11:00", "2026-04-05T02:00:00+10:30", "2026-04-05T03:00:00+10:30"]);
    check("30 1-23/2 * * *", lh, "2026-04-05T00:00:00+11:00",
        &["2026-04-05T01:30:00+11:00", "2026-04-05T01:30:00+10:30", "2026-04-05T03:30:00+10:30"]);
}

// Pacific/Apia skipped Friday 2011-12-30: 23:59:59 on the 29th (-10:00) was followed by
// 00:00 on the 31st (+14:00).

#[test]
#[rustfmt::skip]
fn apia_skipped_day() {
    let apia = apia();
    // Fixed time: the skipped day's 09:00 runs once, at the first instant of the 31st.
    check("0 9 * * *", apia, "2011-12-29T00:00:00-10:00",
        &["2011-12-29T09:00:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T09:00:00+14:00"]);
    check("0 12 30 12 *", apia, "2011-12-01T00:00:00-10:00",
        &["2011-12-31T00:00:00+14:00", "2012-12-30T12:00:00+14:00"]);
    // Elapsed time: the 24 nonexistent hours are skipped; one real hour after 23:00 on
    // the 29th is 00:00 on the 31st.
    check("0 * * * *", apia, "2011-12-29T22:30:00-10:00",
        &["2011-12-29T23:00:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T01:00:00+14:00"]);
    check("*/30 * * * *", apia, "2011-12-29T23:10:00-10:00",
        &["2011-12-29T23:30:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T00:30:00+14:00"]);
    check("0 */6 * * *", apia, "2011-12-29T17:00:00-10:00",
        &["2011-12-29T18:00:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T06:00:00+14:00"]);
    // A per-second entry crosses the skipped day without visiting its 86,400 seconds.
    check("* * * * * *", apia, "2011-12-29T23:59:58-10:00",
        &["2011-12-29T23:59:59-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T00:00:01+14:00"]);
}

/// The policy stated minute by minute, with no search: an instant fires when its wall clock
/// matches (elapsed-time entries), or when it is the first occurrence of a matching wall clock
/// or the end of a gap that swallowed one (fixed-time entries).
fn brute_force(s: &CronSchedule, from: DateTime<Utc>, minutes: i64) -> Vec<DateTime<Utc>> {
    use chrono::{LocalResult, TimeZone};
    let tz = s.tz;
    let matches = |c: chrono::NaiveDateTime| s.matches_civil(c);
    let mut out = Vec::new();
    for m in 1..=minutes {
        let i = from + TimeDelta::minutes(m);
        let wall = i.with_timezone(&tz).naive_local();
        let prev = (i - TimeDelta::minutes(1)).with_timezone(&tz).naive_local();
        let fires = if s.follows_elapsed_time() {
            matches(wall)
        } else {
            let first = match tz.from_local_datetime(&wall) {
                LocalResult::Ambiguous(earlier, _) => earlier.to_utc() == i,
                _ => true,
            };
            let mut swallowed = prev + TimeDelta::minutes(1);
            let mut gap_match = false;
            while swallowed < wall {
                gap_match |= matches(swallowed);
                swallowed += TimeDelta::minutes(1);
            }
            (first && matches(wall)) || gap_match
        };
        if fires {
            out.push(i);
        }
    }
    out
}

#[test]
fn search_agrees_with_a_minute_by_minute_reference() {
    let cases = [
        (paris(), "2026-03-28T12:00:00Z"),
        (paris(), "2026-10-24T12:00:00Z"),
        (new_york(), "2026-03-07T18:00:00Z"),
        (new_york(), "2026-10-31T18:00:00Z"),
        (lord_howe(), "2026-04-04T00:00:00Z"),
        (lord_howe(), "2026-10-03T00:00:00Z"),
        (apia(), "2011-12-29T00:00:00Z"),
    ];
    let exprs = [
        "30 2 * * *",
        "0 2,14 * * *",
        "*/20 2 * * *",
        "* 1 * * *",
        "0 * * * *",
        "30 * * * *",
        "*/15 * * * *",
        "7 */2 * * *",
        "45 1-23/3 * * *",
        "0 0 * * *",
        "*/7 1-3 * * *",
    ];
    for (tz, from) in cases {
        for expr in exprs {
            let s = CronSchedule::parse(expr, tz).unwrap();
            let from = at(from);
            let expected = brute_force(&s, from, 48 * 60);
            let end = from + TimeDelta::hours(48);
            let got: Vec<_> = std::iter::successors(s.next_after(from), |t| s.next_after(*t))
                .take_while(|t| *t <= end)
                .collect();
            assert_eq!(got, expected, "{expr} in {tz} from {from}");
            let back: Vec<_> = std::iter::successors(s.latest_at_or_before(end), |t| {
                s.latest_at_or_before(*t - TimeDelta::nanoseconds(1))
            })
            .take_while(|t| *t > from)
            .collect();
            assert_eq!(
                back.into_iter().rev().collect::<Vec<_>>(),
                expected,
                "{expr} back"
            );
        }
    }
}
