//! The controls' doorbell on Redis: a submitted request rings the leader's bell, and the
//! subscription behind it comes back after the server does.

use crate::*;
use beatd::clock::{Clock, SystemClock};
use beatd::control::{Action, ControlStore, Doorbell, RedisControls, Request};
use std::time::Duration;
use tokio::time::{timeout, Instant};

fn request(id: &str) -> Request {
    let now = SystemClock.now().timestamp_millis();
    Request {
        id: id.into(),
        entry: "e".into(),
        action: Action::Pause { until_ms: None },
        by: "test".into(),
        at_ms: now,
        deadline_ms: now + 60_000,
    }
}

async fn until_listening(bell: &Doorbell, on: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while bell.is_listening() != on {
        assert!(Instant::now() < deadline, "listening never became {on}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the rings already made (the change of listening) to be taken.
async fn drain(bell: &Doorbell) {
    while timeout(Duration::from_millis(100), bell.rung())
        .await
        .is_ok()
    {}
}

#[tokio::test]
async fn a_submit_rings_the_leaders_doorbell_also_after_the_server_restarts() {
    let (mut server, conn) = server().await;
    let leader_side = RedisControls::new(conn.clone(), "beatd");
    let asker = RedisControls::new(conn.clone(), "beatd");
    let bell = leader_side.doorbell().expect("a doorbell on redis");
    until_listening(&bell, true).await;
    drain(&bell).await;

    // The asker gives up at once: the request stays queued, and the bell has rung.
    assert!(asker
        .submit(&request("r1"), Duration::ZERO)
        .await
        .unwrap()
        .is_none());
    timeout(Duration::from_secs(5), bell.rung())
        .await
        .expect("rung by the submit");
    let pending = leader_side.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, "r1");
    assert!(
        timeout(Duration::from_millis(300), bell.rung())
            .await
            .is_err(),
        "one submit, one ring"
    );

    // A server gone drops the subscription (the leader polls quickly meanwhile); back, it
    // is subscribed again and rings again.
    server.kill();
    until_listening(&bell, false).await;
    server.restart().unwrap();
    until_listening(&bell, true).await;
    drain(&bell).await;
    let submitted = async {
        loop {
            if asker.submit(&request("r2"), Duration::ZERO).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    timeout(Duration::from_secs(10), submitted)
        .await
        .expect("submitted after the restart");
    timeout(Duration::from_secs(5), bell.rung())
        .await
        .expect("rung after the restart");
}
