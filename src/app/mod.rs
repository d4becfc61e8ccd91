//! The commands behind the CLI: each turns parsed flags into a run of the library and an
//! exit code. `main.rs` only parses, sets up logging and calls [`run`].

pub mod next;

use crate::cli::{CheckArgs, Cli, Command, NextArgs, OutputFormat, ScheduleArgs};
use crate::clock::{Clock, SystemClock};
use crate::config;
use chrono::DateTime;
use std::path::PathBuf;
use std::process::ExitCode;

/// Errors that end a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Schedule or config files are invalid (already rendered).
    #[error("{0}")]
    Config(config::Diagnostics),
    /// A flag value is invalid.
    #[error("{0}")]
    Usage(String),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Exit codes, documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Invalid schedules or config, or a runtime failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap uses 2 as well).
    pub const USAGE: u8 = 2;
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Next(args) => next(&args),
        _ => Err(Error::Other("not implemented yet".into())),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Error::Config(d)) => {
            eprint!("{d}");
            ExitCode::from(exit::FAILURE)
        }
        Err(Error::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(exit::USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// The schedule paths of a command: given ones, else `schedules/`.
#[must_use]
pub fn schedule_paths(args: &ScheduleArgs, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = extra.iter().chain(&args.schedules).cloned().collect();
    if paths.is_empty() {
        paths.push(PathBuf::from("schedules"));
    }
    paths
}

fn check(args: &CheckArgs) -> Result<u8, Error> {
    let paths = schedule_paths(&args.schedules, &args.paths);
    let loaded = config::load_schedules(&paths, SystemClock.now()).map_err(Error::Config)?;
    for w in &loaded.warnings {
        eprint!("{w}");
    }
    println!(
        "ok: {} entries in {}",
        loaded.entries.len(),
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(exit::OK)
}

fn next(args: &NextArgs) -> Result<u8, Error> {
    let now = SystemClock.now();
    let from = match &args.from {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| Error::Usage(format!("--from {s:?} is not an RFC 3339 instant: {e}")))?
            .to_utc(),
        None => now,
    };
    let loaded =
        config::load_schedules(&schedule_paths(&args.schedules, &[]), now).map_err(Error::Config)?;
    for name in &args.entry {
        if !loaded.entries.iter().any(|e| &e.name == name) {
            return Err(Error::Usage(format!("no entry named {name:?}")));
        }
    }
    let list = next::next_fires(&loaded.entries, &args.entry, from, args.count);
    match args.format {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&list).expect("serializes"));
        }
        OutputFormat::Text => print!("{}", next::render_text(&list)),
    }
    Ok(exit::OK)
}

