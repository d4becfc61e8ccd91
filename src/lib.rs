//! beatd: a highly available, Celery-compatible periodic-task scheduler and a minimal worker.
//!
//! Crate map (dependencies point downwards; the first four are pure, no I/O, no system clock):
//!
//! - [`schedule`]: next-fire math for `cron` / `every` / `at`, DST policy, jitter, catch-up.
//! - [`entry`]: the validated schedule entry, the unit every other module talks about.
//! - [`config`]: schedule files and `beatd.toml`, parsed in two stages with file:line:column
//!   diagnostics.
//! - [`protocol`]: Celery protocol v2 messages and result-backend records (build and parse).
//! - [`clock`]: the only place that reads the system clock.
//! - [`beat`]: the scheduler loop over small traits (leader lock, emitter, state).
//! - edges: Redis and embedded implementations of those traits, the worker, the CLI.

pub mod beat;
pub mod clock;
pub mod config;
pub mod entry;
pub mod protocol;
pub mod schedule;
pub mod testkit;
pub mod worker;
