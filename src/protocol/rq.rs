//! RQ (python-rq) jobs as RQ 3.0 and 2.x store them, for a stock `rq worker` to run:
//! the `rq:job:<id>` hash and where the id goes. Pure: the id and "now" are inputs. The
//! caller writes [`RqEncoded`] the way `Queue.enqueue` does (captured with MONITOR in
//! `tests/fixtures/rq/rq3_*.json`; RQ 2.12 sends the same):
//!
//! ```text
//! SADD   rq:queues rq:queue:<queue>
//! HSET   rq:job:<id> <fields…>
//! EXPIRE rq:job:<id> <ttl>           only when the job has a ttl (RqEncoded::expire)
//! RPUSH  rq:queue:<queue> <id>       RPUSH: RQ's workers pop the left end (LMOVE/BLPOP)
//! ```
//!
//! Only the fields a worker needs are written, and every unset one is left out rather than
//! written empty: `Job.restore` runs in the worker's parent process, and a malformed integer,
//! timestamp or status there (or an empty `enqueue_at_front` / `*_callback_timeout`) raises
//! out of `Queue.dequeue_any`, so `rq worker` quits and the jobs behind it wait. For the same
//! reason the id is checked against RQ's `JOB_ID_PATTERN` here, before anything is written.

use super::pickle::{self, PyObj};
use super::pyjson::dumps;
use super::pyrepr::pyrepr;
use chrono::{DateTime, Timelike, Utc};
use flate2::write::ZlibEncoder;
use flate2::Compression;
use serde_json::{Map, Value};
use std::io::Write as _;
use std::time::Duration;

/// The set of every queue's key (`Queue.redis_queues_keys`), which `Queue.all()` reads
/// (`rq info`, `rq empty --all`, dashboards). Its members are queue keys, `rq:queue:<name>`.
pub const RQ_QUEUES_KEY: &str = "rq:queues";
/// Prefix of a job's hash (`Job.redis_job_namespace_prefix`).
pub const RQ_JOB_PREFIX: &str = "rq:job:";
/// Prefix of a queue's list (`Queue.redis_queue_namespace_prefix`).
pub const RQ_QUEUE_PREFIX: &str = "rq:queue:";
/// The status of a job waiting in its queue (`JobStatus.QUEUED`).
pub const RQ_STATUS_QUEUED: &str = "queued";

/// `get_call_string`'s `max_length` for each argument's `repr()` in a default description.
const DESCRIPTION_ARG_MAX: usize = 75;

/// How `data` (the call) and `meta` are serialized. A worker must be started with the same
/// one (`rq worker --serializer …`): it has no way to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RqSerializer {
    /// RQ's default, `pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)`.
    #[default]
    Pickle,
    /// `rq.serializers.JSONSerializer`: `json.dumps(obj).encode('utf-8')`.
    Json,
}

impl RqSerializer {
    /// The import path of the serializer class, as `rq worker --serializer` takes it.
    #[must_use]
    pub fn python_path(self) -> &'static str {
        match self {
            Self::Pickle => "rq.serializers.DefaultSerializer",
            Self::Json => "rq.serializers.JSONSerializer",
        }
    }

    fn dumps(self, obj: &PyObj<'_>, json: impl FnOnce() -> Value) -> Vec<u8> {
        match self {
            Self::Pickle => pickle::dumps(obj),
            Self::Json => dumps(&json()).into_bytes(),
        }
    }
}

/// One RQ job to enqueue. The unset options are RQ's defaults, decided by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RqJob {
    /// Job id, a uuid4 string as RQ makes; only ASCII letters, digits, `_` and `-`.
    pub id: String,
    /// Dotted import path of the function (`tasks.count_words`).
    pub func: String,
    /// Positional arguments (a tuple when pickled, as `Queue.enqueue` passes them).
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Queue name (`rq:queue:<queue>`, and the job's `origin`).
    pub queue: String,
    /// Hard time limit of one run; `None`: the worker's default (180 s). Whole seconds,
    /// rounded up.
    pub timeout: Option<Duration>,
    /// Seconds the result is kept; -1 (any negative) keeps it forever, 0 not at all, as in
    /// RQ; `None`: the worker's default (500 s).
    pub result_ttl: Option<i64>,
    /// How long the job may wait in the queue before it is dropped (the job key's expiry);
    /// `None`: forever. Whole seconds, rounded up.
    pub ttl: Option<Duration>,
    /// How long a failed job is kept; `None`: RQ's default, one year; zero drops it at
    /// once. Whole seconds, rounded up.
    pub failure_ttl: Option<Duration>,
    /// Shown in worker logs and dashboards; `None` or empty: RQ's default, the call as
    /// Python would write it (`tasks.count_words('http://x', 3, flag=True)`).
    pub description: Option<String>,
    /// `job.meta`; omitted when empty.
    pub meta: Map<String, Value>,
    /// How `data` and `meta` are serialized.
    pub serializer: RqSerializer,
}

