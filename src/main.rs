//! The `beatd` binary: parse the command line, set up logging, run the command.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = beatd::cli::Cli::parse();
    beatd::telemetry::init(cli.log_format);
    beatd::app::run(cli).await
}
