//! The commands behind the CLI: each turns parsed flags into a run of the library and an
//! exit code. `main.rs` only parses, sets up logging and calls [`run`].

pub mod daemon;
pub mod next;
pub mod oneshot;
pub mod reload;
pub mod settings;
pub mod worker;

use crate::cli::{CheckArgs, Cli, Command, NextArgs, OutputFormat};
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

/// glibc's settings for a footprint-bound process (see `ops::malloc`), for the commands that
/// run a beat: the beat is I/O bound and idle most of the time. `worker` keeps glibc's
/// defaults, which favour allocation speed (per-thread arenas, large buffers kept for reuse)
/// for tasks that may be CPU bound.
pub fn tune_allocator(command: &Command) {
    if matches!(command, Command::Beat(_) | Command::Run(_)) {
        crate::ops::malloc::tune();
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let config = cli.config.as_deref();
    let result = match &cli.command {
        Command::Check(args) => check(config, args),
        Command::Next(args) => next(config, args),
        Command::Beat(args) => daemon::beat(config, args).await,
        Command::Run(args) => daemon::run(config, args).await,
        Command::Worker(args) => worker::worker(config, args).await,
        Command::Send(args) => oneshot::send(config, args).await,
        Command::Status(args) => oneshot::status(config, args).await,
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

fn check(config: Option<&std::path::Path>, args: &CheckArgs) -> Result<u8, Error> {
    // beatd.toml first: it may name the schedule paths.
    let (file, mut failed) = match settings::app_config(config) {
        Ok(file) => (file, false),
        Err(Error::Config(d)) => {
            eprint!("{d}");
            (crate::config::AppConfig::default(), true)
        }
        Err(e) => return Err(e),
    };
    let explicit: Vec<PathBuf> = args
        .paths
        .iter()
        .chain(&args.schedules.schedules)
        .cloned()
        .collect();
    let paths = if explicit.is_empty() {
        // The default schedule directory is optional for a worker-only host.
        file.schedules
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect()
    } else {
        explicit
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

fn next(config: Option<&std::path::Path>, args: &NextArgs) -> Result<u8, Error> {
    let now = SystemClock.now();
    let from = match &args.from {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| Error::Usage(format!("--from {s:?} is not an RFC 3339 instant: {e}")))?
            .to_utc(),
        None => now,
    };
    let loaded = config::load_schedules(
        &settings::schedule_paths(&args.schedules, &settings::app_config(config)?),
        now,
    )
    .map_err(Error::Config)?;
    for name in &args.entry {
        if !loaded.entries.iter().any(|e| &e.name == name) {
            return Err(Error::Usage(format!("no entry named {name:?}")));
        }
    }
    let list = next::next_fires(&loaded.entries, &args.entry, from, args.count);
    match args.format {
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).expect("serializes")
            );
        }
        OutputFormat::Text => print!("{}", next::render_text(&list)),
    }
    Ok(exit::OK)
}
