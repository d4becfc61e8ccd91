//! The worker against real redis-server processes: one test binary, one module per concern.

mod util;

// Delivery: kombu priority order, ETA, expiry, unacked bookkeeping, restores, shutdown.
mod delivery;
// Bad input: each malformed message is logged, failed where possible, acked.
mod malformed;
// Per-task options: ignore_result, exec env and cwd, panics, two workers on one queue.
mod options;
// Golden protocol tests against the captured Celery fixtures.
mod protocol;
// Results, kombu bookkeeping, exec tasks, Redis restarts.
mod end_to_end;
// http tasks and the embedded pipeline.
mod tasks;
// Interim states: update_state from Rust handlers, STARTED, the final-state guard.
mod states;
// Remote control over the pidbox: ping, revoke.
mod control;
