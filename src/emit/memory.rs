//! In-process emission: records pushes in memory, last runs in a [`MemoryState`], fenced by a
//! [`MemoryLeader`]. The beat's tests run on it (both the direct and the staged path); it
//! keeps the same contract as the Redis emitter, step for step.

use super::{BatchId, Committed, EmitOutcome, Emitter, Error, Fire, StagedEmitter};
use crate::leader::{Lease, MemoryLeader};
use crate::state::{self, MemoryState};
use crate::store::Fault;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc::UnboundedSender;

/// Locks a mutex, ignoring poisoning: every critical section here leaves the state valid at
/// each step, so a panic elsewhere cannot leave it half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Records pushes in memory and last runs in its [`MemoryState`].
#[derive(Debug)]
pub struct MemoryEmitter {
    /// A lease must be this lock's current holder to emit.
    leader: Arc<MemoryLeader>,
    /// Where last runs are recorded (clones share it).
    state: MemoryState,
    /// When set, every push is also sent here.
    sink: Option<UnboundedSender<Pushed>>,
    /// Pushes in order, and staged batches.
    queue: Mutex<Queue>,
    /// Fails or hangs calls on demand.
    fault: Fault,
}

#[derive(Debug, Default)]
struct Queue {
    pushed: Vec<Pushed>,
    /// Staged batches: whether committed, and their fires.
    batches: HashMap<BatchId, (bool, Vec<Fire>)>,
    /// Fires ever staged, and ever rolled back, for tests of what a step re-did.
    staged_total: usize,
    rolled_back_total: usize,
}

impl MemoryEmitter {
    /// An emitter fenced by `leader`, recording into `state`: a lease that is not the lock's
    /// current holder gets [`Error::LeaseLost`].
    #[must_use]
    pub fn new(leader: Arc<MemoryLeader>, state: MemoryState) -> Self {
        Self {
            leader,
            state,
            sink: None,
            queue: Mutex::default(),
            fault: Fault::default(),
        }
    }

    /// Also sends every push to `sink`; a closed sink is ignored (the push stays recorded).
    #[must_use]
    pub fn with_sink(mut self, sink: UnboundedSender<Pushed>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Fails (or hangs) every call as `fault` says.
    #[must_use]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Staged batches not yet settled, as (batch, committed, fires).
    #[must_use]
    pub fn batches(&self) -> Vec<(BatchId, bool, usize)> {
        let mut out: Vec<_> = lock(&self.queue)
            .batches
            .iter()
            .map(|(id, (c, f))| (*id, *c, f.len()))
            .collect();
        out.sort_by_key(|b| b.0.at_ms);
        out
    }

    async fn fence(&self, lease: &Lease) -> Result<(), Error> {
        self.fault.enter().await?;
        if self.leader.current_token().as_deref() != Some(lease.token.as_str()) {
            return Err(Error::LeaseLost);
        }
        Ok(())
    }

    fn push(&self, q: &mut Queue, fire: &Fire) {
        let pushed = Pushed {
            list_key: fire.list_key.clone(),
            payload: fire.payload.clone(),
            entry: fire.entry.clone(),
            fire_at_ms: fire.fire_at_ms,
        };
        if let Some(sink) = &self.sink {
            let _ = sink.send(pushed.clone());
        }
        q.pushed.push(pushed);
    }

    fn record(&self, fire: &Fire) -> bool {
        self.state.with(|last| {
            state::record(
                last,
                &fire.entry,
                fire.fire_at_ms,
                &fire.schedule_fingerprint,
            )
        })
    }

    /// Records a committed batch's runs and forgets it.
    fn settle(&self, q: &mut Queue, batch: BatchId) {
        if let Some((true, fires)) = q.batches.get(&batch) {
            for f in fires {
                self.record(f);
            }
            q.batches.remove(&batch);
        }
    }

    /// Fires staged so far (each staging of a fire counts, also one rolled back later) and
    /// fires rolled back by [`StagedEmitter::recover`].
    #[must_use]
    pub fn staging_counts(&self) -> (usize, usize) {
        let q = lock(&self.queue);
        (q.staged_total, q.rolled_back_total)
    }

    /// Everything pushed so far, oldest first.
    #[must_use]
    pub fn pushed(&self) -> Vec<Pushed> {
        lock(&self.queue).pushed.clone()
    }

    /// Everything pushed so far, clearing the record (last runs are kept).
    pub fn take_pushed(&self) -> Vec<Pushed> {
        std::mem::take(&mut lock(&self.queue).pushed)
    }
}

#[async_trait]
impl Emitter for MemoryEmitter {
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        self.fence(lease).await?;
        let mut q = lock(&self.queue);
        let mut outcomes = Vec::with_capacity(fires.len());
        for fire in fires {
            if self.record(fire) {
                self.push(&mut q, fire);
                outcomes.push(EmitOutcome::Sent);
            } else {
                outcomes.push(EmitOutcome::AlreadySent);
            }
        }
        Ok(outcomes)
    }
}

