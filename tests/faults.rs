//! Fault injection: every way the Admin API, or a proxy in front of it, can misbehave, each run as
//! good poll → fault → good poll against a fake upstream on loopback.
//!
//! For every fault that fails a poll the exporter must not panic (its task keeps running and `/healthz`
//! says 200), must keep serving the last good data unchanged, must count the fault under the right
//! `reason`, must set `anthropic_up` to 0, and must recover fully on the next good poll. Faults that a
//! retry overcomes, and unusual but valid data, must not fail the poll at all.
//!
//! The faults form one table ([`failing_faults`], [`tolerated_faults`]); each table runs its rows
//! concurrently (every row with its own fake and its own exporter) and reports every row that failed.
//! `FAULT_CASE=<part of a row name>` runs only the matching rows.

// Helpers outside `#[test]` functions panic on purpose: a broken expectation must fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use common::admin_api::{
    KEYS_PATH, KeyFixture, ME_PATH, WORKSPACES_PATH, error_body, organization, page, workspace,
};
use common::exporter::{RunningExporter, test_config};
use common::exposition::Metrics;

const ADMIN_KEY: &str = "sk-ant-admin01-FAULTS-5e0c7a1d9b3f2468";

/// The phases of a case: the test moves the fake from one to the next after observing each state.
const BEFORE: usize = 0;
const FAULT: usize = 1;
const AFTER: usize = 2;

/// How long a faulty poll may take to show up.
const FAULT_SHOWS_WITHIN: Duration = Duration::from_secs(5);
/// How much the peak RSS of this process may grow while an oversized body is refused. The fake
/// streams [`OVERSIZED_STREAM`] bytes; an exporter that buffered them would grow by at least that. One
/// that stops at its 32 MiB limit grows by about that per failed poll, which the allocator may keep
/// (up to about 200 MiB was seen under CPU contention, spread over several threads' arenas).
const MAX_PEAK_RSS_GROWTH_KIB: u64 = 384 * 1024;
const OVERSIZED_STREAM: u64 = 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------------

/// One row: what the key listing does during the fault phase, and what that must lead to.
struct Case {
    name: String,
    fault: Fault,
    expect: Expect,
    /// `--poll.max-retries` for this row (the backoff is always 5 ms).
    max_retries: u32,
    /// The least time between the first two requests of the fault phase, i.e. the retry delay the
    /// server asked for (our own backoff is only 5 ms). Zero: not checked.
    min_retry_gap: Duration,
}

/// How the key listing misbehaves during the fault phase.
enum Fault {
    /// wiremock answers with these responses in turn, then as `then` says.
    Http(Vec<ResponseTemplate>, Then),
    /// A raw TCP server misbehaves below HTTP: first once, then as `then` says.
    Raw(RawFault, Then),
}

/// What the key listing answers once the scripted fault responses are used up.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// The last fault again, for as long as the fault phase lasts.
    Repeat,
    /// The new good page: a retry overcomes the fault.
    Recover,
}

#[derive(Debug, Clone, Copy)]
enum RawFault {
    /// `200`, `content-length: 5000`, half the body, then the connection closes.
    TruncatedBody,
    /// The request is read, then the connection is reset (RST, `SO_LINGER` 0).
    ConnectionReset,
    /// A `200` body far over the 32 MiB limit, streamed chunked (`None`) or with this content-length.
    Oversized { content_length: Option<u64> },
}

enum Expect {
    /// The poll fails, counted under this reason.
    Fails(&'static str),
    /// A retry succeeds: the poll does not fail, and the key listing answered `code` once first.
    Retried { code: &'static str },
    /// The fault phase's data is valid and taken as is; the function checks how it is exported.
    Accepted(fn(&Metrics)),
}

fn failing(name: &str, fault: Fault, reason: &'static str) -> Case {
    Case {
        name: name.to_owned(),
        fault,
        expect: Expect::Fails(reason),
        max_retries: 2,
        min_retry_gap: Duration::ZERO,
    }
}

fn http(responses: Vec<ResponseTemplate>, then: Then) -> Fault {
    Fault::Http(responses, then)
}

fn error_json(status: u16, kind: &str) -> ResponseTemplate {
    let request_id = format!("req_fault_{status}");
    ResponseTemplate::new(status)
        .insert_header("request-id", request_id.as_str())
        .set_body_json(error_body(
            kind,
            // A careless proxy or upstream may echo the key back; it must not reach a log or a page.
            &format!("simulated {kind} for x-api-key {ADMIN_KEY}"),
            &request_id,
        ))
}

fn ok_raw(body: &str, content_type: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), content_type)
}

