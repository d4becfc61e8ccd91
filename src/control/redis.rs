//! Controls on Redis: requests queued on `{ns}:control:requests` (a list of JSON, oldest
//! first) and announced on the channel `{ns}:control:wake` (the leader's [`Doorbell`]), replies under `{ns}:control:reply:<id>` (kept a minute), pauses, `skipped_through`
//! and skip counts in three hashes under `{ns}:control:`. Only the leader writes the hashes,
//! through a script that checks its token (`scripts/write.lua`).

use super::{ControlStore, Doorbell, Pause, Persisted, Reply, Request, SkipReason, Update};
use crate::leader::Lease;
use crate::redis::{scan, Error, RedisConn};
use crate::store;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/write.lua")));

/// How long a reply waits for its asker.
const REPLY_TTL_SECS: u64 = 60;
/// How often an asker looks for its reply.
const REPLY_POLL: Duration = Duration::from_millis(50);

/// The control keys of one namespace.
#[derive(Debug, Clone)]
struct ControlKeys {
    leader: String,
    requests: String,
    wake: String,
    reply_prefix: String,
    pauses: String,
    skipped_through: String,
    skips: String,
    last_task: String,
    leader_since: String,
    first_run: String,
    missed: String,
}

/// A [`ControlStore`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisControls {
    /// Shared connection.
    conn: RedisConn,
    /// Key names.
    keys: ControlKeys,
    /// Rung by the subscription to `wake`, which the first [`ControlStore::doorbell`] starts.
    bell: Arc<Doorbell>,
    listening: Arc<OnceLock<()>>,
}

impl RedisControls {
    /// The controls of namespace `ns` (the lock is `{ns}:leader`).
    #[must_use]
    pub fn new(conn: RedisConn, ns: &str) -> Self {
        Self {
            conn,
            keys: ControlKeys {
                leader: format!("{ns}:leader"),
                requests: format!("{ns}:control:requests"),
                wake: format!("{ns}:control:wake"),
                reply_prefix: format!("{ns}:control:reply:"),
                pauses: format!("{ns}:control:pauses"),
                skipped_through: format!("{ns}:control:skipped_through"),
                skips: format!("{ns}:control:skips"),
                last_task: format!("{ns}:control:last_task"),
                leader_since: format!("{ns}:control:leader_since"),
                first_run: format!("{ns}:control:first_run"),
                missed: format!("{ns}:control:missed"),
            },
            bell: Arc::default(),
            listening: Arc::default(),
        }
    }