#[async_trait]
impl StagedEmitter for MemoryEmitter {
    async fn stage(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error> {
        self.fence(lease).await?;
        let mut guard = lock(&self.queue);
        let q = &mut *guard;
        let (committed, staged) = q.batches.entry(batch).or_default();
        if *committed {
            return Err(Error::Unavailable("batch already committed".into()));
        }
        let mut outcomes = Vec::with_capacity(fires.len());
        for fire in fires {
            let sent = self.state.with(|last| {
                last.get(&fire.entry)
                    .is_some_and(|l| l.fire_at_ms >= fire.fire_at_ms)
            });
            if sent || staged.iter().any(|f| f.entry == fire.entry) {
                outcomes.push(EmitOutcome::AlreadySent);
            } else {
                staged.push(fire.clone());
                q.staged_total += 1;
                outcomes.push(EmitOutcome::Sent);
            }
        }
        Ok(outcomes)
    }

    async fn commit(&self, lease: &Lease, batch: BatchId) -> Result<Committed, Error> {
        self.fence(lease).await?;
        let mut q = lock(&self.queue);
        let Some((committed, fires)) = q.batches.get_mut(&batch) else {
            return Err(Error::Unavailable("batch no longer staged".into()));
        };
        if !*committed {
            *committed = true;
            let fires = fires.clone();
            for f in &fires {
                self.push(&mut q, f);
            }
        }
        self.settle(&mut q, batch);
        Ok(Committed::Recorded)
    }

    async fn prepare(&self, _lease: &Lease, _batch: BatchId) {
        // Nothing to get ready: the commit is one in-memory step.
    }

    async fn recover(&self, lease: &Lease) -> Result<(), Error> {
        self.fence(lease).await?;
        let mut q = lock(&self.queue);
        let ids: Vec<BatchId> = q.batches.keys().copied().collect();
        for id in ids {
            self.settle(&mut q, id);
            if let Some((_, fires)) = q.batches.remove(&id) {
                q.rolled_back_total += fires.len();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::LeaderLock;
    use crate::state::StateStore;

    fn fire(entry: &str, at: i64) -> Fire {
        Fire {
            entry: entry.into(),
            fire_at_ms: at,
            task_id: String::new(),
            rq: None,
            list_key: "celery".into(),
            payload: format!("{entry}@{at}").into_bytes(),
            schedule_fingerprint: "fp".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_emitter_sends_once_and_fences_stale_leases() {
        use EmitOutcome::{AlreadySent, Sent};
        let leader = Arc::new(MemoryLeader::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let state = MemoryState::default();
        let em = MemoryEmitter::new(leader.clone(), state.clone()).with_sink(tx);
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
        let runs = state.last_runs().await.unwrap();
        assert_eq!(runs["a"].fire_at_ms, 2000);
        assert_eq!(runs["a"].count, 2);
        leader.revoke();
        assert!(matches!(
            em.emit(&lease, &[fire("b", 3000)]).await,
            Err(Error::LeaseLost)
        ));
        state.forget(&["a".into()]).await.unwrap();
        assert!(!state.last_runs().await.unwrap().contains_key("a"));
        assert_eq!(em.take_pushed().len(), 3);
        assert!(em.pushed().is_empty());
    }
}
