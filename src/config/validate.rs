//! Stage 2 for schedule files: the `raw` mirror of one file → validated [`Entry`]s, gathering
//! every error and warning of the file instead of stopping at the first. Owns the per-file
//! rules (`[defaults]` inheritance, exactly one schedule kind, ranges, `start_at`/`end_at`
//! order, past one-offs); rules across files (duplicate names) live in `mod.rs`. The current
//! time comes in as an argument: config never reads the clock.

use super::defaults::{defaults, Defaults};
use super::diagnostic::{Diagnostic, SourceFile};
use super::parse::{self, Parsed, ScheduleFile};
use super::raw::RawEntry;
use super::values::{self, catch_up, json_table, keep, nonempty, priority, When};
use crate::entry::{Entry, RqSerializer, RqTarget, SourceRef};
use crate::schedule::Tz;
use crate::schedule::{self, CatchUp, CronSchedule, Schedule};
use chrono::{DateTime, Utc};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// One `[[entry]]` after stage 2: its name (for the duplicate check across files, done even
/// when the entry has other errors) and the entry itself when it is valid.
pub(crate) struct Checked {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) entry: Option<Entry>,
}

/// Validates one parsed file, handing each entry to `each` as soon as it is checked (so a raw
/// entry never outlives its own check); diagnostics of every severity go to `out`.
pub(crate) fn file(
    file: &SourceFile,
    raw: &ScheduleFile<'_, '_>,
    now: DateTime<Utc>,
    default_timezone: Option<Tz>,
    out: &mut Vec<Diagnostic>,
    mut each: impl FnMut(Checked, &mut Vec<Diagnostic>),
) {
    let mut defaults: Defaults = raw
        .defaults
        .as_ref()
        .map(|d| defaults(file, d.value.get_ref(), out))
        .unwrap_or_default();
    // The file's own [defaults] win over the app-wide one.
    defaults.timezone = defaults.timezone.or(default_timezone);
    let source = Arc::<Path>::from(file.path.as_path());
    for node in raw.entries {
        let Some(e) = parse::entry(file, node, out) else {
            continue;
        };
        let checked = Checked {
            name: e
                .value
                .get_ref()
                .name
                .clone()
                .filter(|n| !n.get_ref().trim().is_empty()),
            entry: entry(file, &source, &e, &defaults, now, out),
        };
        each(checked, out);
    }
}

/// The span of an entry's first line (its `[[entry]]` header), where "missing key" errors
/// point.
fn header_span(file: &SourceFile, span: Range<usize>) -> Range<usize> {
    let rest = file.text.get(span.start..span.end).unwrap_or("");
    let first = rest
        .split('\n')
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .trim_end();
    span.start..span.start + first.len().max(1)
}

