//! TLS as kombu and redis-py spell it in a URL's query: `ssl_cert_reqs`, `ssl_ca_certs`,
//! `ssl_certfile`, `ssl_keyfile`, read into the certificates redis-rs verifies with. Owns the
//! options and the reading of the files; which connection uses them is the caller's.

use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, TlsCertificates,
};
use std::path::{Path, PathBuf};

/// How to speak TLS to one kind of node (the master, the Sentinels).
#[derive(Clone)]
pub(crate) struct Tls {
    /// No certificate or name check (`ssl_cert_reqs=none`).
    pub insecure: bool,
    /// A private CA and/or a client certificate; `None`: the public roots.
    pub certs: Option<TlsCertificates>,
}

/// A client for `host:port` with `redis` (db, credentials), over TLS when `tls` is set.
///
/// # Errors
/// When redis-rs rejects the certificates.
pub(crate) fn client(
    host: &str,
    port: u16,
    redis: &RedisConnectionInfo,
    tls: Option<&Tls>,
) -> redis::RedisResult<Client> {
    let addr = match tls {
        None => ConnectionAddr::Tcp(host.to_owned(), port),
        Some(t) => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: t.insecure,
            tls_params: None,
        },
    };
    let info = ConnectionInfo {
        addr,
        redis: redis.clone(),
    };
    match tls.and_then(|t| t.certs.clone()) {
        Some(certs) => Client::build_with_tls(info, certs),
        None => Client::open(info),
    }
}

/// The TLS options taken out of a URL's query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    /// `ssl_cert_reqs=none`: no certificate check at all.
    pub insecure: bool,
    /// `ssl_ca_certs`: the PEM bundle of the CA(s) to trust instead of the public roots.
    pub ca_certs: Option<PathBuf>,
    /// `ssl_certfile`: the client certificate (chain) for mutual TLS.
    pub certfile: Option<PathBuf>,
    /// `ssl_keyfile`: its key; redis-py allows the key inside the certfile, so may be unset.
    pub keyfile: Option<PathBuf>,
    /// Whether any TLS option was given (they make sense only with TLS).
    pub given: bool,
}

impl TlsOptions {
    /// Takes the TLS options out of decoded query `pairs`, leaving the others.
    ///
    /// # Errors
    /// A bad `ssl_cert_reqs` value, or a key file without a certificate.
    pub fn take(pairs: &mut Vec<(String, String)>) -> Result<Self, String> {
        let mut out = Self::default();
        let mut rest = Vec::new();
        for (k, v) in pairs.drain(..) {
            match k.as_str() {
                "ssl_cert_reqs" => {
                    out.insecure = match v.to_ascii_lowercase().as_str() {
                        "none" | "cert_none" => true,
                        // CERT_OPTIONAL checks a certificate the server sends, and a TLS
                        // server always sends one.
                        "required" | "cert_required" | "optional" | "cert_optional" => false,
                        _ => {
                            return Err(format!(
                                "ssl_cert_reqs={v:?}: must be required, optional or none"
                            ))
                        }
                    };
                }
                "ssl_ca_certs" => out.ca_certs = Some(PathBuf::from(v)),
                "ssl_certfile" => out.certfile = Some(PathBuf::from(v)),
                "ssl_keyfile" => out.keyfile = Some(PathBuf::from(v)),
                _ => {
                    rest.push((k, v));
                    continue;
                }
            }
            out.given = true;
        }
        *pairs = rest;
        if out.keyfile.is_some() && out.certfile.is_none() {
            return Err("ssl_keyfile needs ssl_certfile (the client certificate)".into());
        }
        Ok(out)
    }

    /// The TLS settings these options make.
    ///
    /// # Errors
    /// As [`TlsOptions::certificates`].
    pub fn tls(&self) -> Result<Tls, String> {
        Ok(Tls {
            insecure: self.insecure,
            // Kept when insecure too: a client certificate still identifies us.
            certs: self.certificates()?,
        })
    }

    /// Whether certificates must be read (a private CA or a client certificate).
    #[must_use]
    pub fn has_files(&self) -> bool {
        self.ca_certs.is_some() || self.certfile.is_some()
    }

    /// Reads the files into what redis-rs verifies with; `None` when no file is named (the
    /// public roots then).
    ///
    /// # Errors
    /// A file that cannot be read or holds no PEM block of the expected kind, named with
    /// its option.
    pub fn certificates(&self) -> Result<Option<TlsCertificates>, String> {
        if !self.has_files() {
            return Ok(None);
        }
        let root_cert = match &self.ca_certs {
            Some(p) => Some(read_pem("ssl_ca_certs", p, "CERTIFICATE")?),
            None => None,
        };
        let client_tls = match &self.certfile {
            Some(cert) => {
                let client_cert = read_pem("ssl_certfile", cert, "CERTIFICATE")?;
                let client_key = match &self.keyfile {
                    Some(k) => read_pem("ssl_keyfile", k, "PRIVATE KEY")?,
                    None => {
                        if !contains_block(&client_cert, "PRIVATE KEY") {
                            return Err(format!(
                                "ssl_certfile {}: holds no private key; name it with ssl_keyfile",
                                cert.display()
                            ));
                        }
                        client_cert.clone()
                    }
                };
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn read_pem(option: &str, path: &Path, kind: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{option} {}: {e}", path.display()))?;
    if !contains_block(&bytes, kind) {
        return Err(format!(
            "{option} {}: no PEM {kind} block in it",
            path.display()
        ));
    }
    Ok(bytes)
}

/// `kind` matches `-----BEGIN CERTIFICATE-----` and, for keys, `-----BEGIN RSA PRIVATE KEY-----`
/// and `-----BEGIN EC PRIVATE KEY-----` too.
fn contains_block(pem: &[u8], kind: &str) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn takes_kombu_spellings_and_leaves_the_rest() {
        let mut p = pairs(&[
            ("ssl_cert_reqs", "CERT_REQUIRED"),
            ("ssl_ca_certs", "/etc/ca.pem"),
            ("master_name", "m"),
            ("ssl_certfile", "/c.pem"),
            ("ssl_keyfile", "/k.pem"),
        ]);
        let t = TlsOptions::take(&mut p).unwrap();
        assert_eq!(p, pairs(&[("master_name", "m")]));
        assert!(!t.insecure && t.given && t.has_files());
        assert_eq!(t.ca_certs.as_deref(), Some(Path::new("/etc/ca.pem")));
        let mut p = pairs(&[("ssl_cert_reqs", "none")]);
        assert!(TlsOptions::take(&mut p).unwrap().insecure);
        let mut p = pairs(&[("ssl_cert_reqs", "maybe")]);
        assert!(TlsOptions::take(&mut p)
            .unwrap_err()
            .contains("ssl_cert_reqs"));
        let mut p = pairs(&[("ssl_keyfile", "/k.pem")]);
        assert!(TlsOptions::take(&mut p)
            .unwrap_err()
            .contains("ssl_certfile"));
    }

    #[test]
    fn unreadable_or_wrong_files_name_their_option() {
        let dir = tempfile::tempdir().unwrap();
        let t = TlsOptions {
            ca_certs: Some(dir.path().join("missing.pem")),
            given: true,
            ..TlsOptions::default()
        };
        let e = t.certificates().err().unwrap();
        assert!(
            e.starts_with("ssl_ca_certs ") && e.contains("missing.pem"),
            "{e}"
        );
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let t = TlsOptions {
            ca_certs: Some(not_pem),
            given: true,
            ..TlsOptions::default()
        };
        assert!(t
            .certificates()
            .err()
            .unwrap()
            .contains("no PEM CERTIFICATE"));
    }
}
