//! beatd's publishes against what Celery 5.7 publishes (tests/fixtures/celery-amqp, captured
//! by its capture.py from real Celery on a real node): the same declarations, exchange,
//! routing key, properties, header fields of the same AMQP types and values, the same body
//! bytes. Read back through a real RabbitMQ with `basic_get`.

use super::{channel, drain, emitter, lease, redis, vhost};
use beatd::amqp::QueueArgs;
use beatd::emit::{AmqpOptions, Emitter, Fire};
use beatd::protocol::TaskMessage;
use lapin::types::AMQPValue;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/celery-amqp/amqp_capture.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

/// The type tag py-amqp writes for a value lapin read (lapin reads `L` and `l` alike).
fn tag(v: &AMQPValue) -> char {
    match v.get_type().get_id() {
        'l' => 'L',
        c => c,
    }
}

/// A lapin value as the fixture writes one: `{"type": T, "value": V}`, typed inside too.
fn typed(v: &AMQPValue) -> Value {
    let value = match v {
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(typed).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), typed(v)))
                .collect(),
        ),
        other => beatd::amqp::wire::json(other),
    };
    json!({"type": tag(v).to_string(), "value": value})
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

struct Case {
    name: &'static str,
    msg: TaskMessage,
    args: QueueArgs,
}

fn cases() -> Vec<Case> {
    let base = || {
        TaskMessage::new("tasks.add")
            .args(vec![json!(2), json!(3)])
            .kwargs(obj(json!({"x": 1})))
    };
    let none = QueueArgs::default;
    let eta = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05.678901+00:00")
        .unwrap()
        .to_utc();
    vec![
        Case {
            name: "send_task_default",
            msg: base(),
            args: none(),
        },
        Case {
            name: "send_task_priority5",
            msg: base().priority(Some(5)),
            args: none(),
        },
        Case {
            name: "send_task_queue_reports",
            msg: base().queue("reports"),
            args: none(),
        },
        Case {
            name: "send_task_expires60",
            msg: base().expires(Some(
                beatd::clock::Clock::now(&beatd::clock::SystemClock)
                    + chrono::Duration::seconds(60),
            )),
            args: none(),
        },
        Case {
            name: "send_task_eta",
            msg: base().eta(Some(eta)),
            args: none(),
        },
        Case {
            name: "send_task_timelimits",
            msg: TaskMessage::new("tasks.add").timelimit(Some(30.0), Some(20.0)),
            args: none(),
        },
        Case {
            name: "send_task_custom_headers",
            msg: TaskMessage::new("tasks.add")
                .args(vec![json!(1)])
                .headers(obj(json!({"custom_header": "hello", "n": 3}))),
            args: none(),
        },
        Case {
            name: "send_task_max_priority",
            msg: TaskMessage::new("tasks.add")
                .queue("prio")
                .priority(Some(7)),
            args: QueueArgs {
                max_priority: Some(10),
                queue_type: None,
            },
        },
        Case {
            name: "send_task_quorum",
            msg: TaskMessage::new("tasks.add").queue("quorumq"),
            args: QueueArgs {
                max_priority: None,
                queue_type: Some("quorum".into()),
            },
        },
    ]
}