/// An encoded job: the hash to write and where its id goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RqEncoded {
    /// The job id.
    pub id: String,
    /// `rq:job:<id>`, the hash to HSET [`RqEncoded::fields`] into.
    pub job_key: String,
    /// `rq:queue:<queue>`, the list to RPUSH the id onto, and the member to SADD to
    /// [`RQ_QUEUES_KEY`].
    pub queue_key: String,
    /// The hash fields, in the order RQ's `Job.to_dict` has them, each in RQ's encoding.
    pub fields: Vec<(&'static str, Vec<u8>)>,
    /// Seconds to EXPIRE [`RqEncoded::job_key`] after writing it, as `Queue.enqueue` does for
    /// a job with a `ttl`; `None`: no expiry.
    pub expire: Option<u64>,
}

/// Why a job cannot be encoded; each would make RQ's worker refuse or misread it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RqEncodeError {
    /// RQ's `validate_job_id` would raise in the worker's parent process (which quits).
    #[error("RQ job id {0:?} is not RQ's kind: only ASCII letters, digits, '_' and '-'")]
    BadId(String),
    /// No function to import.
    #[error("RQ job {id} has no function name")]
    NoFunc {
        /// The job id.
        id: String,
    },
    /// No queue to push onto.
    #[error("RQ job {id} has no queue name")]
    NoQueue {
        /// The job id.
        id: String,
    },
    /// A zero `timeout` (RQ reads it as "use the default") or `ttl` (RQ deletes the job
    /// before it runs).
    #[error("RQ job {id}: a {field} of 0 s is refused (RQ would {meaning})")]
    Zero {
        /// The job id.
        id: String,
        /// The field: `timeout` or `ttl`.
        field: &'static str,
        /// What RQ would do with it.
        meaning: &'static str,
    },
}

