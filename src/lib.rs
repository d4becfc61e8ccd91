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
//! - [`beat_io`]: those traits (`LeaderLock`, `Emitter`, `StateStore`) and in-memory
//!   implementations.
//! - [`redis_edge`]: their Redis implementations, connection and URL handling.
//! - [`embedded`]: the zero-setup implementations (state file, in-process queue).
//! - [`app`], [`cli`], [`ops`]: commands, flags, HTTP, metrics, systemd.

pub mod app;
pub mod beat;
pub mod beat_io;
pub mod cli;
pub mod clock;
pub mod config;
pub mod embedded;
pub mod entry;
pub mod ops;
pub mod protocol;
pub mod redis_edge;
pub mod schedule;
pub mod shutdown;
pub mod telemetry;
pub mod testkit;
pub mod worker;

/// An error and its sources as one line, `outer: inner: root`, for logs and `main`.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source in their own message; print it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
