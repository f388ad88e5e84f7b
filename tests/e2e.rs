//! End-to-end proof on a real Prometheus: the exporter polls a fake Admin API, Prometheus scrapes it with
//! the shipped alert rules loaded, and the test checks through Prometheus' HTTP API that exactly the
//! expected alerts are pending or firing and that every dashboard query returns data.
//!
//! The fake serves the key inventory; the members (`/v1/organizations/users`) and the usage report
//! (`/v1/organizations/usage_report/messages`) of the seeded organization are served by this test in
//! front of it, in the documented shapes, so that every source of the organization has data.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`; `scripts/test` installs it). It fails,
//! never skips, when the binary is missing.

// Helpers panic to fail the test, which is what they are for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anthropic_keys_exporter::admin_api::RetryPolicy;
use anthropic_keys_exporter::demo::{Dataset, FakeAdminApi};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use common::admin_api::organization;
use common::exporter::{RunningExporter, test_config};

const ADMIN_KEY: &str = "sk-ant-admin01-E2E-0123456789";
const HOSTILE_NAME: &str = "名前 \"quoted\" back\\slash\nnew line 🔑";

fn repository_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Keys that expire in 2 days, 10 days, 60 days, never; a 3-hour key; an already expired key; keys in
/// several workspaces; a status the exporter does not know; a name that needs escaping; a key that
/// expires in 2 days but has not been used for 20 days; and a key created by someone who left.
fn seeded_organization() -> Dataset {
    let now = OffsetDateTime::now_utc();
    let at = |offset: time::Duration| (now + offset).format(&Rfc3339).unwrap();
    let (d, h) = (time::Duration::days, time::Duration::hours);
    let key = |id: &str,
               name: &str,
               workspace: &str,
               status: &str,
               created: time::Duration,
               expires: Option<time::Duration>| {
        json!({
            "id": id, "type": "api_key", "name": name, "status": status,
            "created_at": at(created),
            "created_by": {"id": "user_e2e", "type": "user"},
            "expires_at": expires.map(at),
            "scope": {"type": "workspace", "workspace_id": workspace},
            "workspace_id": workspace,
        })
    };
    let mut keys = vec![
        key(
            "apikey_e2e_01",
            "expires-in-2d",
            "wrkspc_prod",
            "active",
            d(-60),
            Some(d(2)),
        ),
        key(
            "apikey_e2e_02",
            "expires-in-10d",
            "wrkspc_staging",
            "active",
            d(-80),
            Some(d(10)),
        ),
        key(
            "apikey_e2e_03",
            "expires-in-60d",
            "wrkspc_prod",
            "active",
            d(-30),
            Some(d(60)),
        ),
        key(
            "apikey_e2e_04",
            "never-expires",
            "wrkspc_research",
            "active",
            d(-90),
            None,
        ),
        key(
            "apikey_e2e_05",
            "ci-3h",
            "wrkspc_staging",
            "active",
            h(-1),
            Some(h(2)),
        ),
        key(
            "apikey_e2e_06",
            "expired-yesterday",
            "wrkspc_prod",
            "expired",
            d(-30),
            Some(d(-1)),
        ),
        key(
            "apikey_e2e_07",
            "archived-never",
            "wrkspc_research",
            "archived",
            d(-300),
            None,
        ),
        key(
            "apikey_e2e_08",
            "inactive-soon",
            "wrkspc_prod",
            "inactive",
            d(-100),
            Some(d(5)),
        ),
        key(
            "apikey_e2e_09",
            "suspended-soon",
            "wrkspc_prod",
            "suspended",
            d(-100),
            Some(d(5)),
        ),
        key(
            "apikey_e2e_10",
            HOSTILE_NAME,
            "wrkspc_research",
            "active",
            d(-10),
            Some(d(200)),
        ),
    ];
    // Old API shape: no scope, workspace_id null means the Default workspace.
    let mut legacy = key(
        "apikey_e2e_11",
        "legacy-default",
        "x",
        "active",
        d(-10),
        Some(d(100)),
    );
    legacy.as_object_mut().unwrap().remove("scope");
    legacy["workspace_id"] = Value::Null;
    keys.push(legacy);
    keys.push(key(
        "apikey_e2e_12",
        "idle-expiring",
        "wrkspc_prod",
        "active",
        d(-60),
        Some(d(2)),
    ));
    let mut left_behind = key(
        "apikey_e2e_13",
        "left-behind",
        "wrkspc_research",
        "active",
        d(-20),
        Some(d(200)),
    );
    left_behind["created_by"] = json!({"id": "user_e2e_gone", "type": "user"});
    keys.push(left_behind);
    let workspace = |id: &str, name: &str| json!({"id": id, "type": "workspace", "name": name, "archived_at": null});
    Dataset {
        admin_key: ADMIN_KEY.to_owned(),
        organization: organization("e2e-org-uuid", "E2E Org"),
        workspaces: vec![
            workspace("wrkspc_prod", "Production"),
            workspace("wrkspc_research", "Research"),
            workspace("wrkspc_staging", "Staging"),
        ],
        api_keys: keys,
        users: vec![],
        usage: vec![],
    }
}

