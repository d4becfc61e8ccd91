//! Celery's canvas as a worker follows it (`celery.app.trace`): after a success, the next
//! signature of the body's `chain` and each of its `callbacks` are sent with the result
//! prepended (unless immutable); after a failure, each `errbacks` signature is sent with the
//! task id, and every task id still ahead in the chain gets the same FAILURE, so a
//! `chain(...).get()` raises instead of waiting forever. Chords are not supported: a chord
//! member is failed before it runs, saying so. Builds messages only; sending them is the
//! transport's, in the same step as the ack.

use crate::protocol::{new_uuid, parse_iso, ExcInfo, ParsedTask, ResultRecord, TaskMessage};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A message to send once the current one is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The task id it carries.
    pub id: String,
    /// Redis list (queue plus priority suffix) to LPUSH onto.
    pub list_key: String,
    /// The envelope.
    pub payload: String,
}

/// The failure a chord member gets instead of running.
#[must_use]
pub fn chord_unsupported(task: &ParsedTask) -> Option<ExcInfo> {
    let chord = task.embed.get("chord")?;
    (!chord.is_null()).then(|| {
        ExcInfo::new(
            "NotImplementedError",
            "chords are not supported by the beatd worker: run the chord's header tasks on a \
             Celery worker, or use a chain",
            "builtins",
        )
    })
}

/// The messages to send after `task` succeeded with `value`.
#[must_use]
pub fn on_success(task: &ParsedTask, value: &Value, now: DateTime<Utc>) -> Vec<Outgoing> {
    let mut out = Vec::new();
    if let Some(Value::Array(chain)) = task.embed.get("chain") {
        let mut rest = chain.clone();
        if let Some(Value::Object(next)) = rest.pop() {
            apply(&next, Some(value), task, rest, now, &mut out);
        }
    }
    for cb in sigs(task.embed.get("callbacks")) {
        apply(cb, Some(value), task, Vec::new(), now, &mut out);
    }
    out
}

/// The messages to send and the records to store after `task` failed for good with `exc`.
#[must_use]
pub fn on_failure(
    task: &ParsedTask,
    exc: &ExcInfo,
    traceback: Option<&str>,
    now: DateTime<Utc>,
) -> (Vec<Outgoing>, Vec<ResultRecord>) {
    let mut records = Vec::new();
    if let Some(Value::Array(chain)) = task.embed.get("chain") {
        for sig in chain {
            if let Some(id) = sig
                .get("options")
                .and_then(|o| o.get("task_id"))
                .and_then(Value::as_str)
            {
                records.push(ResultRecord::failure(
                    id,
                    exc,
                    traceback.map(str::to_owned),
                    now,
                ));
            }
        }
    }
    let mut out = Vec::new();
    let id = Value::String(task.id.clone());
    for eb in sigs(task.embed.get("errbacks")) {
        apply(eb, Some(&id), task, Vec::new(), now, &mut out);
    }
    (out, records)
}

/// A `callbacks`/`errbacks` value: a list of signatures (or one), `null` for none.
fn sigs(v: Option<&Value>) -> Vec<&Map<String, Value>> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_object).collect(),
        Some(Value::Object(one)) => vec![one],
        _ => Vec::new(),
    }
}

