//! A pub/sub channel followed for as long as the process lives: subscribed on a connection
//! of its own (to the master when behind Sentinels), subscribed again after a broken
//! connection or a failover. Owns the subscribing and the reconnecting; what a message
//! means is the caller's ([`Event`]).
//!
//! A subscription is a hint that saves polling, never the only way something is learnt:
//! messages published while it was down are lost, so callers poll (more slowly) as well.

use super::RedisConn;
use futures_util::StreamExt;
use std::time::Duration;

/// Pause between two subscription attempts.
const RETRY: Duration = Duration::from_secs(2);

/// What happened on a followed channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The subscription holds: from now on each message published arrives.
    Subscribed,
    /// A message arrived.
    Message,
    /// The subscription is gone (connection broken, master changed); messages are lost until
    /// the next [`Event::Subscribed`].
    Lost,
}

/// Spawns the follower of `channel` on `conn`, calling `on` for each [`Event`]. Runs until the
/// runtime stops.
pub fn follow(
    conn: RedisConn,
    channel: String,
    on: impl Fn(Event) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Behind Sentinels this is the master at the time; after a failover the old one
            // drops the subscription (or is gone), and the loop follows.
            match conn.pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        on(Event::Subscribed);
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                m = messages.next() => match m {
                                    Some(_) => on(Event::Message),
                                    None => break,
                                },
                                // A demoted master still delivers, but nothing is published
                                // there any more.
                                () = conn.master_changed() => break,
                            }
                        }
                        on(Event::Lost);
                    }
                }
                Err(e) => tracing::debug!(channel = %channel, error = %crate::error_chain(&e),
                    "channel unavailable"),
            }
            tokio::time::sleep(RETRY).await;
        }
    })
}
