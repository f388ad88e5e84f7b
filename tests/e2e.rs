//! End-to-end proof on a real Prometheus: the exporter polls a fake Admin API, Prometheus scrapes it with
//! the shipped alert rules loaded, and the test checks through Prometheus' HTTP API that exactly the
//! expected alerts are pending or firing and that every dashboard query returns data.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`; `scripts/test` installs it). It fails,
//! never skips, when the binary is missing.

// Helpers panic to fail the test, which is what they are for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anthropic_keys_exporter::admin_api::RetryPolicy;
use anthropic_keys_exporter::demo::{Dataset, FakeAdminApi};
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
/// several workspaces; a status the exporter does not know; and a name that needs escaping.
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
/// serves the seeded organization until `shutdown` is cancelled.
async fn start_exporter(shutdown: &CancellationToken) -> RunningExporter {
    let fake = FakeAdminApi::start(seeded_organization(), shutdown.clone())
        .await
        .unwrap();
    let base_url = fake.base_url().unwrap().to_string();
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

    // Assert: exactly these alerts, pending or firing, with these severities.
    let active: BTreeSet<(String, String, String)> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| matches!(alert["state"].as_str(), Some("pending" | "firing")))
        .map(|alert| {
            let labels = &alert["labels"];
            let text = |name: &str| labels[name].as_str().unwrap_or_default().to_owned();
            (text("alertname"), text("severity"), text("api_key_name"))
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = [
        ("AnthropicApiKeyExpiring", "critical", "expires-in-2d"),
        ("AnthropicApiKeyExpiring", "warning", "expires-in-2d"),
        ("AnthropicApiKeyExpiring", "warning", "expires-in-10d"),
        ("AnthropicApiKeyExpired", "info", "expired-yesterday"),
        ("AnthropicApiKeyNeverExpires", "info", "never-expires"),
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
            assert!(alert["labels"]["workspace_name"].is_string());
            let summary = annotations["summary"].as_str().unwrap();
            assert!(
                summary.contains("expires in") && summary.contains('d'),
                "{summary}"
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
    assert_eq!(by_status["active"], 7.0, "{by_status:?}");
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
