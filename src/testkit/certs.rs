//! Certificates for TLS tests, made with the `openssl` command line in a private directory:
//! a private CA, a server certificate it signed for `127.0.0.1` / `localhost`, a client
//! certificate for mutual TLS, a second CA that signed nothing of ours, and a server
//! certificate for another name.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The generated files; the directory is removed on drop.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Generates every certificate (P-256 keys, valid two days).
    ///
    /// # Errors
    /// When `openssl` is missing or fails.
    pub fn generate() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "beatd-certs-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let this = Self { dir };
        this.ca("ca")?;
        this.ca("wrong-ca")?;
        this.leaf("server", "ca", "IP:127.0.0.1,DNS:localhost", "serverAuth")?;
        this.leaf("client", "ca", "DNS:beatd-client", "clientAuth")?;
        this.leaf("misnamed", "ca", "DNS:other.example", "serverAuth")?;
        Ok(this)
    }

    /// `<name>.pem`.
    #[must_use]
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `<name>.key`.
    #[must_use]
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// `redis-server` arguments for a TLS listener on `port` with the certificate `name`;
    /// `client_auth` requires client certificates signed by the CA.
    #[must_use]
    pub fn server_args(&self, port: u16, name: &str, client_auth: bool) -> Vec<String> {
        let p = |x: PathBuf| x.display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p(self.cert(name)),
            "--tls-key-file".into(),
            p(self.key(name)),
            "--tls-ca-cert-file".into(),
            p(self.cert("ca")),
            "--tls-auth-clients".into(),
            if client_auth { "yes" } else { "no" }.into(),
        ]
    }

    fn ca(&self, name: &str) -> io::Result<()> {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=beatd test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        )
    }

    fn leaf(&self, name: &str, ca: &str, san: &str, usage: &str) -> io::Result<()> {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        let ext = format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        );
        std::fs::write(self.dir.join(format!("{name}.ext")), ext)?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        )
    }
}

fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run openssl ({e}); install it")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
