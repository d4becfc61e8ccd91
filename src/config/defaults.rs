//! `[defaults]` of a schedule file, validated once: a bad default is reported at its own line
//! and then treated as unset, so it does not echo through every entry of the file. Entries
//! fall back to these values in `validate`.

use super::diagnostic::{Diagnostic, SourceFile};
use super::raw::RawDefaults;
use super::values::{self, catch_up, json_table, keep, nonempty, priority, When};
use crate::schedule::CatchUp;
use crate::schedule::Tz;
use serde_json::{Map, Value};
use std::time::Duration;
use toml::Spanned;

/// `[defaults]` after validation. A bad default is reported once, here, and then treated as
/// unset so that it does not echo through every entry.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    pub(crate) timezone: Option<Tz>,
    pub(crate) queue: Option<String>,
    pub(crate) routing_key: Option<String>,
    pub(crate) exchange: Option<String>,
    pub(crate) priority: Option<u8>,
    pub(crate) expires: Option<Duration>,
    pub(crate) headers: Map<String, Value>,
    pub(crate) jitter: Option<Duration>,
    pub(crate) catch_up: Option<CatchUp>,
    pub(crate) catch_up_window: Option<Duration>,
    pub(crate) enabled: Option<bool>,
    // Civil datetimes stay unresolved: each entry reads them in its own zone.
    pub(crate) start_at: Option<Spanned<When>>,
    pub(crate) end_at: Option<Spanned<When>>,
    // RQ: kept as written; each entry checks them against its own protocol.
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) serializer: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) result_ttl: Option<Spanned<String>>,
    pub(crate) ttl: Option<Spanned<String>>,
    pub(crate) failure_ttl: Option<Spanned<String>>,
}

/// Validates `[defaults]`; each problem goes to `out` and leaves that default unset.
pub(crate) fn defaults(file: &SourceFile, d: &RawDefaults, out: &mut Vec<Diagnostic>) -> Defaults {
    let dur = |k, v: &Option<Spanned<String>>, out: &mut Vec<_>| {
        v.as_ref()
            .and_then(|v| keep(values::duration(file, k, v), out))
    };
    let when = |k, v: &Option<Spanned<toml::Value>>, out: &mut Vec<_>| {
        let v = v.as_ref()?;
        keep(values::when(file, k, v), out).map(|w| Spanned::new(v.span(), w))
    };
    Defaults {
        timezone: d
            .timezone
            .as_ref()
            .and_then(|v| keep(values::timezone(file, v), out)),
        queue: d
            .queue
            .as_ref()
            .and_then(|v| keep(nonempty(file, "queue", v), out)),
        routing_key: d.routing_key.as_ref().map(|v| v.get_ref().clone()),
        exchange: d.exchange.as_ref().map(|v| v.get_ref().clone()),
        priority: d
            .priority
            .as_ref()
            .and_then(|v| keep(priority(file, v), out)),
        expires: dur("expires", &d.expires, out),
        headers: d
            .headers
            .as_ref()
            .and_then(|v| keep(json_table(file, "headers", v), out))
            .unwrap_or_default(),
        jitter: dur("jitter", &d.jitter, out),
        catch_up: d
            .catch_up
            .as_ref()
            .and_then(|v| keep(catch_up(file, v), out)),
        catch_up_window: d
            .catch_up_window
            .as_ref()
            .and_then(|v| keep(values::positive_duration(file, "catch_up_window", v), out)),
        enabled: d.enabled.as_ref().map(|v| *v.get_ref()),
        start_at: when("start_at", &d.start_at, out),
        end_at: when("end_at", &d.end_at, out),
        protocol: d.protocol.clone(),
        serializer: d.serializer.clone(),
        timeout: d.timeout.clone(),
        result_ttl: d.result_ttl.clone(),
        ttl: d.ttl.clone(),
        failure_ttl: d.failure_ttl.clone(),
    }
}
