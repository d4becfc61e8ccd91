//! The `beatd` binary: parse the command line, set up the allocator and logging, run the
//! command.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = beatd::cli::Cli::parse();
    // Before the runtime starts its threads: the arena cap only applies to arenas made later.
    beatd::app::tune_allocator(&cli.command);
    beatd::telemetry::init(cli.log_format);
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(beatd::app::run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(beatd::app::exit::FAILURE)
        }
    }
}
