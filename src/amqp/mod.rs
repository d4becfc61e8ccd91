//! The one way into RabbitMQ (AMQP 0-9-1, through lapin), for the beat's emitter and the
//! worker: the URL ([`url`]), the connection ([`connect`]), Celery's declarations
//! ([`declare_queue`]) and the mapping between kombu's message and AMQP's properties and
//! header table ([`wire`]). Never imports `beat`, `leader`, `emit`, `state` or `worker`:
//! they import this.

pub mod url;
pub mod wire;

pub use url::{is_amqp, AmqpUrl};

use crate::redis::RedactedUrl;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;

/// RabbitMQ failures, named for what happened; the lapin error is the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not a usable AMQP URL; the text shown is redacted.
    #[error("invalid amqp url {url}: {reason}")]
    InvalidUrl {
        /// The redacted URL.
        url: RedactedUrl,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made, or it broke, or a channel operation failed.
    #[error("rabbitmq at {url}: {what}")]
    Broker {
        /// The redacted URL.
        url: RedactedUrl,
        /// What was being done.
        what: &'static str,
        /// The client error.
        #[source]
        source: Arc<lapin::Error>,
    },
    /// A `mandatory` publish came back: no queue is bound to its routing key.
    #[error("rabbitmq returned a message as unroutable: exchange {exchange:?}, routing key {routing_key:?} ({reply})")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The broker refused to take responsibility for a message (`basic.nack`).
    #[error("rabbitmq nacked a publish to routing key {routing_key:?}")]
    Nacked {
        /// The routing key.
        routing_key: String,
    },
    /// A message beatd was asked to publish is not a kombu envelope it can map.
    #[error("cannot publish this message: {0}")]
    Message(String),
}

/// Connects to `url` (TLS for `amqps://`), naming the connection after this process.
///
/// # Errors
/// [`Error::Broker`] when the server cannot be reached or refuses the login.
pub async fn connect(url: &AmqpUrl, name: &str) -> Result<Connection, Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(url.uri(), props)
        .await
        .map_err(|e| Error::Broker {
            url: url.redacted().clone(),
            what: "connect",
            source: Arc::new(e),
        })
}

/// Queue arguments, set only when configured (as Celery does), so that neither beatd nor a
/// Celery worker declares the queue differently and gets `406 PRECONDITION_FAILED`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    /// `x-max-priority` (Celery's `task_queue_max_priority`).
    pub max_priority: Option<u8>,
    /// `x-queue-type`, e.g. `quorum` (Celery's `task_default_queue_type`).
    pub queue_type: Option<String>,
}

impl QueueArgs {
    /// The `queue.declare` arguments, typed as py-amqp writes them (`I` and `S`).
    #[must_use]
    pub fn table(&self) -> FieldTable {
        let mut t = FieldTable::default();
        if let Some(p) = self.max_priority {
            t.insert(
                ShortString::from("x-max-priority"),
                AMQPValue::LongInt(i32::from(p)),
            );
        }
        if let Some(q) = &self.queue_type {
            t.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from(q.as_str())),
            );
        }
        t
    }
}

/// Declares `queue` as Celery does before its first publish to it: a durable direct
/// exchange of the same name, the durable queue (with `args` when configured) and the
/// binding. A queue that already exists is used as it is (a passive declare first), so a
/// queue created by a Celery worker with other arguments is never redeclared into a 406.
///
/// `channel` may be closed by the passive declare's 404; the returned channel is the one to
/// go on with.
///
/// # Errors
/// [`Error::Broker`] when a declaration fails.
pub async fn declare_queue(
    conn: &Connection,
    channel: Channel,
    url: &AmqpUrl,
    queue: &str,
    args: &QueueArgs,
) -> Result<Channel, Error> {
    let broker = |what, e| Error::Broker {
        url: url.redacted().clone(),
        what,
        source: Arc::new(e),
    };
    let exists = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    // A failed passive declare closes the channel (404): open another.
    let channel = if exists {
        channel
    } else {
        conn.create_channel()
            .await
            .map_err(|e| broker("open a channel", e))?
    };
    channel
        .exchange_declare(
            queue.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker("declare the exchange", e))?;
    if !exists {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args.table(),
            )
            .await
            .map_err(|e| broker("declare the queue", e))?;
    }
    channel
        .queue_bind(
            queue.into(),
            queue.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker("bind the queue", e))?;
    Ok(channel)
}
