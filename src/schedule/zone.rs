//! IANA time zones for chrono, backed by jiff's copy of the tz database (compiled in, so a
//! container without `/usr/share/zoneinfo` and a test machine read the same rules).
//!
//! Why not chrono-tz: its tables hold a pointer per transition (the abbreviation), so the
//! dynamic loader rewrites 1 MB of them at every start: 1.7 MB of resident memory in a
//! process that uses one or two zones (an idle beat's footprint is a target). jiff keeps the
//! database as one compressed blob and parses a zone the first time it is named.
//!
//! A [`Tz`] is a `Copy` handle to a zone parsed once per process and kept for its life (there
//! are about 600 names; a schedule names a handful).

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone};
use jiff::tz::{AmbiguousOffset, TimeZone as JiffZone};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

/// A parsed zone and the name it was asked by.
struct Zone {
    name: &'static str,
    tz: JiffZone,
}

static UTC_ZONE: Zone = Zone {
    name: "UTC",
    tz: JiffZone::UTC,
};

/// Zones parsed so far, by name. Entries are never removed: a zone's handle is `'static`.
static ZONES: LazyLock<Mutex<HashMap<&'static str, &'static Zone>>> = LazyLock::new(Mutex::default);

/// An IANA time zone (`Europe/Paris`, `UTC`), usable wherever chrono takes a [`TimeZone`].
#[derive(Clone, Copy)]
pub struct Tz(&'static Zone);

impl Tz {
    /// Coordinated Universal Time.
    pub const UTC: Tz = Tz(&UTC_ZONE);

    /// The zone's IANA name, as the database spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The zone named exactly `name` (case included, as chrono-tz and Celery read it).
    #[must_use]
    pub fn named(name: &str) -> Option<Tz> {
        if name == "UTC" {
            return Some(Tz::UTC);
        }
        let mut zones = ZONES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(z) = zones.get(name) {
            return Some(Tz(z));
        }
        let tz = jiff::tz::db().get(name).ok()?;
        // jiff looks names up ignoring case; a schedule's zone is written as tzdb spells it,
        // and a near miss gets a suggestion instead.
        if tz.iana_name() != Some(name) {
            return None;
        }
        let name: &'static str = Box::leak(name.into());
        let zone: &'static Zone = Box::leak(Box::new(Zone { name, tz }));
        zones.insert(name, zone);
        Some(Tz(zone))
    }

    /// Every zone name the database knows, links included (for suggestions).
    pub fn names() -> impl Iterator<Item = String> {
        jiff::tz::db().available().map(|n| n.as_str().to_owned())
    }

    /// Offset from UTC at the instant `secs` seconds after the Unix epoch.
    fn offset_at(self, secs: i64) -> i32 {
        let secs = secs.clamp(
            jiff::Timestamp::MIN.as_second(),
            jiff::Timestamp::MAX.as_second(),
        );
        let ts = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        self.0.tz.to_offset(ts).seconds()
    }

    fn offset(self, secs: i32) -> ZoneOffset {
        ZoneOffset {
            zone: self,
            // A zone offset of a day or more does not exist; chrono cannot hold one.
            fixed: FixedOffset::east_opt(secs).unwrap_or(chrono::Utc.fix()),
        }
    }
}

impl PartialEq for Tz {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Tz {}

impl std::hash::Hash for Tz {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl fmt::Debug for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl fmt::Display for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

/// A name that is not a zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone `{0}`")]
pub struct UnknownZone(pub String);

impl FromStr for Tz {
    type Err = UnknownZone;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tz::named(s).ok_or_else(|| UnknownZone(s.to_owned()))
    }
}

/// The offset of a [`Tz`] at some instant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ZoneOffset {
    zone: Tz,
    fixed: FixedOffset,
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.fixed, f)
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fixed, f)
    }
}

/// `civil` as jiff's civil time; `None` outside jiff's years (-9999 to 9999).
fn to_jiff(civil: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    use chrono::{Datelike, Timelike};
    let year = i16::try_from(civil.year()).ok()?;
    let narrow = |v: u32| i8::try_from(v).ok();
    jiff::civil::DateTime::new(
        year,
        narrow(civil.month())?,
        narrow(civil.day())?,
        narrow(civil.hour())?,
        narrow(civil.minute())?,
        // chrono's leap second (59 s and 1e9+ ns) is the last nanosecond of the minute here.
        narrow(civil.second())?,
        i32::try_from(civil.nanosecond().min(999_999_999)).ok()?,
    )
    .ok()
}