/// Faults after which the poll must fail with a given reason.
fn failing_faults() -> Vec<Case> {
    let proxy_page = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
        <body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";
    let sign_in_page =
        "<html><body><form action=\"/login\">Sign in to continue</form></body></html>";
    vec![
        failing(
            "a 401 (the admin key was revoked) is counted as unauthorized",
            http(vec![error_json(401, "authentication_error")], Then::Repeat),
            "unauthorized",
        ),
        failing(
            "a 403 (the key lacks permission) is counted as forbidden",
            http(vec![error_json(403, "permission_error")], Then::Repeat),
            "forbidden",
        ),
        failing(
            "a 404 (a wrong base URL) is counted as client_error",
            http(vec![error_json(404, "not_found_error")], Then::Repeat),
            "client_error",
        ),
        Case {
            max_retries: 1,
            min_retry_gap: Duration::from_secs(1),
            ..failing(
                "a 429 with retry-after that outlasts the retries is counted as rate_limited",
                http(
                    vec![error_json(429, "rate_limit_error").insert_header("retry-after", "1")],
                    Then::Repeat,
                ),
                "rate_limited",
            )
        },
        Case {
            min_retry_gap: Duration::from_millis(150),
            ..failing(
                "a 429 with retry-after-ms that outlasts the retries is counted as rate_limited",
                http(
                    vec![
                        error_json(429, "rate_limit_error").insert_header("retry-after-ms", "150"),
                    ],
                    Then::Repeat,
                ),
                "rate_limited",
            )
        },
        failing(
            "a persistent 500 is counted as server_error",
            http(vec![error_json(500, "api_error")], Then::Repeat),
            "server_error",
        ),
        failing(
            "a persistent 529 (overloaded) is counted as server_error",
            http(vec![error_json(529, "overloaded_error")], Then::Repeat),
            "server_error",
        ),
        failing(
            "an HTML 502 page from a proxy is counted as server_error",
            http(
                vec![ResponseTemplate::new(502).set_body_raw(proxy_page, "text/html")],
                Then::Repeat,
            ),
            "server_error",
        ),
        failing(
            "an HTML sign-in page with status 200 from a proxy is counted as decode",
            http(vec![ok_raw(sign_in_page, "text/html")], Then::Repeat),
            "decode",
        ),
        failing(
            "malformed JSON is counted as decode",
            http(
                vec![ok_raw(
                    r#"{"data": [{"id": "k1", "created_at": "2025-01-01T00:00:00Z",]"#,
                    "application/json",
                )],
                Then::Repeat,
            ),
            "decode",
        ),
        failing(
            "a body without data is counted as decode, not taken for an empty organization",
            http(
                vec![ResponseTemplate::new(200).set_body_json(json!({"has_more": false}))],
                Then::Repeat,
            ),
            "decode",
        ),
        failing(
            "an expiry that is not RFC 3339 is counted as decode",
            http(
                vec![ResponseTemplate::new(200).set_body_json(page(
                    &[KeyFixture::new("k1").expires_at("in two weeks").json()],
                    false,
                ))],
                Then::Repeat,
            ),
            "decode",
        ),
        failing(
            "a body cut off mid-stream is counted as network",
            Fault::Raw(RawFault::TruncatedBody, Then::Repeat),
            "network",
        ),
        failing(
            "a reset connection is counted as network",
            Fault::Raw(RawFault::ConnectionReset, Then::Repeat),
            "network",
        ),
        Case {
            max_retries: 1,
            ..failing(
                "an upstream slower than the request timeout is counted as timeout",
                http(
                    vec![
                        ResponseTemplate::new(200)
                            .set_body_json(page(&after_keys(), false))
                            .set_delay(Duration::from_secs(3)),
                    ],
                    Then::Repeat,
                ),
                "timeout",
            )
        },
        failing(
            "a cursor that comes back forever is counted as pagination",
            http(
                vec![ResponseTemplate::new(200).set_body_json(json!({
                    "data": [KeyFixture::new("k1").json()], "has_more": true, "first_id": "k1", "last_id": "k1",
                }))],
                Then::Repeat,
            ),
            "pagination",
        ),
        failing(
            "has_more without a cursor is counted as pagination",
            http(
                vec![
                    ResponseTemplate::new(200)
                        .set_body_json(json!({"data": [], "has_more": true, "last_id": null})),
                ],
                Then::Repeat,
            ),
            "pagination",
        ),
        failing(
            "a chunked body over 32 MiB is refused quickly as decode",
            Fault::Raw(
                RawFault::Oversized {
                    content_length: None,
                },
                Then::Repeat,
            ),
            "decode",
        ),
        failing(
            "a content-length over 32 MiB is refused quickly as decode",
            Fault::Raw(
                RawFault::Oversized {
                    content_length: Some(1 << 30),
                },
                Then::Repeat,
            ),
            "decode",
        ),
    ]
}

