//! Atomic emission on Redis: one `EVALSHA` of `scripts/emit.lua` per chunk of due fires checks
//! the lock token, skips fires already recorded, `LPUSH`es the rest and records their last run,
//! count and fingerprint (see DESIGN.md, "Leader election and exactly-once emission").
//!
//! Two-phase emission for fire times known in advance: `scripts/stage.lua` parks the encoded
//! fires of one fire time ahead of it, `scripts/commit.lua` renames them onto their queues at
//! the instant (O(1) per queue), `scripts/settle.lua` then records the last runs, and at the
//! start of a term rolls back whatever was staged and never committed.
//!
//! Onto a queue that already holds messages, the commit goes faster through transactions
//! queued before the instant ([`super::prepared`]); the scripts stay the path that finishes
//! whatever those did not.
//!
//! Every one of those calls goes through `RedisConn::run_replicated`: behind Sentinel it
//! `WAIT`s for a replica, and a call whose writes did not reach one in time is an error like
//! a lost reply, so the beat never moves on from a step a promotion could undo.
//!
//! Owns batching and the scripts' argument layout. Does not build messages (`protocol`) or
//! decide what is due (`beat`).

use super::prepared::{Copies, Executed, Prepared};
use super::{BatchId, Committed, EmitOutcome, Emitter, Fire, RqJobHash, StagedEmitter};
use crate::leader::Lease;
use crate::redis::{Error, Keys, RedisConn};
use crate::store;
use ::redis::{Script, Value};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

// The scripts that touch many fields of one hash in a call size their share by
// listpack.lua's allowance.
static EMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/listpack.lua"),
        include_str!("scripts/emit.lua")
    ))
});
static STAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/listpack.lua"),
        include_str!("scripts/stage.lua")
    ))
});
// Both move staged batches onto their queues with the same function, kept once.
const COMMIT_LUA: &str = concat!(
    include_str!("scripts/publish.lua"),
    include_str!("scripts/commit.lua")
);
const SETTLE_LUA: &str = concat!(
    include_str!("scripts/publish.lua"),
    include_str!("scripts/listpack.lua"),
    include_str!("scripts/settle.lua")
);
static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));

/// How long staged keys live if nobody commits or rolls them back (a replica set that is
/// never started again); the next leader's recovery normally removes them within seconds.
const STAGED_TTL_MS: u64 = 24 * 3600 * 1000;

/// How big one script call may get. A script blocks Redis while it runs, so a huge batch is
/// split to let workers' `BRPOP`s and other clients in between chunks, and to stay far inside
/// the response timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmitOptions {
    /// At most this many fires per call.
    pub max_fires_per_call: usize,
    /// At most about this many payload bytes per call (a single larger fire still goes alone).
    pub max_bytes_per_call: usize,
    /// At most this many messages moved one by one per commit call (a commit onto a busy
    /// queue; onto an empty one the staged list is renamed whole, O(1)).
    pub max_moves_per_call: usize,
    /// At most this many last runs recorded (and, in recovery, messages moved) per settle
    /// call.
    pub max_settles_per_call: usize,
    /// At most this many fires parked per stage call.
    pub max_stages_per_call: usize,
}

impl Default for EmitOptions {
    fn default() -> Self {
        // Measured (tests/on_redis/timing.rs, 2 busy cores): 10,000 fires of
        // 900 B cost about the same Redis CPU (55–75 ms) in chunks of 1,000 to 10,000, so the
        // smaller chunk wins: it blocks Redis about 7–15 ms at a time, and the first messages land
        // sooner.
        Self {
            max_fires_per_call: 2_000,
            max_bytes_per_call: 4 << 20,
            // Measured as an unrelated client's longest PING (bench client_emission, 2
            // cores): a message moved onto a busy queue costs 2-4 µs (one RPOPLPUSH each;
            // LRANGE + a multi-value push was slower; prepared transactions do most of it
            // now), a recorded run 4-8 µs, 10-20 µs since settle also records the task id
            // and first run (SLOWLOG: 400 per call took up to 7.8 ms, 11.7 ms when every
            // field was new; 250 per call up to 6.2 ms, with an unrelated PING at 10.4 ms
            // while 1,500 moves per call ran): 1,000 and 150 per call keep each call under
            // about 4 ms, leaving room for the clients queued behind it.
            max_moves_per_call: 1_000,
            max_settles_per_call: 150,
            // SLOWLOG at a catch-up start of 100,000 (bench burst_reload): stage calls of 500
            // held Redis 5-12 ms each, the longer ones once the queue and the staged list
            // held 100,000 messages of 900 B each; 250 per call keeps them near 3-6 ms, and a
            // beat's stage step of 500 costs one more round trip.
            max_stages_per_call: 250,
        }
    }
}

