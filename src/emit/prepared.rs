//! Commits onto busy queues, prepared before the instant.
//!
//! Onto an empty queue a staged batch is renamed whole (O(1)). Onto a queue that already holds
//! messages every message must be inserted, and a scripted move costs Redis about 3 µs (the
//! Lua call around each `RPOPLPUSH`), against about 1 µs for one value of a native
//! multi-value `LPUSH` whose arguments were parsed before. So while a batch waits for its
//! instant, [`Prepared::queue`] puts on connections of their own, for each queue that is busy
//! then, transactions of at most [`CHUNK`] messages each:
//!
//! ```text
//! WATCH {ns}:epoch          (then GET it: it must still be the lease's epoch)
//! MULTI
//! LPUSH <queue> <the oldest staged messages not yet visible>   (RQ: RPUSH, SADD rq:queues)
//! LTRIM <batch>:q<i> …      (drops exactly those from the staged list)
//! HSET {ns}:batches <id> p  (partly committed: recovery finishes it, never rolls it back)
//! ```
//!
//! and at the instant the commit only sends `EXEC`s, one after the other, each awaited.
//!
//! Why this keeps every fire exactly once: every acquisition of the lock bumps the epoch, so
//! an `EXEC` runs only if no other replica has taken the lock since the transaction was
//! queued; each transaction removes from the staged list what it pushes, so the staged lists
//! always hold exactly what is not yet visible, whatever ran; the commit script leaves the
//! prepared destinations alone (a rename there would push them twice); and once one `EXEC`
//! fails or is aborted, the others are dropped unsent (closing a connection discards its
//! transaction) and the scripted path finishes from what the server holds. Where it ends: a
//! command that fails inside an `EXEC` does not undo the others (Redis has no rollback), so a
//! queue key turned into a non-list between preparing and the instant would lose that chunk;
//! `LLEN` at preparation checks it is a list.

use super::BatchId;
use crate::leader::Lease;
use crate::redis::{Error, Keys, RedisConn};
use ::redis::aio::MultiplexedConnection;
use ::redis::Value;
use std::collections::HashMap;

/// Messages per prepared transaction: one `EXEC` of 4,000 pushes of a 1 KB Celery message
/// held Redis 1.1–2.6 ms (slowlog, 2-core machine), so 5,000 stays well inside the 10 ms an
/// unrelated client may wait; each `EXEC` also costs the beat about 1 ms more than Redis
/// spends on it, so fewer, larger ones make a batch visible sooner.
pub(crate) const CHUNK: usize = 5_000;

/// Prepared transactions per batch (one connection each); beyond them the scripted moves
/// finish the batch.
const MAX_TRANSACTIONS: usize = 8;

/// Payload bytes kept per batch for preparing (the rest of a larger batch takes the scripted
/// moves): bounds what the beat holds while a batch waits for its instant.
const MAX_COPY_BYTES: usize = 32 << 20;

/// What a batch staged, per destination, in staged order: copies of the messages, so the
/// prepared transactions can carry them.
#[derive(Debug)]
pub(crate) struct Copies {
    batch: BatchId,
    dests: Vec<DestCopy>,
    bytes: usize,
    kept: usize,
}

#[derive(Debug)]
struct DestCopy {
    /// As `<batch>:dests` records it: the list, or `r:` + the list for an RQ queue.
    dest: String,
    /// How many messages this batch staged for it.
    staged: usize,
    /// The first of them (all, unless the batch is larger than the copy bounds).
    kept: Vec<Vec<u8>>,
}

impl Copies {
    pub(crate) fn new(batch: BatchId) -> Self {
        Self {
            batch,
            dests: Vec::new(),
            bytes: 0,
            kept: 0,
        }
    }

    pub(crate) fn batch(&self) -> BatchId {
        self.batch
    }

    /// Notes one staged message for `dest`, in staged order.
    pub(crate) fn add(&mut self, dest: &str, payload: &[u8]) {
        let i = match self.dests.iter().position(|d| d.dest == dest) {
            Some(i) => i,
            None => {
                self.dests.push(DestCopy {
                    dest: dest.to_owned(),
                    staged: 0,
                    kept: Vec::new(),
                });
                self.dests.len() - 1
            }
        };
        let d = &mut self.dests[i];
        d.staged += 1;
        // Only a prefix is useful: the transactions push from the oldest message on.
        let room = self.kept < CHUNK * MAX_TRANSACTIONS
            && self.bytes + payload.len() <= MAX_COPY_BYTES
            && d.kept.len() + 1 == d.staged;
        if room {
            d.kept.push(payload.to_vec());
            self.bytes += payload.len();
            self.kept += 1;
        }
    }
}

/// Transactions queued for one batch, waiting for `EXEC`.
pub(crate) struct Prepared {
    batch: BatchId,
    /// Destination indexes (`<batch>:q<i>`) the commit script must leave alone.
    skip: Vec<String>,
    /// One connection per transaction, in push order.
    txs: Vec<MultiplexedConnection>,
    /// Messages they push.
    messages: usize,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("batch", &self.batch)
            .field("skip", &self.skip)
            .field("transactions", &self.txs.len())
            .field("messages", &self.messages)
            .finish()
    }
}

/// What the `EXEC`s did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Executed {
    /// Every transaction ran.
    All,
    /// The epoch moved: another replica took the lock, and nothing of the rest ran.
    Fenced,
    /// One failed (connection, unexpected reply): the rest were dropped unsent, and the
    /// scripted path goes on from what the server holds.
    Stopped,
}

/// One transaction's share: a destination and a range of its kept copies.
struct Part<'a> {
    list: &'a str,
    staged_key: String,
    rq: bool,
    values: &'a [Vec<u8>],
}