fn entry(
    file: &SourceFile,
    source: &Arc<Path>,
    raw: &Parsed<RawEntry>,
    defaults: &Defaults,
    now: DateTime<Utc>,
    out: &mut Vec<Diagnostic>,
) -> Option<Entry> {
    let errors_before = out.iter().filter(|d| d.is_error()).count();
    let header = header_span(file, raw.value.span());
    let e = raw.value.get_ref();
    // Keys stage 1 already reported (`tsak`, or `task = 5`) are not "missing" as well.
    let reported = |key: &str| raw.dropped.iter().any(|d| d == key);
    let missing = |key: &str, help: &str| {
        file.error(header.clone(), format!("entry has no `{key}`"))
            .with_help(help.to_owned())
    };
    let name = match &e.name {
        // Control characters would make log lines and the state keys of triggers and
        // backfills (`entry US kind US id`) ambiguous.
        Some(n) if n.get_ref().chars().any(char::is_control) => {
            out.push(file.error(n.span(), "`name` contains a control character"));
            None
        }
        Some(n) => keep(nonempty(file, "name", n), out),
        None if reported("name") => None,
        None => {
            out.push(missing(
                "name",
                "add `name = \"...\"`, unique across all schedule files",
            ));
            None
        }
    };
    let task = match &e.task {
        Some(t) => keep(nonempty(file, "task", t), out),
        None if reported("task") => None,
        None => {
            out.push(missing(
                "task",
                "add `task = \"...\"`, the Celery task name to send",
            ));
            None
        }
    };
    let tz = match &e.timezone {
        Some(v) => keep(values::timezone(file, v), out).unwrap_or(Tz::UTC),
        None => defaults.timezone.unwrap_or(Tz::UTC),
    };
    let quiet = ["cron", "every", "at"].iter().any(|k| reported(k));
    let schedule = schedule(file, e, header.clone(), quiet, tz, now, out);

    let dur = |key, v: &Option<Spanned<String>>, out: &mut Vec<_>| match v {
        Some(v) => keep(values::duration(file, key, v), out),
        None => None,
    };
    let expires = dur("expires", &e.expires, out).or(defaults.expires);
    let jitter = dur("jitter", &e.jitter, out).or(defaults.jitter);
    let catch_up_window = match &e.catch_up_window {
        Some(v) => keep(values::positive_duration(file, "catch_up_window", v), out),
        None => defaults.catch_up_window,
    };
    let args = e.args.as_ref().and_then(|a| {
        let json = a
            .get_ref()
            .iter()
            .map(values::to_json)
            .collect::<Result<Vec<_>, _>>();
        keep(
            json.map_err(|m| file.error(a.span(), format!("invalid `args`: {m}"))),
            out,
        )
    });
    let kwargs = e
        .kwargs
        .as_ref()
        .and_then(|k| keep(json_table(file, "kwargs", k), out));
    let mut headers = defaults.headers.clone();
    if let Some(h) = e
        .headers
        .as_ref()
        .and_then(|h| keep(json_table(file, "headers", h), out))
    {
        headers.extend(h);
    }
    let queue = match &e.queue {
        Some(q) => keep(nonempty(file, "queue", q), out),
        None => defaults.queue.clone(),
    };
    let priority = match &e.priority {
        Some(p) => keep(priority(file, p), out),
        None => defaults.priority,
    };
    let catch_up = match &e.catch_up {
        Some(c) => keep(catch_up(file, c), out),
        None => defaults.catch_up,
    };
    let overlap = match &e.overlap {
        Some(o) => keep(values::overlap(file, o), out),
        None => Some(crate::entry::Overlap::Allow),
    };
    let overlap_timeout = match &e.overlap_timeout {
        Some(v) => keep(values::positive_duration(file, "overlap_timeout", v), out),
        None => Some(crate::entry::DEFAULT_OVERLAP_TIMEOUT),
    };
    if let (Some(CatchUp::None), Some(w)) = (catch_up, &e.catch_up_window) {
        out.push(
            file.warning(
                w.span(),
                "`catch_up_window` has no effect with catch_up = \"none\"",
            )
            .with_help("remove it, or set catch_up = \"latest\" or \"all\""),
        );
    }
    let enabled = e
        .enabled
        .as_ref()
        .map(|v| *v.get_ref())
        .or(defaults.enabled)
        .unwrap_or(true);
    let window = window(file, e, defaults, tz, now, enabled, out);
    let rq = rq_target(file, e, defaults, out);
    if let (Some(max), Some(sched)) = (jitter, &schedule) {
        if let Some(period) = shortest_period(sched).filter(|p| max >= *p) {
            let span = e
                .jitter
                .as_ref()
                .map_or_else(|| header.clone(), Spanned::span);
            out.push(
                file.warning(
                    span,
                    format!(
                        "`jitter` of {} is not shorter than the entry's period ({})",
                        humantime::format_duration(max),
                        humantime::format_duration(period)
                    ),
                )
                .with_help(
                    "a fire may then be pushed past the next one; keep jitter well below the period",
                ),
            );
        }
    }

    if out.iter().filter(|d| d.is_error()).count() > errors_before || !raw.dropped.is_empty() {
        return None;
    }
    let (name, task, schedule) = (name?, task?, schedule?);
    let (start_at, end_at) = window?;
    let rq = rq?;
    let (overlap, overlap_timeout) = (overlap?, overlap_timeout?);
    Some(Entry {
        overlap,
        overlap_timeout,
        jitter_offset: jitter.map_or(Duration::ZERO, |max| schedule::jitter_offset(&name, max)),
        catch_up_window: catch_up_window
            .unwrap_or_else(|| schedule::default_catch_up_window(&schedule)),
        name: name.into(),
        task: crate::entry::shared_str(&task),
        schedule,
        timezone: tz,
        args: crate::entry::shared_args(args.unwrap_or_default()),
        kwargs: crate::entry::shared_table(kwargs.unwrap_or_default()),
        // RQ's default queue is `default`, Celery's `celery`.
        queue: crate::entry::shared_str(queue.as_deref().unwrap_or(if rq.is_some() {
            "default"
        } else {
            "celery"
        })),
        rare: crate::entry::Rare {
            routing_key: e
                .routing_key
                .as_ref()
                .map(Spanned::get_ref)
                .or(defaults.routing_key.as_ref())
                .map(|v| v.as_str().into()),
            exchange: e
                .exchange
                .as_ref()
                .map(Spanned::get_ref)
                .or(defaults.exchange.as_ref())
                .map(|v| v.as_str().into()),
            priority,
            expires,
            start_at,
            end_at,
            description: e.description.as_ref().map(|v| v.get_ref().as_str().into()),
        }
        .boxed(),
        headers: crate::entry::shared_table(headers),
        catch_up: catch_up.unwrap_or_default(),
        enabled,
        source: Some(SourceRef {
            path: source.clone(),
            line: file.line_of(header.start),
        }),
        rq,
    })
}

