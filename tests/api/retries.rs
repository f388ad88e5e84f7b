//! Retrying what the official SDKs retry, honouring the server's requested delay, and nothing else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wiremock::{Request, Respond, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

/// Answers with the given responses in turn (the last one repeats) and records when each request came.
#[derive(Clone)]
struct Scripted {
    responses: Vec<ResponseTemplate>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(responses: Vec<ResponseTemplate>) -> Self {
        Self {
            responses,
            arrivals: Arc::default(),
        }
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Respond for Scripted {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut arrivals = self.arrivals.lock().unwrap();
        arrivals.push(Instant::now());
        let index = (arrivals.len() - 1).min(self.responses.len() - 1);
        self.responses[index].clone()
    }
}

fn keys_page() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(page(&[KeyFixture::new("k1").json()], false))
}

#[tokio::test]
async fn a_429_is_retried_after_the_delay_the_server_asks_for() {
    // Arrange: our own backoff is 5 ms, so only `retry-after` can explain a pause of a second.
    let script = Scripted::new(vec![
        ResponseTemplate::new(429)
            .insert_header("retry-after", "1")
            .insert_header("request-id", "req_ratelimited")
            .set_body_json(error_body(
                "rate_limit_error",
                "Rate limited",
                "req_ratelimited",
            )),
        keys_page(),
    ]);
    let server = organization_answering_keys_with(script.clone()).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    let arrivals = script.arrivals();
    assert_eq!(arrivals.len(), 2);
    let pause = arrivals[1] - arrivals[0];
    assert!(
        pause >= Duration::from_millis(950),
        "retried after {pause:?}"
    );
    assert!(pause < Duration::from_secs(3), "retried after {pause:?}");
    assert_eq!(
        metrics.value(
            "anthropic_exporter_api_requests_total",
            &[("endpoint", "api_keys"), ("code", "429")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "rate_limited")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn retry_after_ms_takes_precedence_over_retry_after() {
    // Arrange
    let script = Scripted::new(vec![
        ResponseTemplate::new(529)
            .insert_header("retry-after-ms", "300")
            .insert_header("retry-after", "30"),
        keys_page(),
    ]);
    let server = organization_answering_keys_with(script.clone()).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    let arrivals = script.arrivals();
    let pause = arrivals[1] - arrivals[0];
    assert!(
        pause >= Duration::from_millis(280) && pause < Duration::from_secs(5),
        "retried after {pause:?}"
    );
}

#[tokio::test]
async fn a_500_then_success_is_a_successful_poll() {
    // Arrange
    let script = Scripted::new(vec![ResponseTemplate::new(500), keys_page()]);
    let server = organization_answering_keys_with(script.clone()).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(metrics.value("anthropic_up", &[]), Some(1.0));
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "server_error")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metrics.value(
            "anthropic_exporter_api_requests_total",
            &[("endpoint", "api_keys"), ("code", "500")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics
            .find("anthropic_api_key_info", &[("api_key_id", "k1")])
            .len(),
        1
    );
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_configured_retries() {
    // Arrange
    let script = Scripted::new(vec![ResponseTemplate::new(503)]);
    let server = organization_answering_keys_with(script.clone()).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(script.arrivals().len(), 3, "one attempt and two retries");
    assert_eq!(metrics.value("anthropic_up", &[]), Some(0.0));
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "server_error")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_retry_that_would_overrun_the_poll_deadline_is_not_attempted() {
    // Arrange: the server asks for 30 s but the poll may only take 3 s.
    let script = Scripted::new(vec![
        ResponseTemplate::new(429).insert_header("retry-after", "30"),
    ]);
    let server = organization_answering_keys_with(script.clone()).await;
    let started = Instant::now();

    // Act
    let app = spawn_app_with(server, |config| {
        config.poll.deadline = Duration::from_secs(3)
    })
    .await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "rate_limited")]
        ),
        Some(1.0)
    );
    assert_eq!(script.arrivals().len(), 1);
}

#[tokio::test]
async fn rejected_and_forbidden_keys_are_not_retried() {
    for (status, reason) in [
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "client_error"),
    ] {
        // Arrange
        let script = Scripted::new(vec![
            ResponseTemplate::new(status).set_body_json(error_body("x", "no", "req_1")),
        ]);
        let server = organization_answering_keys_with(script.clone()).await;

        // Act
        let app = spawn_app(server).await;
        let metrics = app.wait_for_first_poll().await;

        // Assert
        assert_eq!(script.arrivals().len(), 1, "{status} must not be retried");
        assert_eq!(
            metrics.value(
                "anthropic_exporter_poll_failures_total",
                &[("source", "api_keys"), ("reason", reason)]
            ),
            Some(1.0),
            "{status}"
        );
        assert_eq!(metrics.value("anthropic_up", &[]), Some(0.0));
    }
}
