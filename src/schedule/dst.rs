//! Turning a wall-clock (civil) time in an IANA zone into the instants it names, under beatd's
//! DST policy. Owns the gap/fold rules and nothing else: which civil times match a cron
//! expression is `cron.rs`'s business.
//!
//! The policy (DESIGN.md "Time semantics"), named with jiff's disambiguation vocabulary:
//!
//! **Fixed-time entries** (any hour field other than `*` or a step, e.g. `30 2 * * *`,
//! `0 2,14 * * *`, `*/20 2 * * *`):
//! - gap → **`later`** (jiff's `compatible` for gaps): a civil time skipped by a spring-forward
//!   transition fires at the first instant after the gap, i.e. the transition itself. Several
//!   civil times in one gap collapse into that single instant, which may also be the next
//!   matching civil time after the gap: it runs once.
//! - fold → **`earlier`**: a civil time repeated by a fall-back transition fires at its first
//!   occurrence only.
//!
//! **Elapsed-time entries** (hour field `*` or a step, e.g. `*/15 * * * *`, `0 * * * *`,
//! `30 */2 * * *`) follow real time, as Vixie cron treats its wildcard jobs:
//! - gap → skipped: no real time passed, so nothing is owed (`30 * * * *` in Paris fires at
//!   01:30+01:00 then 03:30+02:00, one real hour apart, with no extra run at 03:00).
//! - fold → **both** occurrences (`*/15 * * * *` fires every 15 real minutes through the
//!   fold, `0 * * * *` every real hour).
//!
//! A gap's civil time is resolved as "the first instant whose wall clock is at or past it",
//! which is monotone in the civil time; the cron search relies on that to stop early.

use crate::schedule::Tz;
use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};

/// The instants one civil time names in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instants {
    /// The first instant whose wall clock reaches the civil time: the instant itself, the
    /// earlier of a fold, or the end of a gap.
    pub(crate) first: DateTime<Utc>,
    /// The later occurrence when the civil time sits in a fold.
    pub(crate) repeat: Option<DateTime<Utc>>,
    /// The civil time does not exist (it sits in a gap); `first` is the end of the gap.
    pub(crate) in_gap: bool,
}

/// Resolves `civil` in `tz` (gap → later, fold → both occurrences reported).
pub(crate) fn resolve(tz: Tz, civil: NaiveDateTime) -> Instants {
    match tz.from_local_datetime(&civil) {
        LocalResult::Single(dt) => Instants {
            first: dt.to_utc(),
            repeat: None,
            in_gap: false,
        },
        LocalResult::Ambiguous(earlier, later) => Instants {
            first: earlier.to_utc(),
            repeat: Some(later.to_utc()),
            in_gap: false,
        },
        LocalResult::None => Instants {
            first: end_of_gap(tz, civil),
            repeat: None,
            in_gap: true,
        },
    }
}

