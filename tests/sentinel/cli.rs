use crate::ha_util::{wait_until, Schedules};
use beatd::testkit::free_port;
use beatd::testkit::sentinel::SentinelSet;
use std::process::{Command, Output};
use std::time::Duration;

fn beatd(args: &[&str], url: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beatd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BEATD_") || ["CELERY_BROKER_URL", "REDIS_URL"].contains(&k.as_str()) {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("BEATD_REDIS_URL", url)
        .output()
        .expect("run beatd")
}

fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const TICK: &str = "[[entry]]\nname = \"tick\"\ntask = \"t\"\nevery = \"1s\"\n";

#[test]
fn check_redis_names_the_master_or_says_what_each_sentinel_answered() {
    let mut set = SentinelSet::start().expect("sentinel set");
    let s = Schedules::new(TICK);
    let dir = s.path().to_str().unwrap();
    let out = beatd(&["check", "--redis", dir], &set.url());
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let master = set.master_port().unwrap();
    assert!(
        stdout.contains(&format!("master 127.0.0.1:{master}"))
            && stdout.contains("wait for 1 replica"),
        "{stdout}"
    );

    // The master name comes from the flag too, over the URL's.
    let out = beatd(
        &["check", "--redis", "--sentinel-master", "nosuch", dir],
        &set.url(),
    );
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("monitor no master named \"nosuch\""),
        "{stderr}"
    );

    let (a, b) = (free_port().unwrap(), free_port().unwrap());
    let dead = format!("sentinel://127.0.0.1:{a};sentinel://127.0.0.1:{b}?master_name=m");
    let out = beatd(&["check", "--redis", dir], &dead);
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{a}: "))
            && stderr.contains(&format!("127.0.0.1:{b}: ")),
        "each sentinel and what it answered: {stderr}"
    );

    // A master without the replica writes wait for: a warning, not an error.
    let master = set.master_port().unwrap();
    let replica = set.nodes.iter().position(|n| n.port() != master).unwrap();
    set.nodes[replica].kill();
    wait_until(
        "the master sees its replica gone",
        Duration::from_secs(20),
        || {
            let c = redis::Client::open(format!("redis://127.0.0.1:{master}")).unwrap();
            let info: String = c
                .get_connection()
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
                .unwrap_or_default();
            info.contains("connected_slaves:0")
        },
    );
    let out = beatd(&["check", "--redis", dir], &set.url());
    let (_, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 replica(s) attached"), "{stderr}");

    // Without a master name the URL itself is refused, by check and at startup alike.
    let nameless = set.url().replace("?master_name=beatdtest", "");
    let out = beatd(&["check", "--redis", dir], &nameless);
    assert!(
        texts(&out).1.contains("--sentinel-master"),
        "{:?}",
        texts(&out)
    );
    let out = beatd(
        &["beat", "--schedules", dir, "--http-addr", "off"],
        &nameless,
    );
    assert_eq!(out.status.code(), Some(2), "{:?}", texts(&out));
    assert!(
        texts(&out).1.contains("BEATD_SENTINEL_MASTER"),
        "{:?}",
        texts(&out)
    );
}

#[test]
fn a_beat_started_on_an_unknown_master_name_stops_at_once_with_the_reason() {
    let set = SentinelSet::start().expect("sentinel set");
    let s = Schedules::new(TICK);
    let wrong = set
        .url()
        .replace("master_name=beatdtest", "master_name=nosuch");
    let mut child = Command::new(env!("CARGO_BIN_EXE_beatd"))
        .args(["beat", "--http-addr", "off", "--schedules"])
        .arg(s.path())
        .env("BEATD_REDIS_URL", &wrong)
        .env_remove("BEATD_SENTINEL_MASTER")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("beatd kept running on an unknown master name");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("monitor no master named \"nosuch\""),
        "{stderr}"
    );
}
