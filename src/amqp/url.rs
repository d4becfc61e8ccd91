//! Which RabbitMQ to talk to: an `amqp://`, `amqps://` or `pyamqp://` URL read as kombu
//! reads it, validated, and printable only with its password hidden.

use crate::redis::RedactedUrl;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use std::fmt;

/// Whether `url` names an AMQP broker (the schemes kombu's pyamqp transport answers to).
#[must_use]
pub fn is_amqp(url: &str) -> bool {
    let scheme = url
        .trim()
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    matches!(
        scheme.as_deref(),
        Some("amqp" | "amqps" | "pyamqp" | "pyamqps")
    )
}

/// A validated AMQP 0-9-1 URL:
/// `amqp://[user[:password]@]host[:port][/vhost][?heartbeat=S&connection_timeout=MS&frame_max=N&channel_max=N]`,
/// `amqps://` for TLS (certificates checked against the webpki roots), `pyamqp://` as a
/// synonym of `amqp://`. The vhost is kombu's: the path less its first `/`, so
/// `amqp://h//` and `amqp://h/%2F` are the vhost `/`, and no path (or `/`) is `/` too;
/// `guest:guest` and port 5672 (5671 with TLS) are the defaults.
///
/// Holds the secret, so it prints only in redacted form, in `Display` and `Debug` alike.
#[derive(Clone)]
pub struct AmqpUrl {
    uri: AMQPUri,
    redacted: RedactedUrl,
}