/// An [`Emitter`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisEmitter {
    /// Shared connection.
    conn: RedisConn,
    /// Key names.
    keys: Keys,
    /// Chunking limits.
    opts: EmitOptions,
    /// The batch being staged: its copies, then its prepared transactions. Clones share it.
    busy: Arc<Mutex<Busy>>,
}

/// One batch at a time: the beat stages, prepares and commits one fire time after another.
#[derive(Debug, Default)]
struct Busy {
    copies: Option<Copies>,
    prepared: Option<Prepared>,
}

impl RedisEmitter {
    /// An emitter writing under `keys`.
    #[must_use]
    pub fn new(conn: RedisConn, keys: Keys, opts: EmitOptions) -> Self {
        Self {
            conn,
            keys,
            opts,
            busy: Arc::default(),
        }
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, Busy> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps copies of what a stage call parked, for [`RedisEmitter::prepare_batch`]; a new
    /// batch drops whatever an older one left.
    fn keep_copies(&self, batch: BatchId, fires: &[Fire], outcomes: &[EmitOutcome]) {
        let mut busy = self.busy();
        // Staging more into a batch changes its staged lists: what was prepared is void.
        busy.prepared = None;
        if busy.copies.as_ref().map(Copies::batch) != Some(batch) {
            busy.copies = Some(Copies::new(batch));
        }
        let Some(copies) = busy.copies.as_mut() else {
            return;
        };
        for (f, o) in fires.iter().zip(outcomes) {
            if *o == EmitOutcome::Sent {
                match f.rq {
                    None => copies.add(&f.list_key, &f.payload),
                    Some(_) => copies.add(&format!("r:{}", f.list_key), &f.payload),
                }
            }
        }
    }

    fn forget_batch(&self) {
        let mut busy = self.busy();
        busy.copies = None;
        busy.prepared = None;
    }

    /// Queues the transactions that push a fully staged batch onto the queues that are busy
    /// now ([`super::prepared`]). Best effort: on any failure the commit takes the scripted
    /// path.
    pub async fn prepare_batch(&self, lease: &Lease, batch: BatchId) {
        // The commit must not pay a NOSCRIPT round trip at the fire instant (a restarted
        // Redis, or the first batch of a process): both scripts are loaded once the batch is
        // parked whole (once per batch, not per stage call).
        let loaded = self
            .conn
            .run(|mut c| async move {
                ::redis::pipe()
                    .cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(COMMIT_LUA)
                    .ignore()
                    .cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(SETTLE_LUA)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = loaded {
            tracing::debug!(%batch, error = %crate::error_chain(&e),
                "could not load the commit scripts ahead; the commit loads them");
        }
        let copies = {
            let mut busy = self.busy();
            busy.prepared = None;
            match busy.copies.take() {
                Some(c) if c.batch() == batch => c,
                _ => return,
            }
        };
        let key = self.batch_key(batch);
        match Prepared::queue(&self.conn, &self.keys, lease, &key, copies).await {
            Ok(Some(p)) => {
                tracing::debug!(%batch, messages = p.messages(), "commit onto busy queues prepared");
                self.busy().prepared = Some(p);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(%batch, error = %crate::error_chain(&e),
                    "could not prepare the commit; it goes by script");
            }
        }
    }

    /// [`Error::LeaseLost`] when the token no longer holds (this chunk and later ones push
    /// nothing); connection errors otherwise.
    async fn emit_fires(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        let mut outcomes = Vec::with_capacity(fires.len());
        for chunk in chunks(fires, self.opts) {
            // The script may take only the first fires (small listpacks): send the rest again.
            let mut rest = chunk;
            while !rest.is_empty() {
                let o = self.emit_chunk(&lease.token, rest).await?;
                rest = &rest[o.len()..];
                outcomes.extend(o);
            }
        }
        Ok(outcomes)
    }

    async fn emit_chunk(&self, token: &str, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        let mut inv = EMIT.prepare_invoke();
        inv.key(&self.keys.leader)
            .key(&self.keys.last_run)
            .key(&self.keys.run_count)
            .key(&self.keys.fingerprint)
            .arg(token);
        add_fires(&mut inv, fires, Layout::Emit);
        let reply: Vec<Value> = self
            .conn
            .run_replicated(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        parse_reply(&reply, fires.len())
    }

    fn batch_key(&self, batch: BatchId) -> String {
        format!("{}{batch}", self.keys.batch_prefix)
    }

    /// [`Error::LeaseLost`]; [`Error::UnexpectedReply`] when the batch was committed already;
    /// connection errors otherwise.
    async fn stage_fires(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error> {
        let mut outcomes = Vec::with_capacity(fires.len());
        for chunk in chunks(fires, stage_options(self.opts)) {
            // The script may take only the first fires (small listpacks): send the rest again.
            let mut rest = chunk;
            while !rest.is_empty() {
                match self.stage_chunk(&lease.token, batch, rest).await {
                    Ok(o) => {
                        let (took, left) = rest.split_at(o.len());
                        self.keep_copies(batch, took, &o);
                        outcomes.extend(o);
                        rest = left;
                    }
                    Err(e) => {
                        // The chunk may or may not be parked; the beat recovers and replans.
                        self.forget_batch();
                        return Err(e);
                    }
                }
            }
        }
        Ok(outcomes)
    }

    async fn stage_chunk(
        &self,
        token: &str,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error> {
        let key = self.batch_key(batch);
        let mut inv = STAGE.prepare_invoke();
        inv.key(&self.keys.leader)
            .key(&self.keys.last_run)
            .key(&self.keys.batches)
            .key(&key)
            .key(format!("{key}:dests"))
            .arg(token)
            .arg(batch.to_string())
            .arg(STAGED_TTL_MS);
        add_fires(&mut inv, fires, Layout::Staged);
        let reply: Vec<Value> = self
            .conn
            .run_replicated(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if let [Value::Int(2)] = reply.as_slice() {
            return Err(Error::UnexpectedReply(format!(
                "batch {batch} is committed already; nothing more can be staged in it"
            )));
        }
        parse_reply(&reply, fires.len())
    }

    /// The first half of [`StagedEmitter::commit`]: renames a staged batch onto its queues,
    /// recording nothing (tests use it to stop between the two halves, as a leader that dies
    /// there would).
    ///
    /// # Errors
    /// [`Error::LeaseLost`]; [`Error::UnexpectedReply`] when the batch is no longer staged;
    /// connection errors otherwise.
    pub async fn publish(&self, lease: &Lease, batch: BatchId) -> Result<(), Error> {
        while !self.publish_step(lease, batch).await? {}
        Ok(())
    }

    /// One bounded call of [`RedisEmitter::publish`]: `true` when the batch is all visible,
    /// `false` when it is partly committed (a busy queue) and the next call goes on. A
    /// partly committed batch is finished by recovery if its leader dies meanwhile.
    ///
    /// # Errors
    /// As [`RedisEmitter::publish`].
    pub async fn publish_step(&self, lease: &Lease, batch: BatchId) -> Result<bool, Error> {
        self.commit_call(lease, batch, self.opts.max_moves_per_call.max(1), &[])
            .await
    }

    /// The prepared half of a commit: the empty queues by rename, then the transactions
    /// [`RedisEmitter::prepare_batch`] queued, if it did. `true` when the batch is all
    /// visible; else [`RedisEmitter::publish`] finishes it by script (tests stop in between,
    /// as a leader that dies there would).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] (also when the epoch moved before a prepared transaction ran);
    /// otherwise as [`RedisEmitter::publish`].
    pub async fn publish_prepared(&self, lease: &Lease, batch: BatchId) -> Result<bool, Error> {
        let prepared = {
            let mut busy = self.busy();
            busy.copies = None;
            busy.prepared.take()
        };
        let Some(p) = prepared.filter(|p| p.batch() == batch) else {
            return Ok(false);
        };
        // The prepared destinations are skipped there: a rename would push them twice.
        let t = std::time::Instant::now();
        let renamed = self.commit_call(lease, batch, 0, p.skip()).await?;
        tracing::debug!(%batch, elapsed = ?t.elapsed(), "empty queues renamed");
        if renamed {
            return Ok(true);
        }
        match p.execute().await {
            Executed::Fenced => Err(Error::LeaseLost),
            Executed::All | Executed::Stopped => Ok(false),
        }
    }

    /// One call of commit.lua: at most `moves` scripted moves, leaving the destinations in
    /// `skip` to prepared transactions.
    async fn commit_call(
        &self,
        lease: &Lease,
        batch: BatchId,
        moves: usize,
        skip: &[String],
    ) -> Result<bool, Error> {
        let key = self.batch_key(batch);
        let mut inv = COMMIT.prepare_invoke();
        inv.key(&self.keys.leader)
            .key(&self.keys.batches)
            .key(format!("{key}:dests"))
            .arg(&lease.token)
            .arg(batch.to_string())
            .arg(&key)
            .arg(moves);
        for i in skip {
            inv.arg(i);
        }
        let reply: Vec<Value> = self
            .conn
            .run_replicated(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match reply.as_slice() {
            [Value::Int(1)] => Ok(true),
            [Value::Int(3)] => Ok(false),
            [Value::Int(0)] => Err(Error::LeaseLost),
            [Value::Int(2)] => Err(Error::UnexpectedReply(format!(
                "batch {batch} is no longer staged (rolled back)"
            ))),
            _ => Err(Error::UnexpectedReply(format!(
                "commit script returned {reply:?}"
            ))),
        }
    }

    /// The second half of [`StagedEmitter::commit`]: records the last runs of a published
    /// batch and forgets it. Idempotent.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn settle(&self, batch: BatchId) -> Result<(), Error> {
        while !self.settle_step(batch).await? {}
        Ok(())
    }

    /// One bounded call of [`RedisEmitter::settle`]: `true` when the batch is all recorded
    /// and forgotten.
    ///
    /// # Errors
    /// As [`RedisEmitter::settle`].
    pub async fn settle_step(&self, batch: BatchId) -> Result<bool, Error> {
        let (_, _, more) = self.settle_batches(None, Some(batch)).await?;
        Ok(!more)
    }

    /// One bounded call: settles (part of) one committed batch, or with `lease` finishes
    /// partly committed batches, settles committed ones and rolls back the rest. Returns
    /// (fires recorded, batches rolled back, whether more is left).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] (recovery only); connection errors.
    async fn settle_batches(
        &self,
        lease: Option<&Lease>,
        batch: Option<BatchId>,
    ) -> Result<(i64, i64, bool), Error> {
        let mut inv = SETTLE.prepare_invoke();
        inv.key(&self.keys.leader)
            .key(&self.keys.last_run)
            .key(&self.keys.run_count)
            .key(&self.keys.fingerprint)
            .key(&self.keys.batches)
            .key(&self.keys.control_last_task)
            .key(&self.keys.control_first_run)
            .arg(lease.map_or("", |l| l.token.as_str()))
            .arg(if batch.is_some() { "one" } else { "all" })
            .arg(&self.keys.batch_prefix)
            .arg(batch.map(|b| b.to_string()).unwrap_or_default())
            .arg(self.opts.max_settles_per_call.max(1));
        let reply: Vec<Value> = self
            .conn
            .run_replicated(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match reply.as_slice() {
            [Value::Int(1), Value::Int(settled), Value::Int(rolled_back), Value::Int(more)] => {
                Ok((*settled, *rolled_back, *more != 0))
            }
            [Value::Int(0)] => Err(Error::LeaseLost),
            _ => Err(Error::UnexpectedReply(format!(
                "settle script returned {reply:?}"
            ))),
        }
    }
}

/// Appends the fires in the layout `emit.lua` and `stage.lua` share: each distinct
/// destination list as a key after the fixed ones, numbered from 1 in order of first use,
/// then five arguments per fire (entry, fire ms, fingerprint, list number, payload). An RQ
/// job's list number is `r<number>` and its payload the msgpack array
/// `[job id, expire, field, value, ...]` the scripts unpack with `cmsgpack`.
///
/// Staged, the fingerprint carries the task id after a unit separator (which no fingerprint
/// contains): `stage.lua` keeps it with the fire as given, and `settle.lua` records it as the
/// entry's last task when it records the run, so staging needs no layout of its own.
fn add_fires(inv: &mut ::redis::ScriptInvocation<'_>, fires: &[Fire], layout: Layout) {
    let mut lists: HashMap<&str, usize> = HashMap::new();
    for f in fires {
        let next = lists.len() + 1;
        let idx = *lists.entry(f.list_key.as_str()).or_insert_with(|| {
            inv.key(f.list_key.as_bytes());
            next
        });
        inv.arg(&f.entry).arg(f.fire_at_ms);
        match layout {
            Layout::Staged if !f.task_id.is_empty() => {
                inv.arg(format!("{}\u{1f}{}", f.schedule_fingerprint, f.task_id))
            }
            _ => inv.arg(&f.schedule_fingerprint),
        };
        match &f.rq {
            None => {
                inv.arg(idx).arg(f.payload.as_slice());
            }
            Some(job) => {
                inv.arg(format!("r{idx}")).arg(rq_args(&f.payload, job));
            }
        }
    }
}

/// Which script the fires of [`add_fires`] are for.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `emit.lua`.
    Emit,
    /// `stage.lua`.
    Staged,
}

/// msgpack `[id, expire seconds or "", field, value, ...]`, strings only (Lua strings are
/// bytes).
fn rq_args(id: &[u8], job: &RqJobHash) -> Vec<u8> {
    fn str_(out: &mut Vec<u8>, b: &[u8]) {
        let n = b.len();
        if n < 32 {
            #[allow(clippy::cast_possible_truncation)]
            out.push(0xa0 | n as u8);
        } else if let Ok(n) = u8::try_from(n) {
            out.extend([0xd9, n]);
        } else if let Ok(n) = u16::try_from(n) {
            out.push(0xda);
            out.extend(n.to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend(u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
        }
        out.extend_from_slice(b);
    }
    let n = 2 + 2 * job.fields.len();
    let mut out = Vec::with_capacity(
        16 + id.len()
            + job
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 10)
                .sum::<usize>(),
    );
    if n < 16 {
        #[allow(clippy::cast_possible_truncation)]
        out.push(0x90 | n as u8);
    } else {
        out.push(0xdc);
        out.extend(u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
    }
    str_(&mut out, id);
    str_(
        &mut out,
        job.expire
            .map(|e| e.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    for (k, v) in &job.fields {
        str_(&mut out, k.as_bytes());
        str_(&mut out, v);
    }
    out
}

/// Splits `fires` into runs within both limits, never empty, order kept.
/// The limits of one stage call: those of any call, and at most `max_stages_per_call` fires.
fn stage_options(opts: EmitOptions) -> EmitOptions {
    EmitOptions {
        max_fires_per_call: opts.max_fires_per_call.min(opts.max_stages_per_call),
        ..opts
    }
}

fn chunks(fires: &[Fire], opts: EmitOptions) -> Vec<&[Fire]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, f) in fires.iter().enumerate() {
        let len = f.payload.len() + f.entry.len() + f.schedule_fingerprint.len();
        if i > start
            && (i - start >= opts.max_fires_per_call || bytes + len > opts.max_bytes_per_call)
        {
            out.push(&fires[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < fires.len() {
        out.push(&fires[start..]);
    }
    out
}

/// The outcomes of the first of `n` fires sent: all of them, or (while the hashes are small
/// listpacks) at least one.
fn parse_reply(reply: &[Value], n: usize) -> Result<Vec<EmitOutcome>, Error> {
    let unexpected = || Error::UnexpectedReply(format!("emit script returned {reply:?}"));
    match reply {
        [Value::Int(0)] => Err(Error::LeaseLost),
        [Value::Int(1), Value::BulkString(s)] if (1..=n).contains(&s.len()) => s
            .iter()
            .map(|b| match b {
                b'S' => Ok(EmitOutcome::Sent),
                b'A' => Ok(EmitOutcome::AlreadySent),
                _ => Err(unexpected()),
            })
            .collect(),
        // table.concat of nothing is "", which some replies encode as an empty bulk string.
        [Value::Int(1)] if n == 0 => Ok(Vec::new()),
        _ => Err(unexpected()),
    }
}

#[async_trait]
impl Emitter for RedisEmitter {
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, store::Error> {
        Ok(self.emit_fires(lease, fires).await?)
    }
}

#[async_trait]
impl StagedEmitter for RedisEmitter {
    async fn stage(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, store::Error> {
        Ok(self.stage_fires(lease, batch, fires).await?)
    }

    async fn prepare(&self, lease: &Lease, batch: BatchId) {
        self.prepare_batch(lease, batch).await;
    }

    async fn commit(&self, lease: &Lease, batch: BatchId) -> Result<Committed, store::Error> {
        if !self.publish_prepared(lease, batch).await? {
            self.publish(lease, batch).await?;
        }
        Ok(match self.settle(batch).await {
            Ok(()) => Committed::Recorded,
            Err(e) => Committed::Unrecorded(e.into()),
        })
    }

    async fn recover(&self, lease: &Lease) -> Result<(), store::Error> {
        // Whatever is rolled back or finished here, nothing prepared may run after it.
        self.forget_batch();
        let (mut settled, mut rolled_back) = (0, 0);
        loop {
            let (s, r, more) = self.settle_batches(Some(lease), None).await?;
            settled += s;
            rolled_back += r;
            if !more {
                break;
            }
        }
        if settled > 0 || rolled_back > 0 {
            tracing::info!(
                settled,
                rolled_back,
                "staged batches of an earlier term recovered"
            );
        }
        Ok(())
    }
}

/// `LPUSH`es one message now (`beatd send`): no lock, no state, like Celery's `send_task`.
/// Returns the list's length after the push.
///
/// # Errors
/// As the connection's.
pub async fn send_one(conn: &RedisConn, list_key: &str, payload: &[u8]) -> Result<u64, Error> {
    conn.run(|mut c| async move {
        ::redis::cmd("LPUSH")
            .arg(list_key.as_bytes())
            .arg(payload)
            .query_async(&mut c)
            .await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(len: usize) -> Fire {
        Fire {
            entry: "e".into(),
            fire_at_ms: 0,
            task_id: String::new(),
            rq: None,
            list_key: "celery".into(),
            payload: vec![b'x'; len],
            schedule_fingerprint: String::new(),
        }
    }

    #[test]
    fn a_stage_step_of_500_goes_in_calls_of_250() {
        let fires: Vec<Fire> = (0..600).map(|_| fire(900)).collect();
        let sizes: Vec<usize> = chunks(&fires, stage_options(EmitOptions::default()))
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [250, 250, 100]);
        // Emission without staging keeps its own, larger calls.
        let sizes: Vec<usize> = chunks(&fires, EmitOptions::default())
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [600]);
    }

    #[test]
    fn chunks_respect_count_and_byte_limits_and_keep_order() {
        let fires: Vec<Fire> = (0..10).map(|_| fire(100)).collect();
        let by_count = EmitOptions {
            max_fires_per_call: 4,
            max_bytes_per_call: usize::MAX,
            ..EmitOptions::default()
        };
        let sizes: Vec<usize> = chunks(&fires, by_count).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let by_bytes = EmitOptions {
            max_fires_per_call: 100,
            max_bytes_per_call: 303,
            ..EmitOptions::default()
        };
        let sizes: Vec<usize> = chunks(&fires, by_bytes).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let big = [fire(1000), fire(1)];
        assert_eq!(
            chunks(&big, by_bytes).len(),
            2,
            "an oversized fire goes alone"
        );
        assert!(chunks(&[], by_count).is_empty());
    }

    #[test]
    fn parses_outcomes_and_the_lease_lost_marker() {
        use EmitOutcome::{AlreadySent, Sent};
        let ok = [Value::Int(1), Value::BulkString(b"SAS".to_vec())];
        assert_eq!(parse_reply(&ok, 3).unwrap(), [Sent, AlreadySent, Sent]);
        assert!(matches!(
            parse_reply(&[Value::Int(0)], 3),
            Err(Error::LeaseLost)
        ));
        assert!(parse_reply(&ok, 2).is_err(), "more outcomes than fires");
        assert_eq!(
            parse_reply(&ok, 5).unwrap().len(),
            3,
            "the first fires of a call the script took in part"
        );
        let none = [Value::Int(1), Value::BulkString(Vec::new())];
        assert!(
            parse_reply(&none, 5).is_err(),
            "no progress is an error, not a loop"
        );
    }
}
