//! Golden tests of `beatd::protocol` against messages and results captured from Celery 5.7
//! (copied from celery-wire/fixtures into tests/fixtures/celery).

use beatd::protocol::{
    beatd_headers, DecodeError, Encoded, Envelope, ExcInfo, ResultRecord, TaskMessage,
};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/celery/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// The fixture's ids, origin and reply_to, so our output can be byte-compared.
fn like_fixture(name: &str) -> TaskMessage {
    let fx = Envelope::parse(fixture(name).as_bytes()).unwrap();
    let origin = fx.headers["origin"].as_str().unwrap().to_string();
    let reply_to = fx.envelope["properties"]["reply_to"]
        .as_str()
        .unwrap()
        .to_string();
    TaskMessage::new("tasks.add")
        .id(fx.id)
        .delivery_tag(fx.delivery_tag)
        .origin(origin)
        .reply_to(reply_to)
        .args(vec![json!(2), json!(3)])
        .kwargs(kw(json!({"x": 1})))
}

fn assert_bytes(name: &str, got: &Encoded, list_key: &str) {
    assert_eq!(got.payload, fixture(name), "{name} differs byte-wise");
    assert_eq!(got.list_key, list_key);
}

#[test]
fn golden_send_task_default_bytes() {
    let now = at("2026-11-23T10:43:10.351328Z");
    assert_bytes(
        "send_task_default.json",
        &like_fixture("send_task_default.json").encode(now),
        "celery",
    );
}

#[test]
fn golden_priority5_goes_to_step_3_list() {
    let m = like_fixture("send_task_priority5.json").priority(Some(5));
    assert_bytes(
        "send_task_priority5.json",
        &m.encode(at("2026-11-23T10:43:10Z")),
        "celery\x06\x163",
    );
}

#[test]
fn golden_expires60_with_expiration_ms() {
    let expires = at("2026-11-23T10:44:10.700195Z");
    let m = like_fixture("send_task_expires60.json").expires(Some(expires));
    assert_bytes(
        "send_task_expires60.json",
        &m.encode(expires - Duration::seconds(60)),
        "celery",
    );
}

#[test]
fn golden_queue_reports() {
    let m = like_fixture("send_task_queue_reports.json").queue("reports");
    assert_bytes(
        "send_task_queue_reports.json",
        &m.encode(at("2026-11-23T10:43:10Z")),
        "reports",
    );
}

#[test]
fn golden_eta_and_countdown() {
    let m = like_fixture("send_task_eta.json").eta(Some(at("2030-01-02T03:04:05.678901Z")));
    assert_bytes(
        "send_task_eta.json",
        &m.encode(at("2026-11-23T10:43:10Z")),
        "celery",
    );
    let m = like_fixture("send_task_countdown10.json").eta(Some(at("2026-11-23T10:43:20.695996Z")));
    assert_bytes(
        "send_task_countdown10.json",
        &m.encode(at("2026-11-23T10:43:10Z")),
        "celery",
    );
}

#[test]
fn golden_timelimits_ignore_result_custom_headers() {
    let now = at("2026-11-23T10:43:10Z");
    let m = like_fixture("send_task_timelimits.json").timelimit(Some(30.0), Some(20.0));
    assert_bytes("send_task_timelimits.json", &m.encode(now), "celery");
    let m = like_fixture("send_task_ignore_result.json").ignore_result(Some(true));
    assert_bytes("send_task_ignore_result.json", &m.encode(now), "celery");
    let m = like_fixture("send_task_custom_headers.json")
        .headers(kw(json!({"custom_header": "hello"})));
    assert_bytes("send_task_custom_headers.json", &m.encode(now), "celery");
}

#[test]
fn golden_beat_entry_and_handcrafted_recipe() {
    let expires = at("2026-11-23T10:43:23.293095Z");
    let m = like_fixture("beat_entry.json")
        .queue("reports")
        .expires(Some(expires))
        .ignore_result(Some(false))
        .beat(true);
    assert_bytes(
        "beat_entry.json",
        &m.encode(expires - Duration::seconds(10)),
        "reports",
    );
    let m = like_fixture("handcrafted_full.json").ignore_result(Some(false));
    assert_bytes(
        "handcrafted_full.json",
        &m.encode(at("2026-11-23T10:43:10Z")),
        "celery",
    );
}

