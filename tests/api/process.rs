//! The real binary: start-up and error lines, exit codes, signals, and the admin key never leaking.

use std::time::Duration;

use wiremock::{MockServer, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_never_appears_in_logs_metrics_or_pages() {
    // Arrange: an upstream that echoes the key back in its error message, and debug logging.
    let echo = format!("invalid x-api-key: {ADMIN_KEY}");
    let server = organization_answering_keys_with(
        ResponseTemplate::new(401)
            .insert_header("request-id", "req_echo_401")
            .set_body_json(error_body("authentication_error", &echo, "req_echo_401")),
    )
    .await;
    let base_url = server.uri();
    let exporter = ExporterProcess::start(
        &[
            "--anthropic.base-url",
            &base_url,
            "--log.level",
            "debug",
            "--poll.interval",
            "1s",
        ],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );
    exporter.wait_for_log("req_echo_401", Duration::from_secs(10));

    // Act
    let http = reqwest::Client::new();
    let mut served = String::new();
    for page in ["/", "/metrics", "/readyz", "/healthz", "/nope"] {
        served.push_str(
            &http
                .get(exporter.url(page))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let (_, _, logs) = exporter.terminate();

    // Assert
    assert!(
        logs.contains("ERROR"),
        "a rejected key is an ERROR:\n{logs}"
    );
    assert!(
        logs.contains("reason=\"unauthorized\"") || logs.contains("reason=unauthorized"),
        "{logs}"
    );
    assert!(
        logs.contains("[REDACTED]"),
        "the echoed key is scrubbed, not dropped silently:\n{logs}"
    );
    assert!(
        !logs.contains(ADMIN_KEY),
        "the admin key leaked into the logs:\n{logs}"
    );
    assert!(
        !logs.contains(&ADMIN_KEY[15..]),
        "part of the admin key leaked into the logs"
    );
    assert!(
        !served.contains(ADMIN_KEY) && !served.contains(&ADMIN_KEY[15..]),
        "the admin key leaked over HTTP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_one_info_line_and_failed_polls_log_a_warning_with_the_request_id() {
    // Arrange
    let server = organization_answering_keys_with(
        ResponseTemplate::new(500)
            .insert_header("request-id", "req_500_abc")
            .set_body_json(error_body(
                "api_error",
                "Internal server error",
                "req_500_abc",
            )),
    )
    .await;
    let base_url = server.uri();

    // Act
    let exporter = ExporterProcess::start(
        &[
            "--anthropic.base-url",
            &base_url,
            "--poll.max-retries",
            "0",
            "--organization",
            "acme",
        ],
        &[("ANTHROPIC_ADMIN_API_KEY", ADMIN_KEY)],
    );
    exporter.wait_for_log("req_500_abc", Duration::from_secs(10));
    let (_, _, logs) = exporter.terminate();

    // Assert
    let start_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Starting anthropic-keys-exporter"))
        .collect();
    assert_eq!(start_lines.len(), 1, "{logs}");
    let start = start_lines[0];
    assert!(start.contains("INFO"), "{start}");
    for field in [
        "version=",
        "listen_address=127.0.0.1:",
        "base_url=http://127.0.0.1:",
        "poll_interval=5m",
    ] {
        assert!(start.contains(field), "{field} missing from {start}");
    }
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("req_500_abc"))
        .expect("a WARN line");
    assert!(warning.contains("server_error"), "{warning}");
    assert!(!logs.contains(ADMIN_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let base_url = server.uri();

    // Act
    let exporter = ExporterProcess::start(
        &["--anthropic.base-url", &base_url, "--log.format", "json"],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));
    let (_, _, logs) = exporter.terminate();

    // Assert
    for line in logs.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_within_a_few_seconds() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let base_url = server.uri();
    let exporter = ExporterProcess::start(
        &["--anthropic.base-url", &base_url],
        &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
    );
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));
    // An idle keep-alive connection must not hold up shutdown.
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(exporter.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Act
    let (status, took, logs) = exporter.terminate();

    // Assert
    assert!(status.success(), "exit status {status:?}; logs:\n{logs}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(logs.contains("Stopped."), "{logs}");
}

#[test]
fn invalid_configuration_exits_2_with_one_line_naming_flag_and_env_var() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[],
            &[],
            &[
                "ANTHROPIC_ADMIN_KEY",
                "ANTHROPIC_ADMIN_API_KEY",
                "--anthropic.admin-key-file",
            ],
        ),
        (
            &["--poll.interval", "often"],
            &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
            &["--poll.interval", "ANTHROPIC_KEYS_EXPORTER_POLL_INTERVAL"],
        ),
        (
            &[],
            &[
                ("ANTHROPIC_ADMIN_KEY", ADMIN_KEY),
                ("ANTHROPIC_KEYS_EXPORTER_LOG_FORMAT", "yaml"),
            ],
            &["--log.format", "ANTHROPIC_KEYS_EXPORTER_LOG_FORMAT"],
        ),
        (
            &["--anthropic.admin-key-file", "/nonexistent/key"],
            &[],
            &["cannot read", "/nonexistent/key"],
        ),
        (
            &["--no-such-flag"],
            &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)],
            &["--no-such-flag"],
        ),
    ];
    for (args, env, expected) in cases {
        let output = run_to_completion(args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle} missing from {stderr}"
            );
        }
        assert!(!stderr.contains(ADMIN_KEY));
    }
}

#[test]
fn help_shows_every_flag_with_its_default_and_env_var_but_never_the_key() {
    let output = run_to_completion(&["--help"], &[("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)]);
    // Help is wrapped to the terminal width; compare with whitespace collapsed.
    let help = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(output.status.success());
    for needle in [
        "--anthropic.admin-key-file",
        "--anthropic.base-url",
        "[default: https://api.anthropic.com]",
        "--poll.interval",
        "[default: 5m]",
        "[default: 30s, or the poll interval if shorter]",
        "[default: :10419]",
        "[default: /metrics]",
        "ANTHROPIC_KEYS_EXPORTER_POLL_INTERVAL",
        "ANTHROPIC_ADMIN_KEY",
        "--demo",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from --help:\n{help}"
        );
    }
    assert!(!help.contains(ADMIN_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_can_come_from_a_file() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let dir = std::env::temp_dir().join(format!("ake-keyfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("admin-key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).unwrap();
    let base_url = server.uri();

    // Act
    let exporter = ExporterProcess::start(
        &[
            "--anthropic.base-url",
            &base_url,
            "--anthropic.admin-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));
    let ready = reqwest::get(exporter.url("/readyz"))
        .await
        .unwrap()
        .status();
    drop(exporter);
    std::fs::remove_dir_all(&dir).unwrap();

    // Assert
    assert_eq!(ready, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_serves_a_simulated_organization_without_a_key() {
    // Act
    let exporter = ExporterProcess::start(&["--demo"], &[]);
    exporter.wait_for_log("First successful poll", Duration::from_secs(10));
    let text = reqwest::get(exporter.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, _, _) = exporter.terminate();

    // Assert
    let metrics = Metrics::parse(&text);
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    for status in ["active", "inactive", "archived", "expired", "unknown"] {
        assert!(
            metrics.sum("anthropic_api_keys", &[("status", status)]) >= 1.0,
            "{status}"
        );
    }
    assert!(metrics.find("anthropic_api_key_info", &[]).len() >= 20);
    assert!(status.success());
}
