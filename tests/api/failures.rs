//! Failed polls: the right reason is counted, `anthropic_up` drops to 0, the last good data stays, and
//! the next good poll recovers fully.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fixtures::*;
use crate::helpers::*;

/// What the key listing answers; the test moves it from one phase to the next.
#[derive(Clone)]
struct Phased {
    phase: Arc<AtomicUsize>,
    before: ResponseTemplate,
    failure: ResponseTemplate,
    after: ResponseTemplate,
}

impl Respond for Phased {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        match self.phase.load(Ordering::SeqCst) {
            0 => self.before.clone(),
            1 => self.failure.clone(),
            _ => self.after.clone(),
        }
    }
}

/// Runs good poll, failed polls, good poll, and checks what each looks like from outside.
async fn assert_failure_is_survived(failure: ResponseTemplate, reason: &str) {
    // NB: generous, so that a busy test machine never turns a fault into a `timeout`.
    assert_failure_with_timeout_is_survived(failure, reason, Duration::from_secs(3)).await;
}

async fn assert_failure_with_timeout_is_survived(
    failure: ResponseTemplate,
    reason: &str,
    request_timeout: Duration,
) {
    // Arrange: the listing succeeds, then fails until the test says so, then succeeds with one more key.
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[workspace("wrkspc_prod", "Production")]).await;
    let before = vec![
        KeyFixture::new("k1")
            .in_workspace("wrkspc_prod")
            .expires_at("2030-01-01T00:00:00Z")
            .json(),
        KeyFixture::new("k2").status("archived").json(),
    ];
    let mut after = before.clone();
    after.push(KeyFixture::new("k3").json());
    let phase = Arc::new(AtomicUsize::new(0));
    let responder = Phased {
        phase: Arc::clone(&phase),
        before: ResponseTemplate::new(200).set_body_json(page(&before, false)),
        failure,
        after: ResponseTemplate::new(200).set_body_json(page(&after, false)),
    };
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(responder)
        .mount(&server)
        .await;

    // Act
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_millis(200);
        config.poll.retry.max_retries = 0;
        config.poll.request_timeout = request_timeout;
    })
    .await;
    let good = app.wait_for_first_poll().await;
    phase.store(1, Ordering::SeqCst);
    let failing = |count: f64| {
        move |m: &Metrics| {
            m.value(
                "anthropic_exporter_poll_failures_total",
                &[("source", "api_keys"), ("reason", reason)],
            )
            .is_some_and(|v| v >= count)
        }
    };
    let first_failure = app
        .wait_for(&format!("a {reason} failure"), failing(1.0))
        .await;
    let first_count = first_failure
        .value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", reason)],
        )
        .unwrap();
    let failed = app
        .wait_for(
            &format!("another {reason} failure"),
            failing(first_count + 1.0),
        )
        .await;
    let ready_while_failing = app.get("/readyz").await.status();
    phase.store(2, Ordering::SeqCst);
    let recovered = app
        .wait_for("recovery", |m| {
            m.value("anthropic_up", &[]) == Some(1.0) && m.sum("anthropic_api_keys", &[]) == 3.0
        })
        .await;

    // Assert
    assert_eq!(good.value("anthropic_up", &[]), Some(1.0), "{reason}");
    assert_eq!(failed.value("anthropic_up", &[]), Some(0.0), "{reason}");
    assert_eq!(
        failed.key_samples(),
        good.key_samples(),
        "{reason}: the last good data must stay"
    );
    assert_eq!(
        failed.value(
            "anthropic_exporter_last_successful_poll_timestamp_seconds",
            &[]
        ),
        good.value(
            "anthropic_exporter_last_successful_poll_timestamp_seconds",
            &[]
        ),
        "{reason}"
    );
    let failures = failed
        .value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", reason)],
        )
        .unwrap();
    assert_eq!(
        failed.sum(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys")]
        ),
        failures,
        "{reason}: only this reason"
    );
    assert_eq!(
        ready_while_failing, 200,
        "{reason}: a failure after the first success does not make it unready"
    );
    assert_eq!(
        recovered
            .find("anthropic_api_key_info", &[("api_key_id", "k3")])
            .len(),
        1,
        "{reason}"
    );
}

