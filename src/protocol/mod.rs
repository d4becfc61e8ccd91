//! Celery protocol v2 messages and result-backend records, built and read exactly as
//! Celery 5.7 and kombu 5.7 write them on Redis (see `celery-wire/README.md`), and RQ jobs
//! as python-rq 3.0 (and 2.x) stores them.
//!
//! Owns: envelope building ([`TaskMessage`]), envelope reading ([`Envelope::parse`]),
//! priority list keys, result records, RQ job hashes ([`RqJob`]), and the Python
//! conventions they need (`json.dumps` separators, `repr()`, `isoformat()`, a pickle
//! writer). Owns no I/O and reads no clock: ids and "now" are arguments, so every output is
//! byte-stable and golden-tested.

mod isotime;
mod message;
mod parse;
mod pickle;
mod pyjson;
mod pyrepr;
mod result;
mod rq;

pub use isotime::{isoformat, parse_iso, rfc3339_millis};
pub use message::{
    beatd_headers, new_uuid, priority_list_key, Encoded, TaskMessage, PRIORITY_SEP, PRIORITY_STEPS,
};
pub use parse::{DecodeError, Envelope, ParsedTask};
pub use pickle::{dumps as pickle_dumps, dumps_value as pickle_dumps_value, PyObj};
pub use pyjson::{dumps, float_repr};
pub use pyrepr::pyrepr;
pub use result::{
    result_key, ExcInfo, ResultRecord, StateRecord, TaskState, READY_STATES, RESULT_TTL_SECS,
};
pub use rq::{
    utcformat, RqEncodeError, RqEncoded, RqJob, RqSerializer, RQ_JOB_PREFIX, RQ_QUEUES_KEY,
    RQ_QUEUE_PREFIX, RQ_STATUS_QUEUED,
};
