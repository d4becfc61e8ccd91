//! `beatd check`: validates `beatd.toml` and the schedule files, reporting every problem as
//! `path:line:column`; exits 1 when there is any.

use super::settings::{app_config, schedule_paths, Flags};
use crate::clock::{Clock, SystemClock};
use crate::config;
use crate::error::{exit, Error};

/// Runs the check.
///
/// # Errors
/// None today: every problem found is reported and turns into exit code 1.
pub fn check(flags: &Flags) -> Result<u8, Error> {
    // beatd.toml first: it may name the schedule paths.
    let (file, mut failed) = match app_config(flags.config.as_deref()) {
        Ok(file) => (file, false),
        Err(Error::Config(d)) => {
            eprint!("{d}");
            (config::AppConfig::default(), true)
        }
        Err(e) => return Err(e),
    };
    // Only the schedule paths matter here: a check must not fail on a Redis URL it never uses.
    let paths = if flags.schedules.is_empty() {
        // The default schedule directory is optional for a worker-only host.
        schedule_paths(flags, &file)
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect()
    } else {
        flags.schedules.clone()
    };
    let mut entries = 0;
    if !paths.is_empty() {
        match config::load_schedules(&paths, SystemClock.now()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprint!("{w}");
                }
                entries = loaded.entries.len();
            }
            Err(d) => {
                eprint!("{d}");
                eprintln!("check failed: {}", d.summary());
                failed = true;
            }
        }
    }
    if failed {
        return Ok(exit::FAILURE);
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    println!(
        "ok: {entries} entries in {}",
        if shown.is_empty() {
            "(no schedules)".to_string()
        } else {
            shown.join(", ")
        }
    );
    Ok(exit::OK)
}