/// Faults that a retry overcomes, and unusual data that is valid: the poll must succeed.
fn tolerated_faults() -> Vec<Case> {
    let retried = |name: &str, fault, code| Case {
        name: name.to_owned(),
        fault,
        expect: Expect::Retried { code },
        max_retries: 2,
        min_retry_gap: Duration::ZERO,
    };
    let mut cases: Vec<Case> = [
        (500, "500", "api_error"),
        (502, "502", "api_error"),
        (503, "503", "api_error"),
        (504, "504", "api_error"),
        (529, "529", "overloaded_error"),
    ]
    .into_iter()
    .map(|(status, code, kind)| {
        retried(
            &format!("a single {status} is retried and the poll succeeds"),
            http(vec![error_json(status, kind)], Then::Recover),
            code,
        )
    })
    .collect();
    cases.extend([
        Case {
            min_retry_gap: Duration::from_secs(1),
            ..retried(
                "a 429 with retry-after is retried after that delay and the poll succeeds",
                http(
                    vec![error_json(429, "rate_limit_error").insert_header("retry-after", "1")],
                    Then::Recover,
                ),
                "429",
            )
        },
        Case {
            min_retry_gap: Duration::from_millis(300),
            ..retried(
                "a 429 with retry-after-ms is retried after that delay and the poll succeeds",
                http(
                    vec![
                        error_json(429, "rate_limit_error").insert_header("retry-after-ms", "300"),
                    ],
                    Then::Recover,
                ),
                "429",
            )
        },
        retried(
            "a single reset connection is retried and the poll succeeds",
            Fault::Raw(RawFault::ConnectionReset, Then::Recover),
            "error",
        ),
        Case {
            name: "unknown statuses and unknown fields are accepted, the status as unknown"
                .to_owned(),
            fault: http(
                vec![ResponseTemplate::new(200).set_body_json(unknown_status_page())],
                Then::Repeat,
            ),
            expect: Expect::Accepted(check_unknown_status),
            max_retries: 2,
            min_retry_gap: Duration::ZERO,
        },
    ]);
    cases
}

/// The new page with k3 in a status the exporter does not know, and fields it has never seen.
fn unknown_status_page() -> Value {
    let mut keys = after_keys();
    keys[2] = KeyFixture::new("k3")
        .status("suspended_by_policy")
        .set("rotation_policy", json!({"every": "30d", "notify": [1, 2]}))
        .set("labels", json!(["a", null, 3.5]))
        .json();
    let mut page = page(&keys, false);
    page["next_page"] = json!("opaque-cursor");
    page["total_count"] = json!(3);
    page
}

