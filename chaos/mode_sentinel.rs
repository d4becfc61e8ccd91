//! `--mode sentinel`: a Sentinel-managed Redis ([`SentinelSet`]: a primary, two replicas and
//! three Sentinels, quorum 2, `down-after-milliseconds` 1000) that is the broker, the lock
//! and the state; beats and workers are given the Sentinels' URL, and the beats wait for one
//! replica (`--wait-replicas 1`) on each lock change and emission step. Faults: the primary
//! `kill -9`ed (a failover; the old primary rejoins later as a replica), the primary
//! SIGSTOPped for 0.5–6 s (below and beyond the failover), a replica `kill -9`ed and
//! restarted.
//!
//! Why this can keep "0 lost": replication is asynchronous, so a promotion can drop a write
//! the old primary acknowledged; `WAIT 1` makes beatd act on a write only once a replica has
//! it, and Sentinel promotes the replica with the highest replication offset. With two
//! replicas a failover leaves one for `WAIT`. That holds against one data-node failure at a
//! time, so the data-node faults here run one after another, each only once the set is whole
//! again (every replica online and seen by every Sentinel); durability on disk plays no part
//! (a killed node always comes back as a replica and resyncs from the master).

use super::mode_redis::{conn, list_pending};
use super::procs::between;
use super::runner::{Backend, Pending};
use beatd::testkit::sentinel::{SentinelSet, MASTER_NAME};
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The data-node fault kinds.
pub const KINDS: &[&str] = &["primary_kill", "primary_stop", "replica_kill"];

/// How long a failover or a rejoin may take before the run gives up (a broken set, not a
/// beatd failure: the run ends with a setup error).
const SET_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished data-node fault did.
struct Done {
    said: String,
    /// Kill of the primary to a new master answering `ROLE` as one.
    promotion: Option<Duration>,
    /// A SIGSTOP that ended in a failover.
    failed_over: bool,
}

type Job = JoinHandle<Result<Done, String>>;

/// `--mode sentinel`.
pub struct Sentinel {
    /// Locked only by the data-node fault in progress (and at the end), so the fault loop
    /// never waits on a failover.
    set: Arc<Mutex<SentinelSet>>,
    sentinels: Vec<u16>,
    url: String,
    /// The data-node fault in progress.
    busy: Option<Job>,
    promotions: Vec<Duration>,
    stop_failovers: u64,
}

