//! kombu's message on AMQP, as its pyamqp transport writes it: the envelope beatd builds for
//! Redis (`protocol::TaskMessage`) mapped onto a publish (the default exchange and the queue
//! as routing key, the basic properties, the protocol-2 headers as an AMQP table, the raw JSON
//! body), and a delivery mapped back onto that envelope, so the worker's pipeline reads both
//! transports the same way.
//!
//! Field types are py-amqp's (`serialization._write_item`): strings `S`, booleans `t`,
//! floats `d`, integers `I` (signed 32-bit) or, beyond ±2,147,483,647, 64-bit, `null` `V`,
//! arrays `A`, objects `F`. Matched field by field against
//! `tests/fixtures/celery-amqp/amqp_capture.json`; the table's order is lapin's (sorted by
//! name), which no reader depends on.

use base64::Engine;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{Map, Value};

/// One message ready for `basic.publish`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// The exchange (`""`: the default exchange, as Celery publishes).
    pub exchange: String,
    /// The routing key: the queue name.
    pub routing_key: String,
    /// `content_type`, `content_encoding`, the header table, `delivery_mode`, `priority`,
    /// `correlation_id`, `reply_to`, and `expiration` when set.
    pub properties: BasicProperties,
    /// The raw JSON body `[args, kwargs, embed]`.
    pub body: Vec<u8>,
}

/// A JSON value as py-amqp types it in a table.
#[must_use]
pub fn field(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => match i32::try_from(i) {
                // py-amqp writes `I` for |v| <= 2**31 - 1, so -2**31 is 64-bit there too
                Ok(small) if small != i32::MIN => AMQPValue::LongInt(small),
                _ => AMQPValue::LongLongInt(i),
            },
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(field).collect::<Vec<_>>()))
        }
        Value::Object(o) => AMQPValue::FieldTable(table(o)),
    }
}

/// A JSON object as an AMQP table.
#[must_use]
pub fn table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(ShortString::from(k.as_str()), field(v));
    }
    t
}

/// An AMQP field as JSON (what kombu hands Celery after py-amqp decoded it).
#[must_use]
pub fn json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

/// The publish of a kombu envelope (the JSON text beatd would `LPUSH` on Redis).
///
/// # Errors
/// A text that is not such an envelope, or whose body is not base64 of UTF-8.
pub fn publish(envelope: &[u8]) -> Result<Publish, String> {
    let env: Value = serde_json::from_slice(envelope).map_err(|e| format!("not JSON: {e}"))?;
    let get = |k: &str| env.get(k);
    let props = get("properties")
        .and_then(Value::as_object)
        .ok_or("no properties")?;
    let info = props
        .get("delivery_info")
        .and_then(Value::as_object)
        .ok_or("no properties.delivery_info")?;
    let routing_key = info
        .get("routing_key")
        .and_then(Value::as_str)
        .ok_or("no delivery_info.routing_key")?
        .to_owned();
    let exchange = info
        .get("exchange")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let body_text = get("body").and_then(Value::as_str).ok_or("no body")?;
    let body = match props.get("body_encoding").and_then(Value::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body_text)
            .map_err(|e| format!("body is not base64: {e}"))?,
        _ => body_text.as_bytes().to_vec(),
    };
    let headers = get("headers")
        .and_then(Value::as_object)
        .ok_or("no headers")?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(ShortString::from);
    let mut p = BasicProperties::default()
        .with_content_type(
            s(get("content-type")).unwrap_or_else(|| ShortString::from("application/json")),
        )
        .with_content_encoding(
            s(get("content-encoding")).unwrap_or_else(|| ShortString::from("utf-8")),
        )
        .with_headers(table(headers))
        .with_delivery_mode(
            props
                .get("delivery_mode")
                .and_then(Value::as_u64)
                .and_then(|m| u8::try_from(m).ok())
                .unwrap_or(2),
        )
        .with_priority(
            props
                .get("priority")
                .and_then(Value::as_u64)
                .map_or(0, |p| u8::try_from(p.min(255)).unwrap_or(255)),
        );
    if let Some(c) = s(props.get("correlation_id")) {
        p = p.with_correlation_id(c);
    }
    if let Some(r) = s(props.get("reply_to")) {
        p = p.with_reply_to(r);
    }
    if let Some(e) = s(props.get("expiration")) {
        p = p.with_expiration(e);
    }
    Ok(Publish {
        exchange,
        routing_key,
        properties: p,
        body,
    })
}

