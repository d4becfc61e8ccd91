//! Catch-up: which fire times that passed while no beat was leader get sent now, under the
//! `none` / `latest` / `all` policies and a look-back window; and the default window.
//! Pure: takes the last recorded fire and "now" as arguments. Owns no state and no sending.

use super::{CatchUp, Schedule};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

/// `all` never sends more than this many missed fires (the newest ones).
pub(crate) const MAX_CATCH_UP: usize = 1000;

/// The cap on any default window: a day-old run is rarely still wanted.
const MAX_DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How many consecutive cron gaps are looked at to find a period.
const PERIOD_SAMPLES: usize = 8;

/// The default `catch_up_window`: the entry's period, at most 24 h.
///
/// For cron the period is the largest of the first few gaps between consecutive fires after
/// 2001-01-01T00:00Z (a date with no DST transition near it), so `0 9,10 * * *` gets 23 h,
/// not 1 h: a missed 10:00 run is still caught up at 11:30. For `every` it is the interval;
/// a one-off `at` gets 24 h.
#[must_use]
pub fn default_catch_up_window(schedule: &Schedule) -> Duration {
    let period = match schedule {
        Schedule::Every { interval, .. } => *interval,
        Schedule::At(_) => MAX_DEFAULT_WINDOW,
        Schedule::Cron(cron) => {
            let reference = DateTime::<Utc>::from_timestamp(978_307_200, 0); // 2001-01-01
            let mut fires = std::iter::successors(reference, |t| cron.next_after(*t)).skip(1);
            let mut largest = None;
            if let Some(mut prev) = fires.next() {
                for next in fires.take(PERIOD_SAMPLES) {
                    let gap = (next - prev).to_std().unwrap_or(MAX_DEFAULT_WINDOW);
                    largest = largest.max(Some(gap));
                    prev = next;
                }
            }
            largest.unwrap_or(MAX_DEFAULT_WINDOW)
        }
    };
    period.min(MAX_DEFAULT_WINDOW)
}

/// The fire times in `(last, now]` to send under `policy`, oldest first: only those no older
/// than `window` before `now`, and for `all` at most [`MAX_CATCH_UP`] (the newest ones).
///
/// `latest_at_or_before` yields the entry's last fire at or before an instant (jitter and
/// windows applied). Walking backwards from `now` bounds the work by the cap, not by how many
/// fires the downtime spans (a per-second cron down for a day has 86,400).
///
/// `last == None` (the entry never ran) yields nothing: a new entry starts from now.
pub(crate) fn select_missed(
    policy: CatchUp,
    window: Duration,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    latest_at_or_before: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
) -> Vec<DateTime<Utc>> {
    let Some(last) = last else { return Vec::new() };
    let limit = match policy {
        CatchUp::None => return Vec::new(),
        CatchUp::Latest => 1,
        CatchUp::All => MAX_CATCH_UP,
    };
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    let oldest = now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut out = Vec::new();
    let mut cursor = latest_at_or_before(now);
    while let Some(fire) = cursor {
        if fire <= last || fire < oldest || out.len() == limit {
            break;
        }
        out.push(fire);
        cursor = latest_at_or_before(fire - TimeDelta::nanoseconds(1));
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::CronSchedule;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron(
            CronSchedule::parse(expr, crate::schedule::Tz::named("Europe/Paris").unwrap()).unwrap(),
        )
    }

    const H: u64 = 3600;

    #[test]
    fn default_window_is_the_period_capped_at_a_day() {
        let w = |s: &Schedule| default_catch_up_window(s).as_secs();
        assert_eq!(w(&cron("*/15 * * * *")), 15 * 60);
        assert_eq!(w(&cron("0 * * * *")), H);
        assert_eq!(w(&cron("0 */6 * * *")), 6 * H);
        assert_eq!(w(&cron("0 9,10 * * *")), 23 * H);
        assert_eq!(w(&cron("30 2 * * *")), 24 * H);
        assert_eq!(w(&cron("0 0 1 * *")), 24 * H);
        assert_eq!(w(&cron("*/5 * * * * *")), 5);
        let every = |secs| Schedule::Every {
            interval: Duration::from_secs(secs),
            anchor: DateTime::UNIX_EPOCH,
        };
        assert_eq!(w(&every(30)), 30);
        assert_eq!(w(&every(7 * 24 * H)), 24 * H);
        assert_eq!(w(&Schedule::At(utc("2026-12-01T08:00:00Z"))), 24 * H);
    }

    fn missed(policy: CatchUp, window: u64, last: Option<&str>, now: &str) -> Vec<String> {
        let s = cron("*/10 * * * *"); // Paris is UTC+1 in November; minutes are zone-free
        select_missed(
            policy,
            Duration::from_secs(window),
            last.map(utc),
            utc(now),
            |t| s.latest_at_or_before(t),
        )
        .iter()
        .map(|t| t.format("%H:%M").to_string())
        .collect()
    }

    #[test]
    fn none_and_never_ran_send_nothing() {
        assert!(missed(
            CatchUp::None,
            H,
            Some("2026-11-23T10:00:00Z"),
            "2026-11-23T10:35:00Z"
        )
        .is_empty());
        assert!(missed(CatchUp::All, H, None, "2026-11-23T10:35:00Z").is_empty());
        assert!(missed(CatchUp::Latest, H, None, "2026-11-23T10:35:00Z").is_empty());
    }

    #[test]
    fn latest_sends_the_most_recent_within_the_window() {
        let last = Some("2026-11-23T10:00:00Z");
        assert_eq!(
            missed(CatchUp::Latest, H, last, "2026-11-23T10:35:00Z"),
            ["10:30"]
        );
        // Exactly on a fire time: that fire is in (last, now].
        assert_eq!(
            missed(CatchUp::Latest, H, last, "2026-11-23T10:30:00Z"),
            ["10:30"]
        );
        // The most recent one is older than the window: skip it.
        assert!(missed(CatchUp::Latest, 240, last, "2026-11-23T10:35:00Z").is_empty());
        // Nothing missed since the last run.
        assert!(missed(CatchUp::Latest, H, last, "2026-11-23T10:09:59Z").is_empty());
        assert!(missed(CatchUp::Latest, H, last, "2026-11-23T10:00:00Z").is_empty());
    }

    #[test]
    fn all_sends_every_fire_in_the_window_oldest_first() {
        let last = Some("2026-11-23T10:00:00Z");
        assert_eq!(
            missed(CatchUp::All, H, last, "2026-11-23T10:35:00Z"),
            ["10:10", "10:20", "10:30"]
        );
        // The window cuts older fires; its edge is inclusive.
        assert_eq!(
            missed(CatchUp::All, 25 * 60, last, "2026-11-23T10:35:00Z"),
            ["10:10", "10:20", "10:30"]
        );
        assert_eq!(
            missed(CatchUp::All, 15 * 60, last, "2026-11-23T10:35:00Z"),
            ["10:20", "10:30"]
        );
    }

    #[test]
    fn all_keeps_the_newest_thousand() {
        let s = Schedule::Every {
            interval: Duration::from_secs(1),
            anchor: DateTime::UNIX_EPOCH,
        };
        let now = utc("2026-11-23T12:00:00Z");
        let last = Some(now - TimeDelta::hours(2)); // 7,200 missed fires
        let got = select_missed(CatchUp::All, Duration::from_secs(24 * H), last, now, |t| {
            s.latest_at_or_before(t)
        });
        assert_eq!(got.len(), MAX_CATCH_UP);
        assert_eq!(got.first(), Some(&(now - TimeDelta::seconds(999))));
        assert_eq!(got.last(), Some(&now));
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }
}
