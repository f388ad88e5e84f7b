//! The whole `/metrics` output for a fixed organization, compared with a reviewed golden file.
//! Run with `UPDATE_GOLDEN=1` to rewrite the file after an intended change, and review the diff.

use std::path::PathBuf;

use serde_json::json;
use wiremock::MockServer;

use crate::fixtures::*;
use crate::helpers::*;

/// Values that change from run to run are replaced; process metrics are dropped.
fn mask(text: &str) -> String {
    const MASKED_VALUES: [&str; 6] = [
        "anthropic_api_key_expires_in_seconds{",
        "anthropic_exporter_last_successful_poll_timestamp_seconds{",
        "anthropic_exporter_poll_duration_seconds{",
        "anthropic_exporter_source_last_success_timestamp_seconds{",
        "anthropic_exporter_source_duration_seconds{",
        "anthropic_exporter_config_last_reload_success_timestamp_seconds",
    ];
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("process_")
            || line.starts_with("# HELP process_")
            || line.starts_with("# TYPE process_")
        {
            continue;
        }
        let line = if MASKED_VALUES.iter().any(|prefix| line.starts_with(prefix)) {
            let (series, _) = line.rsplit_once(' ').expect("a sample has a value");
            format!("{series} <masked>")
        } else if line.starts_with("anthropic_exporter_build_info{") {
            let start = line.find("revision=\"").expect("revision label") + "revision=\"".len();
            let end = start + line[start..].find('"').expect("closing quote");
            format!("{}<masked>{}", &line[..start], &line[end..])
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The fixed organization: every status, every workspace form, nullable fields, a status the exporter
/// does not know, names that need escaping, a creator who left, and keys used, unused and used by a
/// key the inventory does not list.
async fn fixed_organization() -> MockServer {
    let server = MockServer::start().await;
    mount_organization(&server, "4f6c1c7e-1d2b-4c1a-9a43-1f2e3d4c5b6a", "Acme Corp").await;
    mount_workspaces(
        &server,
        &[
            workspace("wrkspc_prod", "Production"),
            workspace("wrkspc_lab", "Lab \"β\""),
        ],
    )
    .await;
    let keys = vec![
        KeyFixture::new("apikey_01")
            .name("gateway")
            .in_workspace("wrkspc_prod")
            .expires_at("2031-06-01T12:00:00Z")
            .json(),
        KeyFixture::new("apikey_02")
            .name("billing")
            .in_workspace("wrkspc_prod")
            .status("inactive")
            .created_by("user_02", "user")
            .json(),
        KeyFixture::new("apikey_03")
            .name("ci 🚀")
            .in_legacy_workspace("wrkspc_lab")
            .status("expired")
            .created_by("svac_ci", "service_account")
            .expires_at("2025-01-01T03:00:00Z")
            .json(),
        KeyFixture::new("apikey_04")
            .name("old laptop")
            .status("archived")
            .set("created_by", json!(null))
            .json(),
        KeyFixture::new("apikey_05")
            .name("automation")
            .set("scope", json!({"type": "organization"}))
            .json(),
        KeyFixture::new("apikey_06")
            .name("mystery")
            .status("quarantined")
            .json(),
    ];
    mount_key_pages(&server, &[keys]).await;
    mount_users(
        &server,
        &[
            user("user_01", "Ada Lovelace", "ada@acme.example", "admin"),
            user("user_03", "Grace Hopper", "grace@acme.example", "developer"),
        ],
    )
    .await;
    mount_usage(
        &server,
        &[
            usage_bucket(
                "2025-06-01T00:00:00Z",
                "2025-06-02T00:00:00Z",
                &["apikey_01", "apikey_gone"],
            ),
            usage_bucket(
                "2025-06-10T00:00:00Z",
                "2025-06-11T00:00:00Z",
                &["apikey_05"],
            ),
        ],
    )
    .await;
    server
}

/// Waits until every source has finished its first poll.
async fn wait_for_every_source(app: &TestApp) {
    app.wait_for("every source's first poll", |m| {
        ["organization", "workspaces", "api_keys", "users", "usage"]
            .iter()
            .all(|source| {
                m.value("anthropic_exporter_source_up", &[("source", source)])
                    .is_some()
            })
    })
    .await;
}

#[tokio::test]
async fn metrics_output_matches_the_golden_file() {
    // Arrange
    let app = spawn_app(fixed_organization().await).await;

    // Act
    wait_for_every_source(&app).await;
    let actual = mask(&app.metrics_text().await);

    // Assert
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics.golden.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .expect("the golden file exists (create it with UPDATE_GOLDEN=1)");
    if actual != expected {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .filter(|(e, a)| e != a)
            .take(10)
            .map(|(e, a)| format!("- {e}\n+ {a}"))
            .collect();
        panic!(
            "/metrics differs from tests/fixtures/metrics.golden.txt ({} vs {} lines); first differences:\n{}",
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    // Arrange
    let app = spawn_app(fixed_organization().await).await;
    wait_for_every_source(&app).await;
    let text = app.metrics_text().await;

    // Act
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required for this test (scripts/test installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();

    // Assert
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}"
    );
}