impl Sentinel {
    /// Starts the set and waits until it has formed.
    ///
    /// # Errors
    /// When redis-server cannot start or the set does not form.
    pub async fn start() -> Result<Self, String> {
        let set = tokio::task::spawn_blocking(|| SentinelSet::start_with_replicas(2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("sentinel set: {e}"))?;
        Ok(Self {
            sentinels: set.sentinel_ports(),
            url: set.url(),
            set: Arc::new(Mutex::new(set)),
            busy: None,
            promotions: Vec::new(),
            stop_failovers: 0,
        })
    }

    /// Collects the fault in progress once it has finished (all the way when `wait`).
    async fn reap(&mut self, wait: bool) -> Result<Vec<String>, String> {
        let finished = self.busy.as_ref().is_some_and(JoinHandle::is_finished);
        if !(finished || wait && self.busy.is_some()) {
            return Ok(Vec::new());
        }
        let job = self.busy.take().expect("checked");
        let done = job.await.map_err(|e| e.to_string())??;
        self.promotions.extend(done.promotion);
        self.stop_failovers += u64::from(done.failed_over);
        Ok(vec![done.said])
    }

    fn spawn(
        &mut self,
        job: impl FnOnce(&mut SentinelSet) -> Result<Done, String> + Send + 'static,
    ) {
        let set = self.set.clone();
        self.busy = Some(tokio::task::spawn_blocking(move || {
            let mut set = set.lock().map_err(|e| e.to_string())?;
            job(&mut set)
        }));
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn primary_kill(set: &mut SentinelSet, down: Duration) -> Result<Done, String> {
    let killed = std::time::Instant::now();
    let old = set.kill_master().map_err(io("kill the primary"))?;
    let new = set
        .wait_new_master(old, SET_TIMEOUT)
        .map_err(io("failover"))?;
    let promotion = killed.elapsed();
    std::thread::sleep(down);
    set.rejoin(old).map_err(io("rejoin"))?;
    Ok(Done {
        said: format!(
            "primary {old} killed: {new} promoted after {promotion:?}; {old} rejoined as a replica"
        ),
        promotion: Some(promotion),
        failed_over: false,
    })
}

fn primary_stop(set: &mut SentinelSet, pause: Duration) -> Result<Done, String> {
    let old = set.master_port().map_err(io("master"))?;
    set.signal_node(old, "STOP").map_err(io("SIGSTOP"))?;
    std::thread::sleep(pause);
    set.signal_node(old, "CONT").map_err(io("SIGCONT"))?;
    // Past down-after-milliseconds a Sentinel's view of the node settles (it is up again,
    // or a failover is under way and shows in the flags) before the set is judged whole.
    std::thread::sleep(Duration::from_millis(1500));
    set.wait_whole(SET_TIMEOUT).map_err(io("after SIGCONT"))?;
    let now = set.master_port().map_err(io("master"))?;
    Ok(Done {
        said: if now == old {
            format!("primary {old} continued after {pause:?}, still the primary")
        } else {
            format!(
                "primary {old} continued after {pause:?}: {now} was promoted, {old} is a replica"
            )
        },
        promotion: None,
        failed_over: now != old,
    })
}

fn replica_kill(set: &mut SentinelSet, pick: usize, down: Duration) -> Result<Done, String> {
    let master = set.master_port().map_err(io("master"))?;
    let replicas: Vec<u16> = set
        .nodes
        .iter()
        .filter(|n| n.is_running() && n.port() != master)
        .map(beatd::testkit::RedisServer::port)
        .collect();
    let Some(&port) = replicas.get(pick % replicas.len().max(1)) else {
        return Err("no replica running".into());
    };
    let i = set.node_on(port).expect("listed");
    set.nodes[i].kill();
    std::thread::sleep(down);
    set.rejoin(port).map_err(io("rejoin"))?;
    Ok(Done {
        said: format!("replica {port} killed and rejoined"),
        promotion: None,
        failed_over: false,
    })
}

impl Backend for Sentinel {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn beat_args(&self, _i: usize) -> Vec<String> {
        vec![
            "--redis-url".into(),
            self.url.clone(),
            "--wait-replicas".into(),
            "1".into(),
        ]
    }

    fn worker_args(&self) -> Vec<String> {
        vec!["--redis-url".into(), self.url.clone()]
    }

    fn describe(&self) -> String {
        format!("sentinels {}", self.url)
    }

    async fn inject(
        &mut self,
        kind: &'static str,
        rng: &mut StdRng,
        _now: Instant,
    ) -> Result<Option<String>, String> {
        if self.busy.is_some() {
            return Ok(None); // one data-node fault at a time
        }
        Ok(Some(match kind {
            "primary_kill" => {
                let down = between(rng, 0, 3000);
                self.spawn(move |s| primary_kill(s, down));
                "primary kill -9".into()
            }
            "primary_stop" => {
                let pause = between(rng, 500, 6000);
                self.spawn(move |s| primary_stop(s, pause));
                format!("primary SIGSTOP for {pause:?}")
            }
            _ => {
                let pick = rng.random_range(0..2);
                let down = between(rng, 0, 3000);
                self.spawn(move |s| replica_kill(s, pick, down));
                "replica kill -9".into()
            }
        }))
    }

    async fn undo_due(&mut self, _now: Instant, _ending: bool) -> Result<Vec<String>, String> {
        self.reap(false).await
    }

    async fn settle(&mut self) -> Result<Vec<String>, String> {
        let said = self.reap(true).await?;
        let set = self.set.clone();
        tokio::task::spawn_blocking(move || {
            set.lock()
                .map_err(|e| e.to_string())?
                .wait_whole(SET_TIMEOUT)
                .map_err(io("set whole at the end"))
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(said)
    }

    async fn state_url(&self) -> Option<String> {
        // The Sentinels are asked directly: the set itself may be locked by a failover.
        for p in &self.sentinels {
            let Ok(mut c) = conn(&format!("redis://127.0.0.1:{p}")).await else {
                continue;
            };
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER_NAME)
                .query_async(&mut c)
                .await
                .ok()
                .flatten();
            if let Some((host, port)) = addr {
                return Some(format!("redis://{host}:{port}/0"));
            }
        }
        None
    }

    async fn pending(&self) -> Result<Pending, String> {
        let url = self.state_url().await.ok_or("no sentinel names a master")?;
        list_pending(&url).await.map_err(|e| e.to_string())
    }

    fn restores_unacked(&self) -> bool {
        true
    }

    fn notes(&self) -> Vec<String> {
        let mut p = self.promotions.clone();
        p.sort();
        let ms = |d: &Duration| d.as_millis();
        match (p.first(), p.get(p.len() / 2), p.last()) {
            (Some(lo), Some(mid), Some(hi)) => vec![format!(
                "failovers: {} by kill -9 (kill to new master: min {} ms, median {} ms, max {} \
                 ms), {} by SIGSTOP",
                p.len(),
                ms(lo),
                ms(mid),
                ms(hi),
                self.stop_failovers
            )],
            _ => vec![format!(
                "failovers: 0 by kill -9, {} by SIGSTOP",
                self.stop_failovers
            )],
        }
    }
}