fn check_unknown_status(metrics: &Metrics) {
    assert_eq!(
        metrics
            .find(
                "anthropic_api_key_info",
                &[("api_key_id", "k3"), ("status", "unknown")]
            )
            .len(),
        1,
        "k3 is exported with status=\"unknown\""
    );
    assert_eq!(
        metrics.value(
            "anthropic_api_keys",
            &[("workspace_id", "default"), ("status", "unknown")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "anthropic_api_keys",
            &[("workspace_id", "default"), ("status", "archived")]
        ),
        Some(1.0),
        "the other keys keep their status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_that_fails_a_poll_is_survived_and_counted_under_its_reason() {
    // Arrange
    let cases = failing_faults();

    // Act
    let failures = run_concurrently(cases).await;

    // Assert
    assert!(failures.is_empty(), "failed rows:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_a_retry_overcomes_and_unusual_valid_data_do_not_fail_the_poll() {
    // Arrange
    let cases = tolerated_faults();

    // Act
    let failures = run_concurrently(cases).await;

    // Assert
    assert!(failures.is_empty(), "failed rows:\n{}", failures.join("\n"));
}

/// Collects every log line of this test binary, at debug level.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_appears_in_no_log_line_while_every_fault_is_injected_at_debug_level() {
    // Arrange: every upstream error message echoes the key (see `error_json`).
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("this test owns the global subscriber");

    // Act
    let mut failures = run_concurrently(failing_faults()).await;
    failures.extend(run_concurrently(tolerated_faults()).await);

    // Assert
    assert!(failures.is_empty(), "failed rows:\n{}", failures.join("\n"));
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logs.lines().count() > 100,
        "debug logging captured too little:\n{logs}"
    );
    assert!(
        logs.contains("[REDACTED]"),
        "the echoed key is scrubbed, visibly"
    );
    for (number, line) in logs.lines().enumerate() {
        assert!(
            !line.contains(ADMIN_KEY),
            "log line {number} shows the admin key: {line}"
        );
        assert!(
            !line.contains(&ADMIN_KEY[14..]),
            "log line {number} shows part of the admin key: {line}"
        );
    }
}

#[test]
fn the_fault_table_covers_every_failure_reason_the_upstream_can_cause() {
    // Arrange: `key_file` cannot come from the upstream.
    let reasons = [
        "unauthorized",
        "forbidden",
        "rate_limited",
        "server_error",
        "client_error",
        "timeout",
        "network",
        "decode",
        "pagination",
    ];

    // Act
    let covered: Vec<&str> = failing_faults()
        .iter()
        .filter_map(|case| match case.expect {
            Expect::Fails(reason) => Some(reason),
            _ => None,
        })
        .collect();

    // Assert
    for reason in reasons {
        assert!(covered.contains(&reason), "no row fails with {reason}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Running a row
// ---------------------------------------------------------------------------------------------------

/// Runs every row at once and returns a line per row that failed.
async fn run_concurrently(cases: Vec<Case>) -> Vec<String> {
    let filter = std::env::var("FAULT_CASE").unwrap_or_default();
    let mut running = Vec::new();
    for case in cases.into_iter().filter(|case| case.name.contains(&filter)) {
        let name = case.name.clone();
        running.push((name, tokio::spawn(run_case(case))));
    }
    if running.is_empty() {
        eprintln!("no row of this table matches FAULT_CASE={filter:?}");
    }
    let mut failures = Vec::new();
    for (name, task) in running {
        if let Err(error) = task.await {
            let message = match error.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned()),
                Err(error) => error.to_string(),
            };
            failures.push(format!("- {name}: {message}"));
        }
    }
    failures
}

async fn run_case(case: Case) {
    // Arrange: a good first poll.
    let checks_memory = matches!(case.fault, Fault::Raw(RawFault::Oversized { .. }, _));
    let upstream = Upstream::start(case.fault).await;
    let app = TestApp::spawn(&upstream.base_url, case.max_retries).await;
    let good = app
        .wait_for("the first good poll", |m| m.up() == Some(1.0))
        .await;
    assert_eq!(good.keys(), ["k1", "k2"], "the data before the fault");
    let good_poll_time = good.value(
        "anthropic_exporter_last_successful_poll_timestamp_seconds",
        &[],
    );

    // Act: the fault.
    let peak_before = peak_rss_kib();
    let switched = Instant::now();
    upstream.set_phase(FAULT);
    match case.expect {
        Expect::Fails(reason) => {
            let failed = app
                .wait_for(&format!("a poll failing with {reason}"), |m| {
                    m.failures(reason) >= 1.0 && m.up() == Some(0.0)
                })
                .await;
            let took = switched.elapsed();
            // NB: a poll that started before the switch may still have succeeded, so the last good
            // poll is pinned down between two failures.
            let failed_again = app
                .wait_for(&format!("a second poll failing with {reason}"), |m| {
                    m.failures(reason) > failed.failures(reason)
                })
                .await;

            // Assert: survived, counted under its reason, last good data kept.
            app.assert_alive().await;
            assert!(
                took < FAULT_SHOWS_WITHIN,
                "the failure took {took:?} to show"
            );
            assert_eq!(
                failed.sum(
                    "anthropic_exporter_poll_failures_total",
                    &[("source", "api_keys")]
                ),
                failed.failures(reason),
                "only {reason} was counted:\n{}",
                failed.excerpt()
            );
            for scrape in [&failed, &failed_again] {
                assert_eq!(
                    scrape.key_samples(),
                    good.key_samples(),
                    "the last good data must stay"
                );
                assert_eq!(scrape.up(), Some(0.0));
            }
            let last_success = |m: &Metrics| {
                m.value(
                    "anthropic_exporter_last_successful_poll_timestamp_seconds",
                    &[],
                )
            };
            assert_eq!(
                last_success(&failed_again),
                last_success(&failed),
                "no poll succeeded while the fault lasted"
            );
            assert_eq!(
                app.get("/readyz").await.status(),
                200,
                "a failure after the first success does not make the exporter unready"
            );
        }
        Expect::Retried { code } => {
            let recovered = app
                .wait_for("the poll that overcomes the fault", |m| {
                    m.keys().len() == 3 && m.up() == Some(1.0)
                })
                .await;
            app.assert_alive().await;
            assert_eq!(
                recovered.sum(
                    "anthropic_exporter_poll_failures_total",
                    &[("source", "api_keys")]
                ),
                0.0,
                "no poll failed:\n{}",
                recovered.excerpt()
            );
            assert!(
                recovered
                    .value(
                        "anthropic_exporter_api_requests_total",
                        &[("endpoint", "api_keys"), ("code", code)]
                    )
                    .is_some_and(|count| count >= 1.0),
                "the fault ({code}) reached the exporter:\n{}",
                recovered.excerpt()
            );
        }
        Expect::Accepted(check) => {
            let accepted = app
                .wait_for("the poll of the unusual data", |m| {
                    m.keys().len() == 3 && m.up() == Some(1.0)
                })
                .await;
            app.assert_alive().await;
            assert_eq!(
                accepted.sum(
                    "anthropic_exporter_poll_failures_total",
                    &[("source", "api_keys")]
                ),
                0.0,
                "no poll failed"
            );
            check(&accepted);
        }
    }
    if let (true, Some(before), Some(after)) = (checks_memory, peak_before, peak_rss_kib()) {
        assert!(
            after.saturating_sub(before) < MAX_PEAK_RSS_GROWTH_KIB,
            "peak RSS grew from {before} KiB to {after} KiB"
        );
    }
    if !case.min_retry_gap.is_zero() {
        let arrivals = upstream.fault_arrivals();
        assert!(
            arrivals.len() >= 2,
            "the fault was not retried ({} requests)",
            arrivals.len()
        );
        let gap = arrivals[1] - arrivals[0];
        assert!(
            gap >= case.min_retry_gap,
            "retried after {gap:?}, before the {:?} the server asked for",
            case.min_retry_gap
        );
    }

    app.assert_no_secret_served().await;

    // Act: the upstream is good again, with one key more.
    upstream.set_phase(AFTER);
    // NB: a poll publishes its keys a moment before it records its success, so the wait includes the
    // timestamp rather than asserting it after a scrape that may fall in between.
    let recovered = app
        .wait_for("full recovery, its poll recorded", |m| {
            m.value(
                "anthropic_exporter_last_successful_poll_timestamp_seconds",
                &[],
            )
            .unwrap_or_default()
                > good_poll_time.unwrap_or_default()
                && m.up() == Some(1.0)
                && m.keys() == ["k1", "k2", "k3"]
                && m.find(
                    "anthropic_api_key_info",
                    &[("api_key_id", "k3"), ("status", "active")],
                )
                .len()
                    == 1
        })
        .await;

    // Assert: fully recovered.
    app.assert_alive().await;
    assert_eq!(
        recovered.value(
            "anthropic_api_keys",
            &[("workspace_id", "default"), ("status", "active")]
        ),
        Some(1.0),
        "the new key is counted"
    );
    assert_eq!(
        recovered.sum("anthropic_api_keys", &[]),
        3.0,
        "the new data is complete"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------------------------------

/// Two keys: one in a workspace that expires, one archived in the Default workspace.
fn before_keys() -> Vec<Value> {
    vec![
        KeyFixture::new("k1")
            .in_workspace("wrkspc_prod")
            .expires_at("2030-01-01T00:00:00Z")
            .json(),
        KeyFixture::new("k2").status("archived").json(),
    ]
}

/// The same two keys and a new one.
fn after_keys() -> Vec<Value> {
    let mut keys = before_keys();
    keys.push(KeyFixture::new("k3").json());
    keys
}

fn organization_json() -> Value {
    organization("org-uuid-1", "Acme Corp")
}

fn workspaces_page() -> Value {
    page(&[workspace("wrkspc_prod", "Production")], false)
}

// ---------------------------------------------------------------------------------------------------
// The fake upstreams
// ---------------------------------------------------------------------------------------------------

/// The fake Admin API of one row: the organization and workspaces always answer; the key listing
/// answers by phase.
struct Upstream {
    base_url: String,
    phase: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    // Kept so that the fake lives as long as the row.
    _mock: Option<MockServer>,
    _raw: Option<CancellationToken>,
}

impl Upstream {
    async fn start(fault: Fault) -> Self {
        let phase = Arc::new(AtomicUsize::new(BEFORE));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        match fault {
            Fault::Http(faults, then) => {
                let server = MockServer::start().await;
                Mock::given(method("GET"))
                    .and(path(ME_PATH))
                    .respond_with(ResponseTemplate::new(200).set_body_json(organization_json()))
                    .mount(&server)
                    .await;
                Mock::given(method("GET"))
                    .and(path(WORKSPACES_PATH))
                    .respond_with(ResponseTemplate::new(200).set_body_json(workspaces_page()))
                    .mount(&server)
                    .await;
                Mock::given(method("GET"))
                    .and(path(KEYS_PATH))
                    .respond_with(PhasedKeys {
                        phase: Arc::clone(&phase),
                        arrivals: Arc::clone(&arrivals),
                        before: ResponseTemplate::new(200)
                            .set_body_json(page(&before_keys(), false)),
                        faults,
                        then,
                        after: ResponseTemplate::new(200).set_body_json(page(&after_keys(), false)),
                    })
                    .mount(&server)
                    .await;
                Self {
                    base_url: server.uri(),
                    phase,
                    arrivals,
                    _mock: Some(server),
                    _raw: None,
                }
            }
            Fault::Raw(fault, then) => {
                let shutdown = CancellationToken::new();
                let address = RawAdminApi::start(
                    RawAdminApi {
                        phase: Arc::clone(&phase),
                        arrivals: Arc::clone(&arrivals),
                        fault,
                        then,
                    },
                    shutdown.clone(),
                )
                .await;
                Self {
                    base_url: format!("http://{address}"),
                    phase,
                    arrivals,
                    _mock: None,
                    _raw: Some(shutdown),
                }
            }
        }
    }

    fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// When the key listing was requested during the fault phase.
    fn fault_arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(shutdown) = &self._raw {
            shutdown.cancel();
        }
    }
}

/// The index of this fault-phase request, and whether the scripted faults are used up.
fn next_fault(arrivals: &Mutex<Vec<Instant>>, scripted: usize, then: Then) -> Option<usize> {
    let mut arrivals = arrivals.lock().unwrap();
    arrivals.push(Instant::now());
    let index = arrivals.len() - 1;
    match then {
        _ if index < scripted => Some(index),
        Then::Repeat => Some(scripted - 1),
        Then::Recover => None,
    }
}

/// The key listing of the wiremock fake, like `Phased` in the API tests with a script for the fault.
struct PhasedKeys {
    phase: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    before: ResponseTemplate,
    faults: Vec<ResponseTemplate>,
    then: Then,
    after: ResponseTemplate,
}

impl Respond for PhasedKeys {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        match self.phase.load(Ordering::SeqCst) {
            BEFORE => self.before.clone(),
            FAULT => match next_fault(&self.arrivals, self.faults.len(), self.then) {
                Some(index) => self.faults[index].clone(),
                None => self.after.clone(),
            },
            _ => self.after.clone(),
        }
    }
}

/// A minimal HTTP/1.1 server on a raw socket, for faults below HTTP that wiremock cannot produce. Every
/// response closes its connection, so each request comes on a fresh one.
#[derive(Clone)]
struct RawAdminApi {
    phase: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    fault: RawFault,
    then: Then,
}

impl RawAdminApi {
    async fn start(self, shutdown: CancellationToken) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let api = self.clone();
                tokio::spawn(async move {
                    // NB: the exporter hanging up on an oversized body is expected.
                    let _ = api.serve(stream).await;
                });
            }
        });
        address
    }

    async fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let path = read_request_path(&mut stream).await?;
        let body = match path.as_str() {
            ME_PATH => organization_json(),
            WORKSPACES_PATH => workspaces_page(),
            KEYS_PATH => match self.phase.load(Ordering::SeqCst) {
                BEFORE => page(&before_keys(), false),
                FAULT => match next_fault(&self.arrivals, 1, self.then) {
                    Some(_) => return misbehave(stream, self.fault).await,
                    None => page(&after_keys(), false),
                },
                _ => page(&after_keys(), false),
            },
            _ => json!({"type": "error", "error": {"type": "not_found_error", "message": path}}),
        };
        let body = body.to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    }
}

