//! What a valid file turns into: defaults, inheritance and the values of every key.

use super::{at, NOW};
use crate::config::load_schedule_str;
use crate::schedule::{self, CatchUp, Schedule};
use serde_json::json;
use std::time::Duration;

const FULL: &str = r#"
[defaults]
timezone = "Europe/Paris"
queue = "reports"
priority = 3
expires = "10m"
headers = { team = "ops", tier = "gold" }
catch_up = "all"
start_at = "2026-06-01T00:00:00"

[[entry]]
name = "nightly"
task = "reports.generate"
cron = "30 2 * * *"
args = ["pdf", 2, 1.5, true, 2026-01-02T03:04:05Z]
kwargs = { to = ["ops@example.com"], depth = { n = 1 } }
routing_key = "rk"
exchange = "ex"
headers = { tier = "platinum" }
jitter = "5m"
catch_up_window = "2h"
end_at = "2027-01-01T00:00:00"
description = "the nightly report"

[[entry]]
name = "heartbeat"
task = "monitoring.ping"
every = "30s"
anchor = "2026-01-01T00:00:10Z"
timezone = "UTC"
queue = "fast"
priority = 0
catch_up = "none"
enabled = false
"#;

#[test]
fn defaults_apply_and_entries_override_them() {
    let s = load_schedule_str("full.toml", FULL, NOW).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let [nightly, heartbeat] = &s.entries[..] else {
        panic!("{:?}", s.entries)
    };

    assert_eq!(&*nightly.name, "nightly");
    assert_eq!(&*nightly.task, "reports.generate");
    assert_eq!(
        nightly.timezone,
        crate::schedule::Tz::named("Europe/Paris").unwrap()
    );
    let Schedule::Cron(cron) = &nightly.schedule else {
        panic!()
    };
    assert_eq!(
        (&*cron.expr, cron.tz),
        (
            "30 2 * * *",
            crate::schedule::Tz::named("Europe/Paris").unwrap()
        )
    );
    assert_eq!(
        *nightly.args,
        [
            json!("pdf"),
            json!(2),
            json!(1.5),
            json!(true),
            json!("2026-01-02T03:04:05Z")
        ]
    );
    assert_eq!(
        json!(*nightly.kwargs),
        json!({"to": ["ops@example.com"], "depth": {"n": 1}})
    );
    assert_eq!(&*nightly.queue, "reports");
    assert_eq!(
        (nightly.routing_key(), nightly.exchange()),
        (Some("rk"), Some("ex"))
    );
    assert_eq!(nightly.priority(), Some(3));
    assert_eq!(nightly.expires(), Some(Duration::from_secs(600)));
    assert_eq!(
        json!(*nightly.headers),
        json!({"team": "ops", "tier": "platinum"})
    );
    assert_eq!(
        nightly.jitter_offset,
        schedule::jitter_offset("nightly", Duration::from_secs(300))
    );
    assert_eq!(nightly.catch_up, CatchUp::All);
    assert_eq!(nightly.catch_up_window, Duration::from_secs(7200));
    assert!(nightly.enabled);
    // Civil datetimes are read in the entry's zone (CEST, then CET).
    assert_eq!(nightly.start_at(), Some(at("2026-05-31T22:00:00Z")));
    assert_eq!(nightly.end_at(), Some(at("2026-12-31T23:00:00Z")));
    assert_eq!(nightly.description(), Some("the nightly report"));
    let source = nightly.source.as_ref().unwrap();
    assert_eq!((source.path.to_str(), source.line), (Some("full.toml"), 11));

    let every = Schedule::Every {
        interval: Duration::from_secs(30),
        anchor: at("2026-01-01T00:00:10Z"),
    };
    assert_eq!(heartbeat.schedule, every);
    assert_eq!(heartbeat.timezone, crate::schedule::Tz::UTC);
    assert_eq!((&*heartbeat.queue, heartbeat.priority()), ("fast", Some(0)));
    assert_eq!(heartbeat.catch_up, CatchUp::None);
    assert_eq!(
        heartbeat.catch_up_window,
        schedule::default_catch_up_window(&every)
    );
    assert_eq!(heartbeat.start_at(), Some(at("2026-06-01T00:00:00Z")));
    assert!(!heartbeat.enabled);
}

