//! Stage 1: serde mirrors of schedule files and `beatd.toml`, exactly as written. Every table
//! denies unknown keys; every user value keeps its byte span (`Spanned`) so stage 2 can point
//! at it. Values whose meaning needs checking (durations, zones, datetimes, enums) stay
//! strings here; `validate` and `app` give them meaning. Nothing here is required: missing keys
//! are reported by stage 2, which knows where the table starts.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A schedule file: optional `[defaults]` and any number of `[[entry]]`. `parse` reads the
/// two tables one by one (so one bad entry does not hide the next); this struct is where the
/// top-level keys are declared, for the unknown-key check.
#[derive(Debug, Deserialize, Default)]
#[expect(
    dead_code,
    reason = "declares the top-level keys; parse reads the tables one by one"
)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScheduleFile {
    pub(crate) defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    pub(crate) entry: Vec<Spanned<RawEntry>>,
}

/// `[defaults]`: entry options that apply to every entry of the file unless it sets them.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub(crate) timezone: Option<Spanned<String>>,
    pub(crate) queue: Option<Spanned<String>>,
    pub(crate) routing_key: Option<Spanned<String>>,
    pub(crate) exchange: Option<Spanned<String>>,
    pub(crate) priority: Option<Spanned<i64>>,
    pub(crate) expires: Option<Spanned<String>>,
    pub(crate) headers: Option<Spanned<toml::Table>>,
    pub(crate) jitter: Option<Spanned<String>>,
    pub(crate) catch_up: Option<Spanned<String>>,
    pub(crate) catch_up_window: Option<Spanned<String>>,
    pub(crate) enabled: Option<Spanned<bool>>,
    pub(crate) start_at: Option<Spanned<toml::Value>>,
    pub(crate) end_at: Option<Spanned<toml::Value>>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) serializer: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) result_ttl: Option<Spanned<String>>,
    pub(crate) ttl: Option<Spanned<String>>,
    pub(crate) failure_ttl: Option<Spanned<String>>,
}

/// One `[[entry]]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntry {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) task: Option<Spanned<String>>,
    pub(crate) cron: Option<Spanned<String>>,
    pub(crate) every: Option<Spanned<String>>,
    /// A string or a TOML datetime.
    pub(crate) at: Option<Spanned<toml::Value>>,
    pub(crate) anchor: Option<Spanned<toml::Value>>,
    pub(crate) timezone: Option<Spanned<String>>,
    pub(crate) args: Option<Spanned<Vec<toml::Value>>>,
    pub(crate) kwargs: Option<Spanned<toml::Table>>,
    pub(crate) queue: Option<Spanned<String>>,
    pub(crate) routing_key: Option<Spanned<String>>,
    pub(crate) exchange: Option<Spanned<String>>,
    pub(crate) priority: Option<Spanned<i64>>,
    pub(crate) expires: Option<Spanned<String>>,
    pub(crate) headers: Option<Spanned<toml::Table>>,
    pub(crate) jitter: Option<Spanned<String>>,
    pub(crate) catch_up: Option<Spanned<String>>,
    pub(crate) catch_up_window: Option<Spanned<String>>,
    pub(crate) enabled: Option<Spanned<bool>>,
    pub(crate) overlap: Option<Spanned<String>>,
    pub(crate) overlap_timeout: Option<Spanned<String>>,
    pub(crate) start_at: Option<Spanned<toml::Value>>,
    pub(crate) end_at: Option<Spanned<toml::Value>>,
    pub(crate) description: Option<Spanned<String>>,
    /// `celery` (default) or `rq`; the keys below only apply to `rq`.
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) serializer: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) result_ttl: Option<Spanned<String>>,
    pub(crate) ttl: Option<Spanned<String>>,
    pub(crate) failure_ttl: Option<Spanned<String>>,
    pub(crate) meta: Option<Spanned<toml::Table>>,
}

/// `beatd.toml`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppConfig {
    pub(crate) redis_url: Option<Spanned<String>>,
    pub(crate) namespace: Option<Spanned<String>>,
    pub(crate) lock_ttl: Option<Spanned<String>>,
    pub(crate) http_addr: Option<Spanned<String>>,
    pub(crate) state_file: Option<Spanned<String>>,
    pub(crate) schedules: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) worker: Option<Spanned<RawWorker>>,
    pub(crate) defaults: Option<Spanned<RawAppDefaults>>,
}

/// `[defaults]` of `beatd.toml`: what every schedule file inherits unless its own
/// `[defaults]` says otherwise.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppDefaults {
    pub(crate) timezone: Option<Spanned<String>>,
}

/// `[worker]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorker {
    pub(crate) queues: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) concurrency: Option<Spanned<i64>>,
    pub(crate) visibility_timeout: Option<Spanned<String>>,
    pub(crate) shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) tasks: BTreeMap<String, Spanned<RawTask>>,
}

/// `[worker.tasks."<celery task name>"]`. One flat table for both kinds so that a key of the
/// wrong kind gets a precise message ("`url` only applies to kind = \"http\"") rather than
/// serde's untagged-enum shrug.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTask {
    pub(crate) kind: Option<Spanned<String>>,
    pub(crate) command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) env: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(crate) cwd: Option<Spanned<String>>,
    pub(crate) url: Option<Spanned<String>>,
    /// A string, or `{ env = "VAR" }` read from the environment at run time.
    pub(crate) headers: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) time_limit: Option<Spanned<String>>,
    pub(crate) max_retries: Option<Spanned<i64>>,
    pub(crate) retry_backoff: Option<Spanned<String>>,
    pub(crate) ignore_result: Option<Spanned<bool>>,
    pub(crate) track_started: Option<Spanned<bool>>,
}