impl TimeZone for Tz {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Self {
        offset.zone
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        let Some(civil) = to_jiff(local) else {
            // Beyond the database's years a zone keeps its offset at the edge.
            let secs = local.and_utc().timestamp();
            return MappedLocalTime::Single(self.offset(self.offset_at(secs)));
        };
        match self.0.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                MappedLocalTime::Single(self.offset(offset.seconds()))
            }
            AmbiguousOffset::Gap { .. } => MappedLocalTime::None,
            AmbiguousOffset::Fold { before, after } => MappedLocalTime::Ambiguous(
                self.offset(before.seconds()),
                self.offset(after.seconds()),
            ),
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset(self.offset_at(utc.and_utc().timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{LocalResult, Utc};

    fn civil(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn names_are_exact_and_parsed_once() {
        let a = Tz::named("Europe/Paris").unwrap();
        let b: Tz = "Europe/Paris".parse().unwrap();
        assert!(std::ptr::eq(a.0, b.0));
        assert_eq!(a.name(), "Europe/Paris");
        assert_eq!(Tz::named("europe/paris"), None);
        assert_eq!(Tz::named("Mars/Olympus"), None);
        assert_eq!("UTC".parse::<Tz>().unwrap(), Tz::UTC);
        assert!(Tz::names().any(|n| n == "America/New_York"));
    }

    #[test]
    fn gaps_folds_and_plain_times_in_paris() {
        let paris = Tz::named("Europe/Paris").unwrap();
        // Spring forward 2026-03-29 02:00 → 03:00.
        assert!(matches!(
            paris.from_local_datetime(&civil("2026-03-29 02:30:00")),
            LocalResult::None
        ));
        // Fall back 2026-10-25 03:00 → 02:00.
        match paris.from_local_datetime(&civil("2026-10-25 02:30:00")) {
            LocalResult::Ambiguous(a, b) => {
                assert_eq!(a.to_utc().to_rfc3339(), "2026-10-25T00:30:00+00:00");
                assert_eq!(b.to_utc().to_rfc3339(), "2026-10-25T01:30:00+00:00");
            }
            other => panic!("expected a fold, got {other:?}"),
        }
        let summer = paris
            .from_local_datetime(&civil("2026-07-01 12:00:00"))
            .single()
            .unwrap();
        assert_eq!(summer.to_rfc3339(), "2026-07-01T12:00:00+02:00");
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            t.with_timezone(&paris).to_rfc3339(),
            "2026-01-01T01:00:00+01:00"
        );
    }

    /// The zones the README and the DST tables use, plus a few with odd rules (half-hour
    /// DST, a date-line jump, southern summers), agree with chrono-tz, which beatd used
    /// before, at every instant every 6 hours from 1970 to 2040 and at every civil half
    /// hour around each transition. (Not Africa/Casablanca: jiff bundles tzdb 2026f, chrono-tz
    /// 0.10 has 2025b, and Morocco's predicted rules changed in between.)
    #[test]
    fn offsets_and_local_times_match_chrono_tz() {
        let zones = [
            "UTC",
            "Europe/Paris",
            "Europe/London",
            "Europe/Berlin",
            "Europe/Dublin",
            "America/New_York",
            "America/Los_Angeles",
            "America/St_Johns",
            "America/Santiago",
            "America/Sao_Paulo",
            "Australia/Sydney",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "Asia/Tokyo",
            "Pacific/Apia",
            "Etc/GMT+5",
        ];
        let start = Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2040, 1, 1, 0, 0, 0).unwrap();
        for name in zones {
            let ours = Tz::named(name).unwrap();
            let theirs: chrono_tz::Tz = name.parse().unwrap();
            let mut t = start;
            let mut prev = None;
            while t < end {
                let a = t.with_timezone(&ours).offset().fix();
                let b = t.with_timezone(&theirs).offset().fix();
                assert_eq!(a, b, "{name} at {t}");
                if prev.is_some_and(|p| p != a) {
                    // A transition in the last 6 hours: every civil half hour around it.
                    let wall = (t - chrono::TimeDelta::hours(8)).naive_utc();
                    for k in 0..40 {
                        let c = wall + chrono::TimeDelta::minutes(30 * k);
                        let x = ours.from_local_datetime(&c).map(|d| d.to_utc());
                        let y = theirs.from_local_datetime(&c).map(|d| d.to_utc());
                        assert_eq!(x, y, "{name} civil {c}");
                    }
                }
                prev = Some(a);
                t += chrono::TimeDelta::hours(6);
            }
        }
    }
}
