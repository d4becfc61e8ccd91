//! The chaos run: beats, workers and Redis under seeded faults, then an invariant checker.
//!
//! ```sh
//! cargo run --release --example chaos -- --duration 3m --seed 7
//! cargo run --release --example chaos -- --mode sentinel --duration 10m --seed 7
//! ```
//!
//! Flags: `--mode redis|sentinel|rabbitmq` (the servers beatd runs on, default redis; see
//! `chaos/mode_*.rs`), `--duration` (humantime, default 3m), `--seed` (default: random, printed),
//! `--beatd PATH` (default: build and use target/release/beatd), `--dir PATH` (keep logs
//! there; default a temp dir, printed), `--quiet`. Prints one line of figures; exit 0 when
//! every invariant held, 1 when one did not, 2 on a setup error.

#[path = "../chaos/mod.rs"]
mod chaos;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\nusage: chaos [--mode redis|sentinel|rabbitmq] [--duration 3m] [--seed N] [--beatd PATH] [--dir PATH] [--quiet]");
    ExitCode::from(2)
}

/// The beatd binary next to this example's target directory, built first when run by cargo.
fn default_beatd() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/chaos -> target/<profile>/beatd
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or("cannot locate the target directory")?;
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = profile_dir.ends_with("release");
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "beatd"]);
        if release {
            cmd.arg("--release");
        }
        let ok = cmd.status().map_err(|e| e.to_string())?.success();
        if !ok {
            return Err("cargo build --bin beatd failed".into());
        }
    }
    let bin = profile_dir.join("beatd");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it or pass --beatd",
            bin.display()
        ))
    }
}

fn main() -> ExitCode {
    let mut mode = chaos::runner::Mode::default();
    let mut duration = Duration::from_secs(180);
    let mut seed: Option<u64> = None;
    let mut beatd: Option<PathBuf> = None;
    let mut dir: Option<PathBuf> = None;
    let mut verbose = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--mode" => match value().map(|v| v.parse()) {
                Ok(Ok(m)) => mode = m,
                Ok(Err(e)) => return usage(&format!("--mode: {e}")),
                Err(e) => return usage(&e),
            },
            "--duration" => match value().map(|v| humantime::parse_duration(&v)) {
                Ok(Ok(d)) => duration = d,
                Ok(Err(e)) => return usage(&format!("--duration: {e}")),
                Err(e) => return usage(&e),
            },
            "--seed" => match value().map(|v| v.parse()) {
                Ok(Ok(s)) => seed = Some(s),
                Ok(Err(e)) => return usage(&format!("--seed: {e}")),
                Err(e) => return usage(&e),
            },
            "--beatd" => match value() {
                Ok(v) => beatd = Some(v.into()),
                Err(e) => return usage(&e),
            },
            "--dir" => match value() {
                Ok(v) => dir = Some(v.into()),
                Err(e) => return usage(&e),
            },
            "--quiet" => verbose = false,
            _ => return usage(&format!("unknown argument {a:?}")),
        }
    }
    let beatd = match beatd.map_or_else(default_beatd, Ok) {
        Ok(b) => b,
        Err(e) => return usage(&e),
    };
    let seed = seed.unwrap_or_else(rand::random);
    eprintln!(
        "[chaos] mode {mode}, seed {seed}, faults for {}",
        humantime::format_duration(duration)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let opts = chaos::runner::Options {
        mode,
        duration,
        seed,
        beatd,
        dir,
        verbose,
    };
    match rt.block_on(chaos::runner::run(opts)) {
        Ok(report) => {
            eprintln!("[chaos] logs in {}", report.dir.display());
            for note in &report.notes {
                eprintln!("[chaos] {note}");
            }
            println!("{}", report.line());
            if report.pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
