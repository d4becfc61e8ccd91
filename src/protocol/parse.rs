//! Reading Celery task messages as a worker receives them (protocol v2, JSON only), with a
//! typed error for every way a message can be malformed. The error keeps the task id when it
//! could be read, so the worker can store a FAILURE for it (celery-wire §11). Never panics on
//! input; pickle is refused.

use super::isotime::parse_iso;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The list element is not JSON at all.
    #[error("message is not json: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The list element is JSON but not an object.
    #[error("message is not a json object")]
    NotObject,
    /// A required field is absent or has the wrong type.
    #[error("message has no usable {field}")]
    Missing {
        /// Dotted path of the field.
        field: &'static str,
        /// The task id, when it could be read.
        id: Option<String>,
    },
    /// `body_encoding` says base64 but the body is not.
    #[error("message body is not valid base64")]
    BadBase64 {
        /// The task id, when it could be read.
        id: Option<String>,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// The decoded body is not JSON.
    #[error("message body is not json")]
    BodyNotJson {
        /// The task id, when it could be read.
        id: Option<String>,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The body is JSON but not `[args, kwargs, embed]` (or a tolerated variant).
    #[error("message body has the wrong shape: {detail}")]
    BodyShape {
        /// The task id, when it could be read.
        id: Option<String>,
        /// What was wrong.
        detail: String,
    },
    /// A serializer other than JSON (pickle, yaml, msgpack).
    #[error("refusing content type {content_type:?}: only application/json is accepted")]
    UnsupportedContentType {
        /// The task id, when it could be read.
        id: Option<String>,
        /// The declared content type.
        content_type: String,
    },
    /// `eta` or `expires` is not an ISO-8601 time.
    #[error("invalid {field} value {value:?}")]
    BadTime {
        /// The task id.
        id: Option<String>,
        /// `eta` or `expires`.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// The message is larger than the worker accepts.
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The task id, when it could be read cheaply.
        id: Option<String>,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl DecodeError {
    /// The task id, when the message got far enough to have one.
    #[must_use]
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Self::NotJson(_) | Self::NotObject => None,
            Self::Missing { id, .. }
            | Self::BadBase64 { id, .. }
            | Self::BodyNotJson { id, .. }
            | Self::BodyShape { id, .. }
            | Self::UnsupportedContentType { id, .. }
            | Self::BadTime { id, .. }
            | Self::TooLarge { id, .. } => id.as_deref(),
        }
    }
}

/// A task message, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTask {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Do not run before.
    pub eta: Option<DateTime<Utc>>,
    /// Revoke if not started by.
    pub expires: Option<DateTime<Utc>>,
    /// Retry count.
    pub retries: u32,
    /// `[hard, soft]` seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    /// `None` means the task's default.
    pub ignore_result: Option<bool>,
    /// kombu delivery tag.
    pub delivery_tag: String,
    /// `delivery_info.exchange`.
    pub exchange: String,
    /// `delivery_info.routing_key`.
    pub routing_key: String,
    /// `properties.priority` (informational; the list decides).
    pub priority: Option<u8>,
    /// Set by a kombu restore.
    pub redelivered: bool,
    /// Every header, beatd's and custom ones included.
    pub headers: Map<String, Value>,
    /// The whole envelope, for re-publishing (retries, restores).
    pub envelope: Map<String, Value>,
    /// The body's third element (`callbacks`, `errbacks`, `chain`, `chord`); empty when the
    /// body has none.
    pub embed: Map<String, Value>,
}

/// Namespace for reading envelopes.
#[derive(Debug, Clone, Copy)]
pub struct Envelope;