/// What beatd itself sends (fresh ids, its own origin, beatd_* headers) matches celery beat's
/// message field by field once ids, times, origin and beatd's own headers are masked.
#[test]
fn beatd_message_matches_beat_entry_field_by_field() {
    let fire = at("2026-11-23T10:43:13.293095Z");
    let m = TaskMessage::new("tasks.add")
        .args(vec![json!(2), json!(3)])
        .kwargs(kw(json!({"x": 1})))
        .queue("reports")
        .expires(Some(fire + Duration::seconds(10)))
        .ignore_result(Some(false))
        .beat(true)
        .headers(beatd_headers("add-every-2s", fire, 42));
    let ours: Value = serde_json::from_str(&m.encode(fire).payload).unwrap();
    assert_eq!(ours["headers"]["beatd_entry"], "add-every-2s");
    assert_eq!(
        ours["headers"]["beatd_scheduled_at"],
        "2026-11-23T10:43:13.293Z"
    );
    assert_eq!(ours["headers"]["beatd_epoch"], 42);
    let theirs: Value = serde_json::from_str(&fixture("beat_entry.json")).unwrap();
    assert_eq!(mask(ours), mask(theirs));
}

fn mask(mut v: Value) -> Value {
    let h = v["headers"].as_object_mut().unwrap();
    h.retain(|k, _| !k.starts_with("beatd_"));
    for k in ["id", "root_id", "origin", "expires"] {
        h.insert(k.into(), json!("*"));
    }
    for k in ["correlation_id", "reply_to", "delivery_tag"] {
        v["properties"][k] = json!("*");
    }
    v
}

#[test]
fn parse_reads_every_captured_envelope() {
    for name in [
        "send_task_default.json",
        "send_task_priority5.json",
        "send_task_expires60.json",
        "send_task_eta.json",
        "beat_entry.json",
        "send_task_timelimits.json",
        "handcrafted_full.json",
        "restored_after_visibility_timeout.json",
    ] {
        let t = Envelope::parse(fixture(name).as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!t.id.is_empty() && !t.delivery_tag.is_empty(), "{name}");
        assert!(t.task.starts_with("tasks."), "{name}");
    }
    let t = Envelope::parse(fixture("send_task_default.json").as_bytes()).unwrap();
    assert_eq!(t.id, "9fc7258d-62cd-477d-b9e3-5c81dbdf01e3");
    assert_eq!(
        (t.args, t.kwargs),
        (vec![json!(2), json!(3)], kw(json!({"x": 1})))
    );
    assert_eq!(
        (t.exchange.as_str(), t.routing_key.as_str()),
        ("", "celery")
    );
    assert!(!t.redelivered && t.eta.is_none() && t.expires.is_none());
    let t = Envelope::parse(fixture("send_task_expires60.json").as_bytes()).unwrap();
    assert_eq!(t.expires, Some(at("2026-11-23T10:44:10.700195Z")));
    let t = Envelope::parse(fixture("send_task_eta.json").as_bytes()).unwrap();
    assert_eq!(t.eta, Some(at("2030-01-02T03:04:05.678901Z")));
    let t = Envelope::parse(fixture("send_task_timelimits.json").as_bytes()).unwrap();
    assert_eq!(t.timelimit, (Some(30.0), Some(20.0)));
    let t = Envelope::parse(fixture("restored_after_visibility_timeout.json").as_bytes()).unwrap();
    assert!(t.redelivered);
    assert_eq!(t.kwargs, kw(json!({"tag": "crash-demo"})));
}

fn default_env() -> Value {
    serde_json::from_str(&fixture("send_task_default.json")).unwrap()
}

