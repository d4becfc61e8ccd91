//! The commands behind the CLI, one file each (`check`, `next`, `beat`, `run`, `worker`,
//! `send`, `status`; `control` for pause, resume, trigger and backfill), over the parts they share: [`settings`] (flags, env and `beatd.toml`
//! resolved once), [`daemon`] (signals, HTTP, systemd, liveness and the wiring of the beat and
//! the worker) and [`reload`]. `main.rs` only parses, sets up logging and calls [`run`].
//! Commands import the shared parts, never each other.

pub mod beat;
pub mod check;
pub mod control;
pub mod daemon;
pub mod next;
pub mod reload;
pub mod run;
pub mod send;
pub mod settings;
pub mod status;
pub mod worker;

pub use crate::error::{exit, Error};

use crate::cli::{Cli, Command};
use settings::{Flags, Settings};
use std::process::ExitCode;

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
    let flags = Flags::of(cli.config.as_deref(), &cli.command);
    let result = match &cli.command {
        // `check` reports an invalid beatd.toml together with the schedule files' problems.
        Command::Check(_) => check::check(&flags).await,
        command => match Settings::resolve(&flags) {
            Ok(settings) => match command {
                Command::Next(args) => next::next(&settings, args),
                Command::Beat(_) => beat::beat(settings).await,
                Command::Run(_) => run::run(settings).await,
                Command::Worker(_) => worker::worker(settings).await,
                Command::Send(args) => send::send(&settings, args).await,
                Command::Status(args) => status::status(&settings, args).await,
                Command::Pause(_)
                | Command::Resume(_)
                | Command::Trigger(_)
                | Command::Backfill(_) => control::control(&settings, command).await,
                Command::Check(_) => unreachable!("handled above"),
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            e.report();
            ExitCode::from(e.exit_code())
        }
    }
}
