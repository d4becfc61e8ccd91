//! Cron expressions bound to an IANA zone: parsing (with errors that name the field at fault)
//! and the search for fire instants. Matching civil times comes from croner run on naive wall
//! clock times; mapping them to instants is `dst.rs`. No I/O, no clock.
//!
//! Parser choices: 5 fields, or 6 with seconds first (no year field); Sunday is 0 or 7; names
//! (`MON`, `JAN`, any case) only in their own field; `L`, `W`, `#` and `?` as croner reads
//! them; no "sloppy" ranges such as `5/10`; nicknames `@yearly`, `@annually`, `@monthly`,
//! `@weekly`, `@daily`, `@midnight`, `@hourly`.
//!
//! Day-of-month and day-of-week combine the Vixie cron way: when both are restricted a day
//! matching *either* fires (`0 0 1 * MON` is the 1st and every Monday). Celery's `crontab()`
//! ANDs them instead; a day-of-week written with croner's `+` prefix (`0 0 1-7 * +MON`, the
//! first Monday) gives that meaning, so a Celery schedule can be carried over exactly.
//!
//! croner's own DST handling is bypassed on purpose: it treats any hour field other than a
//! single value (for example `2,14`) as an interval job and fires it twice in a fold, while
//! DESIGN.md reserves that for hour `*` and steps.

use super::dst::{self, Instants};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc};
use croner::parser::{CronParser, Seconds, Year};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// A parsed cron expression bound to a time zone.
#[derive(Clone)]
pub struct CronSchedule {
    /// The expression as written; shared between entries that write it the same way.
    pub expr: Arc<str>,
    /// Zone the fields are interpreted in.
    pub tz: crate::schedule::Tz,
    /// The parsed pattern, matched against naive wall clock times. Shared between entries
    /// with the same expression (see [`shared_pattern`]): croner 4 keeps a byte per
    /// possible value of every field, years 1–5000 included, about 5.3 KB per pattern, which
    /// made an idle beat with 10,000 entries take 80 MB.
    cron: Arc<croner::Cron>,
    /// The hour field is `*` or a step: the entry follows elapsed time through folds.
    elapsed: bool,
}

// croner's pattern prints several kilobytes of bit fields; the expression says it all.
impl std::fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronSchedule")
            .field("expr", &self.expr)
            .field("tz", &self.tz)
            .field("elapsed", &self.elapsed)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

/// A cron expression that does not parse; names the field and value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// Human message, e.g. `invalid hour field "25": ...`.
    pub message: String,
    /// Byte range inside the expression the error points at, when known.
    pub span: Option<Range<usize>>,
}

/// Field names and allowed values, seconds first (the 6-field layout).
const FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L, W"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT, L, #"),
];

/// Upper bound on civil matches examined per search. A search only walks past its answer
/// inside a fold, so this is never reached by a real schedule; it keeps a pathological one
/// (every second, a day-long fold) from spinning.
const MAX_STEPS: usize = 200_000;

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .alternative_weekdays(false)
        .sloppy_ranges(false)
        .build()
}

fn nickname(expr: &str) -> Option<&'static str> {
    Some(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// The whitespace-separated fields of `expr` with their byte ranges.
fn split_fields(expr: &str) -> Vec<(&str, Range<usize>)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, ch) in expr
        .char_indices()
        .chain(std::iter::once((expr.len(), ' ')))
    {
        match (ch.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((&expr[s..i], s..i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    out
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A letter that has no meaning in field `index` (6-field numbering). croner substitutes
/// names across the whole expression, so on its own it would read `MON` in the hour field as
/// 1 and `JAN` in the day-of-week field as Monday.
fn stray_letter(index: usize, text: &str) -> Option<char> {
    let (names, letters): (&[&str], &[char]) = match index {
        3 => (&[], &['L', 'W']),
        4 => (&MONTH_NAMES, &[]),
        5 => (&DAY_NAMES, &['L']),
        _ => (&[], &[]),
    };
    let rest = names
        .iter()
        .fold(text.to_ascii_uppercase(), |r, n| r.replace(n, "0"));
    let bad = rest
        .chars()
        .find(|c| c.is_alphabetic() && !letters.contains(c))?;
    Some(
        text.chars()
            .find(|c| c.to_ascii_uppercase() == bad)
            .unwrap_or(bad),
    )
}

/// A misspelt month or day name in field `index`, with the closest real one: `MOM` reads as
/// an illegal `M` to croner, where the user meant `MON`.
fn unknown_name(index: usize, text: &str) -> Option<String> {
    let (names, kind): (&[&str], &str) = match index {
        4 => (&MONTH_NAMES, "month"),
        5 => (&DAY_NAMES, "day"),
        _ => return None,
    };
    let token = text
        .split(|c: char| ",-/#".contains(c))
        .map(str::to_ascii_uppercase)
        .find(|t| {
            t.len() >= 2
                && t.chars().all(|c| c.is_ascii_alphabetic())
                && !names.contains(&t.as_str())
                && !(index == 5 && t == "L")
        })?;
    // One edit away (a transposition counts as one): `MOM`, `JNA`, `TUS`. Anything further
    // keeps croner's "illegal character", which points at the letter.
    let best = names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(&token, n), *n))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 1)
        .map(|(_, n)| n)?;
    Some(format!(
        "unknown {kind} name \"{token}\"; did you mean {best}?"
    ))
}

/// croner's message, reworded to sit after `invalid hour field "25": `.
fn reword(err: &croner::errors::CronError, text: &str) -> String {
    let raw = err.to_string();
    if raw.contains("illegal character") {
        if let Some(c) = raw.split('\'').nth(1).and_then(|c| c.chars().next()) {
            let c = text
                .chars()
                .find(|t| t.to_ascii_uppercase() == c)
                .unwrap_or(c);
            return format!("illegal character '{c}'");
        }
    }
    let detail = raw
        .trim_start_matches("Component error: ")
        .trim_start_matches("Invalid pattern: ")
        .trim_end_matches('.');
    match detail {
        "Number out of bounds" => "out of range".to_owned(),
        "Range out of bounds" => "range out of bounds or reversed".to_owned(),
        other => {
            let mut chars = other.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_lowercase().chain(chars).collect()
            })
        }
    }
}

