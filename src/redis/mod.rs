//! The one way into Redis, for the beat, the worker and the one-shot commands: the URL
//! ([`url`], Sentinel URLs in [`sentinel_url`]), the self-healing connection with its timeouts
//! and backoff ([`conn`]) and the worker's ([`dedicated`]), following the master behind
//! Sentinels when the URL names them, the error type named for what happened, and the names of
//! beatd's own keys ([`Keys`]).
//!
//! beatd's own keys, all under one namespace (default `beatd`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{ns}:leader` | string, PX ttl | the holder's token `hostname:pid:random` |
//! | `{ns}:epoch` | integer | fencing epoch, `INCR`ed on every acquisition |
//! | `{ns}:last_run` | hash | entry → last fire time sent (ms since the Unix epoch) |
//! | `{ns}:run_count` | hash | entry → fires sent, ever |
//! | `{ns}:fingerprint` | hash | entry → schedule fingerprint of the last fire sent |
//! | `{ns}:batches` | hash | staged batch id `<epoch>:<fire ms>` → `s` (staged) or `c` (committed) |
//! | `{ns}:batch:<id>` | hash | entry → `<fire ms> <fingerprint>`, the runs the batch will record |
//! | `{ns}:batch:<id>:dests` | hash | index → destination queue list |
//! | `{ns}:batch:<id>:q<index>` | list | staged messages, renamed onto the queue at the instant |
//! | `{ns}:schedule_set_id` | string, PX | the leader's `<schedule set id> <host>:<pid>` |
//! | `{ns}:schedule_set` | hash, PX | entry → fingerprint of the leader's schedule set |
//! | `{ns}:schedule_set:next` | hash, PX | the next one, written in steps, then renamed |
//! | `{ns}:amqp_intents` | hash | `<entry>\0<fire ms>` → a fire to publish on RabbitMQ, until confirmed (JSON) |
//!
//! and the Celery queue lists it pushes to. The scripts that write them live with their
//! concern (`leader/scripts`, `emit/scripts`). Never imports `beat`, `leader`, `emit`,
//! `state` or `worker`: they import this.

pub mod channel;
pub mod conn;
pub mod dedicated;
pub mod scan;
mod sentinel;
pub mod sentinel_url;
mod tls;
pub mod url;

pub use conn::{connect, ConnectOptions, RedisConn};
pub use dedicated::DedicatedConn;
pub use sentinel_url::SentinelOptions;
pub use url::{resolve_url, BrokerUrl, RedactedUrl, UrlSource, WaitReplicas};

use std::sync::Arc;
use std::time::Duration;

/// The default key namespace.
pub const DEFAULT_NAMESPACE: &str = "beatd";

