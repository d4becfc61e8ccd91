//! In-process implementations of the beat's boundary traits: a leader lock with real TTL
//! semantics on tokio's clock (so paused-time tests can expire it), and an emitter that
//! records pushes and last runs in memory.
//!
//! Used by the beat's tests, by single-process runs and by the embedded mode, which reads
//! pushed messages from the optional sink. Not durable: the embedded mode persists state
//! elsewhere.

use super::{
    BatchId, EmitOutcome, Emitter, Error, Fire, LastRun, LeaderInfo, LeaderLock, Lease, StateStore,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// Locks a mutex, ignoring poisoning: every critical section here leaves the state valid at
/// each step, so a panic elsewhere cannot leave it half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A single-process leader lock: grantable whenever nobody holds an unexpired lease.
#[derive(Debug)]
pub struct MemoryLeader {
    /// TTL given to every lease.
    ttl: Duration,
    /// The holder and the epoch counter.
    state: Mutex<LockState>,
}

#[derive(Debug, Default)]
struct LockState {
    /// Token and expiry of the current holder; an expired holder counts as none.
    holder: Option<(String, Instant)>,
    /// Incremented on every acquisition, like `{ns}:epoch`.
    epoch: u64,
}

impl LockState {
    fn live_holder(&self, now: Instant) -> Option<&(String, Instant)> {
        self.holder.as_ref().filter(|(_, expires)| *expires > now)
    }
}

impl MemoryLeader {
    /// A free lock whose leases last `ttl`.
    #[must_use]
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(LockState::default()),
        }
    }

    /// The token of the unexpired holder, if any.
    #[must_use]
    pub fn current_token(&self) -> Option<String> {
        lock(&self.state)
            .live_holder(Instant::now())
            .map(|(t, _)| t.clone())
    }

    /// Drops the current holder as if its lease had expired, so tests can simulate a lost
    /// lease without waiting for the TTL.
    pub fn revoke(&self) {
        lock(&self.state).holder = None;
    }
}

impl Default for MemoryLeader {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

#[async_trait]
impl LeaderLock for MemoryLeader {
    async fn try_acquire(&self) -> Result<Option<Lease>, Error> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        if st.live_holder(now).is_some() {
            return Ok(None);
        }
        st.epoch += 1;
        let token = format!("memory:{}:{}", std::process::id(), st.epoch);
        st.holder = Some((token.clone(), now + self.ttl));
        Ok(Some(Lease {
            token,
            epoch: st.epoch,
            acquired_at: now,
            ttl: self.ttl,
        }))
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, Error> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        match &mut st.holder {
            Some((token, expires)) if *token == lease.token && *expires > now => {
                *expires = now + self.ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.holder.as_ref().is_some_and(|(t, _)| *t == lease.token) {
            st.holder = None;
        }
        Ok(())
    }

    async fn holder(&self) -> Result<Option<LeaderInfo>, Error> {
        let now = Instant::now();
        let st = lock(&self.state);
        Ok(st.live_holder(now).map(|(token, expires)| LeaderInfo {
            holder: token.clone(),
            epoch: st.epoch,
            ttl_left: expires.duration_since(now),
        }))
    }
}

/// One message the [`MemoryEmitter`] pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The list it went to.
    pub list_key: String,
    /// The envelope JSON.
    pub payload: Vec<u8>,
    /// The entry it fired for.
    pub entry: String,
    /// The scheduled fire time (ms since the epoch).
    pub fire_at_ms: i64,
}

/// Records pushes and last runs in memory; also the [`StateStore`] over what it recorded.
#[derive(Debug, Default)]
pub struct MemoryEmitter {
    /// When set, a lease must be this lock's current holder to emit.
    leader: Option<Arc<MemoryLeader>>,
    /// When set, every push is also sent here (the embedded queue).
    sink: Option<UnboundedSender<Pushed>>,
    /// Whether [`Emitter::stage`] is offered (tests of the two-phase path).
    staging: bool,
    /// Pushes in order, and last runs.
    state: Mutex<EmitState>,
}

#[derive(Debug, Default)]
struct EmitState {
    pushed: Vec<Pushed>,
    last: HashMap<String, LastRun>,
    /// Staged batches: whether committed, and their fires.
    batches: HashMap<BatchId, (bool, Vec<Fire>)>,
}

impl EmitState {
    /// Records `fire` as its entry's last run unless one as recent is recorded.
    fn record(&mut self, fire: &Fire) -> bool {
        let prev = self.last.get(&fire.entry);
        if prev.is_some_and(|l| l.fire_at_ms >= fire.fire_at_ms) {
            return false;
        }
        let count = prev.map_or(0, |l| l.count) + 1;
        self.last.insert(
            fire.entry.clone(),
            LastRun {
                fire_at_ms: fire.fire_at_ms,
                count,
                fingerprint: Some(fire.schedule_fingerprint.clone()),
            },
        );
        true
    }

