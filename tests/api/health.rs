//! Health, readiness, the landing page, and HTTP edge cases.

use std::time::{Duration, Instant};

use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn readiness_waits_for_the_first_successful_poll() {
    // Arrange: the key listing takes a second.
    let server = organization_answering_keys_with(
        ResponseTemplate::new(200)
            .set_body_json(page(&[KeyFixture::new("k1").json()], false))
            .set_delay(Duration::from_secs(1)),
    )
    .await;

    // Act
    let app = spawn_app(server).await;
    let before = app.get("/readyz").await;
    let alias_before = app.get("/-/ready").await;
    let (status_before, body_before) = (before.status(), before.text().await.unwrap());
    app.wait_for_first_poll().await;
    let after = app.get("/readyz").await;

    // Assert
    assert_eq!(status_before, 503);
    assert_eq!(alias_before.status(), 503);
    assert_eq!(body_before.trim().lines().count(), 1, "{body_before}");
    assert!(body_before.contains("no successful poll"), "{body_before}");
    assert_eq!(after.status(), 200);
    assert_eq!(app.get("/-/ready").await.status(), 200);
}

#[tokio::test]
async fn readiness_stays_unready_while_polls_fail() {
    // Arrange
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(error_body(
            "authentication_error",
            "invalid",
            "req_1",
        )))
        .mount(&server)
        .await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(0.0));
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "the process is alive and its poller runs"
    );
}

#[tokio::test]
async fn health_landing_page_and_unknown_routes() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[]).await;
    let app = spawn_app(server).await;

    // Act & Assert
    for path in ["/healthz", "/-/healthy"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let landing = app.get("/").await;
    assert_eq!(landing.status(), 200);
    assert!(
        landing.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = landing.text().await.unwrap();
    assert!(html.contains("href=\"/metrics\""), "{html}");
    assert_eq!(app.get("/nope").await.status(), 404);
    let post = app.http.post(app.url("/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let head = app.http.head(app.url("/metrics")).send().await.unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn the_telemetry_path_can_be_moved() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;

    // Act
    let app = spawn_app_with(server, |config| {
        config.telemetry_path = "/internal/prom".to_owned()
    })
    .await;

    // Assert
    let moved = app.get("/internal/prom").await;
    assert_eq!(moved.status(), 200);
    assert!(
        moved
            .text()
            .await
            .unwrap()
            .contains("anthropic_exporter_build_info")
    );
    assert_eq!(app.get("/metrics").await.status(), 404);
    assert!(
        app.get("/")
            .await
            .text()
            .await
            .unwrap()
            .contains("href=\"/internal/prom\"")
    );
}

#[tokio::test]
async fn shutdown_completes_promptly_even_during_a_slow_poll() {
    // Arrange: the poll hangs on a slow upstream when shutdown begins.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let app = spawn_app_with(server, |config| {
        config.poll.request_timeout = Duration::from_secs(60);
        config.poll.deadline = Duration::from_secs(60);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    let started = Instant::now();
    let outcome = app.stop().await;

    // Assert
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
