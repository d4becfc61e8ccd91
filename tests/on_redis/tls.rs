use beatd::redis::{connect, BrokerUrl, ConnectOptions, Error};
use beatd::testkit::certs::TestCerts;
use beatd::testkit::{free_port, RedisServer};
use std::path::Path;

/// A server with a TLS listener on its own port, certificate `name`, signed by the test CA.
fn tls_server(certs: &TestCerts, name: &str, client_auth: bool) -> (RedisServer, u16) {
    let port = free_port().unwrap();
    let args = certs.server_args(port, name, client_auth);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (
        RedisServer::start_with(&args).expect("redis-server with TLS"),
        port,
    )
}

fn url(port: u16, query: &[(&str, &Path)]) -> String {
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect();
    format!(
        "rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&{}",
        q.join("&")
    )
}

async fn try_connect(u: &str) -> Result<(), Error> {
    let url = BrokerUrl::parse(u).expect("valid url");
    connect(&url, ConnectOptions::default()).await.map(|_| ())
}

#[tokio::test]
async fn a_private_ca_is_verified_and_a_wrong_one_or_a_wrong_name_refused() {
    let certs = TestCerts::generate().expect("openssl");
    let (_s, port) = tls_server(&certs, "server", false);
    try_connect(&url(port, &[("ssl_ca_certs", &certs.cert("ca"))]))
        .await
        .expect("the private CA verifies the server");

    // The public roots (no ssl_ca_certs) do not know the private CA.
    let e = try_connect(&url(port, &[])).await.unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    let e = try_connect(&url(port, &[("ssl_ca_certs", &certs.cert("wrong-ca"))]))
        .await
        .unwrap_err();
    let text = beatd::error_chain(&e);
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(
        text.contains("ssl_ca_certs") && text.contains("UnknownIssuer"),
        "{text}"
    );

    // Signed by the right CA, but for another name.
    let (_m, misnamed) = tls_server(&certs, "misnamed", false);
    let e = try_connect(&url(misnamed, &[("ssl_ca_certs", &certs.cert("ca"))]))
        .await
        .unwrap_err();
    let text = beatd::error_chain(&e);
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(text.contains("not valid for name \"127.0.0.1\""), "{text}");
    // ssl_cert_reqs=none accepts it, as redis-py does.
    let insecure = format!("rediss://127.0.0.1:{misnamed}/0?ssl_cert_reqs=none");
    try_connect(&insecure).await.expect("unverified");
}

#[tokio::test]
async fn mutual_tls_sends_the_client_certificate() {
    let certs = TestCerts::generate().expect("openssl");
    let (_s, port) = tls_server(&certs, "server", true);
    let ca = certs.cert("ca");
    try_connect(&url(
        port,
        &[
            ("ssl_ca_certs", &ca),
            ("ssl_certfile", &certs.cert("client")),
            ("ssl_keyfile", &certs.key("client")),
        ],
    ))
    .await
    .expect("client certificate accepted");
    let e = try_connect(&url(port, &[("ssl_ca_certs", &ca)]))
        .await
        .unwrap_err();
    let text = beatd::error_chain(&e);
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(text.contains("CertificateRequired"), "{text}");
}