fn parse_value(v: &Value) -> Result<beatd::protocol::ParsedTask, DecodeError> {
    Envelope::parse(v.to_string().as_bytes())
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const ID: &str = "9fc7258d-62cd-477d-b9e3-5c81dbdf01e3";

#[test]
fn parse_errors_are_typed_and_keep_the_id() {
    assert!(matches!(
        Envelope::parse(b"not json"),
        Err(DecodeError::NotJson(_))
    ));
    assert!(matches!(
        Envelope::parse(b"[1, 2]"),
        Err(DecodeError::NotObject)
    ));
    for field in ["headers", "properties", "body", "content-type"] {
        let mut v = default_env();
        v.as_object_mut().unwrap().remove(field);
        let err = parse_value(&v).unwrap_err();
        assert!(matches!(err, DecodeError::Missing { .. }), "{field}: {err}");
        let want_id = if field == "headers" { None } else { Some(ID) };
        assert_eq!(err.task_id(), want_id, "{field}");
    }
    for field in ["delivery_tag", "delivery_info"] {
        let mut v = default_env();
        v["properties"].as_object_mut().unwrap().remove(field);
        assert!(
            matches!(parse_value(&v), Err(DecodeError::Missing { .. })),
            "{field}"
        );
    }
    let mut v = default_env();
    v["properties"]["delivery_info"]
        .as_object_mut()
        .unwrap()
        .remove("exchange");
    assert!(matches!(parse_value(&v), Err(DecodeError::Missing { .. })));

    let mut v = default_env();
    v["headers"].as_object_mut().unwrap().remove("id");
    assert!(matches!(
        parse_value(&v),
        Err(DecodeError::Missing {
            field: "headers.id",
            ..
        })
    ));

    let mut v = default_env();
    v["body"] = json!("%%% not base64 %%%");
    let err = parse_value(&v).unwrap_err();
    assert!(matches!(err, DecodeError::BadBase64 { .. }));
    assert_eq!(err.task_id(), Some(ID));

    let mut v = default_env();
    v["body"] = json!(b64("this is not json"));
    assert!(matches!(
        parse_value(&v),
        Err(DecodeError::BodyNotJson { .. })
    ));

    for bad in [
        "[[1], {}, {}, {}]",
        "[]",
        "\"text\"",
        "[{\"a\": 1}, {}, null]",
        "[[], [], null]",
    ] {
        let mut v = default_env();
        v["body"] = json!(b64(bad));
        let err = parse_value(&v).unwrap_err();
        assert!(matches!(err, DecodeError::BodyShape { .. }), "{bad}: {err}");
        assert_eq!(err.task_id(), Some(ID));
    }

    let mut v = default_env();
    v["content-type"] = json!("application/x-python-serialize");
    assert!(matches!(
        parse_value(&v),
        Err(DecodeError::UnsupportedContentType { .. })
    ));

    for field in ["eta", "expires"] {
        let mut v = default_env();
        v["headers"][field] = json!("not-a-date");
        let err = parse_value(&v).unwrap_err();
        assert!(matches!(err, DecodeError::BadTime { .. }), "{field}");
        assert!(err.to_string().contains("not-a-date"));
    }

    let big = fixture("send_task_default.json");
    let err = Envelope::parse_limited(big.as_bytes(), 100).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }));
    assert_eq!(err.task_id(), Some(ID));
}

#[test]
fn parse_accepts_tolerated_body_forms() {
    let mut v = default_env();
    v["body"] = json!(b64("[[7], {\"k\": true}]"));
    let t = parse_value(&v).unwrap();
    assert_eq!((t.args, t.kwargs), (vec![json!(7)], kw(json!({"k": true}))));

    let mut v = default_env();
    v["body"] = json!(b64("{\"args\": [1], \"kwargs\": {}}"));
    assert_eq!(parse_value(&v).unwrap().args, vec![json!(1)]);

    // No body_encoding: the body is literal JSON text.
    let mut v = default_env();
    v["properties"]
        .as_object_mut()
        .unwrap()
        .remove("body_encoding");
    v["body"] = json!("[[2, 3], {\"x\": 1}, null]");
    assert_eq!(parse_value(&v).unwrap().args, vec![json!(2), json!(3)]);
}

#[test]
fn golden_results() {
    let r = ResultRecord::success(
        "65b3e338-d338-40d6-b873-88559d253f4f",
        json!(6),
        at("2026-11-23T10:43:21.167520Z"),
    );
    assert_eq!(r.to_json(), fixture("result_success.json"));
    assert_eq!(
        r.key(),
        "celery-task-meta-65b3e338-d338-40d6-b873-88559d253f4f"
    );

    let fx: Value = serde_json::from_str(&fixture("result_failure.json")).unwrap();
    let r = ResultRecord::failure(
        "506ed8d7-0454-4f79-8ebc-dba052499f90",
        &ExcInfo::new("ValueError", "boom", "builtins"),
        fx["traceback"].as_str().map(str::to_string),
        at("2026-11-23T10:43:21.180183Z"),
    );
    assert_eq!(r.to_json(), fixture("result_failure.json"));

    let r = ResultRecord::not_registered(
        "0746f5f2-e29d-47e2-8382-d302adae5905",
        "tasks.does_not_exist",
        at("2026-11-23T10:43:34.016391Z"),
    );
    assert_eq!(r.to_json(), fixture("result_unknown_task.json"));

    let r = ResultRecord::revoked_expired(
        "6a661d2a-7e9b-4aa0-97eb-4c17391263dd",
        at("2026-11-23T10:43:32.010041Z"),
    );
    assert_eq!(r.to_json(), fixture("result_revoked_expired.json"));

    let r = ResultRecord::retry("x", "Retry in 5s: exit 1", None, at("2026-11-23T10:00:00Z"));
    let v: Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["status"], "RETRY");
    assert_eq!(v["result"]["exc_type"], "Retry");
    assert_eq!(v["date_done"], "2026-11-23T10:00:00+00:00");
}
