//! The chaos run in the test suite (a short one) and the checker's own tests: the checker
//! must fail runs that duplicate, miss or lose, or a passing chaos run proves nothing.

#[path = "../../chaos/mod.rs"]
mod harness;

use harness::check::{check, parse_line, Execution, GridEntry};
use std::collections::HashMap;
use std::time::Duration;

fn exe(entry: &str, fire_ms: i64, id: &str) -> Execution {
    Execution {
        entry: entry.into(),
        fire_ms,
        task_id: id.into(),
    }
}

fn grid() -> Vec<GridEntry> {
    vec![GridEntry {
        name: "e".into(),
        period_ms: 1000,
    }]
}

fn counts(n: u64) -> HashMap<String, u64> {
    HashMap::from([("e".to_string(), n)])
}

#[test]
fn checker_passes_a_clean_run_and_counts_redeliveries_apart() {
    // Fire times 1..=3 s; the second message ran twice (redelivered after a worker died).
    let runs = [
        exe("e", 1000, "a"),
        exe("e", 2000, "b"),
        exe("e", 2000, "b"),
        exe("e", 3000, "c"),
    ];
    let c = check(&grid(), 500, 3000, &counts(3), &runs);
    assert_eq!((c.due, c.sent, c.executed, c.reexecuted), (3, 3, 3, 1));
    assert!(c.pass(), "{c:?}");
}

#[test]
fn checker_fails_duplicate_sends_misses_losses_and_strays() {
    let ok = [
        exe("e", 1000, "a"),
        exe("e", 2000, "b"),
        exe("e", 3000, "c"),
    ];
    // A second message for fire time 2 s.
    let mut dup = ok.to_vec();
    dup.push(exe("e", 2000, "b2"));
    let c = check(&grid(), 1000, 3000, &counts(4), &dup);
    assert_eq!(c.duplicated, 1);
    assert!(!c.pass());
    // Fire time 3 s never sent.
    let c = check(&grid(), 1000, 3000, &counts(2), &ok[..2]);
    assert_eq!((c.missed, c.lost), (1, 0));
    assert!(!c.pass());
    // Fire time 3 s sent (counted) but never executed.
    let c = check(&grid(), 1000, 3000, &counts(3), &ok[..2]);
    assert_eq!((c.missed, c.lost), (0, 1));
    assert!(!c.pass());
    // An execution off the grid, and executions Redis never counted.
    let mut stray = ok.to_vec();
    stray.push(exe("e", 2500, "x"));
    let c = check(&grid(), 1000, 3000, &counts(3), &stray);
    assert_eq!((c.unexpected, c.unaccounted), (1, 1));
    assert!(!c.pass());
    // Nothing due is not a pass either.
    assert!(!check(&grid(), 1100, 1200, &counts(0), &[]).pass());
}

#[test]
fn checker_reads_the_worker_log_format() {
    let x = parse_line(r#"2026-11-23T10:00:01.000Z 5f0c-id ["every-1s"]"#).unwrap();
    assert_eq!(x, exe("every-1s", 1_795_428_001_000, "5f0c-id"));
    assert!(parse_line("garbage").is_none());
}

/// A 35-second run: every fault kind at least once (the kinds come from a shuffled bag), and
/// every invariant holds.
#[test]
fn chaos_short_run_holds_every_invariant() {
    let seed = std::env::var("BEATD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_123);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(harness::runner::run(harness::runner::Options {
            mode: harness::runner::Mode::Redis,
            duration: Duration::from_secs(35),
            seed,
            beatd: crate::util::bin(),
            dir: None,
            verbose: true,
        }))
        .expect("chaos run set up");
    eprintln!("{}\n{}", report.line(), report.notes.join("\n"));
    let kinds = report
        .faults
        .keys()
        .filter(|k| **k != "term_timeout")
        .count();
    assert!(kinds >= 9, "every fault kind injected: {}", report.line());
    assert!(
        report.pass(),
        "{} (logs in {})",
        report.line(),
        report.dir.display()
    );
    let _ = std::fs::remove_dir_all(&report.dir);
}