#[tokio::test]
async fn a_rejected_admin_key_is_reported_as_unauthorized() {
    let failure = ResponseTemplate::new(401)
        .insert_header("request-id", "req_401")
        .set_body_json(error_body(
            "authentication_error",
            "invalid x-api-key",
            "req_401",
        ));
    assert_failure_is_survived(failure, "unauthorized").await;
}

#[tokio::test]
async fn a_key_without_permission_is_reported_as_forbidden() {
    let failure = ResponseTemplate::new(403).set_body_json(error_body(
        "permission_error",
        "not allowed",
        "req_403",
    ));
    assert_failure_is_survived(failure, "forbidden").await;
}

#[tokio::test]
async fn malformed_json_is_reported_as_decode() {
    let failure =
        ResponseTemplate::new(200).set_body_raw(r#"{"data": [{"id": "k1", "#, "application/json");
    assert_failure_is_survived(failure, "decode").await;
}

#[tokio::test]
async fn an_html_page_from_a_proxy_is_reported_as_decode() {
    let failure =
        ResponseTemplate::new(200).set_body_raw("<html><body>Login</body></html>", "text/html");
    assert_failure_is_survived(failure, "decode").await;
}

#[tokio::test]
async fn a_body_without_data_is_not_taken_for_an_empty_organization() {
    let failure = ResponseTemplate::new(200).set_body_json(serde_json::json!({"has_more": false}));
    assert_failure_is_survived(failure, "decode").await;
}

#[tokio::test]
async fn a_server_error_is_reported_as_server_error() {
    let failure = ResponseTemplate::new(502).set_body_raw("<html>Bad gateway</html>", "text/html");
    assert_failure_is_survived(failure, "server_error").await;
}

#[tokio::test]
async fn an_exhausted_rate_limit_is_reported_as_rate_limited() {
    let failure = ResponseTemplate::new(429).set_body_json(error_body(
        "rate_limit_error",
        "slow down",
        "req_429",
    ));
    assert_failure_is_survived(failure, "rate_limited").await;
}

#[tokio::test]
async fn a_slow_upstream_is_reported_as_timeout() {
    let failure = ResponseTemplate::new(200)
        .set_body_json(page(&[KeyFixture::new("slow").json()], false))
        .set_delay(Duration::from_secs(2));
    assert_failure_with_timeout_is_survived(failure, "timeout", Duration::from_millis(500)).await;
}

#[tokio::test]
async fn an_unparseable_expiry_fails_the_poll_rather_than_dropping_the_expiry() {
    let broken = KeyFixture::new("k1").expires_at("in two weeks").json();
    let failure = ResponseTemplate::new(200).set_body_json(page(&[broken], false));
    assert_failure_is_survived(failure, "decode").await;
}

#[tokio::test]
async fn an_unreachable_api_is_reported_as_network() {
    // Arrange: nothing listens at the base URL.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    let server = MockServer::start().await;

    // Act
    let app = spawn_app_with(server, |config| {
        config.base_url = format!("http://{address}").parse().unwrap();
        config.poll.retry.max_retries = 1;
    })
    .await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", "network")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "anthropic_exporter_api_requests_total",
            &[("endpoint", "organization"), ("code", "error")]
        ),
        Some(2.0),
        "a connection error is retried"
    );
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert!(metrics.find("anthropic_api_key_info", &[]).is_empty());
    assert!(
        metrics
            .find(
                "anthropic_exporter_last_successful_poll_timestamp_seconds",
                &[]
            )
            .is_empty()
    );
}

#[tokio::test]
async fn every_failure_reason_is_exported_from_the_start() {
    // Arrange
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[]).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app.wait_for_first_poll().await;

    // Assert
    for reason in [
        "unauthorized",
        "forbidden",
        "rate_limited",
        "server_error",
        "client_error",
        "timeout",
        "network",
        "decode",
        "pagination",
        "key_file",
    ] {
        assert_eq!(
            metrics.value(
                "anthropic_exporter_poll_failures_total",
                &[
                    ("source", "api_keys"),
                    ("organization", "acme"),
                    ("reason", reason)
                ]
            ),
            Some(0.0),
            "{reason}"
        );
    }
    assert_eq!(
        metrics.value("anthropic_exporter_polls_total", &[("source", "api_keys")]),
        Some(1.0)
    );
}
