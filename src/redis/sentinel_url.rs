//! A Sentinel-managed Redis written as a URL, in the two forms Celery users already have:
//! kombu's `sentinel://[user:password@]host:port[/db];sentinel://host:port…` (the master name
//! in `broker_transport_options`, here `--sentinel-master` or `?master_name=`) and RedBeat's
//! `redis-sentinel://[:password@]host:port[,host:port…][/db]?service_name=…`. Owns the parsing
//! only; asking the Sentinels is `sentinel.rs`.
//!
//! As in kombu and redis-py, the URL's credentials and db are the master's; the Sentinels get
//! their own (`--sentinel-password`, `?sentinel_password=`, redis-py's `sentinel_kwargs`).

use super::tls::{Tls, TlsOptions};
use redis::RedisConnectionInfo;

/// Sentinel's default port.
const SENTINEL_PORT: u16 = 26379;

/// RedBeat's default `service_name`.
const REDBEAT_MASTER: &str = "master";

/// What flags and environment add to a Sentinel URL; they win over the URL's query.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SentinelOptions {
    /// `--sentinel-master` / `BEATD_SENTINEL_MASTER`.
    pub master: Option<String>,
    /// `--sentinel-password` / `BEATD_SENTINEL_PASSWORD`.
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelOptions")
            .field("master", &self.master)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A master behind a set of Sentinels, parsed.
#[derive(Clone)]
pub(crate) struct SentinelSpec {
    /// The Sentinels, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// The master's db and credentials.
    pub master: RedisConnectionInfo,
    /// TLS to the master (and its replicas), if any.
    pub master_tls: Option<Tls>,
    /// The Sentinels' own credentials.
    pub sentinel: RedisConnectionInfo,
    /// TLS to the Sentinels, if any.
    pub sentinel_tls: Option<Tls>,
}

/// Whether `url` is a Sentinel URL (by its scheme).
#[must_use]
pub(crate) fn is_sentinel(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    matches!(scheme, "sentinel" | "redis-sentinel")
}

/// Parses a Sentinel URL.
///
/// # Errors
/// A reason fit for "invalid redis url …: {reason}".
pub(crate) fn parse(url: &str, opts: &SentinelOptions) -> Result<SentinelSpec, String> {
    let mut sentinels = Vec::new();
    let mut master = None;
    let mut query: Vec<(String, String)> = Vec::new();
    let mut redbeat = false;
    for part in url.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (scheme, rest) = part
            .split_once("://")
            .ok_or_else(|| format!("{:?} is not a URL", redact_part(part)))?;
        match scheme {
            "sentinel" => {}
            "redis-sentinel" => redbeat = true,
            other => {
                return Err(format!(
                    "{other}:// cannot be mixed with sentinel:// in one URL; list every \
                     Sentinel as sentinel://host:port separated by ';'"
                ))
            }
        }
        let (rest, q) = rest.split_once('?').unwrap_or((rest, ""));
        query.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            sentinels.push(host_port(host)?);
        }
        // kombu connects to the master with the first URL's parameters.
        if master.is_none() {
            master = Some(redis_info(userinfo, path)?);
        }
    }
    if sentinels.is_empty() {
        return Err("no Sentinel host in the URL (sentinel://host:26379;sentinel://…)".into());
    }
    let mut tls = TlsOptions::take(&mut query)?;
    let mut master_name = None;
    let mut sentinel = RedisConnectionInfo::default();
    let (mut master_ssl, mut sentinel_ssl) = (None, false);
    for (k, v) in query {
        match k.as_str() {
            "master_name" | "service_name" => master_name = Some(v),
            "sentinel_password" => sentinel.password = Some(v),
            "sentinel_username" => sentinel.username = Some(v),
            "ssl" => master_ssl = Some(boolean(&k, &v)?),
            "sentinel_ssl" => sentinel_ssl = boolean(&k, &v)?,
            _ => {
                return Err(format!(
                    "unknown option {k:?} in a Sentinel URL (known: master_name, \
                     service_name, sentinel_password, sentinel_username, ssl, sentinel_ssl, \
                     ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile)"
                ))
            }
        }
    }
    if let Some(p) = opts.password.clone().filter(|p| !p.is_empty()) {
        sentinel.password = Some(p);
    }
    let master_name = opts
        .master
        .clone()
        .filter(|m| !m.trim().is_empty())
        .or(master_name)
        .or_else(|| redbeat.then(|| REDBEAT_MASTER.to_owned()))
        .ok_or(
            "no master name: set --sentinel-master NAME (BEATD_SENTINEL_MASTER) or \
             ?master_name=NAME, the name in the Sentinels' `sentinel monitor NAME …` \
             (Celery's broker_transport_options master_name)",
        )?;
    let master_tls = master_ssl.unwrap_or(tls.given);
    if tls.given && !master_tls && !sentinel_ssl {
        return Err("TLS options given but ssl=false and no sentinel_ssl=true".into());
    }
    tls.given = master_tls || sentinel_ssl;
    let t = tls.tls()?;
    Ok(SentinelSpec {
        sentinels,
        master_name,
        master: master.unwrap_or_default(),
        master_tls: master_tls.then(|| t.clone()),
        sentinel,
        sentinel_tls: sentinel_ssl.then_some(t),
    })
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{key}={v:?}: must be true or false")),
    }
}