/// `protocol` and the keys that only apply to one of them: `Some(None)` for a Celery entry,
/// `Some(Some(target))` for an RQ one, `None` when something is wrong (reported to `out`).
fn rq_target(
    file: &SourceFile,
    e: &RawEntry,
    d: &Defaults,
    out: &mut Vec<Diagnostic>,
) -> Option<Option<Box<RqTarget>>> {
    let errors_before = out.iter().filter(|d| d.is_error()).count();
    let protocol = e.protocol.as_ref().or(d.protocol.as_ref());
    let rq = match protocol.map(|p| (p, p.get_ref().trim())) {
        None | Some((_, "celery")) => false,
        Some((_, "rq")) => true,
        Some((p, other)) => {
            let diag = file.error(p.span(), format!("unknown protocol `{other}`"));
            out.push(match values::suggest(other, ["celery", "rq"].into_iter()) {
                Some(best) => diag.with_help(format!("did you mean `{best}`? (celery | rq)")),
                None => diag.with_help("protocol is `celery` (the default) or `rq`"),
            });
            return None;
        }
    };
    let own = |entry: &Option<Spanned<String>>, default: &Option<Spanned<String>>| {
        entry.clone().or_else(|| default.clone())
    };
    let serializer = own(&e.serializer, &d.serializer);
    let timeout = own(&e.timeout, &d.timeout);
    let result_ttl = own(&e.result_ttl, &d.result_ttl);
    let ttl = own(&e.ttl, &d.ttl);
    let failure_ttl = own(&e.failure_ttl, &d.failure_ttl);
    if !rq {
        // The entry's own keys only: a file's [defaults] may hold RQ options for its RQ
        // entries beside Celery ones.
        let rq_only = [
            ("serializer", e.serializer.as_ref().map(Spanned::span)),
            ("timeout", e.timeout.as_ref().map(Spanned::span)),
            ("result_ttl", e.result_ttl.as_ref().map(Spanned::span)),
            ("ttl", e.ttl.as_ref().map(Spanned::span)),
            ("failure_ttl", e.failure_ttl.as_ref().map(Spanned::span)),
            ("meta", e.meta.as_ref().map(Spanned::span)),
        ];
        for (key, span) in rq_only {
            if let Some(span) = span {
                out.push(
                    file.error(span, format!("`{key}` only applies to protocol = \"rq\""))
                        .with_help(
                            "add `protocol = \"rq\"` to enqueue an RQ job; Celery entries use \
                             `expires`, and a beatd worker's time limits are set in beatd.toml",
                        ),
                );
            }
        }
        return (out.iter().filter(|d| d.is_error()).count() == errors_before).then_some(None);
    }
    let celery_only = [
        (
            "priority",
            e.priority.as_ref().map(Spanned::span),
            "RQ has no message priority; use a separate queue",
        ),
        (
            "routing_key",
            e.routing_key.as_ref().map(Spanned::span),
            "RQ has no routing; `queue` names the RQ queue",
        ),
        (
            "exchange",
            e.exchange.as_ref().map(Spanned::span),
            "RQ has no exchanges; `queue` names the RQ queue",
        ),
        (
            "headers",
            e.headers.as_ref().map(Spanned::span),
            "RQ jobs carry `meta` instead",
        ),
        (
            "expires",
            e.expires.as_ref().map(Spanned::span),
            "RQ's `ttl` discards a job that waited too long",
        ),
    ];
    for (key, span, help) in celery_only {
        if let Some(span) = span {
            out.push(
                file.error(span, format!("`{key}` does not apply to protocol = \"rq\""))
                    .with_help(help),
            );
        }
    }
    if let Some(t) = &e.task {
        let name = t.get_ref().trim();
        let ident = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_alphanumeric() || c == '_')
        };
        if !(name.contains('.') && name.split('.').all(ident)) {
            out.push(
                file.error(
                    t.span(),
                    format!("RQ task `{name}` is not a dotted function path"),
                )
                .with_help("write the function as RQ imports it, e.g. \"app.tasks.count_words\""),
            );
        }
    }
    let serializer = match &serializer {
        None => RqSerializer::Pickle,
        Some(v) => match v.get_ref().trim() {
            "pickle" => RqSerializer::Pickle,
            "json" => RqSerializer::Json,
            other => {
                out.push(
                    file.error(v.span(), format!("unknown serializer `{other}`"))
                        .with_help("`pickle` (RQ's default) or `json` (workers started with --serializer rq.serializers.JSONSerializer)"),
                );
                RqSerializer::Pickle
            }
        },
    };
    let dur = |key: &str, v: &Option<Spanned<String>>, out: &mut Vec<Diagnostic>| {
        v.as_ref()
            .and_then(|v| keep(values::positive_duration(file, key, v), out))
    };
    let timeout = dur("timeout", &timeout, out);
    let ttl = dur("ttl", &ttl, out);
    let failure_ttl = dur("failure_ttl", &failure_ttl, out);
    let result_ttl = match &result_ttl {
        None => None,
        Some(v) if v.get_ref().trim() == "forever" => Some(-1),
        Some(v) => keep(values::duration(file, "result_ttl", v), out)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    };
    let meta = e
        .meta
        .as_ref()
        .and_then(|m| keep(json_table(file, "meta", m), out))
        .unwrap_or_default();
    if out.iter().filter(|d| d.is_error()).count() > errors_before {
        return None;
    }
    Some(Some(Box::new(RqTarget {
        serializer,
        timeout,
        result_ttl,
        ttl,
        failure_ttl,
        meta,
    })))
}