impl Envelope {
    /// Reads one list element.
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong; see its variants.
    pub fn parse(bytes: &[u8]) -> Result<ParsedTask, DecodeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(DecodeError::NotJson)?;
        let Value::Object(env) = value else {
            return Err(DecodeError::NotObject);
        };
        parse_object(env)
    }

    /// Like [`Envelope::parse`], but refuses elements above `limit` bytes, reading only the
    /// task id from them (so a FAILURE can still be stored).
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`], or as [`Envelope::parse`].
    pub fn parse_limited(bytes: &[u8], limit: usize) -> Result<ParsedTask, DecodeError> {
        if bytes.len() > limit {
            #[derive(serde::Deserialize)]
            struct Head {
                headers: Option<IdOnly>,
            }
            #[derive(serde::Deserialize)]
            struct IdOnly {
                id: Option<String>,
            }
            let id = serde_json::from_slice::<Head>(bytes)
                .ok()
                .and_then(|h| h.headers?.id);
            return Err(DecodeError::TooLarge {
                id,
                len: bytes.len(),
                limit,
            });
        }
        Self::parse(bytes)
    }
}

fn parse_object(env: Map<String, Value>) -> Result<ParsedTask, DecodeError> {
    let headers = env.get("headers").and_then(Value::as_object).cloned();
    let mut id = headers.as_ref().and_then(|h| str_of(h, "id"));
    let missing = |field, id: &Option<String>| DecodeError::Missing {
        field,
        id: id.clone(),
    };
    let Some(headers) = headers else {
        return Err(missing("headers", &id));
    };
    let props = env
        .get("properties")
        .and_then(Value::as_object)
        .ok_or(missing("properties", &id))?;
    let delivery_tag =
        str_of(props, "delivery_tag").ok_or(missing("properties.delivery_tag", &id))?;
    let info = props
        .get("delivery_info")
        .and_then(Value::as_object)
        .ok_or(missing("properties.delivery_info", &id))?;
    let exchange = str_of(info, "exchange").ok_or(missing("delivery_info.exchange", &id))?;
    let routing_key =
        str_of(info, "routing_key").ok_or(missing("delivery_info.routing_key", &id))?;
    let content_type = str_of(&env, "content-type").ok_or(missing("content-type", &id))?;
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" {
        return Err(DecodeError::UnsupportedContentType { id, content_type });
    }

    let body = decode_body(&env, props, &id)?;
    let (args, kwargs, body_task, body_id, embed) = body_parts(body, &id)?;
    if id.is_none() {
        id = body_id;
    }
    let Some(id) = id else {
        return Err(missing("headers.id", &None));
    };
    let some_id = Some(id.clone());
    let task = str_of(&headers, "task")
        .or(body_task)
        .ok_or(missing("headers.task", &some_id))?;
    let eta = time_of(&headers, "eta", &some_id)?;
    let expires = time_of(&headers, "expires", &some_id)?;
    let retries = headers.get("retries").and_then(Value::as_u64).unwrap_or(0);
    let limits = headers.get("timelimit").and_then(Value::as_array);
    let limit = |i: usize| limits.and_then(|l| l.get(i)).and_then(Value::as_f64);
    Ok(ParsedTask {
        task,
        args,
        kwargs,
        eta,
        expires,
        retries: u32::try_from(retries).unwrap_or(u32::MAX),
        timelimit: (limit(0), limit(1)),
        ignore_result: headers.get("ignore_result").and_then(Value::as_bool),
        delivery_tag,
        exchange,
        routing_key,
        priority: props
            .get("priority")
            .and_then(Value::as_u64)
            .map(|p| u8::try_from(p.min(255)).unwrap_or(255)),
        redelivered: headers
            .get("redelivered")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            || info
                .get("redelivered")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        id,
        headers,
        envelope: env,
        embed,
    })
}

fn decode_body(
    env: &Map<String, Value>,
    props: &Map<String, Value>,
    id: &Option<String>,
) -> Result<Value, DecodeError> {
    let body = env.get("body").ok_or(DecodeError::Missing {
        field: "body",
        id: id.clone(),
    })?;
    let Value::String(text) = body else {
        // Some hand-made producers put the body in as JSON directly; accept it.
        return Ok(body.clone());
    };
    let encoding = props
        .get("body_encoding")
        .and_then(Value::as_str)
        .unwrap_or("utf-8");
    let bytes = if encoding.eq_ignore_ascii_case("base64") {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|source| DecodeError::BadBase64 {
                id: id.clone(),
                source,
            })?
    } else {
        text.as_bytes().to_vec()
    };
    serde_json::from_slice(&bytes).map_err(|source| DecodeError::BodyNotJson {
        id: id.clone(),
        source,
    })
}

type BodyParts = (
    Vec<Value>,
    Map<String, Value>,
    Option<String>,
    Option<String>,
    Map<String, Value>,
);

/// `[args, kwargs, embed]`, the 2-element `[args, kwargs]`, or Celery's "hybrid" object
/// `{"args":…, "kwargs":…}` (which may also carry `task` and `id`, protocol-v1 style).
fn body_parts(body: Value, id: &Option<String>) -> Result<BodyParts, DecodeError> {
    let shape = |detail: &str| DecodeError::BodyShape {
        id: id.clone(),
        detail: detail.into(),
    };
    let (args, kwargs, task, bid, embed) = match body {
        Value::Array(mut items) if items.len() == 2 || items.len() == 3 => {
            let embed = match items.get_mut(2) {
                Some(Value::Object(e)) => std::mem::take(e),
                _ => Map::new(),
            };
            items.truncate(2);
            let kwargs = items.pop().unwrap_or(Value::Null);
            let args = items.pop().unwrap_or(Value::Null);
            (args, kwargs, None, None, embed)
        }
        Value::Array(items) => {
            return Err(shape(&format!(
                "expected [args, kwargs, embed], got {} items",
                items.len()
            )))
        }
        Value::Object(mut o) => {
            let task = o.get("task").and_then(Value::as_str).map(str::to_string);
            let bid = o.get("id").and_then(Value::as_str).map(str::to_string);
            (
                o.remove("args").unwrap_or(Value::Null),
                o.remove("kwargs").unwrap_or(Value::Null),
                task,
                bid,
                Map::new(),
            )
        }
        _ => return Err(shape("expected a json array")),
    };
    let args = match args {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        _ => return Err(shape("args is not a list")),
    };
    let kwargs = match kwargs {
        Value::Object(k) => k,
        Value::Null => Map::new(),
        _ => return Err(shape("kwargs is not an object")),
    };
    Ok((args, kwargs, task, bid, embed))
}

fn str_of(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

fn time_of(
    h: &Map<String, Value>,
    field: &'static str,
    id: &Option<String>,
) -> Result<Option<DateTime<Utc>>, DecodeError> {
    match h.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(s).map(Some).ok_or_else(|| DecodeError::BadTime {
            id: id.clone(),
            field,
            value: s.clone(),
        }),
        Some(other) => Err(DecodeError::BadTime {
            id: id.clone(),
            field,
            value: other.to_string(),
        }),
    }
}