impl RqJob {
    /// A job for `func` on `queue` with id `id`, no arguments and RQ's defaults.
    #[must_use]
    pub fn new(id: impl Into<String>, func: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            func: func.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            queue: queue.into(),
            timeout: None,
            result_ttl: None,
            ttl: None,
            failure_ttl: None,
            description: None,
            meta: Map::new(),
            serializer: RqSerializer::Pickle,
        }
    }

    /// `rq:job:<id>`.
    #[must_use]
    pub fn job_key(&self) -> String {
        format!("{RQ_JOB_PREFIX}{}", self.id)
    }

    /// `rq:queue:<queue>`.
    #[must_use]
    pub fn queue_key(&self) -> String {
        format!("{RQ_QUEUE_PREFIX}{}", self.queue)
    }

    /// The description RQ gives a job enqueued without one: `utils.get_call_string` with
    /// each argument's `repr()` cut at 75 characters (and `...` added), keyword arguments
    /// as `name=repr` sorted as text.
    #[must_use]
    pub fn default_description(&self) -> String {
        let cut = |s: String| {
            if s.chars().count() > DESCRIPTION_ARG_MAX {
                let mut t: String = s.chars().take(DESCRIPTION_ARG_MAX).collect();
                t.push_str("...");
                t
            } else {
                s
            }
        };
        let mut parts: Vec<String> = self.args.iter().map(|a| cut(pyrepr(a))).collect();
        let mut kw: Vec<String> = self
            .kwargs
            .iter()
            .map(|(k, v)| format!("{k}={}", cut(pyrepr(v))))
            .collect();
        kw.sort();
        parts.extend(kw);
        format!("{}({})", self.func, parts.join(", "))
    }

    /// The hash and keys of this job enqueued at `now` (`created_at` and `enqueued_at`).
    ///
    /// # Errors
    /// [`RqEncodeError`] when RQ's worker would refuse or misread the job.
    pub fn encode(&self, now: DateTime<Utc>) -> Result<RqEncoded, RqEncodeError> {
        self.validate()?;
        let stamp = utcformat(now).into_bytes();
        let mut fields: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(11);
        fields.push(("created_at", stamp.clone()));
        fields.push(("data", zlib(&self.data())));
        fields.push(("origin", self.queue.clone().into_bytes()));
        let description = match &self.description {
            Some(d) if !d.is_empty() => d.clone(),
            _ => self.default_description(),
        };
        fields.push(("description", description.into_bytes()));
        fields.push(("enqueued_at", stamp));
        if let Some(t) = self.timeout {
            fields.push(("timeout", whole_secs(t).to_string().into_bytes()));
        }
        if let Some(r) = self.result_ttl {
            fields.push(("result_ttl", r.to_string().into_bytes()));
        }
        if let Some(f) = self.failure_ttl {
            fields.push(("failure_ttl", whole_secs(f).to_string().into_bytes()));
        }
        fields.push(("status", RQ_STATUS_QUEUED.as_bytes().to_vec()));
        if !self.meta.is_empty() {
            let meta = self.serializer.dumps(&PyObj::Dict(&self.meta), || {
                Value::Object(self.meta.clone())
            });
            fields.push(("meta", meta));
        }
        let expire = self.ttl.map(whole_secs);
        if let Some(t) = expire {
            fields.push(("ttl", t.to_string().into_bytes()));
        }
        Ok(RqEncoded {
            id: self.id.clone(),
            job_key: self.job_key(),
            queue_key: self.queue_key(),
            fields,
            expire,
        })
    }

    /// The serialized call before compression: `(func, None, args, kwargs)`, args a tuple
    /// when pickled (what `Queue.enqueue(f, *args)` passes), a list in JSON.
    #[must_use]
    pub fn data(&self) -> Vec<u8> {
        let call = PyObj::Tuple(vec![
            PyObj::Str(&self.func),
            PyObj::None,
            PyObj::Tuple(self.args.iter().map(PyObj::Value).collect()),
            PyObj::Dict(&self.kwargs),
        ]);
        self.serializer.dumps(&call, || {
            Value::Array(vec![
                Value::from(self.func.as_str()),
                Value::Null,
                Value::Array(self.args.clone()),
                Value::Object(self.kwargs.clone()),
            ])
        })
    }

    fn validate(&self) -> Result<(), RqEncodeError> {
        let id_ok = !self.id.is_empty()
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(RqEncodeError::BadId(self.id.clone()));
        }
        let id = || self.id.clone();
        if self.func.is_empty() {
            return Err(RqEncodeError::NoFunc { id: id() });
        }
        if self.queue.is_empty() {
            return Err(RqEncodeError::NoQueue { id: id() });
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(RqEncodeError::Zero {
                id: id(),
                field: "timeout",
                meaning: "use its default of 180 s",
            });
        }
        if self.ttl.is_some_and(|t| t.is_zero()) {
            return Err(RqEncodeError::Zero {
                id: id(),
                field: "ttl",
                meaning: "delete the job before it runs",
            });
        }
        Ok(())
    }
}

