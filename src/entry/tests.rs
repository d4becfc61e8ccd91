//! Per-entry fire-time rules: jitter, `start_at` / `end_at`, `enabled`, catch-up.

use super::*;
use crate::schedule::{jitter_offset, CronSchedule};

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn entry(schedule: Schedule) -> Entry {
    Entry {
        name: "nightly-report".into(),
        task: "reports.generate".into(),
        schedule,
        timezone: crate::schedule::Tz::UTC,
        args: Vec::new().into(),
        kwargs: Map::new().into(),
        queue: "celery".into(),
        rare: None,
        headers: Map::new().into(),
        jitter_offset: Duration::ZERO,
        catch_up: CatchUp::Latest,
        catch_up_window: Duration::from_secs(3600),
        enabled: true,
        overlap: crate::entry::Overlap::Allow,
        overlap_timeout: crate::entry::DEFAULT_OVERLAP_TIMEOUT,
        source: None,
        rq: None,
    }
}

fn hourly() -> Entry {
    entry(Schedule::Cron(
        CronSchedule::parse("0 * * * *", crate::schedule::Tz::UTC).unwrap(),
    ))
}

#[test]
fn jitter_shifts_every_fire_and_searches_from_the_shifted_base() {
    let mut e = hourly();
    e.jitter_offset = Duration::from_millis(90_500);
    // 10:00:30 is before 10:01:30.5, the jittered 10:00 fire.
    assert_eq!(
        e.next_fire_after(utc("2026-11-23T10:00:30Z")),
        Some(utc("2026-11-23T10:01:30.5Z"))
    );
    assert_eq!(
        e.next_fire_after(utc("2026-11-23T10:01:30.5Z")),
        Some(utc("2026-11-23T11:01:30.5Z"))
    );
    assert_eq!(
        e.latest_fire_at_or_before(utc("2026-11-23T10:01:30Z")),
        Some(utc("2026-11-23T09:01:30.5Z"))
    );
    assert_eq!(
        e.jitter_offset,
        e.jitter_offset.min(Duration::from_secs(3600))
    );
    // The resolved offset is what jitter_offset() draws for the name.
    let drawn = jitter_offset(&e.name, Duration::from_secs(300));
    assert_eq!(
        drawn,
        jitter_offset("nightly-report", Duration::from_secs(300))
    );
}

#[test]
fn disabled_entries_never_fire() {
    let mut e = hourly();
    e.enabled = false;
    assert_eq!(e.next_fire_after(utc("2026-11-23T10:00:00Z")), None);
    assert!(e
        .missed_fires(
            Some(utc("2026-11-23T08:00:00Z")),
            utc("2026-11-23T10:30:00Z")
        )
        .is_empty());
}

#[test]
fn start_and_end_bound_the_fire_times_inclusively() {
    let mut e = hourly();
    e.rare = crate::entry::Rare {
        start_at: Some(utc("2026-11-23T12:00:00Z")),
        end_at: Some(utc("2026-11-23T14:00:00Z")),
        ..Default::default()
    }
    .boxed();
    assert_eq!(
        e.next_fire_after(utc("2026-11-23T09:10:00Z")),
        Some(utc("2026-11-23T12:00:00Z"))
    );
    assert_eq!(
        e.next_fire_after(utc("2026-11-23T13:00:00Z")),
        Some(utc("2026-11-23T14:00:00Z"))
    );
    assert_eq!(e.next_fire_after(utc("2026-11-23T14:00:00Z")), None);
    assert_eq!(
        e.latest_fire_at_or_before(utc("2026-11-23T20:00:00Z")),
        Some(utc("2026-11-23T14:00:00Z"))
    );
    assert_eq!(
        e.latest_fire_at_or_before(utc("2026-11-23T11:59:59Z")),
        None
    );
    // The window applies to the jittered fire, not the base time.
    e.jitter_offset = Duration::from_secs(60);
    assert_eq!(
        e.next_fire_after(utc("2026-11-23T09:00:00Z")),
        Some(utc("2026-11-23T12:01:00Z"))
    );
    assert_eq!(
        e.latest_fire_at_or_before(utc("2026-11-23T20:00:00Z")),
        Some(utc("2026-11-23T13:01:00Z"))
    );
    assert_eq!(e.next_fire_after(utc("2026-11-23T13:01:00Z")), None);
}