    fn settle(&mut self, batch: BatchId) {
        if let Some((true, fires)) = self.batches.get(&batch) {
            let fires = fires.clone();
            for f in &fires {
                self.record(f);
            }
            self.batches.remove(&batch);
        }
    }
}

impl MemoryEmitter {
    /// An emitter fenced by `leader`: a lease that is not its current holder gets
    /// [`Error::LeaseLost`].
    #[must_use]
    pub fn new(leader: Arc<MemoryLeader>) -> Self {
        Self {
            leader: Some(leader),
            ..Self::default()
        }
    }

    /// An emitter that accepts any lease (one process, no election).
    #[must_use]
    pub fn unfenced() -> Self {
        Self::default()
    }

    /// Also sends every push to `sink`; a closed sink is ignored (the push stays recorded).
    #[must_use]
    pub fn with_sink(mut self, sink: UnboundedSender<Pushed>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Also offers the two-phase path ([`Emitter::stage`], [`Emitter::commit`]), as the
    /// Redis emitter does.
    #[must_use]
    pub fn with_staging(mut self) -> Self {
        self.staging = true;
        self
    }

    /// Staged batches not yet settled, as (batch, committed, fires).
    #[must_use]
    pub fn batches(&self) -> Vec<(BatchId, bool, usize)> {
        let mut out: Vec<_> = lock(&self.state)
            .batches
            .iter()
            .map(|(id, (c, f))| (*id, *c, f.len()))
            .collect();
        out.sort_by_key(|b| b.0.at_ms);
        out
    }

    fn fence(&self, lease: &Lease) -> Result<(), Error> {
        if let Some(leader) = &self.leader {
            if leader.current_token().as_deref() != Some(lease.token.as_str()) {
                return Err(Error::LeaseLost);
            }
        }
        Ok(())
    }

    fn push(&self, st: &mut EmitState, fire: &Fire) {
        let pushed = Pushed {
            list_key: fire.list_key.clone(),
            payload: fire.payload.clone(),
            entry: fire.entry.clone(),
            fire_at_ms: fire.fire_at_ms,
        };
        if let Some(sink) = &self.sink {
            let _ = sink.send(pushed.clone());
        }
        st.pushed.push(pushed);
    }

    /// Everything pushed so far, oldest first.
    #[must_use]
    pub fn pushed(&self) -> Vec<Pushed> {
        lock(&self.state).pushed.clone()
    }

    /// Everything pushed so far, clearing the record (last runs are kept).
    pub fn take_pushed(&self) -> Vec<Pushed> {
        std::mem::take(&mut lock(&self.state).pushed)
    }
}

#[async_trait]
impl Emitter for MemoryEmitter {
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        self.fence(lease)?;
        let mut st = lock(&self.state);
        let mut outcomes = Vec::with_capacity(fires.len());
        for fire in fires {
            if st.record(fire) {
                self.push(&mut st, fire);
                outcomes.push(EmitOutcome::Sent);
            } else {
                outcomes.push(EmitOutcome::AlreadySent);
            }
        }
        Ok(outcomes)
    }

    fn stages(&self) -> bool {
        self.staging
    }