/// Reads a request head and returns its path without the query.
async fn read_request_path(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or_default();
    Ok(target.split('?').next().unwrap_or_default().to_owned())
}

async fn misbehave(mut stream: TcpStream, fault: RawFault) -> std::io::Result<()> {
    match fault {
        RawFault::TruncatedBody => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n";
            let mut half = page(&after_keys(), false).to_string().into_bytes();
            half.resize(2500, b' ');
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&half).await?;
            stream.flush().await?;
            // The client must see the end of the stream, not merely wait for the rest.
            stream.shutdown().await
        }
        RawFault::ConnectionReset => {
            stream.set_zero_linger()?;
            drop(stream);
            Ok(())
        }
        RawFault::Oversized { content_length } => {
            let framing = match content_length {
                Some(length) => format!("content-length: {length}"),
                None => "transfer-encoding: chunked".to_owned(),
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            let mut chunk = vec![b' '; 64 * 1024];
            chunk[..9].copy_from_slice(b"{\"data\":[");
            let limit = content_length
                .unwrap_or(OVERSIZED_STREAM)
                .min(OVERSIZED_STREAM);
            let mut sent = 0u64;
            while sent < limit {
                let part = &chunk[..(limit - sent).min(chunk.len() as u64) as usize];
                if content_length.is_none() {
                    stream
                        .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                        .await?;
                    stream.write_all(part).await?;
                    stream.write_all(b"\r\n").await?;
                } else {
                    stream.write_all(part).await?;
                }
                sent += part.len() as u64;
                chunk[..9].fill(b' ');
            }
            if content_length.is_none() {
                stream.write_all(b"0\r\n\r\n").await?;
            }
            stream.shutdown().await
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The exporter under test
// ---------------------------------------------------------------------------------------------------

struct TestApp {
    exporter: RunningExporter,
    http: reqwest::Client,
}

impl TestApp {
    /// The exporter in-process: polls every 200 ms, retries after 5 ms; the request timeout is generous so
    /// that a busy machine never turns another fault into a `timeout`.
    async fn spawn(base_url: &str, max_retries: u32) -> Self {
        let mut config = test_config(base_url, ADMIN_KEY);
        config.poll.interval = Duration::from_millis(200);
        config.poll.request_timeout = Duration::from_secs(2);
        config.poll.deadline = Duration::from_secs(3);
        config.poll.retry.max_retries = max_retries;
        Self {
            exporter: RunningExporter::start(config).await,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client builds"),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.exporter.get(&self.http, path).await
    }

    /// Every page the exporter serves, searched for the admin key.
    async fn assert_no_secret_served(&self) {
        for path in ["/", "/metrics", "/readyz", "/healthz"] {
            let body = self.get(path).await.text().await.expect("a text body");
            assert!(!body.contains(ADMIN_KEY), "{path} shows the admin key");
        }
    }

    /// Waits until the metrics satisfy `condition`, for at most ten seconds.
    async fn wait_for(&self, what: &str, condition: impl Fn(&Metrics) -> bool) -> Metrics {
        self.exporter
            .wait_for(&self.http, what, condition, Metrics::excerpt)
            .await
    }

    /// No panic: the exporter's task still runs and says it is healthy.
    async fn assert_alive(&self) {
        assert!(self.exporter.is_running(), "the exporter stopped");
        assert_eq!(self.get("/healthz").await.status(), 200, "/healthz");
    }

    async fn stop(self) {
        let stopped = self.exporter.stop().await;
        assert!(stopped.is_ok(), "{stopped:?}");
    }
}

/// The peak resident set size of this process so far (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
