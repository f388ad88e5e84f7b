//! What the exporter makes of an organization's keys: statuses, workspaces, nullable fields, expiry.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

fn rfc3339_in(offset: Duration, future: bool) -> String {
    let now = OffsetDateTime::now_utc();
    let at = if future { now + offset } else { now - offset };
    at.format(&Rfc3339).unwrap()
}

#[tokio::test]
async fn every_status_is_counted_per_workspace_and_zero_filled() {
    // Arrange
    let server = MockServer::start().await;
    let keys = vec![
        KeyFixture::new("k1").in_workspace("wrkspc_prod").json(),
        KeyFixture::new("k2")
            .in_workspace("wrkspc_prod")
            .status("inactive")
            .json(),
        KeyFixture::new("k3")
            .in_workspace("wrkspc_prod")
            .status("archived")
            .json(),
        KeyFixture::new("k4")
            .in_workspace("wrkspc_prod")
            .status("expired")
            .expires_at("2025-02-01T00:00:00Z")
            .json(),
        KeyFixture::new("k5").in_workspace("wrkspc_prod").json(),
    ];
    mount_simple_organization(&server, &keys).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    let count = |status: &str| {
        metrics.value(
            "anthropic_api_keys",
            &[
                ("organization", "acme"),
                ("workspace_id", "wrkspc_prod"),
                ("workspace_name", "Production"),
                ("status", status),
            ],
        )
    };
    assert_eq!(count("active"), Some(2.0));
    assert_eq!(count("inactive"), Some(1.0));
    assert_eq!(count("archived"), Some(1.0));
    assert_eq!(count("expired"), Some(1.0));
    assert_eq!(
        count("unknown"),
        None,
        "unknown is only exported when a key has it"
    );
    let never = |status: &str| {
        metrics.value(
            "anthropic_api_keys_never_expiring",
            &[("workspace_id", "wrkspc_prod"), ("status", status)],
        )
    };
    assert_eq!(never("active"), Some(2.0));
    assert_eq!(never("expired"), Some(0.0));
    assert_eq!(
        metrics.value("anthropic_up", &[("organization", "acme")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "anthropic_organization_info",
            &[
                ("organization", "acme"),
                ("organization_id", "org-uuid-1"),
                ("organization_name", "Acme Corp")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn null_and_absent_optional_fields_are_tolerated() {
    // Arrange: the oldest documented shape, explicit nulls, and fields the API added later.
    let server = MockServer::start().await;
    let keys = vec![
        KeyFixture::new("old")
            .without("expires_at")
            .without("principal")
            .without("partial_key_hint")
            .without("workspace_id")
            .json(),
        KeyFixture::new("nulls")
            .set("created_by", Value::Null)
            .set("partial_key_hint", Value::Null)
            .set("principal", Value::Null)
            .set("scope", Value::Null)
            .json(),
        KeyFixture::new("new")
            .in_workspace("wrkspc_prod")
            .set(
                "principal",
                json!({"id": "svac_1", "type": "service_account"}),
            )
            .set("some_future_field", json!({"nested": [1, 2, 3]}))
            .created_by("svac_1", "service_account")
            .expires_at("2031-01-01T00:00:00.123456Z")
            .json(),
    ];
    mount_simple_organization(&server, &keys).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    let info = metrics.find("anthropic_api_key_info", &[("api_key_id", "nulls")]);
    assert_eq!(info[0].labels["created_by_id"], "");
    assert_eq!(info[0].labels["created_by_type"], "");
    let info = metrics.find("anthropic_api_key_info", &[("api_key_id", "new")]);
    assert_eq!(info[0].labels["created_by_type"], "service_account");
    assert_eq!(
        metrics.value(
            "anthropic_api_key_expiry_timestamp_seconds",
            &[("api_key_id", "new")]
        ),
        Some(1_924_992_000.123456)
    );
    for never_expiring in ["old", "nulls"] {
        assert!(
            metrics
                .find(
                    "anthropic_api_key_expiry_timestamp_seconds",
                    &[("api_key_id", never_expiring)]
                )
                .is_empty()
        );
        assert!(
            metrics
                .find(
                    "anthropic_api_key_expires_in_seconds",
                    &[("api_key_id", never_expiring)]
                )
                .is_empty()
        );
    }
    assert_eq!(
        metrics.value(
            "anthropic_api_key_created_timestamp_seconds",
            &[("api_key_id", "old")]
        ),
        Some(1_735_689_600.0)
    );
    assert_eq!(
        metrics.value(
            "anthropic_api_keys_never_expiring",
            &[("workspace_id", "default"), ("status", "active")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn keys_get_workspace_names_including_the_default_workspace() {
    // Arrange
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(
        &server,
        &[
            workspace("wrkspc_prod", "Production"),
            workspace("wrkspc_rnd", "研究 & \"Dev\""),
            workspace("wrkspc_empty", "Empty"),
        ],
    )
    .await;
    let keys = vec![
        KeyFixture::new("scoped").in_workspace("wrkspc_prod").json(),
        KeyFixture::new("legacy")
            .in_legacy_workspace("wrkspc_rnd")
            .json(),
        KeyFixture::new("default").json(),
        KeyFixture::new("org")
            .set("scope", json!({"type": "organization"}))
            .json(),
    ];
    mount_key_pages(&server, &[keys]).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    let workspace_of = |id: &str| {
        let info = metrics.find("anthropic_api_key_info", &[("api_key_id", id)]);
        (
            info[0].labels["workspace_id"].clone(),
            info[0].labels["workspace_name"].clone(),
        )
    };
    assert_eq!(
        workspace_of("scoped"),
        ("wrkspc_prod".into(), "Production".into())
    );
    assert_eq!(
        workspace_of("legacy"),
        ("wrkspc_rnd".into(), "研究 & \"Dev\"".into())
    );
    assert_eq!(
        workspace_of("default"),
        ("default".into(), "Default".into())
    );
    assert_eq!(
        workspace_of("org"),
        ("organization".into(), "Organization".into())
    );
    // A workspace without keys is still zero-filled.
    assert_eq!(
        metrics.value(
            "anthropic_api_keys",
            &[
                ("workspace_id", "wrkspc_empty"),
                ("workspace_name", "Empty"),
                ("status", "active")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(
        metrics
            .find("anthropic_api_keys", &[("workspace_id", "wrkspc_empty")])
            .len(),
        4
    );
}

#[tokio::test]
async fn an_unknown_status_is_exported_as_unknown_without_failing_the_poll() {
    // Arrange
    let server = MockServer::start().await;
    let keys = vec![
        KeyFixture::new("k1").status("suspended").json(),
        KeyFixture::new("k2").json(),
    ];
    mount_simple_organization(&server, &keys).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    assert_eq!(
        metrics.value(
            "anthropic_api_keys",
            &[("workspace_id", "default"), ("status", "unknown")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics
            .find(
                "anthropic_api_key_info",
                &[("api_key_id", "k1"), ("status", "unknown")]
            )
            .len(),
        1
    );
}

#[tokio::test]
async fn expires_in_is_computed_at_scrape_time_and_negative_once_past() {
    // Arrange
    let server = MockServer::start().await;
    let keys = vec![
        KeyFixture::new("soon")
            .expires_at(&rfc3339_in(Duration::from_secs(10 * 86_400), true))
            .json(),
        KeyFixture::new("past")
            .status("expired")
            .expires_at(&rfc3339_in(Duration::from_secs(3 * 3600), false))
            .json(),
    ];
    mount_simple_organization(&server, &keys).await;
    let app = spawn_app(server).await;
    let first = app.wait_for_first_poll().await;

    // Act
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = app.metrics().await;

    // Assert
    let soon = |m: &Metrics| {
        m.value(
            "anthropic_api_key_expires_in_seconds",
            &[("api_key_id", "soon")],
        )
        .unwrap()
    };
    assert!((soon(&first) - 864_000.0).abs() < 5.0, "{}", soon(&first));
    assert!(
        soon(&first) - soon(&second) >= 1.0,
        "the value must move with the clock"
    );
    let past = second
        .value(
            "anthropic_api_key_expires_in_seconds",
            &[("api_key_id", "past")],
        )
        .unwrap();
    assert!((past + 10_800.0).abs() < 5.0, "{past}");
    let expiry = second
        .value(
            "anthropic_api_key_expiry_timestamp_seconds",
            &[("api_key_id", "soon")],
        )
        .unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((expiry - now - soon(&second)).abs() < 5.0);
}

#[tokio::test]
async fn hostile_key_names_survive_the_exposition_format() {
    // Arrange
    let names = [
        "何さ",
        "quote \" inside",
        "back\\slash \\n not a newline",
        "new\nline",
        "emoji 🔑🚀",
        "",
        "trailing backslash \\",
        "{braces}=, \"and\" commas,",
        "tab\tand\r carriage",
    ];
    let server = MockServer::start().await;
    let keys: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            KeyFixture::new(&format!("k{i}"))
                .name(name)
                .expires_at("2030-01-01T00:00:00Z")
                .json()
        })
        .collect();
    mount_simple_organization(&server, &keys).await;
    let app = spawn_app(server).await;
    app.wait_for_first_poll().await;

    // Act
    let text = app.metrics_text().await;
    let official = parse_with_official_python_parser(&text);

    // Assert
    for (i, name) in names.iter().enumerate() {
        let id = format!("k{i}");
        for family in [
            "anthropic_api_key_info",
            "anthropic_api_key_expiry_timestamp_seconds",
        ] {
            let sample = official
                .iter()
                .find(|s| s.name == family && s.labels.get("api_key_id") == Some(&id))
                .unwrap_or_else(|| panic!("{family} for {id:?} is missing"));
            assert_eq!(sample.labels["api_key_name"], *name, "{family} {id}");
        }
    }
    assert_eq!(
        Metrics::parse(&text)
            .find("anthropic_api_key_info", &[])
            .len(),
        names.len()
    );
}

#[tokio::test]
async fn requests_carry_the_key_the_api_version_and_a_user_agent() {
    // Arrange: the fake only answers correctly authenticated requests.
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;

    // Act
    let app = spawn_app(server).await;
    app.wait_for_first_poll().await;

    // Assert
    let requests = app.admin_api.received_requests().await.unwrap();
    let paths: std::collections::BTreeSet<&str> = requests.iter().map(|r| r.url.path()).collect();
    assert!(
        [ME_PATH, WORKSPACES_PATH, KEYS_PATH]
            .iter()
            .all(|p| paths.contains(p)),
        "organization, workspaces, keys: {paths:?}"
    );
    for request in &requests {
        assert_eq!(request.headers["x-api-key"], ADMIN_KEY);
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
        let agent = request.headers["user-agent"].to_str().unwrap();
        assert!(agent.starts_with("anthropic-keys-exporter/"), "{agent}");
    }
    assert_eq!(app.metrics().await.value("anthropic_up", &[]), Some(1.0));
}

#[tokio::test]
async fn keys_that_disappear_vanish_at_the_next_successful_poll() {
    // Arrange: the first listing has two keys, every later one only the first.
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[]).await;
    let both = vec![
        KeyFixture::new("stays").json(),
        KeyFixture::new("goes")
            .expires_at("2030-01-01T00:00:00Z")
            .json(),
    ];
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&both, false)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&both[..1], false)))
        .mount(&server)
        .await;

    // Act
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_millis(200)
    })
    .await;
    let first = app.wait_for_first_poll().await;
    let later = app.wait_for_polls(2.0).await;

    // Assert
    assert_eq!(
        first
            .find("anthropic_api_key_info", &[("api_key_id", "goes")])
            .len(),
        1
    );
    for family in [
        "anthropic_api_key_info",
        "anthropic_api_key_created_timestamp_seconds",
        "anthropic_api_key_expiry_timestamp_seconds",
        "anthropic_api_key_expires_in_seconds",
    ] {
        assert!(
            later.find(family, &[("api_key_id", "goes")]).is_empty(),
            "{family} still has the removed key"
        );
    }
    assert_eq!(
        later
            .find("anthropic_api_key_info", &[("api_key_id", "stays")])
            .len(),
        1
    );
    assert_eq!(later.sum("anthropic_api_keys", &[]), 1.0);
}

#[tokio::test]
async fn a_large_plain_body_is_spliced_from_its_mapping_and_reads_as_the_gzip_body() {
    // Arrange: enough keys that the families' text is mapped rather than kept on the heap.
    let keys: Vec<Value> = (0..4000)
        .map(|i| KeyFixture::new(&format!("apikey_{i:05}")).json())
        .collect();
    let server = MockServer::start().await;
    mount_simple_organization(&server, &keys).await;
    let app = spawn_app(server).await;
    app.wait_for_first_poll().await;
    let sent_before = anthropic_keys_exporter::zero_copy::spliced();

    // Act
    let plain = app.get("/metrics").await.text().await.unwrap();
    let sent = anthropic_keys_exporter::zero_copy::spliced() - sent_before;
    // NB: on the same connection, so a response left half in the pipe would hold up the next.
    let again = app.get("/metrics").await.text().await.unwrap();
    let gzipped = app.get_gzip("/metrics").await.bytes().await.unwrap();

    // Assert
    assert!(
        sent as usize > plain.len() / 2,
        "{sent} of {} bytes were spliced",
        plain.len()
    );
    assert!(
        stable_lines(&again) == stable_lines(&plain),
        "the next scrape on the connection"
    );
    assert_eq!(
        plain.matches("anthropic_api_key_info{").count(),
        keys.len(),
        "every key"
    );
    assert!(
        stable_lines(&gunzip(&gzipped)) == stable_lines(&plain),
        "the same text either way"
    );
}

/// The text of a gzip body, read with flate2.
fn gunzip(gzipped: &[u8]) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gzipped), &mut text).unwrap();
    text
}

/// A body without the exporter's own, ever-changing process metrics and request counts: what two
/// scrapes of the same snapshot share.
fn stable_lines(body: &str) -> String {
    body.lines()
        .filter(|line| !line.starts_with("process_") && !line.contains(" process_"))
        .filter(|line| !line.starts_with("anthropic_exporter_api_requests_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn metrics_are_gzipped_when_the_scraper_asks() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let app = spawn_app(server).await;
    app.wait_for_first_poll().await;

    // Act
    let response = app.get_gzip("/metrics").await;

    // Assert
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    // NB: a known length, not chunked framing of every part.
    assert!(response.headers().get("transfer-encoding").is_none());
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let compressed = response.bytes().await.unwrap();
    assert_eq!(compressed.len(), length);
    // NB: the body is assembled from parts compressed at different times; every reader must see all.
    let text = gunzip(&compressed);
    assert!(text.contains("anthropic_api_key_info{"), "{text}");
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(&mut python.stdin.as_ref().unwrap(), &compressed).unwrap();
    let by_python = python.wait_with_output().unwrap();
    assert!(by_python.status.success());
    // NB: off the test's runtime, which also serves the exporter that curl asks.
    let url = app.url("/metrics");
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--compressed", &url])
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    let plain = app.get("/metrics").await;
    assert!(plain.headers().get("content-encoding").is_none());
    let plain_length = plain.headers()["content-length"]
        .to_str()
        .unwrap()
        .to_owned();
    let plain = plain.text().await.unwrap();
    assert_eq!(plain.len().to_string(), plain_length);

    assert_eq!(
        stable_lines(&text),
        stable_lines(&plain),
        "flate2 reads every member"
    );
    assert_eq!(
        stable_lines(&String::from_utf8_lossy(&by_python.stdout)),
        stable_lines(&plain),
        "Python's gzip module reads every member"
    );
    assert!(curl.status.success());
    assert_eq!(
        stable_lines(&String::from_utf8_lossy(&curl.stdout)),
        stable_lines(&plain),
        "curl --compressed reads every member"
    );
}

#[tokio::test]
async fn scrapes_never_call_the_admin_api() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    let app = spawn_app(server).await;
    app.wait_for_first_poll().await;
    let after_first_poll = app.admin_api.received_requests().await.unwrap().len();

    // Act
    for _ in 0..20 {
        app.metrics_text().await;
    }

    // Assert
    assert_eq!(
        app.admin_api.received_requests().await.unwrap().len(),
        after_first_poll
    );
}

#[tokio::test]
async fn a_one_megabyte_key_name_is_cut_and_counted_instead_of_blowing_up_the_scrape() {
    // Arrange: one key whose name is a megabyte long, one ordinary key.
    let huge = "x".repeat(1024 * 1024);
    let server = MockServer::start().await;
    mount_simple_organization(
        &server,
        &[
            KeyFixture::new("k1")
                .name(&huge)
                .expires_at("2031-01-01T00:00:00Z")
                .json(),
            KeyFixture::new("k2").name("normal").json(),
        ],
    )
    .await;

    // Act
    let app = spawn_app(server).await;
    app.wait_for_first_poll().await;
    let text = app.metrics_text().await;

    // Assert: about ten series carry the name; uncut they would be over 10 MB.
    assert!(
        text.len() < 100 * 1024,
        "the scrape is {} bytes",
        text.len()
    );
    let metrics = Metrics::parse(&text);
    let info = metrics.find("anthropic_api_key_info", &[("api_key_id", "k1")]);
    let name = &info[0].labels["api_key_name"];
    assert_eq!(name.chars().count(), 256);
    assert!(name.ends_with('…'), "a visible truncation marker");
    assert_eq!(
        metrics.value("anthropic_exporter_label_values_truncated", &[]),
        Some(1.0)
    );
    let normal = metrics.find("anthropic_api_key_info", &[("api_key_id", "k2")]);
    assert_eq!(normal[0].labels["api_key_name"], "normal");
}