/// A field whose letters are out of place, as an error (cheap: no croner parse).
fn stray_letters(fields: &[(&str, Range<usize>)]) -> Option<CronError> {
    let skip = 6 - fields.len();
    fields.iter().enumerate().find_map(|(i, (text, span))| {
        let c = stray_letter(i + skip, text)?;
        if let Some(hint) = unknown_name(i + skip, text) {
            return Some(field_error(i + skip, text, span, &hint));
        }
        Some(field_error(
            i + skip,
            text,
            span,
            &format!("illegal character '{c}'"),
        ))
    })
}

/// croner reports one error for the whole pattern; parse each field alone (the others `*`)
/// to say which one is wrong. Only run once the whole pattern failed: each probe costs a
/// full croner parse.
fn blame_field(fields: &[(&str, Range<usize>)]) -> Option<CronError> {
    let skip = 6 - fields.len();
    fields.iter().enumerate().find_map(|(i, (text, span))| {
        let mut probe = ["0", "*", "*", "*", "*", "*"];
        probe[i + skip] = text;
        let e = parser().parse(&probe.join(" ")).err()?;
        Some(field_error(i + skip, text, span, &reword(&e, text)))
    })
}

fn field_error(index: usize, text: &str, span: &Range<usize>, reason: &str) -> CronError {
    let (name, allowed) = FIELDS[index];
    CronError {
        message: format!("invalid {name} field \"{text}\": {reason} (allowed: {allowed})"),
        span: Some(span.clone()),
    }
}

/// The expression `expr` as a shared string and its parsed pattern, both shared with every
/// live schedule written the same way; `parse` runs when there is none. Weak references:
/// patterns of removed entries are freed (their expressions when the map is next pruned).
fn shared_pattern(
    expr: &str,
    parse: impl FnOnce() -> Result<croner::Cron, CronError>,
) -> Result<(Arc<str>, Arc<croner::Cron>), CronError> {
    static PATTERNS: LazyLock<Mutex<HashMap<Arc<str>, Weak<croner::Cron>>>> =
        LazyLock::new(Mutex::default);
    if let Some(found) = PATTERNS.lock().ok().and_then(|m| {
        let (text, pattern) = m.get_key_value(expr)?;
        Some((text.clone(), pattern.upgrade()?))
    }) {
        return Ok(found);
    }
    let (text, p) = (Arc::<str>::from(expr), Arc::new(parse()?));
    if let Ok(mut m) = PATTERNS.lock() {
        if m.len() >= 64 && m.len().is_power_of_two() {
            m.retain(|_, w| w.strong_count() > 0);
        }
        m.insert(text.clone(), Arc::downgrade(&p));
    }
    Ok((text, p))
}

