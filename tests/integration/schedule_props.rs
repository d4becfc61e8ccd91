//! Property tests of next-fire computation: for random cron expressions, zones with DST and
//! ranges around the changes, iterating `next_after` gives exactly the fire times of a
//! minute-by-minute reference that applies the README's DST policy independently: strictly
//! increasing, nothing skipped, nothing repeated, gap times shifted to the first instant after
//! the gap (fixed hours) or skipped (`*` and step hours), folds fired once (fixed hours) or
//! in both halves (`*` and step hours).

use beatd::schedule::CronSchedule;
use beatd::schedule::Tz;
use chrono::{DateTime, Datelike, NaiveDateTime, TimeZone, Timelike, Utc};
use proptest::prelude::*;
use std::collections::BTreeSet;

const ZONE_NAMES: &[&str] = &[
    "UTC",
    "Europe/Paris",
    "Europe/London",
    "America/New_York",
    "America/St_Johns",
    "America/Santiago",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

fn zones() -> Vec<Tz> {
    ZONE_NAMES.iter().map(|n| Tz::named(n).unwrap()).collect()
}

/// A 5-field cron expression and the matcher the reference uses for it.
#[derive(Debug, Clone)]
struct Cron {
    minutes: Vec<u32>,
    /// `None` for `*`; `Some(step)` for `*/step`; else the listed hours.
    hour: HourField,
    /// Weekdays (0 = Sunday), `None` for `*`.
    weekdays: Option<Vec<u32>>,
}

#[derive(Debug, Clone)]
enum HourField {
    Any,
    Step(u32),
    List(Vec<u32>),
}

impl Cron {
    fn expr(&self) -> String {
        let join = |v: &[u32]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let hour = match &self.hour {
            HourField::Any => "*".to_string(),
            HourField::Step(s) => format!("*/{s}"),
            HourField::List(h) => join(h),
        };
        let dow = self.weekdays.as_deref().map_or("*".to_string(), join);
        format!("{} {hour} * * {dow}", join(&self.minutes))
    }

    /// Real elapsed time (README): hour field `*` or a step.
    fn elapsed(&self) -> bool {
        !matches!(self.hour, HourField::List(_))
    }

    fn matches(&self, w: NaiveDateTime) -> bool {
        let hour_ok = match &self.hour {
            HourField::Any => true,
            HourField::Step(s) => w.hour().is_multiple_of(*s),
            HourField::List(h) => h.contains(&w.hour()),
        };
        let dow_ok = self
            .weekdays
            .as_ref()
            .is_none_or(|d| d.contains(&w.weekday().num_days_from_sunday()));
        w.second() == 0 && self.minutes.contains(&w.minute()) && hour_ok && dow_ok
    }
}

fn sorted_set(max: u32, n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::btree_set(0..max, n).prop_map(|s| s.into_iter().collect())
}

fn cron() -> impl Strategy<Value = Cron> {
    let minutes = prop_oneof![
        sorted_set(60, 1..4),
        (1u32..=30).prop_map(|s| (0..60).step_by(s as usize).collect()),
    ];
    let hour = prop_oneof![
        Just(HourField::Any),
        (2u32..=6).prop_map(HourField::Step),
        sorted_set(24, 1..4).prop_map(HourField::List),
        // The hours DST changes happen in, most of the time.
        prop::sample::select(vec![0u32, 1, 2, 3]).prop_map(|h| HourField::List(vec![h])),
    ];
    let weekdays = prop_oneof![3 => Just(None), 1 => sorted_set(7, 1..4).prop_map(Some)];
    (minutes, hour, weekdays).prop_map(|(minutes, hour, weekdays)| Cron {
        minutes,
        hour,
        weekdays,
    })
}

/// UTC offset changes of `tz` in 2024-2028, to the minute.
fn transitions(tz: Tz) -> Vec<DateTime<Utc>> {
    use chrono::Offset as _;
    let offset = |u: DateTime<Utc>| u.with_timezone(&tz).offset().fix().local_minus_utc();
    let mut out = Vec::new();
    let mut day = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(2029, 1, 1, 0, 0, 0).unwrap();
    while day < end {
        let next = day + chrono::Duration::days(1);
        if offset(day) != offset(next) {
            let (mut lo, mut hi) = (day, next); // offset(lo) != offset(hi)
            while hi - lo > chrono::Duration::minutes(1) {
                let mid = lo + (hi - lo) / 2;
                let mid = mid - chrono::Duration::seconds(mid.timestamp().rem_euclid(60));
                if offset(mid) == offset(lo) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out.push(hi);
        }
        day = next;
    }
    out
}

/// A zone and a whole-minute start: mostly up to two days before one of its DST changes
/// (so the range crosses it), sometimes anywhere.
fn zone_and_start() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
    static TRANSITIONS: std::sync::OnceLock<Vec<Vec<DateTime<Utc>>>> = std::sync::OnceLock::new();
    let all = TRANSITIONS.get_or_init(|| zones().into_iter().map(transitions).collect());
    let zones = zones();
    (
        0..ZONE_NAMES.len(),
        any::<prop::sample::Index>(),
        0i64..2880,
        0u32..10,
    )
        .prop_map(move |(z, pick, before, anywhere)| {
            let tz = zones[z];
            let t = match &all[z] {
                list if !list.is_empty() && anywhere > 0 => *pick.get(list),
                _ => {
                    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                        + chrono::Duration::minutes(pick.index(5 * 365 * 1440) as i64)
                }
            };
            (tz, t - chrono::Duration::minutes(before))
        })
}

fn wall(tz: Tz, u: DateTime<Utc>) -> NaiveDateTime {
    u.with_timezone(&tz).naive_local()
}

/// The fire times in `(start, end]`, minute by minute, by the README's policy.
fn reference(
    c: &Cron,
    tz: Tz,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> BTreeSet<DateTime<Utc>> {
    let minute = chrono::Duration::minutes(1);
    let mut out = BTreeSet::new();
    let mut prev = wall(tz, start);
    let mut u = start + minute;
    while u <= end {
        let w = wall(tz, u);
        if c.elapsed() {
            // Every real minute whose wall clock matches: both halves of a fold, none of a gap.
            if c.matches(w) {
                out.insert(u);
            }
        } else {
            // First occurrence of a wall time only.
            if c.matches(w) && tz.from_local_datetime(&w).earliest().map(|t| t.to_utc()) == Some(u)
            {
                out.insert(u);
            }
            // Wall times skipped by a gap fire at the first instant after it.
            let mut skipped = prev + minute;
            while skipped < w {
                if c.matches(skipped) {
                    out.insert(u);
                }
                skipped += minute;
            }
        }
        prev = w;
        u += minute;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cron_fires_match_a_minute_by_minute_reference(
        c in cron(),
        (tz, start) in zone_and_start(),
        hours in 1i64..72,
    ) {
        let expr = c.expr();
        let cron = CronSchedule::parse(&expr, tz).unwrap();
        let end = start + chrono::Duration::hours(hours);
        let mut got = Vec::new();
        let mut at = start;
        while let Some(next) = cron.next_after(at) {
            prop_assert!(next > at, "{expr} in {tz}: {next} not after {at}");
            if next > end {
                break;
            }
            got.push(next);
            at = next;
        }
        let want: Vec<_> = reference(&c, tz, start, end).into_iter().collect();
        prop_assert_eq!(got, want, "{} in {}", expr, tz);
    }

    #[test]
    fn next_after_from_any_instant_is_the_next_of_the_iteration(
        c in cron(),
        (tz, start) in zone_and_start(),
        offset_s in 0i64..(3 * 86_400),
    ) {
        // Starting mid-way (at any second) lands on the same fire times: no fire depends on
        // where the iteration began.
        let cron = CronSchedule::parse(&c.expr(), tz).unwrap();
        let mid = start + chrono::Duration::seconds(offset_s);
        let from_mid = cron.next_after(mid);
        let mut at = start;
        let from_start = loop {
            match cron.next_after(at) {
                Some(n) if n <= mid => at = n,
                other => break other,
            }
        };
        prop_assert_eq!(from_mid, from_start, "{} in {}", c.expr(), tz);
    }
}
