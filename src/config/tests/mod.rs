//! Tests of the config module: every diagnostic checked for its message and its
//! line:column, entries built from files, the files shipped in the repository, and
//! `beatd.toml`.

mod app;
mod entries;
mod files;
mod schedules;

use crate::config::{load_schedule_str, Diagnostic};
use chrono::{DateTime, Utc};

/// The "now" of every test: config never reads the clock.
const NOW: DateTime<Utc> = DateTime::from_timestamp(1_780_000_000, 0).unwrap(); // 2026-05-28

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
}

/// Every diagnostic of a file that must fail to load.
fn diags(text: &str) -> Vec<Diagnostic> {
    match load_schedule_str("x.toml", text, NOW) {
        Ok(s) => panic!("expected errors, loaded {} entries", s.entries.len()),
        Err(d) => d.0,
    }
}

/// The single diagnostic of a file that must fail to load.
fn one(text: &str) -> Diagnostic {
    let mut ds = diags(text);
    assert_eq!(
        ds.len(),
        1,
        "expected one diagnostic, got:\n{}",
        crate::config::Diagnostics(ds.clone())
    );
    ds.remove(0)
}
