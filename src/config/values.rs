//! Meaning of single values shared by schedule files and `beatd.toml`: humantime durations,
//! IANA zones (with the closest name suggested), datetimes (RFC 3339, or civil time in a zone),
//! TOML → JSON for task arguments, and "did you mean" suggestions. Each check returns a located
//! [`Diagnostic`] on failure; none reads the clock or touches files.

use super::diagnostic::{Diagnostic, SourceFile};
use crate::schedule::CatchUp;
use crate::schedule::Tz;
use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// Keeps the value, or records the diagnostic and keeps nothing: how every check goes on
/// after a problem so that all of them are reported.
pub(crate) fn keep<T>(r: Result<T, Diagnostic>, out: &mut Vec<Diagnostic>) -> Option<T> {
    r.map_err(|d| out.push(d)).ok()
}

/// The closest candidate to `word`, if one is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .map(|c| (strsim::jaro_winkler(&word, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A humantime duration such as `30s`, `5m`, `1h 30m`.
pub(crate) fn duration(
    file: &SourceFile,
    key: &str,
    v: &Spanned<String>,
) -> Result<Duration, Diagnostic> {
    humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
        file.error(
            v.span(),
            format!("invalid duration `{}` for `{key}`: {e}", v.get_ref()),
        )
        .with_help("write durations like \"30s\", \"5m\", \"1h 30m\" or \"2 days\"")
    })
}

/// Like [`duration`], and also rejects zero.
pub(crate) fn positive_duration(
    file: &SourceFile,
    key: &str,
    v: &Spanned<String>,
) -> Result<Duration, Diagnostic> {
    let d = duration(file, key, v)?;
    if d.is_zero() {
        return Err(file.error(v.span(), format!("`{key}` must be longer than zero")));
    }
    Ok(d)
}

/// An IANA time zone name; on failure suggests the closest one from the tz database.
pub(crate) fn timezone(file: &SourceFile, v: &Spanned<String>) -> Result<Tz, Diagnostic> {
    let name = v.get_ref().trim();
    name.parse::<Tz>().map_err(|_| {
        let d = file.error(v.span(), format!("unknown time zone `{name}`"));
        if let Some(zones) = abbreviation(name) {
            return d.with_help(format!(
                "`{name}` is an abbreviation, not a zone: write the IANA zone of the place, \
                 e.g. {zones} (it follows daylight saving time by itself)"
            ));
        }
        match closest_zone(name) {
            Some(best) => d.with_help(format!("did you mean `{best}`?")),
            None => d.with_help("use an IANA name such as \"Europe/Paris\" or \"UTC\""),
        }
    })
}

/// IANA zones for the common abbreviations people write (`CEST` is summer time of a place,
/// not a zone of its own; tzdb's `CET` and `EST` exist but are rarely what is meant).
fn abbreviation(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_uppercase().as_str() {
        "CEST" | "MEZ" | "MESZ" => "\"Europe/Paris\", \"Europe/Berlin\" or \"Europe/Madrid\"",
        "BST" => "\"Europe/London\"",
        "IST" => "\"Asia/Kolkata\" or \"Europe/Dublin\"",
        "EEST" => "\"Europe/Athens\" or \"Europe/Helsinki\"",
        "WEST" => "\"Europe/Lisbon\"",
        "EDT" => "\"America/New_York\"",
        "CDT" => "\"America/Chicago\"",
        "MDT" => "\"America/Denver\"",
        "PDT" | "PST" => "\"America/Los_Angeles\"",
        "AEST" | "AEDT" => "\"Australia/Sydney\"",
        "JST" => "\"Asia/Tokyo\"",
        "KST" => "\"Asia/Seoul\"",
        "BRT" => "\"America/Sao_Paulo\"",
        _ => return None,
    })
}

/// Scores against the full name and against its last segment, so `Paris` finds `Europe/Paris`
/// and `America/New York` finds `America/New_York`.
fn closest_zone(name: &str) -> Option<String> {
    let want = name.to_lowercase().replace(' ', "_");
    Tz::names()
        .map(|name| {
            let full = name.to_lowercase();
            let city = full.rsplit('/').next().unwrap_or(&full).to_owned();
            let score = strsim::jaro_winkler(&want, &full).max(strsim::jaro_winkler(&want, &city));
            (score, name)
        })
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

/// A datetime as written: an absolute instant, or civil time to read in the entry's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Instant(DateTime<Utc>),
    Civil(NaiveDateTime),
}

/// Accepts a string or a TOML datetime: RFC 3339 with an offset, or a local date-time
/// (`2026-12-01T09:00:00`, `2026-12-01 09:00`), or a date (midnight).
pub(crate) fn when(
    file: &SourceFile,
    key: &str,
    v: &Spanned<toml::Value>,
) -> Result<When, Diagnostic> {
    let text = match v.get_ref() {
        toml::Value::String(s) => s.trim().to_owned(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(file
                .error(
                    v.span(),
                    format!("`{key}` must be a datetime, found {}", other.type_str()),
                )
                .with_help("write \"2026-12-01T09:00:00\" (in the entry's time zone) or RFC 3339"))
        }
    };
    parse_when(&text).ok_or_else(|| {
        file.error(v.span(), format!("invalid datetime `{text}` for `{key}`"))
            .with_help(
                "write \"2026-12-01T09:00:00\" (in the entry's time zone) or \
             \"2026-12-01T09:00:00+01:00\" (RFC 3339)",
            )
    })
}

