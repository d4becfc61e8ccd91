//! The replica set as a whole: the leader publishes who it is and a fingerprint of the
//! schedule set it runs (`{ns}:schedule_set_id`, `{ns}:schedule_set`); every other replica
//! compares its own. Two apps sharing one Redis and one namespace, or replicas deployed with
//! different files, otherwise split silently: only the leader's entries ever fire.
//!
//! Owns the comparison ([`ScheduleSet`], [`Diff`]), its Redis keys and the watch loop
//! ([`watch`]). A mismatch is reported, never acted on: the leader keeps sending its own set.

use crate::entry::Entry;
use crate::ops::metrics::Metrics;
use crate::redis::{Error, Keys, RedisConn};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a replica compares (and the leader refreshes what it published).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the leader published lives this long unless refreshed: a set from a leader that is
/// gone does not linger.
const PUBLISHED_TTL: Duration = Duration::from_secs(30);

/// The same mismatch is logged again at most this often.
const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// 64-bit FNV-1a: stable across processes, versions and machines (std's hasher is not
/// promised to be), which replicas of different builds must agree on.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A fingerprint as published: 16 lower-case hex digits.
fn hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// A schedule set, by entry: what decides when and what each sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduleSet {
    /// One id for the whole set.
    pub id: String,
    /// Entry name (shared with the entry) → fingerprint of its schedule, task and queue
    /// (published as 16 hex digits; kept as the number, a third of the memory).
    pub entries: BTreeMap<Arc<str>, u64>,
}

impl ScheduleSet {
    /// The set of `entries`.
    #[must_use]
    pub fn of(entries: &[Entry]) -> Self {
        let entries: BTreeMap<Arc<str>, u64> = entries
            .iter()
            .map(|e| {
                let what = format!("{}|{}|{}", e.fingerprint(), e.task, e.queue);
                (e.name.clone(), fnv(what.as_bytes()))
            })
            .collect();
        let mut all = String::new();
        for (name, fp) in &entries {
            use std::fmt::Write;
            let _ = writeln!(all, "{name}={}", hex(*fp));
        }
        Self {
            id: format!("{:016x}", fnv(all.as_bytes())),
            entries,
        }
    }

    /// How this set differs from `leader`'s.
    #[must_use]
    pub fn diff(&self, leader: &BTreeMap<String, String>) -> Diff {
        let mut d = Diff::default();
        for (name, fp) in &self.entries {
            match leader.get(&**name) {
                None => d.only_here.push(name.to_string()),
                Some(theirs) if *theirs != hex(*fp) => d.changed.push(name.to_string()),
                Some(_) => {}
            }
        }
        d.only_leader = leader
            .keys()
            .filter(|n| !self.entries.contains_key(n.as_str()))
            .cloned()
            .collect();
        d
    }
}

