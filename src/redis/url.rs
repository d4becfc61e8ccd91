//! Which Redis to talk to: the broker URL's precedence, its validation, and a form of it that
//! is safe to print. Owns no connection (see `conn.rs`).

use super::sentinel_url::{self, is_sentinel, SentinelOptions, SentinelSpec};
use super::tls::TlsOptions;
use redis::TlsCertificates;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
        // kombu lists Sentinels as `sentinel://…;sentinel://…`, each with its own userinfo.
        if url.contains(';') {
            let parts: Vec<String> = url.split(';').map(|p| Self::new(p).0).collect();
            return Self(parts.join(";"));
        }
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
            Some((k, _)) if matches!(k, "pass" | "password" | "sentinel_password") => {
                format!("{k}=***")
            }
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
/// (certificates checked against the webpki roots, or the private CA of `?ssl_ca_certs=`;
/// a client certificate from `ssl_certfile` / `ssl_keyfile`; `#insecure` or Celery's
/// `?ssl_cert_reqs=none` turns checking off), `redis+unix:///path?db=N&pass=…`, or a master
/// behind Sentinels (`sentinel://…;sentinel://…`, `redis-sentinel://…`, see
/// `sentinel_url.rs`).
///
/// Holds the secret, so it prints only in redacted form, in `Display` and `Debug` alike.
#[derive(Clone)]
pub struct BrokerUrl {
    /// Where it points.
    target: Target,
    /// What redis-rs parses (direct), or the URL as given (Sentinel).
    raw: String,
    /// Safe to print.
    redacted: RedactedUrl,
    /// What a write beatd acts on waits for (`WAIT`), if anything.
    wait: Option<WaitReplicas>,
}

/// Where a [`BrokerUrl`] points.
#[derive(Clone)]
pub(crate) enum Target {
    /// One Redis, with the certificates of a private CA or mutual TLS if the URL names them.
    Direct(Option<TlsCertificates>),
    /// A master found through Sentinels.
    Sentinel(Arc<SentinelSpec>),
}

/// `WAIT numreplicas timeout` after each write the beat acts on: the lock, each emission
/// step. Asynchronous replication can lose a write the primary acknowledged; a write that
/// reached `replicas` replicas survives their promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// Replicas that must have the write.
    pub replicas: u32,
    /// Longest wait; a write not replicated by then counts as not yet safe.
    pub timeout: Duration,
}

/// How a Sentinel URL waits by default: one replica, within a second.
pub const SENTINEL_DEFAULT_WAIT: WaitReplicas = WaitReplicas {
    replicas: 1,
    timeout: Duration::from_secs(1),
};

impl BrokerUrl {
    /// Validates `url`.
    ///
    /// # Errors
    /// [`super::Error::InvalidUrl`] for a non-Redis scheme (`amqp://`), a bad db number, a
    /// missing host, an unsupported or unreadable TLS option, or a Sentinel URL without a
    /// master name.
    pub fn parse(url: &str) -> Result<Self, super::Error> {
        Self::parse_with(url, &SentinelOptions::default())
    }

    /// Validates `url`, with what flags say about Sentinels.
    ///
    /// # Errors
    /// As [`BrokerUrl::parse`].
    pub fn parse_with(url: &str, sentinel: &SentinelOptions) -> Result<Self, super::Error> {
        let url = url.trim();
        let redacted = RedactedUrl::new(url);
        let invalid = |reason: String| super::Error::InvalidUrl {
            url: RedactedUrl::new(url),
            reason,
        };
        if is_sentinel(url) {
            let spec = sentinel_url::parse(url, sentinel).map_err(invalid)?;
            return Ok(Self {
                target: Target::Sentinel(Arc::new(spec)),
                raw: url.to_owned(),
                redacted,
                wait: Some(SENTINEL_DEFAULT_WAIT),
            });
        }
        let (raw, tls) = translate_celery_tls(url).map_err(invalid)?;
        if redis::parse_redis_url(&raw).is_none() {
            return Err(invalid(
                "not a Redis URL (expected redis://, rediss://, redis+unix://, sentinel:// or \
                 redis-sentinel://)"
                    .into(),
            ));
        }
        let certs = tls.certificates().map_err(invalid)?;
        // ssl_cert_reqs alone on redis:// was always let through (it changes nothing there);
        // certificates would be silently unused.
        if tls.has_files() && !raw.starts_with("rediss://") {
            return Err(invalid(
                "ssl_ca_certs / ssl_certfile need a rediss:// URL".into(),
            ));
        }
        let this = Self {
            target: Target::Direct(certs),
            raw,
            redacted,
            wait: None,
        };
        this.direct_client().map_err(|e| invalid(e.to_string()))?;
        Ok(this)
    }

