//! A short chaos run in Sentinel mode: the primary killed and paused, a replica killed, beats
//! and workers killed, paused and stopped, and every invariant must hold (0 duplicated,
//! 0 missed, 0 lost). The checker's own tests, which show it fails runs that duplicate, miss
//! or lose, are in `tests/integration/chaos.rs`.

#[path = "../../chaos/mod.rs"]
mod harness;

use harness::runner::{run, Mode, Options};
use std::time::Duration;

/// Covers the case the Sentinel mode first failed on: a primary paused past
/// `down-after-milliseconds` and resumed after a replica's promotion but before the Sentinels'
/// `+switch-master` (beats and workers now leave it at `+odown` / `+try-failover` and use no
/// master while a Sentinel reports a failover under way; `chaos/RESULTS.md`, "Sentinel mode").
#[test]
fn chaos_sentinel_short_run_holds_every_invariant() {
    let seed = std::env::var("BEATD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(run(Options {
            mode: Mode::Sentinel,
            duration: Duration::from_secs(35),
            seed,
            beatd: env!("CARGO_BIN_EXE_beatd").into(),
            dir: None,
            verbose: true,
        }))
        .expect("chaos run set up");
    eprintln!("{}\n{}", report.line(), report.notes.join("\n"));
    // A run without a failover would prove nothing about following one.
    assert!(
        report.faults.get("primary_kill").copied().unwrap_or(0) >= 1,
        "the primary was killed: {}",
        report.line()
    );
    assert!(
        report.pass(),
        "{} (logs in {})",
        report.line(),
        report.dir.display()
    );
    let _ = std::fs::remove_dir_all(&report.dir);
}