    async fn push(&self, request: &Request) -> Result<(), Error> {
        let json = serde_json::to_string(request).expect("a request serializes");
        let k = &self.keys;
        // Queued first: a leader woken by the message finds it; one that missed the message
        // finds it at its next poll.
        self.conn
            .run(|mut c| {
                let j = json.clone();
                async move {
                    ::redis::pipe()
                        .rpush(&k.requests, j)
                        .ignore()
                        .publish(&k.wake, "request")
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await
    }

    async fn reply_of(&self, id: &str) -> Result<Option<Reply>, Error> {
        let key = format!("{}{id}", self.keys.reply_prefix);
        let raw: Option<String> = self
            .conn
            .run(|mut c| {
                let k = key.clone();
                async move { c.get(k).await }
            })
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Everything the controls left behind (`beatd status`, the status page).
    ///
    /// # Errors
    /// As the connection's.
    pub async fn persisted(&self) -> Result<Persisted, Error> {
        let k = &self.keys;
        // Hash by hash in steps (crate::redis::scan): the task ids and first runs hold a
        // field per entry, and one reply of all of them held Redis for tens of milliseconds
        // with 100,000 entries. Each field is written on its own, so nothing pairs them.
        let pauses: HashMap<String, String> = scan::hash(&self.conn, &k.pauses).await?;
        let through: HashMap<String, i64> = scan::hash(&self.conn, &k.skipped_through).await?;
        let skips: HashMap<String, u64> = scan::hash(&self.conn, &k.skips).await?;
        let tasks: HashMap<String, String> = scan::hash(&self.conn, &k.last_task).await?;
        let first: HashMap<String, i64> = scan::hash(&self.conn, &k.first_run).await?;
        let since: Option<String> = self
            .conn
            .run(|mut c| {
                let key = k.leader_since.clone();
                async move { c.get(key).await }
            })
            .await?;
        let mut p = Persisted::default();
        for (entry, json) in pauses {
            // A pause this version cannot read is left out rather than failing every read.
            if let Ok(pause) = serde_json::from_str::<Pause>(&json) {
                p.pauses.insert(entry, pause);
            }
        }
        p.skipped_through.extend(through);
        p.last_task.extend(tasks);
        p.first_run
            .extend(first.into_iter().map(|(e, ms)| (Arc::from(e), ms)));
        p.leader_since = since.and_then(|s| {
            let (e, ms) = s.split_once(':')?;
            Some((e.parse().ok()?, ms.parse().ok()?))
        });
        for (field, n) in skips {
            if let Some((entry, reason)) = field.rsplit_once('\u{1f}') {
                if let Some(reason) = SkipReason::parse(reason) {
                    p.skips
                        .entry(entry.to_owned())
                        .or_default()
                        .insert(reason, n);
                }
            }
        }
        Ok(p)
    }
}

#[async_trait]
impl ControlStore for RedisControls {
    async fn submit(
        &self,
        request: &Request,
        wait: Duration,
    ) -> Result<Option<Reply>, store::Error> {
        self.push(request).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(reply) = self.reply_of(&request.id).await? {
                return Ok(Some(reply));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(REPLY_POLL).await;
        }
    }

    async fn pending(&self) -> Result<Vec<Request>, store::Error> {
        let key = &self.keys.requests;
        let raw: Vec<String> = self
            .conn
            .run(|mut c| async move { c.lrange(key, 0, 99).await })
            .await?;
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            match serde_json::from_str::<Request>(&r) {
                Ok(req) => out.push(req),
                Err(e) => {
                    // Not ours to answer (no id to file it under): drop it, loudly.
                    tracing::warn!(error = %e, request = %r, "unreadable control request dropped");
                    let _ = self
                        .conn
                        .run(|mut c| {
                            let r = r.clone();
                            async move { c.lrem::<_, _, ()>(key, 1, r).await }
                        })
                        .await;
                }
            }
        }
        Ok(out)
    }

    async fn answer(&self, request: &Request, reply: &Reply) -> Result<(), store::Error> {
        let json = serde_json::to_string(request).expect("a request serializes");
        let reply = serde_json::to_string(reply).expect("a reply serializes");
        let k = &self.keys;
        let reply_key = format!("{}{}", k.reply_prefix, request.id);
        self.conn
            .run(|mut c| {
                let (j, r, rk) = (json.clone(), reply.clone(), reply_key.clone());
                async move {
                    ::redis::pipe()
                        .atomic()
                        .set_ex(rk, r, REPLY_TTL_SECS)
                        .lrem(&k.requests, 1, j)
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    async fn read(&self) -> Result<Persisted, store::Error> {
        Ok(self.persisted().await?)
    }

    async fn missed(
        &self,
        entry: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<i64>, store::Error> {
        let key = &self.keys.missed;
        let members: Vec<String> = self
            .conn
            .run(|mut c| async move { c.zrangebyscore(key, from_ms, to_ms).await })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let (e, ms) = m.rsplit_once('\u{1f}')?;
                (e == entry).then(|| ms.parse().ok()).flatten()
            })
            .collect())
    }

    async fn write(&self, lease: &Lease, update: &Update) -> Result<(), store::Error> {
        if update.is_empty() {
            return Ok(());
        }
        let pauses: Vec<(String, String)> = update
            .pauses
            .iter()
            .map(|(e, p)| {
                let json = p.as_ref().map_or(String::new(), |p| {
                    serde_json::to_string(p).expect("a pause serializes")
                });
                (e.clone(), json)
            })
            .collect();
        let skips: Vec<(String, u64)> = update
            .skips
            .iter()
            .map(|(e, r, n)| (format!("{e}\u{1f}{}", r.as_str()), *n))
            .collect();
        let arg = serde_json::json!({
            "pauses": pauses,
            "through": update.skipped_through,
            "skips": skips,
            "tasks": update.last_task,
            "since": update.leader_since.map_or(String::new(), |(e, ms)| format!("{e}:{ms}")),
            "first": update.first_run,
            "missed": update
                .missed
                .iter()
                .map(|(e, ms)| (format!("{e}\u{1f}{ms}"), *ms))
                .collect::<Vec<_>>(),
        })
        .to_string();
        let k = &self.keys;
        let written: i64 = self
            .conn
            .run(|mut c| {
                let (t, a) = (lease.token.clone(), arg.clone());
                async move {
                    WRITE
                        .key(&k.leader)
                        .key(&k.pauses)
                        .key(&k.skipped_through)
                        .key(&k.skips)
                        .key(&k.last_task)
                        .key(&k.leader_since)
                        .key(&k.first_run)
                        .key(&k.missed)
                        .arg(t)
                        .arg(a)
                        .arg(super::MISSED_CAP)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(store::Error::LeaseLost)
        }
    }

    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        self.listening.get_or_init(|| {
            let bell = self.bell.clone();
            crate::redis::channel::follow(self.conn.clone(), self.keys.wake.clone(), move |e| {
                match e {
                    crate::redis::channel::Event::Subscribed => bell.set_listening(true),
                    crate::redis::channel::Event::Message => bell.ring(),
                    crate::redis::channel::Event::Lost => bell.set_listening(false),
                }
            });
        });
        Some(self.bell.clone())
    }
}

/// Run states from Celery's result keys (`celery-task-meta-<id>`), which Celery workers and
/// beatd's worker write.
#[derive(Debug, Clone)]
pub struct RedisRunStates {
    /// The result backend.
    pub conn: RedisConn,
    /// A second Redis where results may be stored, asked about the runs `conn` has no final
    /// state of: with a Redis broker and a separate result backend (Celery's common
    /// `redis://h/0` broker, `redis://h/1` backend), Celery workers store results in the
    /// backend while beatd's worker stores them on the broker.
    pub also: Option<RedisConn>,
}

impl RedisRunStates {
    /// Run states on `conn` only.
    #[must_use]
    pub fn on(conn: RedisConn) -> Self {
        Self { conn, also: None }
    }
}

/// For each task id, whether `conn` holds a final state of it.
async fn finished_on(conn: &RedisConn, task_ids: &[String]) -> Result<Vec<bool>, Error> {
    let keys: Vec<String> = task_ids
        .iter()
        .map(|id| format!("celery-task-meta-{id}"))
        .collect();
    let raw: Vec<Option<String>> = conn
        .run(|mut c| {
            let k = keys.clone();
            async move { ::redis::cmd("MGET").arg(k).query_async(&mut c).await }
        })
        .await?;
    Ok(raw
        .into_iter()
        .map(|r| {
            r.and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
                .is_some_and(|s| matches!(s.as_str(), "SUCCESS" | "FAILURE" | "REVOKED"))
        })
        .collect())
}

#[async_trait]
impl super::RunStates for RedisRunStates {
    async fn finished(&self, task_ids: &[String]) -> Result<Vec<bool>, store::Error> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut done = finished_on(&self.conn, task_ids).await?;
        if let Some(also) = &self.also {
            let open: Vec<usize> = (0..done.len()).filter(|&i| !done[i]).collect();
            if !open.is_empty() {
                let ids: Vec<String> = open.iter().map(|&i| task_ids[i].clone()).collect();
                for (i, d) in open.into_iter().zip(finished_on(also, &ids).await?) {
                    done[i] = d;
                }
            }
        }
        Ok(done)
    }
}
