//! Timestamps as Celery writes and reads them: Python's `datetime.isoformat()` of an aware
//! UTC time (`+00:00`, microseconds omitted when zero) and a lenient reader that accepts what
//! a Celery worker accepts (any offset, `Z`, or a naive time taken as UTC).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// `datetime.isoformat()` of an aware UTC datetime: `2026-11-23T10:44:10.700195+00:00`, or
/// `2026-11-23T10:44:10+00:00` when the microseconds are 0 (Python has no nanoseconds, so
/// they are truncated).
#[must_use]
pub fn isoformat(t: DateTime<Utc>) -> String {
    let micros = t.nanosecond() % 1_000_000_000 / 1_000;
    if micros == 0 {
        format!("{}+00:00", t.format("%Y-%m-%dT%H:%M:%S"))
    } else {
        format!("{}.{micros:06}+00:00", t.format("%Y-%m-%dT%H:%M:%S"))
    }
}

/// RFC 3339 UTC with milliseconds (`2026-11-23T10:00:00.000Z`), the format of the
/// `beatd_scheduled_at` header.
#[must_use]
pub fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads an ISO-8601 timestamp the way a Celery worker does; `None` when it is not one.
#[must_use]
pub fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    // Python's isoformat may use a space separator; naive times are taken as UTC, as a
    // worker configured with the UTC default does.
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.to_utc());
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn isoformat_matches_python() {
        assert_eq!(
            isoformat(at("2026-11-23T10:44:10.700195Z")),
            "2026-11-23T10:44:10.700195+00:00"
        );
        assert_eq!(
            isoformat(at("2030-01-02T03:04:05Z")),
            "2030-01-02T03:04:05+00:00"
        );
        assert_eq!(
            isoformat(at("2030-01-02T03:04:05.000000999Z")),
            "2030-01-02T03:04:05+00:00"
        );
        assert_eq!(
            isoformat(at("2030-01-02T03:04:05.5Z")),
            "2030-01-02T03:04:05.500000+00:00"
        );
    }

    #[test]
    fn rfc3339_millis_format() {
        assert_eq!(
            rfc3339_millis(at("2026-11-23T10:00:00Z")),
            "2026-11-23T10:00:00.000Z"
        );
    }

    #[test]
    fn parses_what_celery_accepts() {
        let want = at("2026-11-23T10:44:10.700195Z");
        assert_eq!(parse_iso("2026-11-23T10:44:10.700195+00:00"), Some(want));
        assert_eq!(parse_iso("2026-11-23T10:44:10.700195Z"), Some(want));
        assert_eq!(parse_iso("2026-11-23T11:44:10.700195+01:00"), Some(want));
        assert_eq!(parse_iso("2026-11-23T10:44:10.700195"), Some(want));
        assert_eq!(parse_iso("2026-11-23 10:44:10.700195"), Some(want));
        assert_eq!(parse_iso("not-a-date"), None);
    }
}
