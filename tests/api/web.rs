//! The web config file: basic auth, TLS, client certificates, reloading, and the server's limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::MockServer;

use crate::fixtures::*;
use crate::helpers::*;

/// A certificate authority that issues server and client certificates for the tests.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` and its private key, both PEM.
    pub(crate) fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ake-web-{name}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub(crate) fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

pub(crate) async fn organization() -> MockServer {
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    server
}

pub(crate) fn tls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn basic_auth_lets_in_only_the_right_password() {
    // Arrange
    let dir = TempDir::new("basic");
    let config = dir.write(
        "web.yml",
        &format!(
            "basic_auth_users:\n  prometheus: '{}'\n",
            bcrypt_hash("correct horse")
        ),
    );
    let app = spawn_app_with(organization().await, |c| c.web_config_file = Some(config)).await;
    let metrics = app.url("/metrics");

    // Act
    let anonymous = app.http.get(&metrics).send().await.unwrap();
    let wrong = app
        .http
        .get(&metrics)
        .basic_auth("prometheus", Some("battery staple"))
        .send()
        .await
        .unwrap();
    let unknown_user = app
        .http
        .get(&metrics)
        .basic_auth("mallory", Some("correct horse"))
        .send()
        .await
        .unwrap();
    let right = app
        .http
        .get(&metrics)
        .basic_auth("prometheus", Some("correct horse"))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown_user.status(), 401);
    assert_eq!(right.status(), 200);
    assert_eq!(
        app.get("/").await.status(),
        401,
        "the landing page is protected too"
    );
    for probe in ["/healthz", "/readyz", "/-/healthy"] {
        assert_ne!(
            app.get(probe).await.status(),
            401,
            "{probe} stays open to probes"
        );
    }
}

#[tokio::test]
async fn tls_serves_https_and_refuses_plain_http() {
    // Arrange
    let dir = TempDir::new("tls");
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let app = spawn_app_with(organization().await, |c| c.web_config_file = Some(config)).await;
    let https = format!("https://{}/metrics", app.address);

    // Act
    let secure = tls_client(&ca.pem, None).get(&https).send().await;
    let plain = app.http.get(app.url("/metrics")).send().await;
    let untrusting = tls_client(&TestCa::new("other CA").pem, None)
        .get(&https)
        .send()
        .await;

    // Assert
    let secure = secure.expect("HTTPS works with the CA");
    assert_eq!(secure.status(), 200);
    assert!(
        secure
            .text()
            .await
            .unwrap()
            .contains("anthropic_exporter_build_info")
    );
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP to a TLS port must fail"
    );
    assert!(
        untrusting.is_err(),
        "a client that does not trust the certificate must fail"
    );
}

#[tokio::test]
async fn client_certificates_are_required_and_verified() {
    // Arrange
    let dir = TempDir::new("mtls");
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let (cert, key) = server_ca.issue(&["127.0.0.1"]);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    dir.write("clients.pem", &client_ca.pem);
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients.pem\n  min_version: TLS13\n",
    );
    let app = spawn_app_with(organization().await, |c| c.web_config_file = Some(config)).await;
    let https = format!("https://{}/metrics", app.address);
    let (good_cert, good_key) = client_ca.issue(&["prometheus"]);
    let (rogue_cert, rogue_key) = TestCa::new("rogue CA").issue(&["prometheus"]);

    // Act
    let without = tls_client(&server_ca.pem, None).get(&https).send().await;
    let rogue = tls_client(&server_ca.pem, Some((&rogue_cert, &rogue_key)))
        .get(&https)
        .send()
        .await;
    let good = tls_client(&server_ca.pem, Some((&good_cert, &good_key)))
        .get(&https)
        .send()
        .await;

    // Assert
    assert!(without.is_err(), "no client certificate must be refused");
    assert!(
        rogue.is_err(),
        "a certificate from another CA must be refused"
    );
    assert_eq!(
        good.expect("a certificate from the client CA is accepted")
            .status(),
        200
    );
}