/// RQ's `utils.utcformat`, `%Y-%m-%dT%H:%M:%S.%fZ`: always six fraction digits (its
/// `utcparse` reads nothing else but whole seconds). A leap second's extra nanoseconds are
/// dropped, as Python has no 60th second to print either.
#[must_use]
pub fn utcformat(t: DateTime<Utc>) -> String {
    let micros = t.nanosecond() % 1_000_000_000 / 1_000;
    format!("{}.{micros:06}Z", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// Whole seconds, a fraction rounded up (RQ's fields are integers; rounding down could turn
/// 0.5 s into the 0 that RQ reads as "unset").
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `zlib.compress(data)`: a zlib stream (RQ reads `data` with `zlib.decompress`).
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use chrono::TimeZone as _;
    use flate2::read::ZlibDecoder;
    use serde_json::json;
    use std::io::Read as _;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/rq/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).expect("fixture is json")
    }

    fn b64(v: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 text"))
            .expect("base64")
    }

    /// A hash value from the fixture, `{"text": …}` or `{"base64": …}`.
    fn hash_value(v: &Value) -> Vec<u8> {
        match v.get("text") {
            Some(t) => t.as_str().expect("text").as_bytes().to_vec(),
            None => b64(&v["base64"]),
        }
    }

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ZlibDecoder::new(data)
            .read_to_end(&mut out)
            .expect("a zlib stream");
        out
    }

    /// The job of `capture.py`, as beatd would make it.
    fn captured_job(fx: &Value, serializer: RqSerializer) -> RqJob {
        let call = &fx["call"];
        let mut job = RqJob::new(
            fx["job_id"].as_str().expect("id"),
            call["func"].as_str().expect("func"),
            call["queue"].as_str().expect("queue"),
        );
        job.args = call["args"].as_array().expect("args").clone();
        job.kwargs = call["kwargs"].as_object().expect("kwargs").clone();
        job.timeout = Some(Duration::from_secs(30));
        job.result_ttl = Some(600);
        job.ttl = Some(Duration::from_secs(120));
        job.failure_ttl = Some(Duration::from_secs(3600));
        job.description = Some(call["description"].as_str().expect("d").into());
        job.meta = call["meta"].as_object().expect("meta").clone();
        job.serializer = serializer;
        job
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap() + chrono::Duration::microseconds(7)
    }

    /// Every non-empty field RQ writes, ours the same set, and equal where not a clock
    /// reading; `data` and `meta` equal RQ's bytes (pickle: less FRAME and MEMOIZE).
    fn matches_capture(name: &str, serializer: RqSerializer) {
        let fx = fixture(name);
        let enc = captured_job(&fx, serializer)
            .encode(now())
            .expect("encodes");
        let theirs: Vec<(String, Vec<u8>)> = fx["job_hash"]
            .as_object()
            .expect("hash")
            .iter()
            .map(|(k, v)| (k.clone(), hash_value(v)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let mut their_names: Vec<&str> = theirs.iter().map(|(k, _)| k.as_str()).collect();
        let mut our_names: Vec<&str> = enc.fields.iter().map(|(k, _)| *k).collect();
        their_names.sort_unstable();
        our_names.sort_unstable();
        assert_eq!(our_names, their_names, "{name}: field set");

        let ours = |k: &str| {
            enc.fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .expect("field")
        };
        for (k, v) in &theirs {
            match k.as_str() {
                "created_at" | "enqueued_at" => {
                    let text = String::from_utf8(ours(k)).expect("utf-8");
                    assert_eq!(text, "2026-12-01T10:00:00.000007Z");
                    assert_eq!(text.len(), String::from_utf8_lossy(v).len(), "{k} shape");
                }
                "data" => {
                    let want = match serializer {
                        RqSerializer::Pickle => {
                            b64(&fx["data"]["pickle"]["without_frame_and_memo_base64"])
                        }
                        RqSerializer::Json => inflate(v),
                    };
                    assert_eq!(inflate(&ours(k)), want, "{name}: data");
                }
                "meta" => {
                    let want = match serializer {
                        RqSerializer::Pickle => {
                            b64(&fx["meta"]["pickle"]["without_frame_and_memo_base64"])
                        }
                        RqSerializer::Json => v.clone(),
                    };
                    assert_eq!(ours(k), want, "{name}: meta");
                }
                _ => assert_eq!(
                    String::from_utf8_lossy(&ours(k)),
                    String::from_utf8_lossy(v),
                    "{name}: {k}"
                ),
            }
        }
        assert_eq!(enc.job_key, fx["job_key"]);
        assert_eq!(enc.queue_key, fx["queue_key"]);
        assert_eq!(fx["queues_key"], RQ_QUEUES_KEY);
        assert_eq!(fx["queues_members"], json!([enc.queue_key]));
        assert_eq!(fx["queue_contents"], json!([enc.id]));
        assert_eq!(enc.expire, Some(120));
        assert_eq!(fx["keys"][&enc.job_key]["ttl"], 120);
    }

    #[test]
    fn pickle_job_matches_rq3_capture() {
        matches_capture("rq3_pickle.json", RqSerializer::Pickle);
    }

    #[test]
    fn json_job_matches_rq3_capture() {
        matches_capture("rq3_json.json", RqSerializer::Json);
    }

    #[test]
    fn rq2_writes_the_same() {
        matches_capture("rq2_pickle.json", RqSerializer::Pickle);
        matches_capture("rq2_json.json", RqSerializer::Json);
    }

    #[test]
    fn flate2_reads_rqs_zlib() {
        let fx = fixture("rq3_pickle.json");
        let raw = b64(&fx["data"]["raw_base64"]);
        assert_eq!(inflate(&raw), b64(&fx["data"]["base64"]));
        // And RQ's own pickle is the same object as ours with FRAME / MEMOIZE: both start
        // with protocol 5.
        assert_eq!(&inflate(&raw)[..2], b"\x80\x05");
        assert_eq!(fx["data"]["pickle"]["protocol"], 5);
    }

    #[test]
    fn unset_options_are_left_out() {
        let enc = RqJob::new("j1", "tasks.noop", "default")
            .encode(now())
            .expect("encodes");
        let names: Vec<&str> = enc.fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "created_at",
                "data",
                "origin",
                "description",
                "enqueued_at",
                "status"
            ]
        );
        assert!(enc.fields.iter().all(|(_, v)| !v.is_empty()));
        assert_eq!(enc.expire, None);
        assert_eq!(enc.job_key, "rq:job:j1");
        assert_eq!(enc.queue_key, "rq:queue:default");
        // (func, None, (), {})
        assert_eq!(
            inflate(&enc.fields[1].1),
            b"\x80\x05(\x8c\x0atasks.noopN)}t."
        );
    }

    #[test]
    fn json_data_is_pythons_json_dumps() {
        let mut job = RqJob::new("j1", "m.f", "q");
        job.serializer = RqSerializer::Json;
        job.args = vec![json!("é"), json!(1.0), json!(null)];
        job.kwargs = json!({"k": [1, {"a": true}]}).as_object().unwrap().clone();
        assert_eq!(
            String::from_utf8(job.data()).unwrap(),
            r#"["m.f", null, ["\u00e9", 1.0, null], {"k": [1, {"a": true}]}]"#
        );
    }

    #[test]
    fn default_description_is_rqs_call_string() {
        let mut job = RqJob::new("j1", "tasks.count_words", "reports");
        job.args = vec![json!("http://x"), json!(3)];
        job.kwargs = json!({"flag": true, "a": null})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            job.default_description(),
            "tasks.count_words('http://x', 3, a=None, flag=True)"
        );
        job.description = Some(String::new());
        let enc = job.encode(now()).unwrap();
        assert_eq!(
            enc.fields[3],
            (
                "description",
                b"tasks.count_words('http://x', 3, a=None, flag=True)".to_vec()
            )
        );
        // Each repr is cut at 75 characters: `'` and 74 x, then `...`.
        job.args = vec![json!("x".repeat(100))];
        job.kwargs = Map::new();
        assert_eq!(
            job.default_description(),
            format!("tasks.count_words('{}...)", "x".repeat(74))
        );
    }

    #[test]
    fn utcformat_has_six_digits() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(utcformat(t), "2026-01-02T03:04:05.000000Z");
        let t = t + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(utcformat(t), "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn durations_are_whole_seconds_rounded_up() {
        let mut job = RqJob::new("j1", "m.f", "q");
        job.timeout = Some(Duration::from_millis(1500));
        job.ttl = Some(Duration::from_millis(1));
        job.failure_ttl = Some(Duration::ZERO);
        job.result_ttl = Some(-1);
        let enc = job.encode(now()).unwrap();
        let get = |k: &str| {
            enc.fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(get("timeout").as_deref(), Some("2"));
        assert_eq!(get("ttl").as_deref(), Some("1"));
        assert_eq!(get("failure_ttl").as_deref(), Some("0"));
        assert_eq!(get("result_ttl").as_deref(), Some("-1"));
        assert_eq!(enc.expire, Some(1));
    }

    #[test]
    fn refuses_what_rq_would_choke_on() {
        for bad in ["", "a.b", "a:b", "é", "a b"] {
            let err = RqJob::new(bad, "m.f", "q").encode(now()).unwrap_err();
            assert_eq!(err, RqEncodeError::BadId(bad.into()));
        }
        assert!(matches!(
            RqJob::new("j", "", "q").encode(now()),
            Err(RqEncodeError::NoFunc { .. })
        ));
        assert!(matches!(
            RqJob::new("j", "m.f", "").encode(now()),
            Err(RqEncodeError::NoQueue { .. })
        ));
        let mut job = RqJob::new("j", "m.f", "q");
        job.ttl = Some(Duration::ZERO);
        assert!(matches!(
            job.encode(now()),
            Err(RqEncodeError::Zero { field: "ttl", .. })
        ));
        job.ttl = None;
        job.timeout = Some(Duration::ZERO);
        let err = job.encode(now()).unwrap_err();
        assert!(err.to_string().contains("timeout of 0 s"), "{err}");
    }

    #[test]
    fn serializer_paths() {
        assert_eq!(RqSerializer::default(), RqSerializer::Pickle);
        assert_eq!(
            RqSerializer::Json.python_path(),
            "rq.serializers.JSONSerializer"
        );
    }
}
