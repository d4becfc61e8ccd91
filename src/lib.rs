//! beatd: a highly available, Celery-compatible periodic-task scheduler and a minimal worker.
//!
//! Crate map, from the pure core up (a module imports only from modules above it in this
//! list; ARCHITECTURE.md has the whole map and the rules):
//!
//! - [`schedule`], [`entry`], [`config`], [`protocol`], [`clock`], [`backoff`], [`store`]:
//!   pure — no I/O, no system clock (but in `clock`).
//! - [`redis`]: the one way into Redis (URL, connection, keys), for every command; [`amqp`]:
//!   the one way into RabbitMQ (URL, connection, declarations, the kombu ⇄ AMQP mapping).
//! - [`leader`], [`state`], [`emit`]: the beat's three ports, each with its trait and every
//!   implementation (Redis, in-memory, file / in-process queue); [`control`]: runtime
//!   controls (pause, resume, trigger, backfill) on Redis or in-process.
//! - [`beat`]: the scheduler loop over those ports; [`worker`]: the worker.
//! - [`ops`], [`host`], [`shutdown`], [`telemetry`]: HTTP, metrics, liveness, systemd,
//!   signals, logs.
//! - [`console`]: the status page and the control endpoint on the HTTP port.
//! - [`app`], [`cli`], [`error`]: the commands, their flags and settings, the crate error.

pub mod amqp;
pub mod app;
pub mod backoff;
pub mod beat;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod emit;
pub mod entry;
pub mod error;
pub mod host;
pub mod leader;
pub mod ops;
pub mod protocol;
pub mod redis;
pub mod schedule;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod testkit;
pub mod worker;

pub use error::Error;

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
