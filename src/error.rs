//! The one error a command ends with, and the exit code each kind maps to (documented in the
//! README). Library layers keep their own typed errors; they convert into this one at the
//! top, with their sources intact.

use crate::config::Diagnostics;
use std::net::SocketAddr;

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Invalid schedules or config, or a runtime failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// A control request (pause, resume, trigger, backfill) refused by the leader: unknown
    /// entry, disabled entry, bad or unconfirmed backfill range, stale request.
    pub const REFUSED: u8 = 3;
    /// No leader answered a control request in time; it expires unapplied.
    pub const NO_ANSWER: u8 = 4;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Schedule or config files are invalid (already rendered, one diagnostic per problem).
    #[error("{0}")]
    Config(Diagnostics),
    /// A flag or environment value is invalid, or a needed one is missing.
    #[error("{0}")]
    Usage(String),
    /// Redis refused us in a way retrying does not fix, or a one-shot command could not
    /// reach it.
    #[error(transparent)]
    Redis(#[from] crate::redis::Error),
    /// RabbitMQ could not be reached or refused a one-shot command's publish.
    #[error(transparent)]
    Amqp(#[from] crate::amqp::Error),
    /// The embedded state file cannot be read or written.
    #[error(transparent)]
    StateFile(#[from] crate::state::file::Error),
    /// The embedded mode's controls file cannot be read or written.
    #[error(transparent)]
    Controls(crate::control::local::Error),
    /// The embedded state file is locked by another process, or the lock cannot be taken.
    #[error(transparent)]
    StateLock(#[from] crate::leader::file::LockError),
    /// A task definition of `beatd.toml` cannot be registered.
    #[error("task {name:?}")]
    Task {
        /// The task name.
        name: String,
        /// Why.
        #[source]
        source: crate::worker::Error,
    },
    /// The HTTP endpoint cannot listen.
    #[error("cannot listen on {addr} (--http-addr)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The leader refused a control request.
    #[error("{action} {entry}: refused ({why:?}): {message}")]
    Refused {
        /// The action.
        action: &'static str,
        /// The entry.
        entry: String,
        /// Why, as a code.
        why: crate::control::Refusal,
        /// Why, in words.
        message: String,
    },
    /// No leader answered a control request within the wait.
    #[error(
        "{action}: no leader answered within {wait:?} (none running, or the store unreachable); \
         the request expires unapplied"
    )]
    NoAnswer {
        /// The action.
        action: &'static str,
        /// How long the command waited.
        wait: std::time::Duration,
    },
    /// A control request could not be delivered.
    #[error("control request not delivered: {0}")]
    Control(String),
    /// Signal handlers cannot be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
}

impl Error {
    /// The process exit code for this error.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Refused { .. } => exit::REFUSED,
            Self::NoAnswer { .. } => exit::NO_ANSWER,
            _ => exit::FAILURE,
        }
    }

    /// Writes the error to stderr the way each kind reads best.
    pub fn report(&self) {
        match self {
            Self::Config(d) => eprint!("{d}"),
            other => eprintln!("error: {}", crate::error_chain(other)),
        }
    }
}