/// The organization's members: the creator of most keys and a developer. `user_e2e_gone` (the creator
/// of `left-behind`) is not among them any more.
fn seeded_users() -> Vec<Value> {
    let user = |id: &str, name: &str, email: &str, role: &str| {
        json!({"id": id, "type": "user", "name": name, "email": email, "role": role,
               "added_at": "2024-10-30T23:58:27.427722Z"})
    };
    vec![
        user("user_e2e", "E2E Admin", "admin@e2e.example", "admin"),
        user(
            "user_e2e_dev",
            "E2E Developer",
            "dev@e2e.example",
            "developer",
        ),
    ]
}

/// When each key was used, in days before now. Keys not listed were never used; `never-expires` is
/// 90 days old, so it is unused in the 30-day lookback.
fn seeded_usage() -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("apikey_e2e_01", vec![0.1, 1.0, 2.0]),
        ("apikey_e2e_02", vec![3.0, 5.0]),
        ("apikey_e2e_03", vec![1.0]),
        ("apikey_e2e_05", vec![0.01]),
        ("apikey_e2e_10", vec![2.0]),
        ("apikey_e2e_11", vec![4.0]),
        ("apikey_e2e_12", vec![20.0, 25.0]),
        ("apikey_e2e_13", vec![1.0, 2.0]),
    ]
}

/// Serves the users list and the usage report of the seeded organization and hands every other request
/// to the fake Admin API, so the exporter sees one Admin API with every source.
#[derive(Debug)]
struct Enrichment {
    admin_key: String,
    users: Vec<Value>,
    uses: Vec<(String, Vec<OffsetDateTime>)>,
    upstream: String,
    http: reqwest::Client,
}

impl Enrichment {
    async fn start(upstream: String, shutdown: CancellationToken) -> String {
        let now = OffsetDateTime::now_utc();
        let state = Arc::new(Self {
            admin_key: ADMIN_KEY.to_owned(),
            users: seeded_users(),
            uses: seeded_usage()
                .into_iter()
                .map(|(id, days)| {
                    let at = days
                        .into_iter()
                        .map(|d| now - time::Duration::seconds_f64(d * 86400.0))
                        .collect();
                    (id.to_owned(), at)
                })
                .collect(),
            upstream,
            http: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/v1/organizations/users", get(users))
            .route("/v1/organizations/usage_report/messages", get(usage_report))
            .fallback(forward)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .unwrap();
        });
        format!("http://{address}")
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(self.admin_key.as_str())
    }
}