fn parse_when(text: &str) -> Option<When> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(When::Instant(t.with_timezone(&Utc)));
    }
    const CIVIL: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    CIVIL
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
        })
        .map(When::Civil)
}

impl When {
    /// The instant, reading civil time in `tz` with the cron DST policy: a time in a gap means
    /// the first instant after the gap; a time in a fold means its first occurrence.
    pub(crate) fn resolve(self, tz: Tz) -> DateTime<Utc> {
        match self {
            When::Instant(t) => t,
            When::Civil(civil) => resolve_civil(civil, tz),
        }
    }
}

fn resolve_civil(civil: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&civil) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => {
            // Gaps start and end on whole minutes in every zone since 1970, so the first
            // civil minute that exists after `civil` is the end of the gap. The longest gap on
            // record is a day (Pacific/Apia, 2011).
            let mut probe = civil
                .with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(civil);
            for _ in 0..=(26 * 60) {
                probe += chrono::Duration::minutes(1);
                if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                    tz.from_local_datetime(&probe)
                {
                    return t.with_timezone(&Utc);
                }
            }
            // Unreachable for real zones; reading the time as UTC is still a defined answer.
            civil.and_utc()
        }
    }
}

/// TOML → JSON for `args`, `kwargs` and `headers`: datetimes become RFC 3339 strings; floats
/// JSON cannot carry (nan, inf) are refused.
pub(crate) fn to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("{f} cannot be sent as JSON"))?,
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => J::Object(table_to_json(t)?),
    })
}

pub(crate) fn table_to_json(
    t: &toml::Table,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    t.iter()
        .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
        .collect()
}

/// Maps `inner` (a byte range inside a string value's contents) to a range of the file, when
/// the string is written plainly enough (no escapes, single-line quotes) for the offsets to
/// agree; otherwise the whole value.
pub(crate) fn inner_span(text: &str, value: Range<usize>, inner: Range<usize>) -> Range<usize> {
    let raw = text.get(value.clone()).unwrap_or("");
    let plain = match raw.as_bytes().first() {
        Some(b'\'') => !raw.starts_with("'''"),
        Some(b'"') => !raw.starts_with("\"\"\"") && !raw.contains('\\'),
        _ => false,
    };
    let len = raw.len().saturating_sub(2);
    if !plain || inner.start >= len.max(1) {
        return value;
    }
    let start = value.start + 1 + inner.start;
    start..value.start + 1 + inner.end.clamp(inner.start + 1, len)
}

/// A string that must not be blank (names, queues, paths).
pub(crate) fn nonempty(
    file: &SourceFile,
    key: &str,
    v: &Spanned<String>,
) -> Result<String, Diagnostic> {
    if v.get_ref().trim().is_empty() {
        return Err(file.error(v.span(), format!("`{key}` must not be empty")));
    }
    Ok(v.get_ref().clone())
}

/// kombu's Redis priority, 0-9.
pub(crate) fn priority(file: &SourceFile, v: &Spanned<i64>) -> Result<u8, Diagnostic> {
    u8::try_from(*v.get_ref())
        .ok()
        .filter(|p| *p <= 9)
        .ok_or_else(|| {
            file.error(
                v.span(),
                format!("priority {} is out of range", v.get_ref()),
            )
            .with_help("priority is 0-9; on Redis 0 runs first (kombu's meaning)")
        })
}

/// `none` | `latest` | `all`, with the closest suggested.
pub(crate) fn catch_up(file: &SourceFile, v: &Spanned<String>) -> Result<CatchUp, Diagnostic> {
    const NAMES: [&str; 3] = ["none", "latest", "all"];
    match v.get_ref().as_str() {
        "none" => Ok(CatchUp::None),
        "latest" => Ok(CatchUp::Latest),
        "all" => Ok(CatchUp::All),
        other => {
            let d = file.error(v.span(), format!("unknown catch_up policy `{other}`"));
            Err(match suggest(other, NAMES.into_iter()) {
                Some(best) => d.with_help(format!("did you mean `{best}`? (none | latest | all)")),
                None => d.with_help("catch_up is one of none, latest, all"),
            })
        }
    }
}

/// An entry's `overlap` policy.
pub(crate) fn overlap(
    file: &SourceFile,
    v: &Spanned<String>,
) -> Result<crate::entry::Overlap, Diagnostic> {
    use crate::entry::Overlap;
    const NAMES: [&str; 3] = ["allow", "skip", "buffer_one"];
    match v.get_ref().as_str() {
        "allow" => Ok(Overlap::Allow),
        "skip" => Ok(Overlap::Skip),
        "buffer_one" => Ok(Overlap::BufferOne),
        other => {
            let d = file.error(v.span(), format!("unknown overlap policy `{other}`"));
            Err(match suggest(other, NAMES.into_iter()) {
                Some(best) => d.with_help(format!(
                    "did you mean `{best}`? (allow | skip | buffer_one)"
                )),
                None => d.with_help("overlap is one of allow, skip, buffer_one"),
            })
        }
    }
}

/// A TOML table as a JSON object (`kwargs`, `headers`).
pub(crate) fn json_table(
    file: &SourceFile,
    key: &str,
    v: &Spanned<toml::Table>,
) -> Result<serde_json::Map<String, serde_json::Value>, Diagnostic> {
    table_to_json(v.get_ref()).map_err(|m| file.error(v.span(), format!("invalid `{key}`: {m}")))
}