/// Entries that differ between two sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    /// In this replica's files only: they never fire while the other one leads.
    pub only_here: Vec<String>,
    /// In the leader's files only.
    pub only_leader: Vec<String>,
    /// In both, defined differently.
    pub changed: Vec<String>,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list(names: &[String]) -> String {
            const SHOWN: usize = 10;
            let mut s = names
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > SHOWN {
                s.push_str(&format!(" and {} more", names.len() - SHOWN));
            }
            s
        }
        let mut parts = Vec::new();
        if !self.only_here.is_empty() {
            parts.push(format!(
                "{} only here ({})",
                self.only_here.len(),
                list(&self.only_here)
            ));
        }
        if !self.only_leader.is_empty() {
            parts.push(format!(
                "{} only in the leader's ({})",
                self.only_leader.len(),
                list(&self.only_leader)
            ));
        }
        if !self.changed.is_empty() {
            parts.push(format!(
                "{} defined differently ({})",
                self.changed.len(),
                list(&self.changed)
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// What the leader published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its schedule set id.
    pub id: String,
    /// `host:pid` of the leader.
    pub leader: String,
}

/// The published set on Redis.
#[derive(Debug, Clone)]
pub struct Fleet {
    conn: RedisConn,
    keys: Keys,
}

impl Fleet {
    /// The keys under `keys`.
    #[must_use]
    pub fn new(conn: RedisConn, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// Publishes `set` as the leader `me`'s (the hash first, so a reader that sees the id
    /// finds the entries). The fields go into a scratch hash one command of 1,000 at a time,
    /// then one transaction renames it into place: a single transaction of 100,000 fields
    /// held Redis for over 100 ms at a term start, where each step now holds it about a
    /// millisecond. The old hash is unlinked (freed off Redis's main thread).
    ///
    /// # Errors
    /// As the connection's.
    pub async fn publish(&self, set: &ScheduleSet, me: &str) -> Result<(), Error> {
        let k = &self.keys;
        let ttl = u64::try_from(PUBLISHED_TTL.as_millis()).unwrap_or(u64::MAX);
        let fields: Vec<(&str, String)> =
            set.entries.iter().map(|(k, v)| (&**k, hex(*v))).collect();
        let id = format!("{} {me}", set.id);
        let next = format!("{}:next", k.schedule_set);
        let next = &next;
        // A scratch hash a leader left half written is dropped first; it expires anyway.
        self.conn
            .run(|mut c| async move {
                ::redis::cmd("UNLINK")
                    .arg(next)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        for chunk in fields.chunks(1_000) {
            self.conn
                .run(|mut c| async move {
                    ::redis::pipe()
                        .hset_multiple(next, chunk)
                        .ignore()
                        .pexpire(next, i64::try_from(ttl).unwrap_or(i64::MAX))
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await?;
        }
        self.conn
            .run(|mut c| async move {
                let mut p = ::redis::pipe();
                p.atomic().cmd("UNLINK").arg(&k.schedule_set).ignore();
                if !fields.is_empty() {
                    p.cmd("RENAME").arg(next).arg(&k.schedule_set).ignore();
                    p.pexpire(&k.schedule_set, i64::try_from(ttl).unwrap_or(i64::MAX))
                        .ignore();
                }
                p.cmd("SET")
                    .arg(&k.schedule_set_id)
                    .arg(&id)
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
                p.query_async::<()>(&mut c).await
            })
            .await
    }

    /// Extends what was published for another [`PUBLISHED_TTL`]; `false` when it is gone.
    ///
    /// # Errors
    /// As the connection's.
    pub async fn refresh(&self) -> Result<bool, Error> {
        let k = &self.keys;
        let ttl = i64::try_from(PUBLISHED_TTL.as_millis()).unwrap_or(i64::MAX);
        let (a, _b): (bool, bool) = self
            .conn
            .run(|mut c| async move {
                ::redis::pipe()
                    .atomic()
                    .pexpire(&k.schedule_set_id, ttl)
                    .pexpire(&k.schedule_set, ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(a)
    }

    /// The published id and leader, if any.
    ///
    /// # Errors
    /// As the connection's.
    pub async fn published(&self) -> Result<Option<Published>, Error> {
        let k = &self.keys;
        let raw: Option<String> = self
            .conn
            .run(|mut c| async move {
                ::redis::cmd("GET")
                    .arg(&k.schedule_set_id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(raw.and_then(|r| {
            let (id, leader) = r.split_once(' ')?;
            Some(Published {
                id: id.to_owned(),
                leader: leader.to_owned(),
            })
        }))
    }

    /// The published entries.
    ///
    /// # Errors
    /// As the connection's.
    pub async fn published_entries(&self) -> Result<BTreeMap<String, String>, Error> {
        let k = &self.keys;
        self.conn
            .run(|mut c| async move {
                ::redis::cmd("HGETALL")
                    .arg(&k.schedule_set)
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    /// This replica's set compared with the published one: `None` when nothing is published
    /// or the ids match.
    ///
    /// # Errors
    /// As the connection's.
    pub async fn compare(&self, mine: &ScheduleSet) -> Result<Option<(Published, Diff)>, Error> {
        let Some(p) = self.published().await? else {
            return Ok(None);
        };
        if p.id == mine.id {
            return Ok(None);
        }
        let theirs = self.published_entries().await?;
        Ok(Some((p, mine.diff(&theirs))))
    }
}

/// What the watch found last, for `/readyz` and logs.
#[derive(Debug, Default)]
pub struct Agreement {
    /// The mismatch, as one line, while there is one.
    mismatch: Mutex<Option<String>>,
}

impl Agreement {
    /// The mismatch, if any.
    #[must_use]
    pub fn mismatch(&self) -> Option<String> {
        self.mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, m: Option<String>) {
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = m;
    }
}

/// Watches until `shutdown`: as leader (`is_leader`), publishes the current `entries` as
/// `me`'s; otherwise compares them with the leader's, logs a mismatch (which entries, which
/// host leads) at once and then at most every minute, and keeps `agreement` and the
/// `beatd_schedule_mismatch` gauge up to date. Also logs who leads whenever that changes.
pub async fn watch(
    fleet: Fleet,
    entries: watch::Receiver<Arc<[Entry]>>,
    is_leader: impl Fn() -> bool + Send,
    me: String,
    metrics: Arc<Metrics>,
    agreement: Arc<Agreement>,
    shutdown: CancellationToken,
) {
    // One copy of the set per schedule (with 10,000 entries it is about 0.4 MB), shared by
    // each check rather than cloned into it.
    let mut set_of: Option<(Arc<[Entry]>, Arc<ScheduleSet>)> = None;
    let mut published: Option<String> = None;
    let mut leader_seen: Option<String> = None;
    let mut reported: Option<(String, Instant)> = None;
    loop {
        let current = entries.borrow().clone();
        let set = match &set_of {
            Some((arc, set)) if Arc::ptr_eq(arc, &current) => Arc::clone(set),
            _ => {
                let set = Arc::new(ScheduleSet::of(&current));
                set_of = Some((current, Arc::clone(&set)));
                set
            }
        };
        if is_leader() {
            let fresh = published.as_deref() == Some(set.id.as_str())
                && fleet.refresh().await.unwrap_or(false);
            if !fresh {
                match fleet.publish(&set, &me).await {
                    Ok(()) => published = Some(set.id.clone()),
                    Err(e) => {
                        tracing::debug!(error = %crate::error_chain(&e), "cannot publish the schedule set");
                    }
                }
            }
            leader_seen = Some(me.clone());
            if agreement.mismatch().is_some() {
                agreement.set(None);
                metrics.schedule_mismatch.set(0);
            }
        } else {
            published = None;
            match fleet.compare(&set).await {
                Ok(None) => {
                    if agreement.mismatch().is_some() {
                        tracing::info!("schedule files now match the leader's");
                    }
                    agreement.set(None);
                    metrics.schedule_mismatch.set(0);
                    reported = None;
                }
                Ok(Some((p, diff))) => {
                    let line = format!(
                        "this replica's schedule files differ from those of the leader {}: {diff}; \
                         only the leader's entries fire. Two apps on one Redis need their own \
                         --namespace",
                        p.leader
                    );
                    let repeat = match &reported {
                        Some((last, at)) => *last != line || at.elapsed() >= REPEAT_EVERY,
                        None => true,
                    };
                    if repeat {
                        tracing::error!(leader = %p.leader, only_here = diff.only_here.len(),
                            only_leader = diff.only_leader.len(), changed = diff.changed.len(),
                            "{line}");
                        reported = Some((line.clone(), Instant::now()));
                    }
                    agreement.set(Some(line));
                    metrics.schedule_mismatch.set(1);
                }
                Err(e) => {
                    tracing::debug!(error = %crate::error_chain(&e), "cannot read the leader's schedule set");
                }
            }
            if let Ok(Some(p)) = fleet.published().await {
                if leader_seen.as_deref() != Some(p.leader.as_str()) {
                    tracing::info!(leader = %p.leader, "standing by; {} leads", p.leader);
                    leader_seen = Some(p.leader);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn the_diff_names_entries_on_each_side_and_those_defined_differently() {
        let mine = ScheduleSet {
            id: "x".into(),
            entries: [("a", 1), ("b", 2), ("c", 3)]
                .into_iter()
                .map(|(k, v)| (Arc::from(k), v))
                .collect(),
        };
        let leader = |pairs: &[(&str, u64)]| {
            let hexed: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (*k, hex(*v))).collect();
            let refs: Vec<(&str, &str)> = hexed.iter().map(|(k, v)| (*k, v.as_str())).collect();
            set(&refs)
        };
        let d = mine.diff(&leader(&[("b", 2), ("c", 9), ("z", 5)]));
        assert_eq!(d.only_here, ["a"]);
        assert_eq!(d.only_leader, ["z"]);
        assert_eq!(d.changed, ["c"]);
        assert_eq!(
            d.to_string(),
            "1 only here (a); 1 only in the leader's (z); 1 defined differently (c)"
        );
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