fn parameters(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn parameter<'a>(parameters: &'a [(String, String)], name: &str) -> Option<&'a str> {
    parameters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn unauthorized() -> Response {
    let body = json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// The users list with the documented cursor envelope (`limit`, `after_id`).
async fn users(
    State(state): State<Arc<Enrichment>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let parameters = parameters(query.as_deref());
    let limit = parameter(&parameters, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20_usize)
        .clamp(1, 1000);
    let start = parameter(&parameters, "after_id")
        .and_then(|after| state.users.iter().position(|u| u["id"] == after))
        .map_or(0, |i| i + 1);
    let page: Vec<Value> = state
        .users
        .iter()
        .skip(start)
        .take(limit)
        .cloned()
        .collect();
    let body = json!({
        "data": page,
        "first_id": page.first().map(|u| u["id"].clone()),
        "last_id": page.last().map(|u| u["id"].clone()),
        "has_more": start + page.len() < state.users.len(),
    });
    axum::Json(body).into_response()
}

/// The messages usage report as documented: buckets of `bucket_width` (1d by default) from
/// `starting_at` (required, snapped to the bucket) to `ending_at` (default now), `limit` buckets per
/// page, `next_page` to continue; with `group_by[]=api_key_id`, one result per key used in a bucket.
async fn usage_report(
    State(state): State<Arc<Enrichment>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let parameters = parameters(query.as_deref());
    let (width, default_limit, max_limit) = match parameter(&parameters, "bucket_width") {
        Some("1m") => (60, 60, 1440),
        Some("1h") => (3600, 24, 168),
        _ => (86400, 7, 31),
    };
    let limit = parameter(&parameters, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(default_limit)
        .clamp(1, max_limit);
    let parse = |name: &str| {
        parameter(&parameters, name).and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
    };
    let Some(start) = parse("page").or_else(|| parse("starting_at")) else {
        let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "starting_at is required"}});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    };
    let end = parse("ending_at").unwrap_or_else(OffsetDateTime::now_utc);
    let grouped = |dimension: &str| {
        parameters
            .iter()
            .any(|(n, v)| n == "group_by[]" && v == dimension)
    };
    let mut bucket = start.unix_timestamp() - start.unix_timestamp().rem_euclid(width);
    let mut data = Vec::new();
    while bucket < end.unix_timestamp() && data.len() < limit {
        let (from, to) = (bucket, bucket + width);
        let results: Vec<Value> = state
            .uses
            .iter()
            .filter(|(_, at)| {
                at.iter()
                    .any(|t| (from..to).contains(&t.unix_timestamp()))
            })
            .map(|(id, _)| {
                json!({
                    "api_key_id": if grouped("api_key_id") { json!(id) } else { Value::Null },
                    "workspace_id": Value::Null,
                    "model": Value::Null, "service_tier": Value::Null,
                    "context_window": Value::Null, "inference_geo": Value::Null,
                    "uncached_input_tokens": 1500,
                    "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                    "cache_read_input_tokens": 200,
                    "output_tokens": 500,
                    "server_tool_use": {"web_search_requests": 0},
                })
            })
            .collect();
        let at = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .unwrap()
                .format(&Rfc3339)
                .unwrap()
        };
        data.push(json!({"starting_at": at(from), "ending_at": at(to), "results": results}));
        bucket = to;
    }
    let has_more = bucket < end.unix_timestamp();
    let next_page = has_more.then(|| {
        OffsetDateTime::from_unix_timestamp(bucket)
            .unwrap()
            .format(&Rfc3339)
            .unwrap()
    });
    axum::Json(json!({"data": data, "has_more": has_more, "next_page": next_page})).into_response()
}

