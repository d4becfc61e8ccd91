//! Which Redis to talk to: the broker URL's precedence, its validation, and a form of it that
//! is safe to print. Owns no connection (see `conn.rs`).

use std::fmt;

/// Where the broker URL came from, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    /// `--redis-url`.
    Flag,
    /// `BEATD_REDIS_URL`.
    BeatdRedisUrl,
    /// `CELERY_BROKER_URL` (what the Celery app already uses).
    CeleryBrokerUrl,
    /// `REDIS_URL` (what Heroku sets).
    RedisUrl,
}

impl fmt::Display for UrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "--redis-url",
            Self::BeatdRedisUrl => "BEATD_REDIS_URL",
            Self::CeleryBrokerUrl => "CELERY_BROKER_URL",
            Self::RedisUrl => "REDIS_URL",
        })
    }
}

/// Picks the broker URL: `--redis-url`, then `BEATD_REDIS_URL`, `CELERY_BROKER_URL`,
/// `REDIS_URL`. Empty values count as unset (deploy tools often export empty variables).
/// `None` means no Redis is configured (the embedded mode).
///
/// The first one set wins even if it is not a Redis URL: falling through from an `amqp://`
/// `CELERY_BROKER_URL` to an unrelated `REDIS_URL` would send tasks where no worker listens,
/// so [`BrokerUrl::parse`] rejects it loudly instead.
pub fn resolve_url(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, UrlSource)> {
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    if let Some(v) = non_empty(flag.map(str::to_owned)) {
        return Some((v, UrlSource::Flag));
    }
    [
        ("BEATD_REDIS_URL", UrlSource::BeatdRedisUrl),
        ("CELERY_BROKER_URL", UrlSource::CeleryBrokerUrl),
        ("REDIS_URL", UrlSource::RedisUrl),
    ]
    .into_iter()
    .find_map(|(name, source)| non_empty(env(name)).map(|v| (v, source)))
}

/// A URL with any password replaced by `***`, for logs, errors and `status`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts `url`: the password of `user:password@`, a lone `password@`, and the `pass=` /
    /// `password=` query parameters of unix-socket URLs.
    #[must_use]
    pub fn new(url: &str) -> Self {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self(redact_query(url));
        };
        // The last '@' ends the userinfo: raw passwords sometimes contain '@' or '/'.
        let rest = match rest.rfind('@') {
            Some(at) => {
                let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    // redis-rs reads a lone userinfo as a username, but people put passwords
                    // there; never print it.
                    None => format!("***@{host}"),
                }
            }
            None => rest.to_owned(),
        };
        Self(format!("{scheme}://{}", redact_query(&rest)))
    }

    /// The redacted text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn redact_query(s: &str) -> String {
    let Some((head, query)) = s.split_once('?') else {
        return s.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}?{}", pairs.join("&"))
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A validated Redis URL: `redis://[user:password@]host[:port][/db]`, `rediss://` for TLS
/// (certificates checked against the webpki roots; `#insecure` or Celery's
/// `?ssl_cert_reqs=none` turns checking off), or `redis+unix:///path?db=N&pass=…`.
///
/// Holds the secret, so it prints only in redacted form, in `Display` and `Debug` alike.
#[derive(Clone)]
pub struct BrokerUrl {
    /// What redis-rs parses, after Celery's TLS query options were translated.
    raw: String,
    /// Safe to print.
    redacted: RedactedUrl,
}

impl BrokerUrl {
    /// Validates `url`.
    ///
    /// # Errors
    /// [`super::Error::InvalidUrl`] for a non-Redis scheme (`amqp://`, `sentinel://`), a bad
    /// db number, a missing host or an unsupported TLS option.
    pub fn parse(url: &str) -> Result<Self, super::Error> {
        let redacted = RedactedUrl::new(url.trim());
        let invalid = |reason: String| super::Error::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let raw = translate_celery_tls(url.trim()).map_err(|r| invalid(r.to_owned()))?;
        if redis::parse_redis_url(&raw).is_none() {
            return Err(invalid(
                "not a Redis URL (expected redis://, rediss:// or redis+unix://)".into(),
            ));
        }
        redis::Client::open(raw.as_str()).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { raw, redacted })
    }

    /// The printable form.
    #[must_use]
    pub fn redacted(&self) -> &RedactedUrl {
        &self.redacted
    }

    /// The URL with its secret, for the client only.
    pub(crate) fn expose(&self) -> &str {
        &self.raw
    }
}