    /// The same URL waiting for `wait` after each write the beat acts on (`None`: never).
    #[must_use]
    pub fn with_wait(mut self, wait: Option<WaitReplicas>) -> Self {
        self.wait = wait.filter(|w| w.replicas > 0);
        self
    }

    /// What writes wait for.
    #[must_use]
    pub fn wait(&self) -> Option<WaitReplicas> {
        self.wait
    }

    /// Whether the URL names Sentinels.
    #[must_use]
    pub fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel(_))
    }

    /// The printable form.
    #[must_use]
    pub fn redacted(&self) -> &RedactedUrl {
        &self.redacted
    }

    /// The URL with its secret (tests check what redis-rs is given).
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &str {
        &self.raw
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// The client of a direct URL (a Sentinel URL has none until a master is found).
    pub(crate) fn direct_client(&self) -> redis::RedisResult<redis::Client> {
        match &self.target {
            Target::Direct(Some(certs)) => {
                redis::Client::build_with_tls(self.raw.as_str(), certs.clone())
            }
            _ => redis::Client::open(self.raw.as_str()),
        }
    }
}

/// Celery users write `rediss://…?ssl_cert_reqs=required|optional|none&ssl_ca_certs=…`;
/// redis-rs knows only the `#insecure` fragment and takes certificates as bytes. Translate
/// rather than make users keep two URLs: the TLS options come out of the query.
fn translate_celery_tls(url: &str) -> Result<(String, TlsOptions), String> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), TlsOptions::default()));
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let tls = TlsOptions::take(&mut pairs)?;
    let mut out = head.to_owned();
    if !pairs.is_empty() {
        out.push('?');
        out.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish(),
        );
    }
    if tls.insecure || fragment == Some("insecure") {
        out.push_str("#insecure");
    } else if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Ok((out, tls))
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
        assert!(BrokerUrl::parse("sentinel://localhost:26379?master_name=m").is_ok());
        assert!(BrokerUrl::parse("redis://h/0?ssl_ca_certs=/x.pem")
            .unwrap_err()
            .to_string()
            .contains("ssl_ca_certs /x.pem"));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let e = BrokerUrl::parse(&format!("redis://h/0?ssl_ca_certs={}", ca.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("need a rediss://"), "{e}");
        // As before: ssl_cert_reqs alone on redis:// is accepted.
        assert!(BrokerUrl::parse("redis://h/0?ssl_cert_reqs=none").is_ok());
    }

    #[test]
    fn sentinel_urls_redact_every_part_and_wait_for_a_replica() {
        let url = "sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2?master_name=m&sentinel_password=s3cret";
        let r = RedactedUrl::new(url);
        assert_eq!(
            r.as_str(),
            "sentinel://:***@h1:26379;sentinel://:***@h2?master_name=m&sentinel_password=***"
        );
        let b = BrokerUrl::parse(url).unwrap();
        assert!(b.is_sentinel());
        assert_eq!(b.wait(), Some(SENTINEL_DEFAULT_WAIT));
        assert_eq!(b.clone().with_wait(None).wait(), None);
        let e = BrokerUrl::parse("sentinel://:s3cret@h1:26379").unwrap_err();
        assert!(!e.to_string().contains("s3cret") && e.to_string().contains("master"));
    }
}