impl Prepared {
    pub(crate) fn batch(&self) -> BatchId {
        self.batch
    }

    /// Destination indexes for the commit script to skip.
    pub(crate) fn skip(&self) -> &[String] {
        &self.skip
    }

    /// Queues the transactions for the destinations that are busy now. `None` when there is
    /// nothing to prepare (every queue empty: the rename does it) or the lock moved on.
    ///
    /// # Errors
    /// Connection errors; the caller then commits by the scripted path.
    pub(crate) async fn queue(
        conn: &RedisConn,
        keys: &Keys,
        lease: &Lease,
        batch_key: &str,
        copies: Copies,
    ) -> Result<Option<Self>, Error> {
        let mut first = conn.exclusive().await?;
        let indexes: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(format!("{batch_key}:dests"))
            .query_async::<HashMap<String, String>>(&mut first)
            .await
            .map_err(|e| conn.classify_error(e))?
            .into_iter()
            .map(|(i, dest)| (dest, i))
            .collect();
        let mut probe = ::redis::pipe();
        let mut candidates = Vec::new();
        for d in &copies.dests {
            let Some(i) = indexes.get(&d.dest) else {
                continue;
            };
            if d.kept.is_empty() {
                continue;
            }
            let (list, rq) = match d.dest.strip_prefix("r:") {
                Some(list) => (list, true),
                None => (d.dest.as_str(), false),
            };
            let staged_key = format!("{batch_key}:q{i}");
            probe.cmd("LLEN").arg(list).cmd("LLEN").arg(&staged_key);
            candidates.push((i.clone(), d, list, rq, staged_key));
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let lens: Vec<Value> = probe
            .query_async(&mut first)
            .await
            .map_err(|e| conn.classify_error(e))?;
        let mut skip = Vec::new();
        let mut parts: Vec<Part<'_>> = Vec::new();
        for ((i, d, list, rq, staged_key), pair) in candidates.into_iter().zip(lens.chunks(2)) {
            // Busy now, a list, and staged exactly as copied (else the scripted path).
            let busy = matches!(pair, [Value::Int(q), Value::Int(s)]
                if *q > 0 && usize::try_from(*s).ok() == Some(d.staged));
            if !busy {
                continue;
            }
            skip.push(i);
            for values in d.kept.chunks(CHUNK) {
                parts.push(Part {
                    list,
                    staged_key: staged_key.clone(),
                    rq,
                    values,
                });
            }
        }
        parts.truncate(MAX_TRANSACTIONS);
        if parts.is_empty() {
            return Ok(None);
        }
        let id = copies.batch.to_string();
        let mut txs = Vec::with_capacity(parts.len());
        let mut messages = 0;
        let mut spare = Some(first);
        for part in &parts {
            let mut c = match spare.take() {
                Some(c) => c,
                None => conn.exclusive().await?,
            };
            let k = part.values.len();
            let mut p = ::redis::pipe();
            p.cmd("WATCH").arg(&keys.epoch).ignore();
            p.cmd("GET").arg(&keys.epoch);
            p.cmd("MULTI").ignore();
            // The trim first: the push then reuses the memory it frees (a push into fresh
            // pages took Redis several times as long, page faults included).
            if part.rq {
                // RQ lists are taken from the head: the oldest staged are at the left.
                p.cmd("LTRIM").arg(&part.staged_key).arg(k).arg(-1).ignore();
                p.cmd("RPUSH").arg(part.list).arg(part.values).ignore();
                p.cmd("SADD").arg("rq:queues").arg(part.list).ignore();
            } else {
                // kombu lists are taken from the tail: the oldest staged are at the right.
                let keep_to = -i64::try_from(k).unwrap_or(i64::MAX) - 1;
                p.cmd("LTRIM")
                    .arg(&part.staged_key)
                    .arg(0)
                    .arg(keep_to)
                    .ignore();
                p.cmd("LPUSH").arg(part.list).arg(part.values).ignore();
            }
            p.cmd("HSET").arg(&keys.batches).arg(&id).arg("p").ignore();
            let (epoch,): (Option<u64>,) = p
                .query_async(&mut c)
                .await
                .map_err(|e| conn.classify_error(e))?;
            if epoch != Some(lease.epoch) {
                // Dropping the connections discards what is queued on them.
                return Ok(None);
            }
            messages += k;
            txs.push(c);
        }
        Ok(Some(Self {
            batch: copies.batch,
            skip,
            txs,
            messages,
        }))
    }

    /// Sends the `EXEC`s in order, each after the previous one answered.
    pub(crate) async fn execute(self) -> Executed {
        let batch = self.batch;
        let start = std::time::Instant::now();
        for (n, mut c) in self.txs.into_iter().enumerate() {
            match ::redis::cmd("EXEC").query_async::<Value>(&mut c).await {
                Ok(Value::Array(replies)) if !replies.iter().any(is_error) => {
                    tracing::debug!(%batch, transaction = n, elapsed = ?start.elapsed(), "prepared transaction ran");
                }
                Ok(Value::Nil) => {
                    tracing::info!(%batch, transaction = n, "prepared commit fenced: the lock moved on");
                    return Executed::Fenced;
                }
                Ok(other) => {
                    tracing::warn!(%batch, transaction = n, reply = ?other,
                        "prepared commit: unexpected EXEC reply; finishing by script");
                    return Executed::Stopped;
                }
                Err(e) => {
                    tracing::warn!(%batch, transaction = n, error = %e,
                        "prepared commit failed; finishing by script");
                    return Executed::Stopped;
                }
            }
        }
        Executed::All
    }

    /// Messages the transactions push.
    pub(crate) fn messages(&self) -> usize {
        self.messages
    }
}

fn is_error(v: &Value) -> bool {
    matches!(v, Value::ServerError(_))
}