impl AmqpUrl {
    /// Validates `url`.
    ///
    /// # Errors
    /// [`super::Error::InvalidUrl`] for another scheme, a failover list (`;`), a missing
    /// host, a bad number or an unknown query option.
    pub fn parse(url: &str) -> Result<Self, super::Error> {
        let url = url.trim();
        let redacted = RedactedUrl::new(url);
        let invalid = |reason: String| super::Error::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        if url.contains(';') {
            return Err(invalid(
                "a list of failover brokers is not supported; give one URL".into(),
            ));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid("expected amqp://, amqps:// or pyamqp://".into()));
        };
        let (scheme, tls) = match scheme.to_ascii_lowercase().as_str() {
            "amqp" | "pyamqp" => (AMQPScheme::AMQP, false),
            "amqps" | "pyamqps" => (AMQPScheme::AMQPS, true),
            _ => return Err(invalid("expected amqp://, amqps:// or pyamqp://".into())),
        };
        // The `url` crate parses the rest; the scheme is normalised first so that it treats
        // the URL as a hierarchical one whatever the user spelt.
        let parsed =
            ::url::Url::parse(&format!("amqp://{rest}")).map_err(|e| invalid(e.to_string()))?;
        let host = match parsed.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(invalid("no host".into())),
        };
        let decode =
            |s: &str| percent_decode(s).ok_or_else(|| invalid("invalid percent-encoding".into()));
        let username = match parsed.username() {
            "" => "guest".to_owned(),
            u => decode(u)?,
        };
        let password = match parsed.password() {
            None => "guest".to_owned(),
            Some(p) => decode(p)?,
        };
        let vhost = match parsed.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            v => decode(v)?,
        };
        let mut query = AMQPQueryString::default();
        for (k, v) in parsed.query_pairs() {
            let number = |what: &str| -> Result<u64, super::Error> {
                v.parse::<u64>()
                    .map_err(|_| invalid(format!("{what}={v:?} is not a whole number")))
            };
            match k.as_ref() {
                "heartbeat" => {
                    query.heartbeat = Some(
                        u16::try_from(number("heartbeat")?)
                            .map_err(|_| invalid("heartbeat is at most 65535 s".into()))?,
                    );
                }
                "connection_timeout" => query.connection_timeout = Some(number(&k)?),
                "frame_max" => {
                    query.frame_max = Some(
                        u32::try_from(number(&k)?)
                            .map_err(|_| invalid("frame_max is too large".into()))?,
                    );
                }
                "channel_max" => {
                    query.channel_max = Some(
                        u16::try_from(number(&k)?)
                            .map_err(|_| invalid("channel_max is at most 65535".into()))?,
                    );
                }
                other => {
                    return Err(invalid(format!(
                        "unknown option {other:?} (known: heartbeat, connection_timeout, \
                         frame_max, channel_max)"
                    )))
                }
            }
        }
        let port = parsed.port().unwrap_or(if tls { 5671 } else { 5672 });
        Ok(Self {
            uri: AMQPUri {
                scheme,
                authority: AMQPAuthority {
                    userinfo: AMQPUserInfo { username, password },
                    host: host.to_owned(),
                    port,
                },
                vhost,
                query,
            },
            redacted,
        })
    }

    /// The printable form.
    #[must_use]
    pub fn redacted(&self) -> &RedactedUrl {
        &self.redacted
    }

    /// The virtual host.
    #[must_use]
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// `host:port`.
    #[must_use]
    pub fn address(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }

    /// The user name (never the password).
    #[must_use]
    pub fn username(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// Whether the connection uses TLS.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The heartbeat asked for, in seconds (`None`: the server's proposal).
    #[must_use]
    pub fn heartbeat(&self) -> Option<u16> {
        self.uri.query.heartbeat
    }

    /// The same URL on another vhost (the tests give each test its own).
    #[must_use]
    pub fn with_vhost(&self, vhost: &str) -> Self {
        let mut uri = self.uri.clone();
        uri.vhost = vhost.to_owned();
        let redacted = RedactedUrl::new(&format!(
            "{}/{}",
            self.redacted
                .as_str()
                .split_once("://")
                .map_or("", |(s, rest)| {
                    let host_end = rest.find('/').unwrap_or(rest.len());
                    &self.redacted.as_str()[..s.len() + 3 + host_end]
                }),
            percent_encode(vhost)
        ));
        Self { uri, redacted }
    }

    /// The URI with its secret, for the client only.
    pub(crate) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.redacted.fmt(f)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_urls_as_kombu_does() {
        let u = AmqpUrl::parse("amqp://guest:s3cret@localhost:5672//").unwrap();
        assert_eq!(u.vhost(), "/");
        assert_eq!(u.address(), "localhost:5672");
        assert_eq!(u.username(), "guest");
        assert!(!u.tls());
        assert_eq!(u.uri().authority.userinfo.password, "s3cret");
        for (url, vhost) in [
            ("amqp://h", "/"),
            ("amqp://h/", "/"),
            ("amqp://h/%2F", "/"),
            ("pyamqp://h/prod", "prod"),
            ("amqp://h/a%2Fb", "a/b"),
        ] {
            assert_eq!(AmqpUrl::parse(url).unwrap().vhost(), vhost, "{url}");
        }
        let d = AmqpUrl::parse("amqp://10.0.0.7").unwrap();
        assert_eq!(d.address(), "10.0.0.7:5672");
        assert_eq!(d.username(), "guest");
        assert_eq!(d.uri().authority.userinfo.password, "guest");
        let t = AmqpUrl::parse("amqps://u:p%40ss@rabbit.example.com/v?heartbeat=30").unwrap();
        assert!(t.tls());
        assert_eq!(t.address(), "rabbit.example.com:5671");
        assert_eq!(t.heartbeat(), Some(30));
        assert_eq!(t.uri().authority.userinfo.password, "p@ss");
        assert!(is_amqp("AMQP://x") && is_amqp("pyamqp://x") && !is_amqp("redis://x"));
    }

    #[test]
    fn rejects_what_it_cannot_honour_without_printing_the_password() {
        for url in [
            "redis://:s3cret@h",
            "amqp://u:s3cret@h1;amqp://u:s3cret@h2",
            "amqp://u:s3cret@h/?heartbeat=soon",
            "amqp://u:s3cret@h/?heartbeat=70000",
            "amqp://u:s3cret@h/?ssl=1",
            "amqp://u:s3cret@:5672/",
        ] {
            let e = AmqpUrl::parse(url).unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        let u = AmqpUrl::parse("amqp://u:s3cret@h:1/v").unwrap();
        assert!(!format!("{u} {u:?}").contains("s3cret"));
        let w = u.with_vhost("t 1");
        assert_eq!(w.vhost(), "t 1");
        assert_eq!(w.to_string(), "amqp://u:***@h:1/t%201");
    }
}
