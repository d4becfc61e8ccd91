//! A short chaos run in RabbitMQ mode, on a node of its own (the run kills it): the node
//! killed and restarted, the lock's Redis killed and cut off, beats and workers killed, paused
//! and stopped, and every fire time must be executed once (a task id run twice is allowed:
//! AMQP delivery is at-least-once; two task ids for one fire time or none fail). The checker's
//! own tests are in `tests/integration/chaos.rs`.

#[path = "../../chaos/mod.rs"]
mod harness;

use harness::runner::{run, Mode, Options};
use std::time::Duration;

#[test]
fn chaos_rabbitmq_short_run_holds_every_invariant() {
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
            mode: Mode::Rabbitmq,
            duration: Duration::from_secs(35),
            seed,
            beatd: env!("CARGO_BIN_EXE_beatd").into(),
            dir: None,
            verbose: true,
        }))
        .expect("chaos run set up");
    eprintln!("{}\n{}", report.line(), report.notes.join("\n"));
    assert!(
        report.faults.get("rabbit_kill").copied().unwrap_or(0) >= 1,
        "the node was killed: {}",
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
