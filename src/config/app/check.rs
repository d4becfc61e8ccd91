//! Stage 2 of `beatd.toml`: `RawAppConfig` → [`AppConfig`], every problem gathered. Missing
//! values take the documented defaults of [`AppConfig::default`].

use super::{redact, AppConfig, HeaderValue, RedisUrl, TaskDef, TaskKind, WorkerConfig};
use crate::config::diagnostic::{Diagnostic, SourceFile};
use crate::config::raw::{RawAppConfig, RawTask, RawWorker};
use crate::config::values::{self, keep, nonempty, suggest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Relative paths are read from the config file's directory, not the working directory.
fn path_in(file: &SourceFile, p: &str) -> PathBuf {
    let base = file.path.parent().unwrap_or(Path::new(""));
    base.join(p)
}

fn dur(
    file: &SourceFile,
    key: &str,
    v: Option<&Spanned<String>>,
    default: Duration,
    out: &mut Vec<Diagnostic>,
) -> Duration {
    v.and_then(|v| keep(values::positive_duration(file, key, v), out))
        .unwrap_or(default)
}

pub(super) fn app(file: &SourceFile, raw: &RawAppConfig, out: &mut Vec<Diagnostic>) -> AppConfig {
    let d = AppConfig::default();
    let redis_url = raw.redis_url.as_ref().and_then(|v| {
        let parsed = RedisUrl::parse(v.get_ref().trim()).map_err(|m| {
            let mut e = file.error(v.span(), format!("invalid `redis_url`: {m}"));
            // The source line may hold the password; never print it.
            e.source_line = e
                .source_line
                .map(|l| l.replace(v.get_ref(), &redact(v.get_ref())));
            e.with_help("write redis://[:password@]host[:port][/db] or rediss:// for TLS")
        });
        keep(parsed, out)
    });
    let namespace = match &raw.namespace {
        Some(v) if v.get_ref().contains(char::is_whitespace) => {
            out.push(file.error(v.span(), "`namespace` must not contain whitespace"));
            d.namespace
        }
        Some(v) => keep(nonempty(file, "namespace", v), out).unwrap_or(d.namespace),
        None => d.namespace,
    };
    let http_addr = match &raw.http_addr {
        Some(v) if v.get_ref().trim() == "off" => None,
        Some(v) => keep(
            v.get_ref().trim().parse().map_err(|_| {
                file.error(v.span(), format!("invalid `http_addr` `{}`", v.get_ref()))
                    .with_help("write an IP address and port such as \"127.0.0.1:9808\" or \"0.0.0.0:9808\", or \"off\"")
            }),
            out,
        )
        .or(d.http_addr),
        None => d.http_addr,
    };
    let schedules = match &raw.schedules {
        Some(list) => {
            let paths: Vec<_> = list
                .get_ref()
                .iter()
                .filter_map(|p| keep(nonempty(file, "schedules", p), out))
                .map(|p| path_in(file, &p))
                .collect();
            if list.get_ref().is_empty() {
                out.push(file.error(
                    list.span(),
                    "`schedules` must name at least one file or directory",
                ));
            }
            paths
        }
        None => d.schedules,
    };
    AppConfig {
        redis_url,
        namespace,
        lock_ttl: dur(file, "lock_ttl", raw.lock_ttl.as_ref(), d.lock_ttl, out),
        http_addr,
        state_file: raw
            .state_file
            .as_ref()
            .and_then(|v| keep(nonempty(file, "state_file", v), out))
            .map(|p| path_in(file, &p)),
        schedules,
        worker: raw
            .worker
            .as_ref()
            .map_or_else(WorkerConfig::default, |w| worker(file, w.get_ref(), out)),
        default_timezone: raw
            .defaults
            .as_ref()
            .and_then(|d| d.get_ref().timezone.as_ref())
            .and_then(|tz| keep(values::timezone(file, tz), out)),
    }
}

fn worker(file: &SourceFile, raw: &RawWorker, out: &mut Vec<Diagnostic>) -> WorkerConfig {
    let d = WorkerConfig::default();
    let queues = match &raw.queues {
        Some(list) if list.get_ref().is_empty() => {
            out.push(file.error(list.span(), "`queues` must name at least one queue"));
            d.queues
        }
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|q| keep(nonempty(file, "queues", q), out))
            .collect(),
        None => d.queues,
    };
    let concurrency = raw.concurrency.as_ref().and_then(|v| {
        let n = usize::try_from(*v.get_ref()).ok().filter(|n| *n > 0);
        keep(
            n.ok_or_else(|| file.error(v.span(), "`concurrency` must be at least 1")),
            out,
        )
    });
    let tasks = raw
        .tasks
        .iter()
        .filter_map(|(name, t)| Some((name.clone(), task(file, name, t, out)?)))
        .collect();
    WorkerConfig {
        queues,
        concurrency,
        visibility_timeout: dur(
            file,
            "visibility_timeout",
            raw.visibility_timeout.as_ref(),
            d.visibility_timeout,
            out,
        ),
        shutdown_grace: dur(
            file,
            "shutdown_grace",
            raw.shutdown_grace.as_ref(),
            d.shutdown_grace,
            out,
        ),
        tasks,
    }
}

fn header_span(file: &SourceFile, span: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let line = file
        .text
        .get(span.clone())
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    span.start..span.start + line.trim_end().len().max(1)
}

