use beatd::emit::redis::send_one;
use beatd::leader::{LeaderLock, RedisLeader};
use beatd::redis::{connect, BrokerUrl, ConnectOptions, Error, Keys, RedisConn};
use beatd::testkit::free_port;
use beatd::testkit::sentinel::SentinelSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn url(s: &str) -> BrokerUrl {
    BrokerUrl::parse(s).expect("valid url")
}

/// `ROLE`'s first word and the port, on a fresh connection of the test's own.
fn llen(port: u16, key: &str) -> i64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    redis::cmd("LLEN").arg(key).query(&mut c).unwrap()
}

/// Retries `op` until it succeeds (a failover takes seconds); panics after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {WAIT:?}: {}",
                    beatd::error_chain(&e)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_url_forms_find_the_master_and_writes_follow_a_kill() {
    let mut set = SentinelSet::start().expect("sentinel set");
    let old = set.master_port().unwrap();
    let kombu = connect(&url(&set.url()), ConnectOptions::default())
        .await
        .expect("kombu form connects");
    let redbeat = connect(&url(&set.redbeat_url()), ConnectOptions::default())
        .await
        .expect("RedBeat form connects");
    assert_eq!(send_one(&kombu, "q", b"one").await.unwrap(), 1);
    assert_eq!(send_one(&redbeat, "q", b"two").await.unwrap(), 2);
    assert_eq!(
        llen(old, "q"),
        2,
        "written to the master the sentinels name"
    );

    // A lock taken before the failover: WAITed for, so its epoch survives the promotion.
    let lock = RedisLeader::new(kombu.clone(), Keys::default(), Duration::from_millis(500));
    let first = lock.try_acquire().await.unwrap().expect("free");
    assert!(first.epoch >= 1);

    let killed = set.kill_master().unwrap();
    let new = set.wait_new_master(killed, WAIT).expect("promotion");
    // WAIT needs a replica: the killed primary comes back as one.
    set.rejoin(killed).expect("rejoin");
    // The same handles, no restart: the next writes land on the new master.
    let n = eventually("push after failover", || send_one(&kombu, "q", b"three")).await;
    assert_eq!(n, 3, "the two pushes before the kill were replicated");
    eventually("push on the RedBeat form", || {
        send_one(&redbeat, "q", b"four")
    })
    .await;
    assert_eq!(llen(new, "q"), 4);
    // The fencing epoch never goes back: the next acquisition is above the first.
    let second = eventually("lock after failover", || async {
        lock.try_acquire()
            .await
            .map_err(|e| Error::UnexpectedReply(beatd::error_chain(&e)))?
            .ok_or_else(|| Error::UnexpectedReply("lock still held".into()))
    })
    .await;
    assert!(
        second.epoch > first.epoch,
        "epoch went from {} to {}",
        first.epoch,
        second.epoch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_without_a_kill_moves_the_connection_to_the_new_master() {
    let set = SentinelSet::start().expect("sentinel set");
    let conn = connect(&url(&set.url()), ConnectOptions::default())
        .await
        .unwrap();
    send_one(&conn, "q", b"x").await.unwrap();
    // Swap roles without a kill: the connection still points at the old primary, which
    // turns into a replica (answering READONLY) unless +switch-master moved it first.
    let old = set.master_port().unwrap();
    let sentinel = set.sentinel_ports()[0];
    let client = redis::Client::open(format!("redis://127.0.0.1:{sentinel}")).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("failover")
        .arg(beatd::testkit::sentinel::MASTER_NAME)
        .query(&mut c)
        .unwrap();
    let new = set.wait_new_master(old, WAIT).expect("manual failover");
    // A node that is changing role closes its client connections (CI saw ROLE answered with
    // a connection reset), so a failed probe means "not a replica yet", not a failure.
    let is_replica = |port: u16| -> bool {
        let probe = || -> redis::RedisResult<bool> {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
            let mut c = client.get_connection_with_timeout(Duration::from_secs(2))?;
            let r: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c)?;
            Ok(matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"slave"))
        };
        probe().unwrap_or(false)
    };
    let deadline = Instant::now() + WAIT;
    while !is_replica(old) {
        assert!(
            Instant::now() < deadline,
            "old primary never became a replica"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually("push after the switch", || send_one(&conn, "q", b"y")).await;
    assert_eq!(llen(new, "q"), 2);
}

#[tokio::test]
async fn unknown_master_and_unreachable_sentinels_are_clear_errors() {
    let set = SentinelSet::start().expect("sentinel set");
    let wrong = set
        .url()
        .replace("master_name=beatdtest", "master_name=nosuch");
    let e = connect(&url(&wrong), ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownMaster { .. }), "{e:?}");
    assert!(e.to_string().contains("\"nosuch\""), "{e}");
    drop(set);

    let (a, b) = (free_port().unwrap(), free_port().unwrap());
    let dead = format!("sentinel://127.0.0.1:{a};sentinel://127.0.0.1:{b}?master_name=m");
    let fast = ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let e = connect(&url(&dead), fast).await.unwrap_err();
    let text = beatd::error_chain(&e);
    assert!(matches!(e, Error::NoMaster { .. }), "{e:?}");
    assert!(
        text.contains(&format!("127.0.0.1:{a}")) && text.contains(&format!("127.0.0.1:{b}")),
        "each sentinel named: {text}"
    );
    // A daemon does not fail on it at startup (the set may come up later): the handle is made.
    assert!(RedisConn::new(&url(&dead), fast).is_ok());
}

#[tokio::test]
async fn sentinels_over_tls_are_verified_against_a_private_ca() {
    let certs = beatd::testkit::certs::TestCerts::generate().expect("openssl");
    let set = SentinelSet::start_with_tls_sentinels(&certs).expect("sentinel set");
    let base: Vec<String> = set
        .sentinel_tls_ports()
        .iter()
        .map(|p| format!("sentinel://127.0.0.1:{p}"))
        .collect();
    let with_ca = |ca: &std::path::Path| {
        format!(
            "{}/0?master_name=beatdtest&sentinel_ssl=true&ssl=false&ssl_ca_certs={}",
            base.join(";"),
            ca.display()
        )
    };
    let conn = connect(&url(&with_ca(&certs.cert("ca"))), ConnectOptions::default())
        .await
        .expect("TLS to the sentinels, verified");
    send_one(&conn, "q", b"x").await.unwrap();
    assert_eq!(llen(set.master_port().unwrap(), "q"), 1);
    let e = connect(
        &url(&with_ca(&certs.cert("wrong-ca"))),
        ConnectOptions::default(),
    )
    .await
    .unwrap_err();
    let text = beatd::error_chain(&e);
    assert!(matches!(e, Error::NoMaster { .. }), "{e:?}");
    assert!(
        text.contains("UnknownIssuer"),
        "each sentinel's TLS failure: {text}"
    );
}

/// With its one replica down, a write the beat acts on is not done: the lock is not taken
/// and an emission is an error (the beat retries it later; the script then skips what it
/// recorded). Once a replica is back, both go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replica_the_lock_and_emission_do_not_count_as_done() {
    use beatd::emit::{EmitOptions, Emitter, Fire, RedisEmitter};
    let mut set = SentinelSet::start().expect("sentinel set");
    let wait = beatd::redis::WaitReplicas {
        replicas: 1,
        timeout: Duration::from_millis(200),
    };
    let u = url(&set.url()).with_wait(Some(wait));
    let conn = connect(&u, ConnectOptions::default()).await.unwrap();
    let lock = RedisLeader::new(conn.clone(), Keys::default(), Duration::from_secs(5));
    let lease = lock.try_acquire().await.unwrap().expect("free");
    let em = RedisEmitter::new(conn.clone(), Keys::default(), EmitOptions::default());
    let fire = |at: i64| Fire {
        entry: "e".into(),
        fire_at_ms: at,
        task_id: format!("e@{at}"),
        rq: None,
        list_key: "celery".into(),
        payload: format!("{at}").into_bytes(),
        schedule_fingerprint: "fp".into(),
    };
    em.emit(&lease, &[fire(1_000)]).await.expect("replicated");

    let master = set.master_port().unwrap();
    let replica = set.nodes.iter().position(|n| n.port() != master).unwrap();
    let replica_port = set.nodes[replica].port();
    set.nodes[replica].kill();
    let e = em.emit(&lease, &[fire(2_000)]).await.unwrap_err();
    let text = beatd::error_chain(&e);
    assert!(text.contains("reached 0 of 1 replicas"), "{text}");
    let other = RedisLeader::new(conn.clone(), Keys::new("other"), Duration::from_secs(5));
    let e = other.try_acquire().await.unwrap_err();
    assert!(beatd::error_chain(&e).contains("of 1 replicas"), "{e:?}");

    set.rejoin(replica_port).expect("replica back");
    // Emitting the same fire again is safe: what the master recorded is skipped, not doubled.
    let again = em
        .emit(&lease, &[fire(2_000)])
        .await
        .expect("replicated now");
    assert_eq!(llen(master, "celery"), 2, "{again:?}");
    eventually("lock with a replica back", || async {
        other
            .try_acquire()
            .await
            .map_err(|e| Error::UnexpectedReply(beatd::error_chain(&e)))?
            .ok_or_else(|| Error::UnexpectedReply("held".into()))
    })
    .await;
}
