//! An in-process leader lock with real TTL semantics on tokio's clock, so paused-time tests
//! can expire it; the beat's tests run on it, and single-process runs may.

use super::{Error, LeaderInfo, LeaderLock, Lease};
use crate::store::Fault;
use async_trait::async_trait;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
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
    /// Fails or hangs calls on demand.
    fault: Fault,
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
            fault: Fault::default(),
        }
    }

    /// Fails (or hangs) every call as `fault` says.
    #[must_use]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
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

impl MemoryLeader {
    /// The unexpired holder, if any.
    #[must_use]
    pub fn holder(&self) -> Option<LeaderInfo> {
        let now = Instant::now();
        let st = lock(&self.state);
        st.live_holder(now).map(|(token, expires)| LeaderInfo {
            holder: token.clone(),
            epoch: st.epoch,
            ttl_left: expires.duration_since(now),
        })
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
        self.fault.enter().await?;
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
        self.fault.enter().await?;
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
        self.fault.enter().await?;
        let mut st = lock(&self.state);
        if st.holder.as_ref().is_some_and(|(t, _)| *t == lease.token) {
            st.holder = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(lock.holder().map(|h| h.holder), Some(b.token.clone()));
        lock.release(&b).await.unwrap();
        assert!(lock.holder().is_none());
    }
}