/// Celery users write `rediss://…?ssl_cert_reqs=required|optional|none`; redis-rs knows only
/// the `#insecure` fragment. Translate rather than make users keep two URLs.
fn translate_celery_tls(url: &str) -> Result<String, &'static str> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut insecure = fragment == Some("insecure");
    let mut kept = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("ssl_cert_reqs", v)) => match v.to_ascii_lowercase().as_str() {
                "none" | "cert_none" => insecure = true,
                "required" | "cert_required" | "optional" | "cert_optional" => {}
                _ => return Err("ssl_cert_reqs must be required, optional or none"),
            },
            _ => kept.push(kv),
        }
    }
    let mut out = head.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if insecure {
        out.push_str("#insecure");
    } else if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Ok(out)
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.redacted.fmt(f)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrl").field(&self.redacted).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn url_precedence_flag_then_beatd_then_celery_then_redis_url() {
        let all = env(&[
            ("BEATD_REDIS_URL", "redis://b"),
            ("CELERY_BROKER_URL", "redis://c"),
            ("REDIS_URL", "redis://r"),
        ]);
        let got = |flag, e: &dyn Fn(&str) -> Option<String>| resolve_url(flag, e);
        assert_eq!(
            got(Some("redis://f"), &all),
            Some(("redis://f".into(), UrlSource::Flag))
        );
        assert_eq!(
            got(None, &all),
            Some(("redis://b".into(), UrlSource::BeatdRedisUrl))
        );
        let cr = env(&[
            ("CELERY_BROKER_URL", "redis://c"),
            ("REDIS_URL", "redis://r"),
        ]);
        assert_eq!(
            got(None, &cr),
            Some(("redis://c".into(), UrlSource::CeleryBrokerUrl))
        );
        let r = env(&[("BEATD_REDIS_URL", " "), ("REDIS_URL", "redis://r")]);
        assert_eq!(
            got(Some(""), &r),
            Some(("redis://r".into(), UrlSource::RedisUrl))
        );
        assert_eq!(got(None, &env(&[])), None);
    }

    #[test]
    fn redaction_never_prints_the_password() {
        let cases = [
            ("redis://:s3cret@host:6379/2", "redis://:***@host:6379/2"),
            ("rediss://user:s3cret@host/0", "rediss://user:***@host/0"),
            ("redis://s3cret@host", "redis://***@host"),
            (
                "redis://us:p@ss/w@rd:s3cret@host/1",
                "redis://us:***@host/1",
            ),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("redis://host:6379/0", "redis://host:6379/0"),
        ];
        for (url, want) in cases {
            let r = RedactedUrl::new(url);
            assert_eq!(r.as_str(), want);
            assert!(!format!("{r} {r:?}").contains("s3cret"));
        }
        let b = BrokerUrl::parse("redis://:s3cret@localhost:6379/3").expect("valid");
        assert_eq!(b.to_string(), "redis://:***@localhost:6379/3");
        assert!(!format!("{b:?}").contains("s3cret"));
        let err = BrokerUrl::parse("amqp://guest:s3cret@rabbit//").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("s3cret"), "{err}");
    }

    #[test]
    fn parses_db_tls_and_celery_tls_options() {
        assert!(BrokerUrl::parse("redis://:pw@localhost:6379/5").is_ok());
        assert!(BrokerUrl::parse("rediss://:pw@example.com:6380/0").is_ok());
        let b = BrokerUrl::parse("rediss://h:6380/0?ssl_cert_reqs=none").unwrap();
        assert_eq!(b.expose(), "rediss://h:6380/0#insecure");
        let b = BrokerUrl::parse("rediss://h/0?ssl_cert_reqs=CERT_REQUIRED").unwrap();
        assert_eq!(b.expose(), "rediss://h/0");
        assert!(BrokerUrl::parse("rediss://h/0?ssl_cert_reqs=maybe").is_err());
        assert!(BrokerUrl::parse("redis://localhost/notanumber").is_err());
        assert!(BrokerUrl::parse("sentinel://localhost:26379").is_err());
    }
}
