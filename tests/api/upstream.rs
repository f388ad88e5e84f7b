//! What the admin key must never do: follow a redirect to another host, travel through a proxy the
//! operator did not choose, or go over plain http to a remote host. Each test reproduces the attack on
//! loopback with a capture server that must never see the key.

use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

/// A server that records whatever reaches it and answers 200 with an empty page.
async fn capture_server() -> MockServer {
    let capture = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&[], false)))
        .mount(&capture)
        .await;
    capture
}

async fn requests_carrying_the_key(capture: &MockServer) -> usize {
    capture
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|request| {
            request
                .headers
                .get("x-api-key")
                .is_some_and(|value| value.as_bytes() == ADMIN_KEY.as_bytes())
        })
        .count()
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed_and_fails_the_poll() {
    // Arrange: the key listing redirects to a capture server on another port (another origin).
    let capture = capture_server().await;
    let target = format!("{}/v1/organizations/api_keys?limit=1000", capture.uri());
    let server = organization_answering_keys_with(
        ResponseTemplate::new(302).insert_header("location", target.as_str()),
    )
    .await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.up(), Some(0.0), "{}", metrics.text);
    assert_eq!(metrics.failures("redirect"), 1.0, "{}", metrics.text);
    assert_eq!(
        requests_carrying_the_key(&capture).await,
        0,
        "the admin key followed the redirect"
    );
    assert!(
        capture
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty(),
        "nothing at all reaches the redirect target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_logged_with_the_location_host_but_never_the_key_or_the_path() {
    // Arrange
    let capture = capture_server().await;
    let target = format!("{}/steal?token=secret-path-token", capture.uri());
    let server = organization_answering_keys_with(
        ResponseTemplate::new(307).insert_header("location", target.as_str()),
    )
    .await;
    let base_url = server.uri();

    // Act
    let exporter = ExporterProcess::start(
        &["--anthropic.base-url", &base_url, "--log.level", "debug"],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );
    exporter.wait_for_log("reason=\"redirect\"", Duration::from_secs(10));
    let (_, _, logs) = exporter.terminate();

    // Assert
    let host = capture.uri();
    assert!(
        logs.contains(&host),
        "the log names the Location host:\n{logs}"
    );
    assert!(!logs.contains("secret-path-token"), "{logs}");
    assert!(!logs.contains(ADMIN_KEY), "{logs}");
    assert_eq!(requests_carrying_the_key(&capture).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxies_are_ignored_unless_the_operator_opts_in() {
    // Arrange: HTTP_PROXY and HTTPS_PROXY point at a capture server.
    let capture = capture_server().await;
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let base_url = server.uri();
    let proxy = capture.uri();
    let env = [
        ("ANTHROPIC_ADMIN_KEY", ADMIN_KEY),
        ("HTTP_PROXY", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
    ];

    // Act 1: no opt-in.
    let exporter = ExporterProcess::start(&["--anthropic.base-url", &base_url], &env);
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));
    let (_, _, quiet_logs) = exporter.terminate();
    let leaked_without_opt_in = requests_carrying_the_key(&capture).await;

    // Act 2: the operator opts in.
    let exporter = ExporterProcess::start(
        &[
            "--anthropic.base-url",
            &base_url,
            "--anthropic.proxy-from-env",
        ],
        &env,
    );
    exporter.wait_for_log("proxy_host", Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while requests_carrying_the_key(&capture).await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, proxied_logs) = exporter.terminate();

    // Assert
    assert_eq!(
        leaked_without_opt_in, 0,
        "the key went to an environment proxy"
    );
    assert!(!quiet_logs.contains("proxy_host"), "{quiet_logs}");
    assert!(
        requests_carrying_the_key(&capture).await > 0,
        "with --anthropic.proxy-from-env the proxy is used"
    );
    assert!(
        proxied_logs.contains("proxy_host=127.0.0.1") && proxied_logs.contains("WARN"),
        "the start-up names the proxy host:\n{proxied_logs}"
    );
}

#[test]
fn plain_http_to_a_remote_host_is_refused_unless_allowed() {
    // Act
    let refused = run_to_completion(
        &[
            "--anthropic.base-url",
            "http://api.example.com",
            "--config.check",
        ],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );
    let allowed = run_to_completion(
        &[
            "--anthropic.base-url",
            "http://api.example.com",
            "--anthropic.allow-insecure-http",
            "--config.check",
        ],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );

    // Assert
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{message}");
    assert!(
        message.contains("--anthropic.allow-insecure-http"),
        "{message}"
    );
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_instead_of_killing_the_process() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let base_url = server.uri();
    let mut exporter = ExporterProcess::start(
        &["--anthropic.base-url", &base_url],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));

    // Act
    exporter.signal("HUP");
    exporter.wait_for_log("Received SIGHUP", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Assert
    assert!(
        exporter.is_running(),
        "SIGHUP killed the exporter:\n{}",
        exporter.logs()
    );
    let health = reqwest::get(exporter.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, _, _) = exporter.terminate();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_that_becomes_a_fifo_fails_the_poll_without_freezing_the_poller() {
    // Arrange: a good key file at start-up, swapped for a FIFO that nobody ever writes.
    let server = MockServer::start().await;
    Mock::given(path(KEYS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&[], false)))
        .mount(&server)
        .await;
    let dir = std::env::temp_dir().join(format!("ake-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("admin-key");
    std::fs::write(&key_file, ADMIN_KEY).unwrap();
    let base_url = server.uri();
    let exporter = ExporterProcess::start(
        &[
            "--anthropic.base-url",
            &base_url,
            "--anthropic.admin-key-file",
            key_file.to_str().unwrap(),
            "--poll.interval",
            "1s",
        ],
        &[],
    );
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));
    std::fs::remove_file(&key_file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&key_file)
        .status()
        .unwrap();
    assert!(made.success());

    // Act
    exporter.wait_for_log("not a regular file", Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = reqwest::get(exporter.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let metrics = Metrics::parse(&text);
        if metrics.failures("key_file") >= 1.0 || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let health = reqwest::get(exporter.url("/healthz"))
        .await
        .unwrap()
        .status();
    let (status, took, logs) = exporter.terminate();
    std::fs::remove_dir_all(&dir).unwrap();

    // Assert
    assert!(metrics.failures("key_file") >= 1.0, "{}", metrics.text);
    assert_eq!(metrics.up(), Some(0.0));
    assert_eq!(health, 200, "the poller is alive, it only fails");
    assert!(status.success() && took < Duration::from_secs(5), "{logs}");
}
