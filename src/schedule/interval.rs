//! `every` intervals: fire times are `anchor + k × interval` in absolute (UTC) time, for every
//! integer `k`. The anchor only fixes the phase; it is not a start (that is `start_at`).
//! Closed form in integer nanoseconds, so every replica and every restart computes the same
//! instants and nothing accumulates: there is no "previous fire" to drift from.

use chrono::{DateTime, Utc};
use std::time::Duration;

const NANOS_PER_SEC: i128 = 1_000_000_000;

fn to_nanos(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * NANOS_PER_SEC + i128::from(t.timestamp_subsec_nanos())
}

fn from_nanos(n: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(n.div_euclid(NANOS_PER_SEC)).ok()?;
    let nanos = u32::try_from(n.rem_euclid(NANOS_PER_SEC)).ok()?;
    DateTime::from_timestamp(secs, nanos)
}

/// The index `k` of the last fire at or before `t`, with the interval in nanoseconds.
fn floor_index(
    anchor: DateTime<Utc>,
    interval: Duration,
    t: DateTime<Utc>,
) -> Option<(i128, i128)> {
    let step = i128::try_from(interval.as_nanos())
        .ok()
        .filter(|s| *s > 0)?;
    Some(((to_nanos(t) - to_nanos(anchor)).div_euclid(step), step))
}

/// The first `anchor + k × interval` strictly after `after`; `None` for a zero interval or
/// past chrono's range.
pub(super) fn next_after(
    anchor: DateTime<Utc>,
    interval: Duration,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let (k, step) = floor_index(anchor, interval, after)?;
    from_nanos(to_nanos(anchor) + (k + 1) * step)
}

/// The last `anchor + k × interval` at or before `t`.
pub(super) fn latest_at_or_before(
    anchor: DateTime<Utc>,
    interval: Duration,
    t: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let (k, step) = floor_index(anchor, interval, t)?;
    from_nanos(to_nanos(anchor) + k * step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;
    use chrono::TimeDelta;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn every(interval: Duration, anchor: &str) -> Schedule {
        Schedule::Every {
            interval,
            anchor: utc(anchor),
        }
    }

    #[test]
    fn epoch_anchor_aligns_to_the_interval() {
        let s = every(Duration::from_secs(30), "1970-01-01T00:00:00Z");
        assert_eq!(
            s.next_after(utc("2026-11-23T10:00:07Z")),
            Some(utc("2026-11-23T10:00:30Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-23T10:00:30Z")),
            Some(utc("2026-11-23T10:01:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-23T10:00:30Z")),
            Some(utc("2026-11-23T10:00:30Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-23T10:00:29.999Z")),
            Some(utc("2026-11-23T10:00:00Z"))
        );
    }

    #[test]
    fn anchor_sets_the_phase_on_both_sides() {
        let s = every(Duration::from_secs(86_400), "2026-12-01T09:00:00Z");
        assert_eq!(
            s.next_after(utc("2026-11-23T10:00:00Z")),
            Some(utc("2026-11-24T09:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2027-01-05T08:59:59Z")),
            Some(utc("2027-01-05T09:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-23T08:00:00Z")),
            Some(utc("2026-11-22T09:00:00Z"))
        );
    }

    #[test]
    fn restarts_at_any_instant_see_the_same_fire_times() {
        // A daily interval with daily restarts: each "restart" computes from its own now and
        // must land on the same sequence, never resetting the countdown.
        let s = every(Duration::from_secs(86_400 + 3_600), "2026-01-01T00:00:00Z");
        let restarts = [
            "2026-11-23T00:00:00Z",
            "2026-11-23T05:17:31.250Z",
            "2026-11-23T23:59:59.999999999Z",
            "2026-11-24T00:00:00Z",
        ];
        let from = |start: &str| {
            let mut t = utc(start);
            let mut out = Vec::new();
            while out.len() < 5 {
                t = s.next_after(t).unwrap();
                if t > utc("2026-11-25T00:00:00Z") {
                    out.push(t);
                }
            }
            out
        };
        let expected = from(restarts[0]);
        assert_eq!(expected[0], utc("2026-11-25T03:00:00Z"));
        assert_eq!(expected[1], utc("2026-11-26T04:00:00Z"));
        for r in &restarts[1..] {
            assert_eq!(from(r), expected, "restart at {r}");
        }
    }

    #[test]
    fn no_drift_over_ten_thousand_iterations() {
        // 1.3 s is not a whole number of nanoseconds in binary floating point; integer math
        // must still land exactly on anchor + k × interval.
        let interval = Duration::from_millis(1_300);
        let anchor = utc("2026-11-23T00:00:00.100Z");
        let s = Schedule::Every { interval, anchor };
        let mut t = anchor;
        for _ in 0..10_000 {
            t = s.next_after(t).unwrap();
        }
        assert_eq!(t, anchor + TimeDelta::milliseconds(13_000_000));
        assert_eq!(t, utc("2026-11-23T03:36:40.100Z"));
        // Jumping in late, from an arbitrary instant, lands on the same grid.
        assert_eq!(s.next_after(t - TimeDelta::nanoseconds(1)), Some(t));
    }

    #[test]
    fn zero_interval_never_fires() {
        let s = every(Duration::ZERO, "1970-01-01T00:00:00Z");
        assert_eq!(s.next_after(utc("2026-11-23T00:00:00Z")), None);
        assert_eq!(s.latest_at_or_before(utc("2026-11-23T00:00:00Z")), None);
    }

    #[test]
    fn at_fires_once() {
        let at = utc("2026-12-01T08:00:00Z");
        let s = Schedule::At(at);
        assert_eq!(s.next_after(at - TimeDelta::seconds(1)), Some(at));
        assert_eq!(s.next_after(at), None);
        assert_eq!(s.latest_at_or_before(at), Some(at));
        assert_eq!(s.latest_at_or_before(at - TimeDelta::nanoseconds(1)), None);
    }
}