fn host_port(s: &str) -> Result<(String, u16), String> {
    // `[::1]:26379`
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    let port = match port {
        None | Some("") => SENTINEL_PORT,
        Some(p) => p
            .parse()
            .map_err(|_| format!("{s:?}: port {p:?} is not a number from 1 to 65535"))?,
    };
    Ok((host.to_owned(), port))
}

fn redis_info(userinfo: Option<&str>, path: &str) -> Result<RedisConnectionInfo, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| "the credentials are not valid UTF-8 once decoded".to_owned())
    };
    let mut info = RedisConnectionInfo::default();
    if let Some(u) = userinfo {
        // As redis-rs reads redis://: `user:password@`, `:password@`, or a lone username.
        let (user, pass) = match u.split_once(':') {
            Some((user, pass)) => (user, Some(pass)),
            None => (u, None),
        };
        info.username = Some(decode(user)?).filter(|u| !u.is_empty());
        info.password = pass.map(decode).transpose()?.filter(|p| !p.is_empty());
    }
    let db = path.trim_matches('/');
    if !db.is_empty() {
        info.db = db
            .parse()
            .map_err(|_| format!("db {db:?} is not a number"))?;
    }
    Ok(info)
}

fn redact_part(part: &str) -> String {
    super::RedactedUrl::new(part).as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str, opts: &SentinelOptions) -> SentinelSpec {
        parse(url, opts).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn kombu_form_takes_the_master_params_from_the_first_url() {
        let o = SentinelOptions {
            master: Some("mymaster".into()),
            ..SentinelOptions::default()
        };
        let s = ok(
            "sentinel://:s3cret@h1:26380/2;sentinel://h2:26381;sentinel://h3",
            &o,
        );
        assert_eq!(
            s.sentinels,
            [
                ("h1".to_owned(), 26380),
                ("h2".to_owned(), 26381),
                ("h3".to_owned(), 26379)
            ]
        );
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(s.master.db, 2);
        assert_eq!(s.master.password.as_deref(), Some("s3cret"));
        assert_eq!(s.sentinel.password, None);
        assert!(s.master_tls.is_none() && s.sentinel_tls.is_none());
    }

    #[test]
    fn master_name_from_the_query_and_the_flag_wins() {
        let url = "sentinel://u:p%40ss@h1:26379/0?master_name=fromurl";
        let s = ok(url, &SentinelOptions::default());
        assert_eq!(s.master_name, "fromurl");
        assert_eq!(s.master.username.as_deref(), Some("u"));
        assert_eq!(s.master.password.as_deref(), Some("p@ss"));
        let flag = SentinelOptions {
            master: Some("fromflag".into()),
            password: Some("sentpw".into()),
        };
        assert!(!format!("{flag:?}").contains("sentpw"));
        let s = ok(url, &flag);
        assert_eq!(s.master_name, "fromflag");
        assert_eq!(s.sentinel.password.as_deref(), Some("sentpw"));
    }

    #[test]
    fn redbeat_form_with_a_host_list_and_service_name() {
        let s = ok(
            "redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379,[::1]:26390/3?service_name=cache&sentinel_password=sp",
            &SentinelOptions::default(),
        );
        assert_eq!(s.sentinels.len(), 3);
        assert_eq!(s.sentinels[2], ("::1".to_owned(), 26390));
        assert_eq!(s.master_name, "cache");
        assert_eq!(s.master.db, 3);
        assert_eq!(s.sentinel.password.as_deref(), Some("sp"));
        // RedBeat's default service_name.
        let s = ok("redis-sentinel://h:26379/0", &SentinelOptions::default());
        assert_eq!(s.master_name, "master");
    }

    #[test]
    fn tls_options_go_to_the_master_and_to_sentinels_on_request() {
        let s = ok(
            "sentinel://h:26379?master_name=m&ssl_cert_reqs=none&sentinel_ssl=true",
            &SentinelOptions::default(),
        );
        assert!(s.master_tls.as_ref().is_some_and(|t| t.insecure));
        assert!(s.sentinel_tls.is_some());
        let s = ok(
            "sentinel://h?master_name=m&ssl=true",
            &SentinelOptions::default(),
        );
        assert!(s.master_tls.is_some() && s.sentinel_tls.is_none());
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        let none = SentinelOptions::default();
        let err = |u: &str| parse(u, &none).err().unwrap();
        assert!(err("sentinel://h1:26379").contains("--sentinel-master"));
        assert!(err("sentinel://h1:notaport?master_name=m").contains("port \"notaport\""));
        assert!(err("sentinel://h1;redis://h2?master_name=m").contains("cannot be mixed"));
        assert!(err("sentinel://?master_name=m").contains("no Sentinel host"));
        assert!(err("sentinel://h/x?master_name=m").contains("db \"x\""));
        assert!(err("sentinel://h?master_name=m&mastername=x").contains("unknown option"));
        assert!(err("sentinel://h?master_name=m&ssl=maybe").contains("ssl=\"maybe\""));
        let e = err("sentinel://:s3cret@h1;nonsense?master_name=m");
        assert!(e.contains("not a URL") && !e.contains("s3cret"), "{e}");
    }
}