/// `signature.apply_async((arg,), chain=chain, parent_id=…, root_id=…)`: groups send each
/// member, chains their first task with the rest as its chain.
fn apply(
    sig: &Map<String, Value>,
    arg: Option<&Value>,
    parent: &ParsedTask,
    chain: Vec<Value>,
    now: DateTime<Utc>,
    out: &mut Vec<Outgoing>,
) {
    let members = || -> Vec<Value> {
        sig.get("kwargs")
            .and_then(|k| k.get("tasks"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match sig.get("subtask_type").and_then(Value::as_str) {
        Some("group") => {
            for m in members() {
                if let Value::Object(m) = m {
                    apply(&m, arg, parent, chain.clone(), now, out);
                }
            }
        }
        Some("chain") => {
            let mut tasks = members();
            if tasks.is_empty() {
                return;
            }
            let Value::Object(first) = tasks.remove(0) else {
                return;
            };
            // The embed's chain runs last-first: the next task is at the end.
            let mut rest: Vec<Value> = chain;
            rest.extend(tasks.into_iter().rev());
            apply(&first, arg, parent, rest, now, out);
        }
        Some(other) => {
            tracing::error!(task_id = %parent.id, kind = other,
                "cannot follow a {other} signature (chords are not supported); not sent");
        }
        None => match message(sig, arg, parent, chain, now) {
            Some(m) => out.push(m),
            None => {
                let signature = Value::Object(sig.clone()).to_string();
                tracing::error!(task_id = %parent.id, %signature,
                    "malformed signature in the task's canvas; not sent");
            }
        },
    }
}

/// The task message of one plain signature.
fn message(
    sig: &Map<String, Value>,
    arg: Option<&Value>,
    parent: &ParsedTask,
    chain: Vec<Value>,
    now: DateTime<Utc>,
) -> Option<Outgoing> {
    let task = sig.get("task")?.as_str()?;
    let empty = Map::new();
    let opts = sig
        .get("options")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut args = match sig.get("args") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return None,
    };
    let kwargs = match sig.get("kwargs") {
        Some(Value::Object(k)) => k.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return None,
    };
    let immutable = sig
        .get("immutable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let (Some(arg), false) = (arg, immutable) {
        args.insert(0, arg.clone());
    }
    let str_opt = |k: &str| opts.get(k).and_then(Value::as_str).map(str::to_owned);
    let queue = match opts.get("queue") {
        Some(Value::String(q)) => Some(q.clone()),
        Some(Value::Object(q)) => q.get("name").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
    .or_else(|| str_opt("routing_key"))
    .unwrap_or_else(|| "celery".to_owned());
    let root = parent
        .headers
        .get("root_id")
        .and_then(Value::as_str)
        .unwrap_or(&parent.id)
        .to_owned();
    let eta = match (opts.get("countdown"), opts.get("eta")) {
        (Some(c), _) if c.as_f64().is_some() => {
            let secs = c.as_f64().unwrap_or(0.0).max(0.0);
            chrono::Duration::from_std(std::time::Duration::from_secs_f64(secs))
                .ok()
                .map(|d| now + d)
        }
        (_, Some(Value::String(e))) => parse_iso(e),
        _ => None,
    };
    let expires = match opts.get("expires") {
        Some(Value::String(e)) => parse_iso(e),
        Some(v) => v
            .as_f64()
            .and_then(|s| {
                chrono::Duration::from_std(std::time::Duration::from_secs_f64(s.max(0.0))).ok()
            })
            .map(|d| now + d),
        None => None,
    };
    let mut msg = TaskMessage::new(task)
        .id(str_opt("task_id").unwrap_or_else(new_uuid))
        .args(args)
        .kwargs(kwargs)
        .queue(queue)
        .priority(
            opts.get("priority")
                .and_then(Value::as_u64)
                .map(|p| u8::try_from(p.min(255)).unwrap_or(255)),
        )
        .eta(eta)
        .expires(expires)
        .timelimit(
            opts.get("time_limit").and_then(Value::as_f64),
            opts.get("soft_time_limit").and_then(Value::as_f64),
        )
        .origin(crate::host::origin())
        .parent_id(Some(parent.id.clone()))
        .root_id(Some(root));
    if let Some(reply_to) = str_opt("reply_to") {
        msg = msg.reply_to(reply_to);
    }
    if let Some(group) = str_opt("group_id") {
        let mut h = Map::new();
        h.insert("group".into(), group.into());
        if let Some(i) = opts.get("group_index") {
            h.insert("group_index".into(), i.clone());
        }
        msg = msg.headers(h);
    }
    let link = |k: &str| match opts.get(k) {
        Some(Value::Object(one)) => Value::Array(vec![Value::Object(one.clone())]),
        Some(v @ Value::Array(_)) => v.clone(),
        _ => Value::Null,
    };
    msg.embed.insert("callbacks".into(), link("link"));
    msg.embed.insert("errbacks".into(), link("link_error"));
    msg.embed.insert(
        "chain".into(),
        if chain.is_empty() {
            Value::Null
        } else {
            Value::Array(chain)
        },
    );
    msg.embed.insert(
        "chord".into(),
        opts.get("chord").cloned().unwrap_or(Value::Null),
    );
    let enc = msg.encode(now);
    Some(Outgoing {
        id: enc.id,
        list_key: enc.list_key,
        payload: enc.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Envelope;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn parsed(embed: Value) -> ParsedTask {
        let mut msg = TaskMessage::new("t.step").id("parent-id");
        if let Value::Object(e) = embed {
            msg.embed = e;
        }
        let enc = msg.encode(at());
        Envelope::parse(enc.payload.as_bytes()).unwrap()
    }

    fn body(o: &Outgoing) -> Value {
        use base64::Engine as _;
        let env: Value = serde_json::from_str(&o.payload).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    fn sig(task: &str, id: &str) -> Value {
        json!({"task": task, "args": [10], "kwargs": {}, "options": {"task_id": id},
               "subtask_type": null, "immutable": false, "chord_size": null})
    }

    #[test]
    fn chain_sends_the_next_with_the_result_prepended_and_the_rest() {
        let t = parsed(json!({"chain": [sig("t.c", "id-c"), sig("t.b", "id-b")]}));
        let out = on_success(&t, &json!(5), at());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "id-b");
        let b = body(&out[0]);
        assert_eq!(b[0], json!([5, 10]));
        assert_eq!(b[2]["chain"][0]["options"]["task_id"], "id-c");
        let env: Value = serde_json::from_str(&out[0].payload).unwrap();
        assert_eq!(env["headers"]["parent_id"], "parent-id");
        assert_eq!(env["headers"]["root_id"], "parent-id");
    }

    #[test]
    fn failure_fails_the_rest_of_the_chain_and_sends_errbacks() {
        let t = parsed(json!({"chain": [sig("t.c", "id-c")], "errbacks": [sig("t.on_err", "e")]}));
        let exc = ExcInfo::new("ExecFailed", "boom", "beatd");
        let (out, records) = on_failure(&t, &exc, None, at());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].task_id, "id-c");
        assert_eq!(body(&out[0])[0], json!(["parent-id", 10]));
        assert!(chord_unsupported(&t).is_none());
        let c = parsed(json!({"chord": sig("t.body", "b")}));
        assert!(chord_unsupported(&c).is_some());
    }
}