/// Every other request goes to the fake Admin API unchanged.
async fn forward(State(state): State<Arc<Enrichment>>, headers: HeaderMap, uri: Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = state.http.get(format!("{}{path}", state.upstream));
    for name in ["x-api-key", "anthropic-version", "user-agent"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    let Ok(response) = request.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = response.bytes().await.unwrap_or_default();
    (status, [("content-type", content_type)], body).into_response()
}

/// A Prometheus server in a temporary directory, stopped when dropped.
struct PrometheusServer {
    child: Child,
    url: String,
    directory: PathBuf,
}

impl PrometheusServer {
    fn start(exporter: &str) -> Self {
        let directory = std::env::temp_dir().join(format!("ake-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::copy(
            repository_file("dashboards/anthropic-keys-exporter.rules.yml"),
            directory.join("anthropic-keys-exporter.rules.yml"),
        )
        .unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - anthropic-keys-exporter.rules.yml\n\
             scrape_configs:\n  - job_name: anthropic-keys-exporter\n    static_configs:\n      - targets: ['{exporter}']\n"
        );
        std::fs::write(directory.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", directory.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", directory.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(directory.join("prometheus.log")).unwrap()))
            .spawn()
            .expect("the `prometheus` binary is required (Debian package prometheus; scripts/test installs it)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            directory,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.directory.join("prometheus.log")).unwrap_or_default()
    }

    async fn query(&self, http: &reqwest::Client, expr: &str) -> Vec<Value> {
        let response: Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            response["status"], "success",
            "query {expr} failed: {response}"
        );
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `condition` holds for the result of `expr`.
    async fn wait_for(
        &self,
        http: &reqwest::Client,
        what: &str,
        expr: &str,
        condition: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http
                .get(format!("{}/-/ready", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready && condition(&self.query(http, expr).await) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The exporter in-process, with the default poll and retry settings, against a fake Admin API that
/// serves the seeded organization (keys, members, usage) until `shutdown` is cancelled.
async fn start_exporter(shutdown: &CancellationToken) -> RunningExporter {
    let fake = FakeAdminApi::start(seeded_organization(), shutdown.clone())
        .await
        .unwrap();
    let upstream = fake.base_url().unwrap().to_string();
    let base_url =
        Enrichment::start(upstream.trim_end_matches('/').to_owned(), shutdown.clone()).await;
    let mut config = test_config(&base_url, ADMIN_KEY);
    config.organization = "e2e".to_owned();
    config.poll.retry = RetryPolicy::default();
    RunningExporter::start(config).await
}

/// Every `expr` in the dashboard, with Grafana's variables replaced by what selects everything.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    fn walk(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(object) => {
                let title = object.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(expr) = object.get("expr").and_then(Value::as_str) {
                    out.push((title.to_owned(), expr.to_owned()));
                }
                for child in object.values() {
                    walk(child, title, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, title, out)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    walk(&dashboard["panels"], "", &mut queries);
    queries
        .into_iter()
        .filter(|(_, expr)| !expr.trim().is_empty())
        .map(|(title, expr)| {
            let expr = expr
                .replace("${organization}", ".*")
                .replace("$organization", ".*")
                .replace("${workspace}", ".*")
                .replace("$workspace", ".*")
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            (title, expr)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_fires_exactly_the_expected_alerts_and_every_dashboard_query_has_data() {
    // Arrange
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let exporter = start_exporter(&shutdown).await;
    let prometheus = PrometheusServer::start(&exporter.address.to_string());
    let http = reqwest::Client::new();
    prometheus
        .wait_for(
            &http,
            "three scrapes with data",
            "count_over_time(anthropic_up[1m]) >= 3",
            |r| !r.is_empty(),
        )
        .await;
    // Every source of the organization has succeeded once (usage and users data are in).
    prometheus
        .wait_for(
            &http,
            "all five sources up",
            r#"count(anthropic_exporter_source_up{organization="e2e"} == 1) == 5"#,
            |r| !r.is_empty(),
        )
        .await;

    // Act: let the rules evaluate a few times after the data arrived.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts: Value = http
        .get(format!("{}/api/v1/alerts", prometheus.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Assert: exactly these alerts, pending or firing, with these severities. Key alerts are labelled by
    // key id, not name. A used key expiring in 2 days pages; one unused for 20 days does not, it raises
    // ExpiringUnused instead; the 90-day-old key that was never used is Unused (and never expires); the
    // key whose creator left is Orphaned.
    let active: BTreeSet<(String, String, String)> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| matches!(alert["state"].as_str(), Some("pending" | "firing")))
        .map(|alert| {
            let labels = &alert["labels"];
            let text = |name: &str| labels[name].as_str().unwrap_or_default().to_owned();
            (text("alertname"), text("severity"), text("api_key_id"))
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = [
        ("AnthropicApiKeyExpiring", "critical", "apikey_e2e_01"),
        ("AnthropicApiKeyExpiring", "warning", "apikey_e2e_01"),
        ("AnthropicApiKeyExpiring", "warning", "apikey_e2e_02"),
        ("AnthropicApiKeyExpiringUnused", "info", "apikey_e2e_12"),
        ("AnthropicApiKeyExpired", "info", "apikey_e2e_06"),
        ("AnthropicApiKeyNeverExpires", "info", "apikey_e2e_04"),
        ("AnthropicApiKeyUnused", "info", "apikey_e2e_04"),
        ("AnthropicApiKeyOrphaned", "warning", "apikey_e2e_13"),
        ("AnthropicApiKeyStatusUnknown", "warning", ""),
    ]
    .into_iter()
    .map(|(a, s, k)| (a.to_owned(), s.to_owned(), k.to_owned()))
    .collect();
    assert_eq!(active, expected, "alerts: {alerts:#}");

    // Every alert carries what an on-call engineer needs.
    for alert in alerts["data"]["alerts"].as_array().unwrap() {
        let annotations = &alert["annotations"];
        for field in ["summary", "description", "runbook_url"] {
            assert!(
                annotations[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} missing: {alert:#}"
            );
        }
        if alert["labels"]["alertname"] == "AnthropicApiKeyExpiring" {
            assert_eq!(alert["labels"]["organization"], "e2e");
            assert!(alert["labels"]["workspace_id"].is_string());
            for mutable in ["api_key_name", "workspace_name", "instance", "job"] {
                assert!(alert["labels"][mutable].is_null(), "{mutable} in {alert:#}");
            }
            // The name comes from anthropic_api_key_info through the template's query.
            let summary = annotations["summary"].as_str().unwrap();
            assert!(
                summary.contains("expires in") && summary.contains("expires-in-"),
                "{summary}"
            );
            let description = annotations["description"].as_str().unwrap();
            assert!(
                description.contains("Created by E2E Admin <admin@e2e.example>"),
                "{description}"
            );
        }
    }

    // Every dashboard query returns data from the real Prometheus.
    let queries = dashboard_queries(&repository_file("dashboards/anthropic-keys-exporter.json"));
    assert!(
        queries.len() >= 10,
        "the dashboard has only {} queries",
        queries.len()
    );
    for (title, expr) in &queries {
        let result = prometheus.query(&http, expr).await;
        assert!(
            !result.is_empty(),
            "dashboard panel {title:?} has no data for: {expr}"
        );
    }

    // A hostile key name survives the exposition format and Prometheus' own parser.
    let info = prometheus
        .query(
            &http,
            r#"anthropic_api_key_info{api_key_id="apikey_e2e_10"}"#,
        )
        .await;
    assert_eq!(info[0]["metric"]["api_key_name"], HOSTILE_NAME);
    let default_workspace = prometheus
        .query(
            &http,
            r#"anthropic_api_key_info{api_key_id="apikey_e2e_11"}"#,
        )
        .await;
    assert_eq!(default_workspace[0]["metric"]["workspace_name"], "Default");

    let by_status: BTreeMap<String, f64> = prometheus
        .query(&http, "sum by (status) (anthropic_api_keys)")
        .await
        .iter()
        .map(|s| {
            (
                s["metric"]["status"].as_str().unwrap().to_owned(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_status["active"], 9.0, "{by_status:?}");
    assert_eq!(by_status["unknown"], 1.0, "{by_status:?}");
    let stopped = exporter.stop().await;
    shutdown.cancel();
    assert!(stopped.is_ok(), "{stopped:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