    async fn stage(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error> {
        self.fence(lease)?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let (committed, staged) = st.batches.entry(batch).or_default();
        if *committed {
            return Err(Error::Unavailable("batch already committed".into()));
        }
        let mut outcomes = Vec::with_capacity(fires.len());
        for fire in fires {
            let sent = st
                .last
                .get(&fire.entry)
                .is_some_and(|l| l.fire_at_ms >= fire.fire_at_ms);
            if sent || staged.iter().any(|f| f.entry == fire.entry) {
                outcomes.push(EmitOutcome::AlreadySent);
            } else {
                staged.push(fire.clone());
                outcomes.push(EmitOutcome::Sent);
            }
        }
        Ok(outcomes)
    }

    async fn commit(&self, lease: &Lease, batch: BatchId) -> Result<(), Error> {
        self.fence(lease)?;
        let mut st = lock(&self.state);
        let Some((committed, fires)) = st.batches.get_mut(&batch) else {
            return Err(Error::Unavailable("batch no longer staged".into()));
        };
        if *committed {
            return Ok(());
        }
        *committed = true;
        let fires = fires.clone();
        for f in &fires {
            self.push(&mut st, f);
        }
        Ok(())
    }

    async fn settle(&self, batch: BatchId) -> Result<(), Error> {
        lock(&self.state).settle(batch);
        Ok(())
    }

    async fn recover(&self, lease: &Lease) -> Result<(), Error> {
        self.fence(lease)?;
        let mut st = lock(&self.state);
        let ids: Vec<BatchId> = st.batches.keys().copied().collect();
        for id in ids {
            st.settle(id);
            st.batches.remove(&id);
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryEmitter {
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error> {
        Ok(lock(&self.state).last.clone())
    }

    async fn forget(&self, entries: &[String]) -> Result<(), Error> {
        let mut st = lock(&self.state);
        for e in entries {
            st.last.remove(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(entry: &str, at: i64) -> Fire {
        Fire {
            entry: entry.into(),
            fire_at_ms: at,
            list_key: "celery".into(),
            payload: format!("{entry}@{at}").into_bytes(),
            schedule_fingerprint: "fp".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_lock_expires_and_increments_the_epoch() {
        let lock = MemoryLeader::new(Duration::from_secs(3));
        let a = lock.try_acquire().await.unwrap().expect("free lock");
        assert_eq!(a.epoch, 1);
        assert!(lock.try_acquire().await.unwrap().is_none(), "held");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(lock.renew(&a).await.unwrap());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!lock.renew(&a).await.unwrap(), "expired");
        let b = lock
            .try_acquire()
            .await
            .unwrap()
            .expect("expired lock is free");
        assert_eq!(b.epoch, 2);
        lock.release(&a).await.unwrap();
        assert_eq!(
            lock.holder().await.unwrap().map(|h| h.holder),
            Some(b.token.clone())
        );
        lock.release(&b).await.unwrap();
        assert!(lock.holder().await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_emitter_sends_once_and_fences_stale_leases() {
        use EmitOutcome::{AlreadySent, Sent};
        let leader = Arc::new(MemoryLeader::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let em = MemoryEmitter::new(leader.clone()).with_sink(tx);
        let lease = leader.try_acquire().await.unwrap().unwrap();
        let fires = [
            fire("a", 1000),
            fire("b", 1000),
            fire("a", 2000),
            fire("a", 1500),
        ];
        let out = em.emit(&lease, &fires).await.unwrap();
        assert_eq!(out, [Sent, Sent, Sent, AlreadySent]);
        assert_eq!(
            em.emit(&lease, &fires[..2]).await.unwrap(),
            [AlreadySent, AlreadySent]
        );
        assert_eq!(rx.recv().await.map(|p| p.payload), Some(b"a@1000".to_vec()));
        let runs = em.last_runs().await.unwrap();
        assert_eq!(runs["a"].fire_at_ms, 2000);
        assert_eq!(runs["a"].count, 2);
        leader.revoke();
        assert!(matches!(
            em.emit(&lease, &[fire("b", 3000)]).await,
            Err(Error::LeaseLost)
        ));
        em.forget(&["a".into()]).await.unwrap();
        assert!(!em.last_runs().await.unwrap().contains_key("a"));
        assert_eq!(em.take_pushed().len(), 3);
        assert!(em.pushed().is_empty());
    }
}
