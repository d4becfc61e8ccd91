//! Remote control on a real redis-server, driven the way kombu's Mailbox does it: a request
//! PUBLISHed on `/<db>.celery.pidbox`, the reply LPUSHed to the queue bound in
//! `_kombu.binding.reply.celery.pidbox`.

use crate::util::*;
use base64::Engine as _;
use beatd::protocol::TaskMessage;
use beatd::worker::Registry;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Publishes a request until some node is subscribed; returns once it is out.
async fn publish(h: &Harness, method: &str, arguments: Value, reply_rk: &str) {
    let body = json!({"method": method, "arguments": arguments, "destination": null,
                      "pattern": null, "matcher": null, "ticket": "ticket-1",
                      "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": reply_rk}});
    let env = json!({
        "body": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"clock": 1},
        "properties": {"delivery_mode": 2, "body_encoding": "base64",
                       "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
                       "priority": 0, "delivery_tag": "tag-1"},
    });
    let mut c = h.conn().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg("/0.celery.pidbox")
            .arg(env.to_string())
            .query_async(&mut c)
            .await
            .unwrap();
        if receivers > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nobody subscribed to the pidbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reply body `{node: answer}` from the reply queue, with its ticket header.
async fn reply(h: &Harness, queue: &str) -> (Value, Value) {
    let raw = h.wait_list(queue).await.pop().unwrap();
    let env: Value = serde_json::from_str(&raw).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(env["body"].as_str().unwrap())
        .unwrap();
    (
        serde_json::from_slice(&body).unwrap(),
        env["headers"]["ticket"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_revoke_over_the_pidbox() {
    let mut reg = Registry::new();
    reg.register("tasks.never", |_req| async { Ok(json!("ran")) });
    let mut o = opts();
    o.node_name = "beatd@pidbox-test".into();
    let h = Harness::start(reg, o).await;
    let mut c = h.conn().await;
    let _: () = redis::cmd("SADD")
        .arg("_kombu.binding.reply.celery.pidbox")
        .arg("rk-1\x06\x16\x06\x16rk-1.reply.celery.pidbox")
        .query_async(&mut c)
        .await
        .unwrap();

    publish(&h, "ping", json!({}), "rk-1").await;
    let (body, ticket) = reply(&h, "rk-1.reply.celery.pidbox").await;
    assert_eq!(body, json!({"beatd@pidbox-test": {"ok": "pong"}}));
    assert_eq!(ticket, "ticket-1");

    // Revoked before it is sent: REVOKED at once (as Celery's workers mark a PENDING task),
    // and skipped when it comes.
    let id = "revoked-before-sent";
    let _: () = redis::cmd("DEL")
        .arg("rk-1.reply.celery.pidbox")
        .query_async(&mut c)
        .await
        .unwrap();
    publish(&h, "revoke", json!({"task_id": [id]}), "rk-1").await;
    let (body, _) = reply(&h, "rk-1.reply.celery.pidbox").await;
    assert_eq!(
        body,
        json!({"beatd@pidbox-test": {"ok": format!("tasks {{'{id}'}} flagged as revoked")}})
    );
    let marked = h.wait_status(id, "REVOKED").await;
    assert_eq!(marked["result"]["exc_message"], json!(["revoked"]));
    h.send(TaskMessage::new("tasks.never").id(id)).await;
    // Taken, then finished (acked): had it run, its SUCCESS would be stored.
    let deadline = Instant::now() + WAIT;
    while !h.list("celery").await.is_empty() {
        assert!(Instant::now() < deadline, "the message was never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.assert_no_unacked().await;
    let r = h.try_result(id).await.unwrap();
    assert_eq!(r["status"], "REVOKED", "{r}");
    h.stop().await;
}
