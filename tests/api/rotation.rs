//! The admin key file is read before every poll: a rotated key is used without a restart, and a key
//! file that goes missing fails polls (reason `key_file`) without losing data.

use std::time::Duration;

use anthropic_keys_exporter::secret::AdminKeySource;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

const ROTATED_KEY: &str = "sk-ant-admin01-ROTATED-a1b2c3d4e5f6";

#[tokio::test]
async fn a_rotated_key_file_is_used_from_the_next_poll_on() {
    // Arrange: the old key sees one key, the new key sees two.
    let server = MockServer::start().await;
    for key in [ADMIN_KEY, ROTATED_KEY] {
        Mock::given(method("GET"))
            .and(path(ME_PATH))
            .and(header("x-api-key", key))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"id": "org", "name": "Acme"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(WORKSPACES_PATH))
            .and(header("x-api-key", key))
            .respond_with(ResponseTemplate::new(200).set_body_json(page(&[], false)))
            .mount(&server)
            .await;
    }
    let old_keys = [KeyFixture::new("k1").json()];
    let new_keys = [KeyFixture::new("k1").json(), KeyFixture::new("k2").json()];
    for (key, keys) in [(ADMIN_KEY, &old_keys[..]), (ROTATED_KEY, &new_keys[..])] {
        Mock::given(method("GET"))
            .and(path(KEYS_PATH))
            .and(header("x-api-key", key))
            .respond_with(ResponseTemplate::new(200).set_body_json(page(keys, false)))
            .mount(&server)
            .await;
    }
    let dir = std::env::temp_dir().join(format!("ake-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("admin-key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).unwrap();
    let source = AdminKeySource::File(key_file.clone());
    let app = spawn_app_with(server, |config| {
        config.admin_key = Some(source);
        config.poll.interval = Duration::from_millis(200);
        config.poll.retry.max_retries = 0;
    })
    .await;
    let before = app.wait_for_first_poll().await;

    // Act: rotate the key, then lose the file for a while.
    std::fs::write(&key_file, format!("{ROTATED_KEY}\n")).unwrap();
    let rotated = app
        .wait_for("the rotated key's view", |m| {
            m.sum("anthropic_api_keys", &[]) == 2.0
        })
        .await;
    std::fs::remove_file(&key_file).unwrap();
    let missing = app
        .wait_for("a key_file failure", |m| {
            m.value(
                "anthropic_exporter_poll_failures_total",
                &[("source", "api_keys"), ("reason", "key_file")],
            )
            .is_some_and(|v| v >= 1.0)
        })
        .await;
    std::fs::write(&key_file, ROTATED_KEY).unwrap();
    let back = app
        .wait_for("recovery", |m| m.value("anthropic_up", &[]) == Some(1.0))
        .await;
    std::fs::remove_dir_all(&dir).unwrap();

    // Assert
    assert_eq!(before.sum("anthropic_api_keys", &[]), 1.0);
    assert_eq!(rotated.value("anthropic_up", &[]), Some(1.0));
    assert_eq!(missing.value("anthropic_up", &[]), Some(0.0));
    assert_eq!(
        missing.key_samples(),
        rotated.key_samples(),
        "a missing key file loses no data"
    );
    assert_eq!(back.sum("anthropic_api_keys", &[]), 2.0);
    let sent: Vec<String> = app
        .admin_api
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["x-api-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent.first().map(String::as_str), Some(ADMIN_KEY));
    assert_eq!(sent.last().map(String::as_str), Some(ROTATED_KEY));
}
