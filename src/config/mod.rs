//! Schedule files and `beatd.toml`: reading them, and turning them into validated
//! [`Entry`]s and an [`AppConfig`], or into [`Diagnostics`] that name every problem with
//! `path:line:column`. Loading runs in two stages (`raw` mirrors the TOML, `validate` and `app`
//! give it meaning) so `beatd check` and `beatd run` run exactly the same code.
//!
//! Owns: which files are read (directories expand to their `*.toml` files in name order),
//! every check on their contents, and rules across files (entry names are unique). Does not
//! own: next-fire math (`schedule`), environment variables or flags (the CLI merges those over
//! [`AppConfig`]), or the clock — `now` is passed in for the "in the past" warnings.

// A `Diagnostic` is a few hundred bytes and is built at most once per bad value, at load
// time; boxing every `Err` would cost more code than it saves.
#![allow(clippy::result_large_err)]

mod app;
mod defaults;
mod diagnostic;
mod parse;
mod raw;
mod validate;
mod values;

#[cfg(test)]
mod tests;

pub use app::{load_app_config, load_app_config_str, AppConfig, HeaderValue, RedisUrl};
pub use app::{TaskDef, TaskKind, WorkerConfig};
pub use diagnostic::{Diagnostic, Diagnostics, Note, Severity};

use crate::entry::Entry;
use chrono::{DateTime, Utc};
use diagnostic::SourceFile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every entry of the schedule files, validated, and the warnings found on the way.
#[derive(Debug, Clone, Default)]
pub struct Schedules {
    /// Entries in file order, then in order within each file.
    pub entries: Vec<Entry>,
    /// Problems that do not stop a load (e.g. a one-off `at` in the past).
    pub warnings: Vec<Diagnostic>,
}

/// (task, first entry naming it) for every task of an enabled entry that `app` defines no
/// `[worker.tasks]` handler for: `beatd worker` answers those with `NotRegistered`.
#[must_use]
pub fn unhandled_tasks(entries: &[Entry], app: &AppConfig) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| e.enabled) {
        if !app.worker.tasks.contains_key(&*e.task) {
            seen.entry(e.task.to_string())
                .or_insert_with(|| e.name.to_string());
        }
    }
    seen.into_iter().collect()
}

/// Loads schedule files. Each path is a file, or a directory whose `*.toml` files are read in
/// name order (not recursively). On any error, returns every error and warning of every file.
pub fn load_schedules(paths: &[PathBuf], now: DateTime<Utc>) -> Result<Schedules, Diagnostics> {
    load_schedules_in(paths, now, None)
}

/// [`load_schedules`] with an app-wide default time zone (`beatd.toml`'s `[defaults]`,
/// `CELERY_TIMEZONE`): used by entries whose file's `[defaults]` and own table set none.
pub fn load_schedules_in(
    paths: &[PathBuf],
    now: DateTime<Utc>,
    default_timezone: Option<crate::schedule::Tz>,
) -> Result<Schedules, Diagnostics> {
    let mut diags = Vec::new();
    let mut sources = Vec::new();
    for path in paths {
        match expand(path) {
            Ok(files) if files.is_empty() => diags.push(Diagnostic::whole_file(
                diagnostic::Severity::Warning,
                path,
                "directory has no *.toml schedule files",
            )),
            Ok(files) => {
                for file in files {
                    match read(&file) {
                        Ok(source) => sources.push(source),
                        Err(d) => diags.push(d),
                    }
                }
            }
            Err(d) => diags.push(d),
        }
    }
    finish(diags, check_sources(&sources, now, default_timezone))
}

/// Loads one schedule file from memory, as if read from `path`.
pub fn load_schedule_str(
    path: impl Into<PathBuf>,
    text: &str,
    now: DateTime<Utc>,
) -> Result<Schedules, Diagnostics> {
    load_schedule_sources(&[(path.into(), text.to_owned())], now)
}

/// Loads several schedule files from memory, in the order given (duplicate names are checked
/// across them).
pub fn load_schedule_sources(
    sources: &[(PathBuf, String)],
    now: DateTime<Utc>,
) -> Result<Schedules, Diagnostics> {
    let files: Vec<_> = sources
        .iter()
        .map(|(p, t)| SourceFile::new(p, t.as_str()))
        .collect();
    finish(Vec::new(), check_sources(&files, now, None))
}

