//! Following cursors through large organizations, and refusing pagination that never ends.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn more_than_a_thousand_keys_are_read_over_several_pages() {
    // Arrange: 2,500 keys in pages of 1,000; each page answers only its own `after_id`, exactly once.
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[workspace("wrkspc_prod", "Production")]).await;
    let keys: Vec<Value> = (0..2500)
        .map(|i| {
            let key = KeyFixture::new(&format!("apikey_{i:05}"));
            let key = if i % 2 == 0 {
                key.in_workspace("wrkspc_prod")
            } else {
                key
            };
            key.status(["active", "inactive", "archived", "expired"][i % 4])
                .json()
        })
        .collect();
    let pages: Vec<Vec<Value>> = keys.chunks(1000).map(<[Value]>::to_vec).collect();
    mount_key_pages(&server, &pages).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    assert_eq!(metrics.sum("anthropic_api_keys", &[]), 2500.0);
    assert_eq!(metrics.find("anthropic_api_key_info", &[]).len(), 2500);
    assert_eq!(
        metrics.sum("anthropic_api_keys", &[("workspace_id", "wrkspc_prod")]),
        1250.0
    );
    assert_eq!(
        metrics.value(
            "anthropic_exporter_api_requests_total",
            &[("endpoint", "api_keys"), ("code", "200")]
        ),
        Some(3.0)
    );
    // `expect(1)` on each page is verified when the mock server is dropped.
    app.admin_api.verify().await;
}

#[tokio::test]
async fn a_repeated_cursor_fails_the_poll_instead_of_looping() {
    // Arrange: the second page points back at itself.
    let server = organization_answering_keys_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [KeyFixture::new("loop").json()], "first_id": "loop", "last_id": "loop", "has_more": true
        }))).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(0.0));
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "pagination")]
        ),
        Some(1.0)
    );
    let key_requests = app
        .admin_api
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == KEYS_PATH)
        .count();
    assert_eq!(key_requests, 2, "the loop is noticed on the second page");
}

#[tokio::test]
async fn pages_without_last_id_are_followed_from_their_last_key() {
    // Arrange: neither page says `last_id`; the second answers only `after_id` = the first's last key.
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[]).await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .and(query_param("after_id", "apikey_b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"data": [KeyFixture::new("apikey_c").json()], "has_more": false}),
        ))
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [KeyFixture::new("apikey_a").json(), KeyFixture::new("apikey_b").json()],
            "has_more": true
        })))
        .expect(1)
        .mount(&server)
        .await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    assert_eq!(metrics.find("anthropic_api_key_info", &[]).len(), 3);
    app.admin_api.verify().await;
}

#[tokio::test]
async fn has_more_without_any_cursor_fails_the_poll() {
    // Arrange
    let server = organization_answering_keys_with(
        ResponseTemplate::new(200).set_body_json(json!({"data": [], "has_more": true})),
    )
    .await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "pagination")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_failure_on_a_later_page_keeps_the_whole_previous_snapshot() {
    // Arrange: the first poll reads two pages; later polls fail on the second page.
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[]).await;
    let first_page: Vec<Value> = (0..1000)
        .map(|i| KeyFixture::new(&format!("a{i:04}")).json())
        .collect();
    let second_page = vec![KeyFixture::new("b0000").json()];
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .and(query_param("limit", "1000"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&first_page, true)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .and(query_param("after_id", "a0999"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&second_page, false)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .and(query_param("after_id", "a0999"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(2)
        .mount(&server)
        .await;

    // Act
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_millis(200);
        config.poll.retry.max_retries = 0;
    })
    .await;
    let good = app.wait_for_first_poll().await;
    let failed = app
        .wait_for("a failed poll", |m| {
            m.value(
                "anthropic_exporter_poll_failures_total",
                &[("source", "api_keys"), ("reason", "server_error")],
            )
            .is_some_and(|v| v >= 1.0)
        })
        .await;

    // Assert
    assert_eq!(good.sum("anthropic_api_keys", &[]), 1001.0);
    assert_eq!(failed.value("anthropic_up", &[]), Some(0.0));
    assert_eq!(
        failed.key_samples(),
        good.key_samples(),
        "not one key may change or vanish"
    );
}