/// The shortest `every` interval: one message per fire time through the broker, and the
/// embedded beat's loop, are not built for more.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// The shortest gap between two fire times of `schedule` (sampled for cron); `None` for a
/// one-off.
fn shortest_period(schedule: &Schedule) -> Option<Duration> {
    match schedule {
        Schedule::Every { interval, .. } => Some(*interval),
        Schedule::At(_) => None,
        Schedule::Cron(cron) => {
            let reference = DateTime::<Utc>::from_timestamp(978_307_200, 0); // 2001-01-01
            let fires: Vec<_> = std::iter::successors(reference, |t| cron.next_after(*t))
                .skip(1)
                .take(64)
                .collect();
            fires
                .windows(2)
                .filter_map(|w| (w[1] - w[0]).to_std().ok())
                .min()
        }
    }
}

/// Exactly one of `cron` / `every` / `at`, parsed in the entry's zone.
fn schedule(
    file: &SourceFile,
    e: &RawEntry,
    header: Range<usize>,
    quiet: bool,
    tz: Tz,
    now: DateTime<Utc>,
    out: &mut Vec<Diagnostic>,
) -> Option<Schedule> {
    let given: Vec<(&str, Range<usize>)> = [
        ("cron", e.cron.as_ref().map(Spanned::span)),
        ("every", e.every.as_ref().map(Spanned::span)),
        ("at", e.at.as_ref().map(Spanned::span)),
    ]
    .into_iter()
    .filter_map(|(k, s)| Some((k, s?)))
    .collect();
    if let Some(anchor) = &e.anchor {
        if e.every.is_none() {
            out.push(
                file.error(anchor.span(), "`anchor` only applies to `every` intervals")
                    .with_help("remove `anchor`, or schedule the entry with `every`"),
            );
        }
    }
    match given.as_slice() {
        [] if quiet => return None,
        [] => {
            out.push(
                file.error(header, "entry has no schedule: none of `cron`, `every` or `at`")
                    .with_help("add one of `cron = \"*/5 * * * *\"`, `every = \"30s\"` or `at = \"2026-12-01T09:00:00\"`"),
            );
            return None;
        }
        [(first, _), rest @ ..] if !rest.is_empty() => {
            for (key, span) in rest {
                out.push(
                    file.error(span.clone(), format!("entry has both `{first}` and `{key}`"))
                        .with_help("an entry has exactly one of `cron`, `every` and `at`; split it into two entries"),
                );
            }
            return None;
        }
        _ => {}
    }
    if let Some(cron) = &e.cron {
        return match CronSchedule::parse(cron.get_ref(), tz) {
            Ok(c) => Some(Schedule::Cron(c)),
            Err(err) => {
                let span = match err.span {
                    Some(inner) => values::inner_span(&file.text, cron.span(), inner),
                    None => cron.span(),
                };
                let d = file.error(span, format!("invalid `cron`: {}", err.message));
                out.push(if err.message.contains("fields;") {
                    d
                } else {
                    d.with_help("fields are minute hour day-of-month month day-of-week, with an optional seconds field first")
                });
                None
            }
        };
    }
    if let Some(every) = &e.every {
        let interval = keep(values::positive_duration(file, "every", every), out);
        if let Some(i) = interval.filter(|i| *i < MIN_EVERY) {
            out.push(
                file.error(
                    every.span(),
                    format!(
                        "`every` of {} is below the 1s minimum",
                        humantime::format_duration(i)
                    ),
                )
                .with_help(
                    "beatd sends one message per fire time through the broker; for work more \
                     often than every second, run a loop inside a task",
                ),
            );
            return None;
        }
        let anchor = match &e.anchor {
            Some(a) => keep(values::when(file, "anchor", a), out).map(|w| w.resolve(tz)),
            None => Some(DateTime::UNIX_EPOCH),
        };
        return Some(Schedule::Every {
            interval: interval?,
            anchor: anchor?,
        });
    }
    let at = e.at.as_ref()?;
    let when = keep(values::when(file, "at", at), out)?.resolve(tz);
    let enabled = e.enabled.as_ref().is_none_or(|v| *v.get_ref());
    if when < now && enabled {
        out.push(
            file.warning(
                at.span(),
                format!("one-off `at` time {} is in the past", when.to_rfc3339()),
            )
            .with_help(
                "it only fires if catch-up still covers it; set a future time or remove the entry",
            ),
        );
    }
    Some(Schedule::At(when))
}

