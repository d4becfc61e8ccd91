//! Bad input never crashes the worker or blocks its queue (issue 4 point 6): each malformed
//! message is logged, gets a FAILURE when its id is readable, is acknowledged, and the good
//! message pushed right after it still runs.

use crate::util::*;
use base64::Engine as _;
use beatd::protocol::TaskMessage;
use beatd::worker::Registry;
use serde_json::{json, Value};

async fn harness() -> Harness {
    let mut reg = Registry::new();
    reg.register("tasks.ok", |_req| async move { Ok(json!("fine")) });
    Harness::start(reg, opts()).await
}

/// Pushes `bad`, then a good message; checks the good one ran, nothing is left unacked or
/// queued and the worker is alive. Returns the stored result for the bad message's id.
async fn push_bad_then_good(h: &Harness, bad: &[u8], bad_id: Option<&str>) -> Option<Value> {
    h.push_raw("celery", bad).await;
    let good = h.send(TaskMessage::new("tasks.ok")).await;
    assert_eq!(h.result(&good).await["result"], "fine");
    h.assert_no_unacked().await;
    assert!(h.list("celery").await.is_empty());
    assert!(!h.handle.is_finished(), "worker exited");
    match bad_id {
        Some(id) => Some(h.result(id).await),
        None => None,
    }
}

/// A valid envelope for `tasks.ok`, as a JSON value to break, and its id.
fn envelope() -> (Value, String) {
    let enc = TaskMessage::new("tasks.ok").encode(now());
    (serde_json::from_str(&enc.payload).unwrap(), enc.id)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn bad_envelope_case(mutate: impl FnOnce(&mut Value), exc_type: &str) {
    let h = harness().await;
    let (mut env, id) = envelope();
    mutate(&mut env);
    let r = push_bad_then_good(&h, env.to_string().as_bytes(), Some(&id))
        .await
        .unwrap();
    assert_eq!(r["status"], "FAILURE", "{r}");
    assert_eq!(r["result"]["exc_type"], exc_type, "{r}");
    assert_eq!(r["task_id"], json!(id));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_base64_body() {
    bad_envelope_case(|v| v["body"] = json!("%%% not base64 %%%"), "DecodeError").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_not_json() {
    bad_envelope_case(
        |v| v["body"] = json!(b64("this is not json")),
        "DecodeError",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_wrong_shape() {
    bad_envelope_case(|v| v["body"] = json!(b64("[1]")), "DecodeError").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickle_refused() {
    let set = |v: &mut Value| v["content-type"] = json!("application/x-python-serialize");
    bad_envelope_case(set, "ContentDisallowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_eta() {
    bad_envelope_case(
        |v| v["headers"]["eta"] = json!("not-a-date"),
        "InvalidTaskError",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_delivery_info() {
    let drop = |v: &mut Value| {
        v["properties"]
            .as_object_mut()
            .unwrap()
            .remove("delivery_info");
    };
    bad_envelope_case(drop, "InvalidTaskError").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_headers_dropped() {
    let h = harness().await;
    let (mut env, _) = envelope();
    env.as_object_mut().unwrap().remove("headers");
    push_bad_then_good(&h, env.to_string().as_bytes(), None).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_task_id_dropped_not_looping() {
    let h = harness().await;
    let (mut env, _) = envelope();
    env["headers"].as_object_mut().unwrap().remove("id");
    push_bad_then_good(&h, env.to_string().as_bytes(), None).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_element_not_json() {
    let h = harness().await;
    push_bad_then_good(&h, b"\xff\xfe garbage {", None).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_element_json_array() {
    let h = harness().await;
    push_bad_then_good(&h, b"[1, 2, 3]", None).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_message() {
    let h = harness().await;
    let big = "x".repeat(beatd::worker::DEFAULT_MAX_MESSAGE_BYTES + 1024);
    let enc = TaskMessage::new("tasks.ok")
        .args(vec![json!(big)])
        .encode(now());
    let r = push_bad_then_good(&h, enc.payload.as_bytes(), Some(&enc.id))
        .await
        .unwrap();
    assert_eq!(r["result"]["exc_type"], "InvalidTaskError");
    assert!(r["result"]["exc_message"][0]
        .as_str()
        .unwrap()
        .contains("exceeds"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_name() {
    let h = harness().await;
    let enc = TaskMessage::new("tasks.does_not_exist").encode(now());
    let r = push_bad_then_good(&h, enc.payload.as_bytes(), Some(&enc.id))
        .await
        .unwrap();
    assert_eq!(r["result"]["exc_type"], "NotRegistered");
    assert_eq!(r["traceback"], Value::Null);
    h.stop().await;
}