impl CronSchedule {
    /// Parses a 5-field (or 6-field, seconds first) expression for `tz`.
    ///
    /// # Errors
    /// A [`CronError`] naming the field and value at fault, with its byte span in `expr`, or
    /// saying that the expression never matches a real date (`0 0 30 2 *`).
    pub fn parse(expr: &str, tz: crate::schedule::Tz) -> Result<Self, CronError> {
        let whole = Some(0..expr.len());
        let trimmed = expr.trim();
        let text = if trimmed.starts_with('@') {
            nickname(trimmed).ok_or_else(|| CronError {
                message: format!(
                    "unknown cron nickname \"{trimmed}\" (allowed: @yearly, @annually, \
                     @monthly, @weekly, @daily, @midnight, @hourly)"
                ),
                span: whole.clone(),
            })?
        } else {
            expr
        };
        let fields = split_fields(text);
        if !(5..=6).contains(&fields.len()) {
            return Err(CronError {
                message: format!(
                    "cron expression \"{trimmed}\" has {} fields; expected 5 \
                     (minute hour day-of-month month day-of-week) or 6 with seconds first",
                    fields.len()
                ),
                span: whole,
            });
        }
        if let Some(e) = stray_letters(&fields) {
            return Err(e);
        }
        let (expr, cron) = shared_pattern(expr, || {
            parser().parse(text).map_err(|e| {
                blame_field(&fields).unwrap_or_else(|| CronError {
                    message: format!(
                        "invalid cron expression \"{trimmed}\": {}",
                        reword(&e, text)
                    ),
                    span: whole.clone(),
                })
            })
        })?;
        let hour = fields[fields.len() - 4].0;
        let schedule = CronSchedule {
            expr,
            tz,
            cron,
            elapsed: hour == "*" || hour.contains('/'),
        };
        // Reject patterns such as February 30th now rather than at the first search. Any
        // satisfiable pattern matches within 28 years of any date (the calendar cycle
        // repeats), so one search from a fixed date decides it.
        let origin = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        if origin.and_then(|o| schedule.civil_after(o, true)).is_none() {
            return Err(CronError {
                message: format!("cron expression \"{trimmed}\" never matches a real date"),
                span: whole,
            });
        }
        Ok(schedule)
    }

    /// Whether the entry follows elapsed time through a fold (hour field `*` or a step).
    #[must_use]
    pub fn follows_elapsed_time(&self) -> bool {
        self.elapsed
    }

    /// Whether a wall clock time matches the fields, ignoring the zone (reference tests).
    #[cfg(test)]
    pub(super) fn matches_civil(&self, civil: NaiveDateTime) -> bool {
        self.cron.is_time_matching(&civil).unwrap_or(false)
    }

    fn civil_after(&self, civil: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&civil, inclusive).ok()
    }

    fn civil_before(&self, civil: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron.find_previous_occurrence(&civil, inclusive).ok()
    }

    /// The fire instants of one matching civil time under the DST policy (see `dst.rs`), or
    /// `None` when an elapsed-time entry skips a civil time inside a gap.
    fn fires_of(&self, civil: NaiveDateTime) -> Option<Instants> {
        let mut instants = dst::resolve(self.tz, civil);
        if !self.elapsed {
            instants.repeat = None;
        } else if instants.in_gap {
            return None;
        }
        Some(instants)
    }

    /// The first fire time strictly after `after`.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = whole_second(dst::wall(self.tz, after));
        // A civil time earlier than `after`'s wall clock can still occur later when a fold is
        // about to repeat it; only elapsed-time entries fire on such a repeat.
        let margin = if self.elapsed {
            dst::fold_ahead(self.tz, after)
        } else {
            TimeDelta::zero()
        };
        let mut civil = self.civil_after(local - margin, margin > TimeDelta::zero())?;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_STEPS {
            let Some(fires) = self.fires_of(civil) else {
                // Skip the whole gap at once: a per-second entry has 86,400 matches in the
                // day Apia skipped.
                let gap_end = dst::resolve(self.tz, civil).first;
                civil = self.civil_after(dst::wall(self.tz, gap_end), true)?;
                continue;
            };
            for t in std::iter::once(fires.first).chain(fires.repeat) {
                if t > after && best.is_none_or(|b| t < b) {
                    best = Some(t);
                }
            }
            // First instants grow with civil time, and a repeat comes after its first
            // instant, so no later civil time can beat a first instant already past `after`.
            if fires.first > after {
                return best;
            }
            match self.civil_after(civil, false) {
                Some(next) => civil = next,
                None => return best,
            }
        }
        best
    }

    /// The last fire time at or before `t`.
    #[must_use]
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = whole_second(dst::wall(self.tz, t));
        // Just after a fold the wall clock is behind the latest wall clock already shown.
        let upper = local + dst::fold_behind(self.tz, t);
        let mut civil = self.civil_before(upper, true)?;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_STEPS {
            let Some(fires) = self.fires_of(civil) else {
                let gap_end = dst::resolve(self.tz, civil).first;
                let before_gap = dst::wall(self.tz, gap_end - TimeDelta::seconds(1));
                match self.civil_before(before_gap, true) {
                    Some(prev) => civil = prev,
                    None => return best,
                }
                continue;
            };
            for f in std::iter::once(fires.first).chain(fires.repeat) {
                if f <= t && best.is_none_or(|b| f > b) {
                    best = Some(f);
                }
            }
            // Walking back, a civil time outside any fold bounds every earlier one's
            // instants; inside a fold an earlier civil time's repeat may still be later.
            if best.is_some() && fires.repeat.is_none() {
                return best;
            }
            match self.civil_before(civil, false) {
                Some(prev) => civil = prev,
                None => return best,
            }
        }
        best
    }
}

/// Cron has whole-second resolution; drop the fraction so the search starts on a second.
fn whole_second(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
#[path = "cron_tests.rs"]
mod tests;