/// Redis failures, named for what happened. Display strings add context; the redis-rs error
/// is the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The URL is not a usable Redis URL; the text shown is redacted.
    #[error("invalid redis url {url}: {reason}")]
    InvalidUrl {
        /// The redacted URL.
        url: RedactedUrl,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made, or the connection broke.
    #[error("redis at {url} is unreachable")]
    Unreachable {
        /// The redacted URL.
        url: RedactedUrl,
        /// The client error (shared: the same failure is returned during the backoff).
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// The TLS handshake failed on the server's certificate (an unknown CA, a name that does
    /// not match the host) or on ours; retrying will not help.
    #[error(
        "tls with redis at {url} failed: check ssl_ca_certs (the CA that signed the server's \
         certificate), that the certificate names the host in the url, and ssl_certfile / \
         ssl_keyfile if the server asks for a client certificate"
    )]
    Tls {
        /// The redacted URL.
        url: RedactedUrl,
        /// The client error.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// Wrong or missing password; retrying will not help.
    #[error("redis at {url} rejected the credentials (check the password in the url)")]
    AuthFailed {
        /// The redacted URL.
        url: RedactedUrl,
        /// The client error.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// A command got no reply in time; it may or may not have run.
    #[error("redis at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The redacted URL.
        url: RedactedUrl,
        /// The response timeout.
        timeout: Duration,
    },
    /// The lock no longer holds this replica's token; nothing was written.
    #[error("lease lost: the leader lock no longer holds this replica's token")]
    LeaseLost,
    /// Redis refused a command (wrong key type, script error, read-only replica…).
    #[error("redis at {url} refused a command")]
    Command {
        /// The redacted URL.
        url: RedactedUrl,
        /// The server's error.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// No Sentinel named a master that answers as one.
    #[error("no usable redis master {master:?} from the sentinels at {url}: {detail}")]
    NoMaster {
        /// The redacted Sentinel URL.
        url: RedactedUrl,
        /// The master name asked for.
        master: String,
        /// What each Sentinel said.
        detail: String,
    },
    /// Every Sentinel answered that it monitors no master by that name; retrying will not
    /// help.
    #[error(
        "the sentinels at {url} monitor no master named {master:?} (check --sentinel-master, \
         BEATD_SENTINEL_MASTER or ?master_name= against `sentinel monitor NAME` in sentinel.conf)"
    )]
    UnknownMaster {
        /// The redacted Sentinel URL.
        url: RedactedUrl,
        /// The master name asked for.
        master: String,
    },
    /// A write reached fewer replicas than `WAIT` asked for in time: it may be lost in a
    /// failover, so it does not count as done yet.
    #[error("redis at {url}: the write reached {acked} of {wanted} replicas within {timeout:?}")]
    NotReplicated {
        /// The redacted URL.
        url: RedactedUrl,
        /// Replicas that acknowledged.
        acked: i64,
        /// Replicas asked for.
        wanted: u32,
        /// The `WAIT` timeout.
        timeout: Duration,
    },
    /// A script or command answered with something this code does not expect.
    #[error("unexpected reply from redis: {0}")]
    UnexpectedReply(String),
}

impl From<Error> for crate::store::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::LeaseLost => Self::LeaseLost,
            other => Self::Unavailable(Box::new(other)),
        }
    }
}

/// The names of beatd's own keys under a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{ns}:leader`
    pub leader: String,
    /// `{ns}:epoch`
    pub epoch: String,
    /// `{ns}:last_run`
    pub last_run: String,
    /// `{ns}:run_count`
    pub run_count: String,
    /// `{ns}:fingerprint`
    pub fingerprint: String,
    /// `{ns}:batches`
    pub batches: String,
    /// `{ns}:batch:`, the prefix of every staged batch's keys.
    pub batch_prefix: String,
    /// `{ns}:schedule_set_id`
    pub schedule_set_id: String,
    /// `{ns}:schedule_set`
    pub schedule_set: String,
    /// `{ns}:amqp_intents`
    pub amqp_intents: String,
    /// `{ns}:control:last_task`: per entry, the task id of its last message, which settling
    /// a staged batch records beside its last run (the controls own the key).
    pub control_last_task: String,
    /// `{ns}:control:first_run`: per entry, its first regular fire time sent (likewise).
    pub control_first_run: String,
}

impl Keys {
    /// The keys under namespace `ns`.
    #[must_use]
    pub fn new(ns: &str) -> Self {
        Self {
            leader: format!("{ns}:leader"),
            epoch: format!("{ns}:epoch"),
            last_run: format!("{ns}:last_run"),
            run_count: format!("{ns}:run_count"),
            fingerprint: format!("{ns}:fingerprint"),
            batches: format!("{ns}:batches"),
            batch_prefix: format!("{ns}:batch:"),
            schedule_set_id: format!("{ns}:schedule_set_id"),
            schedule_set: format!("{ns}:schedule_set"),
            amqp_intents: format!("{ns}:amqp_intents"),
            control_last_task: format!("{ns}:control:last_task"),
            control_first_run: format!("{ns}:control:first_run"),
        }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_NAMESPACE)
    }
}