/// `start_at` / `end_at` (the entry's own or the file's defaults), read in the entry's zone;
/// `None` when either is invalid or `end_at` is not after `start_at`.
#[allow(clippy::type_complexity)]
fn window(
    file: &SourceFile,
    e: &RawEntry,
    defaults: &Defaults,
    tz: Tz,
    now: DateTime<Utc>,
    enabled: bool,
    out: &mut Vec<Diagnostic>,
) -> Option<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
    let mut ok = true;
    let mut pick =
        |key, own: &Option<Spanned<toml::Value>>, inherited: &Option<Spanned<When>>| match own {
            Some(v) => match values::when(file, key, v) {
                Ok(w) => Some(Spanned::new(v.span(), w.resolve(tz))),
                Err(d) => {
                    out.push(d);
                    ok = false;
                    None
                }
            },
            None => inherited
                .as_ref()
                .map(|w| Spanned::new(w.span(), w.get_ref().resolve(tz))),
        };
    let start = pick("start_at", &e.start_at, &defaults.start_at);
    let end = pick("end_at", &e.end_at, &defaults.end_at);
    if let (Some(s), Some(en)) = (&start, &end) {
        if en.get_ref() <= s.get_ref() {
            let msg = format!(
                "`end_at` ({}) is not after `start_at` ({})",
                en.get_ref().to_rfc3339(),
                s.get_ref().to_rfc3339()
            );
            out.push(
                file.error(en.span(), msg)
                    .with_note(file.note(s.span(), "`start_at` is set here")),
            );
            return None;
        }
    }
    if let Some(en) = &end {
        if *en.get_ref() < now && enabled {
            out.push(
                file.warning(
                    en.span(),
                    format!("`end_at` {} is in the past", en.get_ref().to_rfc3339()),
                )
                .with_help("the entry will never fire again; remove it or move `end_at`"),
            );
        }
    }
    ok.then(|| (start.map(Spanned::into_inner), end.map(Spanned::into_inner)))
}