#[test]
fn one_off_fires_once_and_is_caught_up_within_a_day() {
    let mut e = entry(Schedule::At(utc("2026-12-01T09:00:00Z")));
    e.catch_up_window = crate::schedule::default_catch_up_window(&e.schedule);
    assert_eq!(
        e.next_fire_after(utc("2026-11-23T00:00:00Z")),
        Some(utc("2026-12-01T09:00:00Z"))
    );
    assert_eq!(e.next_fire_after(utc("2026-12-01T09:00:00Z")), None);
    let last = Some(utc("2026-11-30T00:00:00Z"));
    assert_eq!(
        e.missed_fires(last, utc("2026-12-01T20:00:00Z")),
        [utc("2026-12-01T09:00:00Z")]
    );
    assert!(e.missed_fires(last, utc("2026-12-02T10:00:00Z")).is_empty());
}

#[test]
fn catch_up_after_downtime_with_simulated_instants() {
    let mut e = hourly();
    e.jitter_offset = Duration::from_secs(7);
    e.catch_up_window = Duration::from_secs(3 * 3600);
    // Last sent 06:00:07; beat was down until 10:30.
    let last = Some(utc("2026-11-23T06:00:07Z"));
    let now = utc("2026-11-23T10:30:00Z");
    e.catch_up = CatchUp::None;
    assert!(e.missed_fires(last, now).is_empty());
    e.catch_up = CatchUp::Latest;
    assert_eq!(e.missed_fires(last, now), [utc("2026-11-23T10:00:07Z")]);
    e.catch_up = CatchUp::All;
    assert_eq!(
        e.missed_fires(last, now),
        [
            utc("2026-11-23T08:00:07Z"),
            utc("2026-11-23T09:00:07Z"),
            utc("2026-11-23T10:00:07Z")
        ]
    );
    // Never ran: start from now, no immediate fire.
    assert!(e.missed_fires(None, now).is_empty());
    // A fire time at exactly `now` counts, one a nanosecond later does not.
    assert_eq!(
        e.missed_fires(last, utc("2026-11-23T07:00:07Z")),
        [utc("2026-11-23T07:00:07Z")]
    );
    assert!(e
        .missed_fires(last, utc("2026-11-23T07:00:06.999Z"))
        .is_empty());
    // end_at stops catch-up too.
    e.rare = crate::entry::Rare {
        end_at: Some(utc("2026-11-23T08:30:00Z")),
        ..Default::default()
    }
    .boxed();
    assert_eq!(e.missed_fires(last, now), [utc("2026-11-23T08:00:07Z")]);
}

#[test]
fn catch_up_across_dst_transitions() {
    let paris = crate::schedule::Tz::named("Europe/Paris").unwrap();
    let mut hourly = entry(Schedule::Cron(
        CronSchedule::parse("0 * * * *", paris).unwrap(),
    ));
    hourly.timezone = paris;
    hourly.catch_up = CatchUp::All;
    hourly.catch_up_window = Duration::from_secs(24 * 3600);
    // Down from 01:00+02:00 to 03:30+01:00 on the fall-back night: both 02:00s are owed.
    let last = Some(utc("2026-10-24T23:00:00Z"));
    assert_eq!(
        hourly.missed_fires(last, utc("2026-10-25T02:30:00Z")),
        [
            utc("2026-10-25T00:00:00Z"),
            utc("2026-10-25T01:00:00Z"),
            utc("2026-10-25T02:00:00Z")
        ]
    );
    // A fixed-time entry whose 02:30 fell into the spring-forward gap is owed once, at 03:00.
    let mut nightly = entry(Schedule::Cron(
        CronSchedule::parse("30 2 * * *", paris).unwrap(),
    ));
    nightly.timezone = paris;
    let last = Some(utc("2026-03-28T01:30:00Z"));
    assert_eq!(
        nightly.missed_fires(last, utc("2026-03-29T01:10:00Z")),
        [utc("2026-03-29T01:00:00Z")]
    );
}