/// Headers whose values differ per message (ids, the producer's name, times relative to now).
const PER_MESSAGE: &[&str] = &["id", "root_id", "origin", "expires"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_what_celery_publishes_field_by_field() {
    let fx = fixture();
    let url = vhost();
    let (_redis, conn) = redis().await;
    let (_leader, lease) = lease(&conn, Duration::from_secs(30)).await;
    let (_c, ch) = channel(&url).await;
    for case in cases() {
        let want = &fx["cases"][case.name];
        let enc = case
            .msg
            .encode(beatd::clock::Clock::now(&beatd::clock::SystemClock));
        let fire = Fire {
            entry: case.name.into(),
            fire_at_ms: 1,
            task_id: enc.id.clone(),
            list_key: enc.list_key.clone(),
            payload: enc.payload.into_bytes(),
            rq: None,
            schedule_fingerprint: "fp".into(),
        };
        let (em, _) = emitter(
            &url,
            &conn,
            AmqpOptions {
                queue_args: case.args,
                ..AmqpOptions::default()
            },
        );
        em.emit(&lease, &[fire]).await.expect("emit");

        let publish = want["frames"].as_array().unwrap().last().unwrap();
        let queue = publish["routing_key"].as_str().unwrap();
        let got = drain(&ch, queue).await;
        assert_eq!(got.len(), 1, "{}: one message in {queue}", case.name);
        let d = &got[0].delivery;
        assert_eq!(d.exchange.as_str(), publish["exchange"], "{}", case.name);
        assert_eq!(d.routing_key.as_str(), queue, "{}", case.name);
        assert_eq!(
            String::from_utf8(d.data.clone()).unwrap(),
            want["body"].as_str().unwrap(),
            "{}: body bytes",
            case.name
        );

        // Properties: the same ones set, of the same values where not per message.
        let p = &d.properties;
        let mut props = BTreeMap::new();
        let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| json!(s.as_str()));
        for (k, v) in [
            ("content_type", s(p.content_type())),
            ("content_encoding", s(p.content_encoding())),
            (
                "application_headers",
                p.headers().as_ref().map(|_| Value::Null),
            ),
            ("delivery_mode", p.delivery_mode().map(|m| json!(m))),
            ("priority", p.priority().map(|m| json!(m))),
            ("correlation_id", s(p.correlation_id())),
            ("reply_to", s(p.reply_to())),
            ("expiration", s(p.expiration())),
            ("message_id", s(p.message_id())),
            ("type", s(p.kind())),
        ] {
            if let Some(v) = v {
                props.insert(k.to_owned(), v);
            }
        }
        let want_props = want["properties"].as_object().unwrap();
        assert_eq!(
            props.keys().collect::<Vec<_>>(),
            {
                let mut k: Vec<_> = want_props.keys().collect();
                k.sort();
                k
            },
            "{}: properties set",
            case.name
        );
        for k in [
            "content_type",
            "content_encoding",
            "delivery_mode",
            "priority",
        ] {
            assert_eq!(props[k], want_props[k]["value"], "{}: {k}", case.name);
        }
        assert_eq!(props["correlation_id"], json!(enc.id), "{}", case.name);
        if let Some(exp) = props.get("expiration") {
            let ms: i64 = exp.as_str().unwrap().parse().unwrap();
            assert!(
                (50_000..=60_000).contains(&ms),
                "{}: expiration {ms}",
                case.name
            );
        }

        // Header table: the same fields, each of the type py-amqp writes, same values.
        let headers = p.headers().as_ref().expect("headers");
        let got_h: BTreeMap<String, Value> = headers
            .inner()
            .iter()
            // A quorum queue adds its delivery count on the way out.
            .filter(|(k, _)| k.as_str() != "x-delivery-count")
            .map(|(k, v)| (k.as_str().to_owned(), typed(v)))
            .collect();
        let want_h: BTreeMap<String, Value> = want["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            got_h.keys().collect::<Vec<_>>(),
            want_h.keys().collect::<Vec<_>>(),
            "{}: header names",
            case.name
        );
        for (k, w) in &want_h {
            let g = &got_h[k];
            assert_eq!(g["type"], w["type"], "{}: type of header {k}", case.name);
            // Celery's send_task turns `args=[]` into `()` before its repr; the repr is only
            // for logs.
            if k == "argsrepr" && w["value"] == "()" {
                assert_eq!(g["value"], "[]", "{}", case.name);
            } else if !PER_MESSAGE.contains(&k.as_str()) {
                assert_eq!(g, w, "{}: header {k}", case.name);
            }
        }
        assert_eq!(got_h["id"]["value"], json!(enc.id));
        assert_eq!(got_h["root_id"]["value"], json!(enc.id));
    }

    // Declarations, as RabbitMQ holds them: the same exchanges, queues (with arguments only
    // where configured) and bindings as Celery's sends left.
    let node = super::node();
    let vh = url.vhost();
    let list = |what: &str, cols: &[&str]| -> Value {
        let mut args = vec![what, "-p", vh, "--formatter", "json"];
        args.extend_from_slice(cols);
        let mut v: Vec<Value> =
            serde_json::from_str(&node.ctl(&args).expect("rabbitmqctl")).unwrap();
        v.sort_by_key(|x| x.to_string());
        Value::Array(v)
    };
    let sorted = |v: &Value| {
        let mut v = v.as_array().unwrap().clone();
        v.sort_by_key(|x| x.to_string());
        Value::Array(v)
    };
    assert_eq!(
        list(
            "list_exchanges",
            &[
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments"
            ]
        ),
        sorted(&fx["broker"]["exchanges"])
    );
    assert_eq!(
        list(
            "list_queues",
            &["name", "durable", "auto_delete", "exclusive", "arguments"]
        ),
        sorted(&fx["broker"]["queues"])
    );
    assert_eq!(
        list(
            "list_bindings",
            &[
                "source_name",
                "destination_name",
                "routing_key",
                "arguments"
            ]
        ),
        sorted(&fx["broker"]["bindings"])
    );
}

/// The declarations Celery's producer sent before its publish, decoded from the capture:
/// the exchange and queue beatd declares are the same (the passive check first is extra).
#[test]
fn the_capture_declares_a_durable_direct_exchange_queue_and_binding() {
    let fx = fixture();
    let frames = fx["cases"]["send_task_default"]["frames"]
        .as_array()
        .unwrap()
        .clone();
    let methods: Vec<&str> = frames
        .iter()
        .map(|f| f["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "exchange.declare",
            "queue.declare",
            "queue.bind",
            "basic.publish"
        ]
    );
    assert_eq!(frames[0]["type"], "direct");
    assert_eq!(frames[0]["durable"], true);
    assert_eq!(frames[1]["durable"], true);
    assert_eq!(frames[1]["arguments"], json!({}));
    assert_eq!(frames[3]["exchange"], "");
    assert_eq!(frames[3]["routing_key"], "celery");
    let prio = &fx["cases"]["send_task_max_priority"]["frames"][1]["arguments"];
    assert_eq!(
        beatd::amqp::QueueArgs {
            max_priority: Some(10),
            queue_type: None
        }
        .table()
        .inner()
        .len(),
        prio.as_object().unwrap().len()
    );
}