#[test]
fn bare_entries_get_the_documented_defaults() {
    let s = load_schedule_str(
        "x.toml",
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1h\"\n",
        NOW,
    )
    .unwrap();
    let e = &s.entries[0];
    assert_eq!(
        e.schedule,
        Schedule::Every {
            interval: Duration::from_secs(3600),
            anchor: at("1970-01-01T00:00:00Z")
        }
    );
    assert_eq!(
        (e.timezone, &*e.queue),
        (crate::schedule::Tz::UTC, "celery")
    );
    assert_eq!(
        (e.routing_key(), e.exchange(), e.priority()),
        (None, None, None)
    );
    assert_eq!((e.expires(), e.jitter_offset), (None, Duration::ZERO));
    assert_eq!(e.catch_up, CatchUp::Latest);
    assert_eq!(e.catch_up_window, Duration::from_secs(3600));
    assert!(e.enabled && e.args.is_empty() && e.kwargs.is_empty() && e.headers.is_empty());
    assert_eq!(
        (e.start_at(), e.end_at(), e.description()),
        (None, None, None)
    );
}

#[test]
fn an_empty_file_has_no_entries() {
    let s = load_schedule_str("x.toml", "# nothing yet\n", NOW).unwrap();
    assert!(s.entries.is_empty() && s.warnings.is_empty());
}

#[test]
fn an_rq_entry_reads_its_options_and_defaults_to_the_default_queue() {
    use crate::entry::RqSerializer;
    let s = crate::config::load_schedule_str(
        "x.toml",
        "[defaults]\nprotocol = \"rq\"\nresult_ttl = \"forever\"\n\
         [[entry]]\nname = \"a\"\ntask = \"app.tasks.count_words\"\nevery = \"1m\"\n\
         serializer = \"json\"\ntimeout = \"30s\"\nttl = \"2m\"\nfailure_ttl = \"1h\"\n\
         meta = { team = \"data\" }\nargs = [\"http://x\"]\n\
         [[entry]]\nname = \"b\"\ntask = \"app.b\"\nevery = \"1m\"\nprotocol = \"celery\"\n",
        super::NOW,
    )
    .unwrap();
    let a = &s.entries[0];
    let rq = a.rq.as_deref().expect("rq");
    assert_eq!(&*a.queue, "default");
    assert_eq!(rq.serializer, RqSerializer::Json);
    assert_eq!(rq.timeout, Some(std::time::Duration::from_secs(30)));
    assert_eq!(rq.ttl, Some(std::time::Duration::from_secs(120)));
    assert_eq!(rq.failure_ttl, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(rq.result_ttl, Some(-1));
    assert_eq!(rq.meta["team"], "data");
    assert!(s.entries[1].rq.is_none());
    assert_eq!(&*s.entries[1].queue, "celery");
}

#[test]
fn rq_and_celery_options_are_refused_on_the_other_protocol() {
    let ds = super::diags(
        "[[entry]]\nname = \"a\"\ntask = \"t\"\nevery = \"1m\"\ntimeout = \"5s\"\n\
         [[entry]]\nname = \"b\"\ntask = \"app.b\"\nevery = \"1m\"\nprotocol = \"rq\"\npriority = 3\nexpires = \"1h\"\n\
         [[entry]]\nname = \"c\"\ntask = \"not a path\"\nevery = \"1m\"\nprotocol = \"rq\"\n\
         [[entry]]\nname = \"d\"\ntask = \"app.d\"\nevery = \"1m\"\nprotocol = \"rQ\"\n\
         [[entry]]\nname = \"e\"\ntask = \"app.e\"\nevery = \"1m\"\nprotocol = \"rq\"\nserializer = \"yaml\"\n",
    );
    let got: Vec<(usize, &str)> = ds.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (5, "`timeout` only applies to protocol = \"rq\""),
            (11, "`priority` does not apply to protocol = \"rq\""),
            (12, "`expires` does not apply to protocol = \"rq\""),
            (15, "RQ task `not a path` is not a dotted function path"),
            (22, "unknown protocol `rQ`"),
            (28, "unknown serializer `yaml`"),
        ]
    );
    assert!(
        ds[2].help.as_deref().unwrap().contains("`ttl`"),
        "{:?}",
        ds[2]
    );
    assert!(
        ds[4].help.as_deref().unwrap().contains("`rq`"),
        "{:?}",
        ds[4]
    );
}