fn finish(
    mut diags: Vec<Diagnostic>,
    (entries, more): (Vec<Entry>, Vec<Diagnostic>),
) -> Result<Schedules, Diagnostics> {
    diags.extend(more);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(Diagnostics(diags));
    }
    Ok(Schedules {
        entries,
        warnings: diags,
    })
}

/// Validates every file and checks names across them. Diagnostics come out grouped by file in
/// load order and sorted by position within each file.
fn check_sources(
    files: &[SourceFile],
    now: DateTime<Utc>,
    default_timezone: Option<crate::schedule::Tz>,
) -> (Vec<Entry>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut entries = Vec::new();
    // name → (file index, span of the name's value) of its first definition
    let mut seen: HashMap<String, (usize, std::ops::Range<usize>)> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        let mut out = Vec::new();
        let doc = parse::document(file)
            .map_err(|errors| out.extend(errors))
            .ok();
        let raw = doc
            .as_ref()
            .map(|doc| parse::schedule_file(file, doc, &mut out))
            .unwrap_or_default();
        // Exactly: the list is copied into the beat's shared slice, and a doubled capacity
        // (16,384 slots for 10,000 entries) would be part of the load's peak.
        entries.reserve_exact(raw.entries.len());
        validate::file(
            file,
            &raw,
            now,
            default_timezone,
            &mut out,
            |checked, out| {
                if let Some(name) = checked.name {
                    let (span, name) = (name.span(), name.into_inner());
                    if let Some((j, first)) = seen.get(&name) {
                        let note = files[*j].note(first.clone(), "first defined here");
                        out.push(
                            file.error(span, format!("duplicate entry name `{name}`"))
                                .with_note(note)
                                .with_help(
                                    "entry names are unique across all schedule files; \
                                 last-run state is keyed by them",
                                ),
                        );
                        return;
                    }
                    seen.insert(name, (i, span));
                }
                entries.extend(checked.entry);
            },
        );
        out.sort_by_key(|d| (d.line, d.column));
        diags.extend(out);
    }
    (entries, diags)
}

/// A path's schedule files: itself, or a directory's `*.toml` files in name order.
fn expand(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let io = |e: std::io::Error| {
        let d = Diagnostic::whole_file(
            diagnostic::Severity::Error,
            path,
            format!("cannot read: {e}"),
        );
        if e.kind() == std::io::ErrorKind::NotFound {
            d.with_help("pass an existing schedule file or directory (default: schedules/)")
        } else {
            d
        }
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for item in std::fs::read_dir(path).map_err(io)? {
        let p = item.map_err(io)?.path();
        // Not `is_file()`: it is false for a `*.toml` that cannot be resolved (a symlink loop, a
        // dangling link), and skipping one silently would drop its entries — and then their
        // last-run state, as "removed from the files". Reading it reports why it cannot be read.
        if p.extension().is_some_and(|e| e == "toml") && !p.is_dir() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Largest schedule file read. Far above any real schedule (100,000 entries are about 6 MiB),
/// and it keeps a wrong `--schedules` path (a log, a device, a sparse file) from being read
/// into memory whole.
pub const MAX_SCHEDULE_FILE_BYTES: u64 = 64 << 20;

/// Reads a file as UTF-8; a file that is not gets an error at its first bad byte.
pub(crate) fn read(path: &Path) -> Result<SourceFile, Diagnostic> {
    use std::io::Read as _;
    let fail = |msg: String| Diagnostic::whole_file(diagnostic::Severity::Error, path, msg);
    let too_large = || {
        fail(format!(
            "file is larger than {} MiB; not a schedule file?",
            MAX_SCHEDULE_FILE_BYTES >> 20
        ))
    };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    // A regular file's size is known without reading it; a pipe's or device's is not.
    if file
        .metadata()
        .is_ok_and(|m| m.len() > MAX_SCHEDULE_FILE_BYTES)
    {
        return Err(too_large());
    }
    file.take(MAX_SCHEDULE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_SCHEDULE_FILE_BYTES {
        return Err(too_large());
    }
    decode(path, bytes)
}

fn decode(path: &Path, bytes: Vec<u8>) -> Result<SourceFile, Diagnostic> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(path, text)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let byte = e.as_bytes()[at];
            let lossy = SourceFile::new(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
            Err(lossy
                .error(
                    at..at + 1,
                    format!("file is not valid UTF-8 (byte 0x{byte:02x})"),
                )
                .with_help("save the file as UTF-8"))
        }
    }
}