/// The wall clock of `t` in `tz`.
pub(crate) fn wall(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// UTC offset of `tz` at `t`, in seconds.
fn offset_secs(tz: Tz, t: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// How far to look for folds around an instant. No zone has a fold anywhere near this long,
/// and folds are months apart, so at most one transition sits in the window.
const FOLD_HORIZON: TimeDelta = TimeDelta::hours(26);

/// How far the wall clock will step back in a fold that starts shortly after `t` (zero if
/// none). A civil time up to this much *before* `t`'s wall clock can still occur after `t`,
/// but only while the transition is less than the fold's size away: otherwise the wall clock
/// first climbs past everything the fold repeats. Returning zero in that case matters: a
/// per-second entry would otherwise re-examine a fold's worth of seconds on every search
/// for the whole day before each fall-back.
pub(crate) fn fold_ahead(tz: Tz, t: DateTime<Utc>) -> TimeDelta {
    let now = offset_secs(tz, t);
    let drop = now - offset_secs(tz, t + FOLD_HORIZON);
    if drop > 0 && offset_secs(tz, t + TimeDelta::seconds(drop)) != now {
        TimeDelta::seconds(drop)
    } else {
        TimeDelta::zero()
    }
}

/// How far the wall clock stepped back in a fold that ended shortly before `t` (zero if
/// none). A civil time up to this much *after* `t`'s wall clock may already have occurred,
/// while `t` is still inside the repeated stretch.
pub(crate) fn fold_behind(tz: Tz, t: DateTime<Utc>) -> TimeDelta {
    let now = offset_secs(tz, t);
    let drop = offset_secs(tz, t - FOLD_HORIZON) - now;
    if drop > 0 && offset_secs(tz, t - TimeDelta::seconds(drop)) != now {
        TimeDelta::seconds(drop)
    } else {
        TimeDelta::zero()
    }
}

/// The first instant whose wall clock is at or past `civil`, for a `civil` inside a gap: the
/// transition instant. chrono-tz does not expose transitions, so bisect; wall clock offsets
/// stay within ±15 h, which brackets the answer.
fn end_of_gap(tz: Tz, civil: NaiveDateTime) -> DateTime<Utc> {
    // Transitions fall on whole seconds, so bisect over whole seconds.
    let guess = civil.and_utc().timestamp();
    let at = |secs: i64| DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let mut lo = guess - 15 * 3600; // wall(lo) < civil
    let mut hi = guess + 15 * 3600; // wall(hi) >= civil
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall(tz, at(mid)) >= civil {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    at(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn civil(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn gap_resolves_to_the_transition_instant() {
        let paris = crate::schedule::Tz::named("Europe/Paris").unwrap();
        let got = resolve(paris, civil(2026, 3, 29, 2, 30));
        assert_eq!(
            got,
            Instants {
                first: utc("2026-03-29T01:00:00Z"),
                repeat: None,
                in_gap: true,
            }
        );
        let lord_howe = crate::schedule::Tz::named("Australia/Lord_Howe").unwrap();
        let got = resolve(lord_howe, civil(2026, 10, 4, 2, 15));
        assert_eq!(got.first, utc("2026-10-03T15:30:00Z"));
        let apia = crate::schedule::Tz::named("Pacific/Apia").unwrap();
        let got = resolve(apia, civil(2011, 12, 30, 12, 0));
        assert_eq!(got.first, utc("2011-12-30T10:00:00Z"));
    }

    #[test]
    fn fold_reports_both_occurrences() {
        let ny = crate::schedule::Tz::named("America/New_York").unwrap();
        let got = resolve(ny, civil(2026, 11, 1, 1, 30));
        assert_eq!(
            got,
            Instants {
                first: utc("2026-11-01T05:30:00Z"),
                repeat: Some(utc("2026-11-01T06:30:00Z")),
                in_gap: false,
            }
        );
    }

    #[test]
    fn fold_margins_only_near_a_fall_back() {
        let paris = crate::schedule::Tz::named("Europe/Paris").unwrap();
        assert_eq!(
            fold_ahead(paris, utc("2026-10-25T00:30:00Z")),
            TimeDelta::hours(1)
        );
        assert_eq!(
            fold_ahead(paris, utc("2026-07-01T00:00:00Z")),
            TimeDelta::zero()
        );
        assert_eq!(
            fold_behind(paris, utc("2026-10-25T01:30:00Z")),
            TimeDelta::hours(1)
        );
        // Far enough from the transition, nothing is repeated around `t` yet (or any more).
        assert_eq!(
            fold_ahead(paris, utc("2026-10-24T23:59:59Z")),
            TimeDelta::zero()
        );
        assert_eq!(
            fold_ahead(paris, utc("2026-10-25T00:00:01Z")),
            TimeDelta::hours(1)
        );
        assert_eq!(
            fold_behind(paris, utc("2026-10-25T01:59:59Z")),
            TimeDelta::hours(1)
        );
        assert_eq!(
            fold_behind(paris, utc("2026-10-25T02:00:00Z")),
            TimeDelta::zero()
        );
        // A spring-forward is a gap, not a fold.
        assert_eq!(
            fold_ahead(paris, utc("2026-03-29T00:30:00Z")),
            TimeDelta::zero()
        );
        let lord_howe = crate::schedule::Tz::named("Australia/Lord_Howe").unwrap();
        assert_eq!(
            fold_ahead(lord_howe, utc("2026-04-04T14:45:00Z")),
            TimeDelta::minutes(30)
        );
    }
}