fn task(
    file: &SourceFile,
    name: &str,
    raw: &Spanned<RawTask>,
    out: &mut Vec<Diagnostic>,
) -> Option<TaskDef> {
    let errors_before = out.iter().filter(|d| d.is_error()).count();
    let header = header_span(file, raw.span());
    let t = raw.get_ref();
    let kind = match &t.kind {
        None => {
            out.push(
                file.error(header.clone(), format!("task `{name}` has no `kind`"))
                    .with_help("add `kind = \"exec\"` (run a program) or `kind = \"http\"` (POST to a URL)"),
            );
            None
        }
        Some(k) => match k.get_ref().as_str() {
            "exec" => exec(file, header.clone(), t, out),
            "http" => http(file, header.clone(), t, out),
            other => {
                let d = file.error(k.span(), format!("unknown task kind `{other}`"));
                out.push(match suggest(other, ["exec", "http"].into_iter()) {
                    Some(best) => d.with_help(format!("did you mean `{best}`?")),
                    None => d.with_help("kind is \"exec\" or \"http\""),
                });
                None
            }
        },
    };
    let time_limit = t
        .time_limit
        .as_ref()
        .and_then(|v| keep(values::positive_duration(file, "time_limit", v), out));
    let max_retries = t.max_retries.as_ref().and_then(|v| {
        let n = u32::try_from(*v.get_ref())
            .map_err(|_| file.error(v.span(), "`max_retries` must be 0 or more"));
        keep(n, out)
    });
    let retry_backoff = dur(
        file,
        "retry_backoff",
        t.retry_backoff.as_ref(),
        Duration::from_secs(1),
        out,
    );
    if out.iter().filter(|d| d.is_error()).count() > errors_before {
        return None;
    }
    Some(TaskDef {
        kind: kind?,
        time_limit,
        max_retries: max_retries.unwrap_or(0),
        retry_backoff,
        ignore_result: t.ignore_result.as_ref().is_some_and(|v| *v.get_ref()),
        track_started: t.track_started.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

fn span<T>(v: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
    v.as_ref().map(Spanned::span)
}

/// Reports keys that belong to the other kind.
fn foreign(
    file: &SourceFile,
    kind: &str,
    keys: &[(&str, Option<std::ops::Range<usize>>)],
    out: &mut Vec<Diagnostic>,
) {
    let other = if kind == "exec" { "http" } else { "exec" };
    for (key, span) in keys {
        if let Some(span) = span {
            out.push(
                file.error(
                    span.clone(),
                    format!("`{key}` only applies to kind = \"{other}\""),
                )
                .with_help(format!("remove it, this task has kind = \"{kind}\"")),
            );
        }
    }
}

fn exec(
    file: &SourceFile,
    header: std::ops::Range<usize>,
    t: &RawTask,
    out: &mut Vec<Diagnostic>,
) -> Option<TaskKind> {
    foreign(
        file,
        "exec",
        &[
            ("url", span(&t.url)),
            ("headers", span(&t.headers)),
            ("timeout", span(&t.timeout)),
        ],
        out,
    );
    let command = match &t.command {
        None => {
            out.push(file.error(header, "exec task has no `command`").with_help(
                "add `command = [\"program\", \"arg\"]`; it runs directly, not through a shell",
            ));
            None
        }
        Some(c)
            if c.get_ref()
                .first()
                .is_none_or(|p| p.get_ref().trim().is_empty()) =>
        {
            out.push(
                file.error(c.span(), "`command` must start with a program")
                    .with_help("write `command = [\"program\", \"arg\"]`"),
            );
            None
        }
        Some(c) => Some(c.get_ref().iter().map(|a| a.get_ref().clone()).collect()),
    };
    let env = t.env.as_ref().map_or_else(BTreeMap::new, |e| {
        e.get_ref()
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect()
    });
    let cwd = t
        .cwd
        .as_ref()
        .and_then(|v| keep(nonempty(file, "cwd", v), out))
        .map(|p| path_in(file, &p));
    Some(TaskKind::Exec {
        command: command?,
        env,
        cwd,
    })
}

fn http(
    file: &SourceFile,
    header: std::ops::Range<usize>,
    t: &RawTask,
    out: &mut Vec<Diagnostic>,
) -> Option<TaskKind> {
    foreign(
        file,
        "http",
        &[
            ("command", span(&t.command)),
            ("env", span(&t.env)),
            ("cwd", span(&t.cwd)),
        ],
        out,
    );
    let url = match &t.url {
        None => {
            out.push(
                file.error(header, "http task has no `url`")
                    .with_help("add `url = \"https://...\"`"),
            );
            None
        }
        Some(u) if !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://")) => {
            out.push(file.error(
                u.span(),
                format!(
                    "invalid `url` `{}`: must start with http:// or https://",
                    u.get_ref()
                ),
            ));
            None
        }
        Some(u) => Some(u.get_ref().clone()),
    };
    let mut headers = BTreeMap::new();
    for (name, v) in t
        .headers
        .as_ref()
        .map(|h| h.get_ref().iter())
        .into_iter()
        .flatten()
    {
        let value = match v.get_ref() {
            toml::Value::String(s) => Some(HeaderValue::Literal(s.clone())),
            toml::Value::Table(t) if t.len() == 1 => match t.get("env") {
                Some(toml::Value::String(var)) if !var.is_empty() => {
                    Some(HeaderValue::Env(var.clone()))
                }
                _ => None,
            },
            _ => None,
        };
        match value {
            Some(value) => {
                headers.insert(name.clone(), value);
            }
            None => out.push(
                file.error(v.span(), format!("header `{name}` must be a string or {{ env = \"VAR\" }}"))
                    .with_help("write `Authorization = { env = \"API_TOKEN\" }` to read the value from the environment when the task runs"),
            ),
        }
    }
    let timeout = t
        .timeout
        .as_ref()
        .and_then(|v| keep(values::positive_duration(file, "timeout", v), out));
    Some(TaskKind::Http {
        url: url?,
        headers,
        timeout,
    })
}