#[tokio::test]
async fn changed_passwords_and_certificates_apply_without_a_restart() {
    // Arrange
    let dir = TempDir::new("reload");
    let first_ca = TestCa::new("first CA");
    let (cert, key) = first_ca.issue(&["127.0.0.1"]);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let config = dir.write(
        "web.yml",
        &format!("{tls}basic_auth_users:\n  prom: '{}'\n", bcrypt_hash("old")),
    );
    let app = spawn_app_with(organization().await, |c| {
        c.web_config_file = Some(config);
        c.server_limits.web_config_check_interval = Duration::from_millis(200);
    })
    .await;
    let https = format!("https://{}/metrics", app.address);
    let before = tls_client(&first_ca.pem, None)
        .get(&https)
        .basic_auth("prom", Some("old"))
        .send()
        .await
        .unwrap();

    // Act: rotate the certificate (new CA) and the password.
    let second_ca = TestCa::new("second CA");
    let (cert, key) = second_ca.issue(&["127.0.0.1"]);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    dir.write(
        "web.yml",
        &format!("{tls}basic_auth_users:\n  prom: '{}'\n", bcrypt_hash("new")),
    );
    let client = tls_client(&second_ca.pem, None);
    let scrape = |password: &'static str| client.get(&https).basic_auth("prom", Some(password));
    eventually(
        Duration::from_secs(5),
        "the new certificate and password",
        || async { scrape("new").send().await.is_ok_and(|r| r.status() == 200) },
    )
    .await;
    let new_password = scrape("new").send().await.unwrap();
    let old_password = client
        .get(&https)
        .basic_auth("prom", Some("old"))
        .send()
        .await
        .unwrap();
    let old_ca = tls_client(&first_ca.pem, None).get(&https).send().await;

    // Assert
    assert_eq!(before.status(), 200);
    assert_eq!(new_password.status(), 200);
    assert_eq!(old_password.status(), 401);
    assert!(old_ca.is_err(), "the old certificate is no longer served");

    // A broken edit keeps the configuration in force.
    dir.write("web.yml", "tls_server_config: [not, a, mapping]\n");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_broken = client
        .get(&https)
        .basic_auth("prom", Some("new"))
        .send()
        .await
        .unwrap();
    assert_eq!(after_broken.status(), 200);
    let _ = dir.path();
}

#[tokio::test]
async fn extra_response_headers_from_the_web_config_are_sent() {
    // Arrange
    let dir = TempDir::new("headers");
    let headers = [
        ("X-Frame-Options", "deny"),
        ("Strict-Transport-Security", "max-age=31536000"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-XSS-Protection", "0"),
        ("Content-Security-Policy", "default-src 'none'"),
    ];
    let lines: String = headers
        .iter()
        .map(|(name, value)| format!("    {name}: \"{value}\"\n"))
        .collect();
    let config = dir.write(
        "web.yml",
        &format!("http_server_config:\n  headers:\n{lines}"),
    );

    // Act
    let app = spawn_app_with(organization().await, |c| c.web_config_file = Some(config)).await;
    app.wait_for_first_poll().await;
    let landing = app.get("/").await;
    let metrics = app.get("/metrics").await;
    let missing = app.get("/missing").await;

    // Assert
    for response in [&landing, &metrics, &missing] {
        for (name, value) in headers {
            assert_eq!(response.headers()[name], value, "{}", response.url());
        }
    }
    assert!(metrics.text().await.unwrap().contains("anthropic_up{"));
}

#[tokio::test]
async fn oversized_headers_are_refused_and_a_stalled_client_blocks_nobody() {
    // Arrange
    let app = spawn_app(organization().await).await;
    app.wait_for_first_poll().await;

    // Act: one client sends half a request and stalls; another sends 32 KiB of headers.
    let mut stalled = tokio::net::TcpStream::connect(app.address).await.unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let huge = "a".repeat(32 * 1024);
    let oversized = app
        .http
        .get(app.url("/metrics"))
        .header("x-huge", huge)
        .send()
        .await
        .unwrap();
    let meanwhile = app.get("/metrics").await;

    // Assert
    assert_eq!(oversized.status(), 431);
    assert_eq!(meanwhile.status(), 200);
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(200), stalled.read(&mut buffer)).await;
    assert!(
        read.is_err(),
        "the stalled connection is simply waiting, not answered"
    );
}