/// The kombu envelope of a delivery, as the Redis transport would hold it, for the worker's
/// pipeline: the body base64-encoded, the properties and header table as JSON, a fresh
/// `delivery_tag`.
#[must_use]
pub fn envelope(
    exchange: &str,
    routing_key: &str,
    redelivered: bool,
    properties: &BasicProperties,
    body: &[u8],
) -> Vec<u8> {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| Value::String(s.as_str().to_owned()));
    let headers = properties
        .headers()
        .as_ref()
        .map_or(Value::Object(Map::new()), |h| {
            json(&AMQPValue::FieldTable(h.clone()))
        });
    let mut props = Map::new();
    props.insert(
        "correlation_id".into(),
        text(properties.correlation_id()).unwrap_or(Value::Null),
    );
    props.insert(
        "reply_to".into(),
        text(properties.reply_to()).unwrap_or(Value::Null),
    );
    props.insert(
        "delivery_mode".into(),
        properties.delivery_mode().map_or(Value::Null, Value::from),
    );
    let mut info = Map::new();
    info.insert("exchange".into(), exchange.into());
    info.insert("routing_key".into(), routing_key.into());
    if redelivered {
        info.insert("redelivered".into(), true.into());
    }
    props.insert("delivery_info".into(), Value::Object(info));
    props.insert(
        "priority".into(),
        properties.priority().map_or(0, u64::from).into(),
    );
    props.insert("body_encoding".into(), "base64".into());
    props.insert(
        "delivery_tag".into(),
        uuid::Uuid::new_v4().to_string().into(),
    );
    if let Some(e) = text(properties.expiration()) {
        props.insert("expiration".into(), e);
    }
    let mut env = Map::new();
    env.insert(
        "body".into(),
        base64::engine::general_purpose::STANDARD
            .encode(body)
            .into(),
    );
    env.insert(
        "content-encoding".into(),
        text(properties.content_encoding()).unwrap_or_else(|| "utf-8".into()),
    );
    env.insert(
        "content-type".into(),
        text(properties.content_type()).unwrap_or(Value::Null),
    );
    env.insert("headers".into(), headers);
    env.insert("properties".into(), Value::Object(props));
    serde_json::to_vec(&Value::Object(env)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_typed_as_py_amqp_types_them() {
        assert_eq!(field(&Value::from(0)), AMQPValue::LongInt(0));
        assert_eq!(
            field(&Value::from(2_147_483_647)),
            AMQPValue::LongInt(2_147_483_647)
        );
        assert_eq!(
            field(&Value::from(2_147_483_648_i64)),
            AMQPValue::LongLongInt(2_147_483_648)
        );
        assert_eq!(
            field(&Value::from(-2_147_483_648_i64)),
            AMQPValue::LongLongInt(-2_147_483_648)
        );
        assert_eq!(field(&Value::from(1.5)), AMQPValue::Double(1.5));
        assert_eq!(field(&Value::Null), AMQPValue::Void);
    }

    #[test]
    fn a_delivery_maps_back_onto_the_envelope_it_came_from() {
        let env = br#"{"body": "W1sxXSwge30sIHt9XQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"task": "t", "id": "i", "timelimit": [null, 3], "stamps": {}}, "properties": {"correlation_id": "i", "reply_to": "", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q"}, "priority": 4, "body_encoding": "base64", "delivery_tag": "x"}}"#;
        let p = publish(env).unwrap();
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("", "q"));
        assert_eq!(p.body, b"[[1], {}, {}]");
        assert_eq!(p.properties.priority(), &Some(4));
        let back = envelope("", "q", false, &p.properties, &p.body);
        let back: Value = serde_json::from_slice(&back).unwrap();
        let orig: Value = serde_json::from_slice(env).unwrap();
        assert_eq!(back["headers"], orig["headers"]);
        assert_eq!(back["body"], orig["body"]);
        assert_eq!(
            back["properties"]["delivery_info"],
            orig["properties"]["delivery_info"]
        );
        assert_eq!(back["properties"]["priority"], 4);
        assert!(publish(b"{}").is_err());
        assert!(publish(b"[").is_err());
    }
}
