//! `beatd check`: validates `beatd.toml` and the schedule files, reporting every problem as
//! `path:line:column`, and ends with one summary line; exits 1 when there is any error.
//! Nothing to check is an error too: a CI step run from the wrong directory must not pass.

use super::settings::{app_config, default_timezone, schedule_paths, Flags, Settings};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, AppConfig};
use crate::entry::Entry;
use crate::error::{exit, Error};
use crate::redis::ConnectOptions;
use std::path::Path;

/// Runs the check.
///
/// # Errors
/// None today: every problem found is reported and turns into exit code 1.
pub async fn check(flags: &Flags) -> Result<u8, Error> {
    let mut errors = 0usize;
    let mut warnings = 0usize;
    // beatd.toml first: it may name the schedule paths.
    let config_given = flags.config.is_some() || Path::new("beatd.toml").is_file();
    let file = match app_config(flags.config.as_deref()) {
        Ok(file) => file,
        Err(Error::Config(d)) => {
            eprint!("{d}");
            errors += d.errors().count();
            warnings += d.warnings().count();
            AppConfig::default()
        }
        Err(e) => return Err(e),
    };
    // Only the schedule paths matter here: a check must not fail on a Redis URL it never uses.
    let paths = schedule_paths(flags, &file);
    if paths.is_empty() {
        eprintln!("error: no schedule paths configured: nothing to check");
        errors += 1;
    }
    for p in &paths {
        if let Some(why) = nothing_to_check(p) {
            eprintln!("{}: error: {why}", p.display());
            eprintln!(
                "  = help: run beatd from the project directory, or name the schedules with \
                 --schedules PATH (or BEATD_SCHEDULES)"
            );
            errors += 1;
        }
    }
    let tz = match default_timezone(&file, |k| std::env::var(k).ok()) {
        Ok(tz) => tz,
        Err(e) => {
            eprintln!("error: {e}");
            errors += 1;
            None
        }
    };
    let mut entries = 0;
    if errors == 0 {
        match config::load_schedules_in(&paths, SystemClock.now(), tz) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprint!("{w}");
                }
                warnings += loaded.warnings.len();
                if config_given {
                    warnings += unhandled(&loaded.entries, &file);
                }
                entries = loaded.entries.len();
                let has_redis = file.redis_url.is_some()
                    || crate::redis::resolve_url(None, |k| std::env::var(k).ok()).is_some();
                errors += overlap_without_backend(&loaded.entries, has_redis);
            }
            Err(d) => {
                eprint!("{d}");
                errors += d.errors().count();
                warnings += d.warnings().count();
            }
        }
    }
    if flags.check_redis && !check_redis(flags, &file).await {
        errors += 1;
    }
    if errors > 0 {
        eprintln!("check failed: {}", summary(errors, warnings));
        return Ok(exit::FAILURE);
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let noun = if entries == 1 { "entry" } else { "entries" };
    let warned = if warnings > 0 {
        format!(" ({})", summary(0, warnings))
    } else {
        String::new()
    };
    println!("ok: {entries} {noun} in {}{warned}", shown.join(", "));
    Ok(exit::OK)
}

/// `check --redis`: the URL parses and what it names answers (behind Sentinels: a Sentinel
/// names the master and the master's `ROLE` says so). Prints the outcome; `false` on error.
async fn check_redis(flags: &Flags, file: &AppConfig) -> bool {
    let url = match Settings::redis_url_of(flags, file, |k| std::env::var(k).ok()) {
        Ok(Some(url)) => url,
        Ok(None) => {
            eprintln!(
                "error: --redis: no Redis URL to check (set --redis-url, BEATD_REDIS_URL, \
                 CELERY_BROKER_URL or REDIS_URL)"
            );
            return false;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    let conn = match crate::redis::connect(&url, ConnectOptions::default()).await {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            return false;
        }
    };
    let master = conn
        .master_addr()
        .await
        .map_or(String::new(), |m| format!(", master {m}"));
    let wait = url.wait().map_or(String::new(), |w| {
        format!(
            ", writes wait for {} replica(s) up to {}",
            w.replicas,
            humantime::format_duration(w.timeout)
        )
    });
    println!("ok: redis at {} answers{master}{wait}", url.redacted());
    for w in conn.config_warnings().await.unwrap_or_default() {
        eprintln!("warning: {w}");
    }
    true
}

/// Why `path` gives nothing to check, if it does not.
fn nothing_to_check(path: &Path) -> Option<String> {
    if !path.exists() {
        return Some("no such file or directory: nothing to check".into());
    }
    if path.is_dir() {
        let has_toml = std::fs::read_dir(path).ok()?.any(|e| {
            e.ok()
                .is_some_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
        });
        if !has_toml {
            return Some("directory has no *.toml schedule files: nothing to check".into());
        }
    }
    None
}

/// Warns about each scheduled task name `beatd.toml` has no handler for (a Python worker may
/// run them; `beatd worker` would answer `NotRegistered`). Returns how many were warned.
pub fn unhandled(entries: &[Entry], file: &AppConfig) -> usize {
    let missing = config::unhandled_tasks(entries, file);
    for (task, entry) in &missing {
        eprintln!(
            "warning: task {task:?} of entry {entry:?} has no handler in beatd.toml \
             ([worker.tasks.\"{task}\"]): beatd's worker would fail it as NotRegistered; fine \
             if a Celery worker runs it"
        );
    }
    missing.len()
}

/// `overlap = "skip"` and `"buffer_one"` read the previous run's state from the result
/// backend, which is the Redis the beat runs on: without one they cannot work. Returns how
/// many entries were reported.
pub fn overlap_without_backend(entries: &[Entry], has_redis: bool) -> usize {
    if has_redis {
        return 0;
    }
    let mut n = 0;
    for e in entries
        .iter()
        .filter(|e| e.overlap != crate::entry::Overlap::Allow)
    {
        let at = e.source.as_ref().map_or(String::new(), |s| {
            format!("{}:{}: ", s.path.display(), s.line)
        });
        eprintln!(
            "{at}error: entry {:?} sets overlap = \"{}\", which needs a result backend to see \
             whether the previous run finished; none is configured",
            e.name,
            e.overlap.as_str()
        );
        eprintln!(
            "  = help: run the beat on Redis (redis_url in beatd.toml, BEATD_REDIS_URL, \
             CELERY_BROKER_URL or REDIS_URL), where workers store results, or use overlap = \"allow\""
        );
        n += 1;
    }
    n
}

fn summary(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match (errors, warnings) {
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    }
}
