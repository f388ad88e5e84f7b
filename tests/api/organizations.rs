//! Several organizations: each is polled on its own and fails on its own, sources fail without
//! holding back the key inventory, the config file reloads add, restart and remove organizations,
//! the global request limit holds for hundreds of them, and shards split them without overlap.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anthropic_keys_exporter::admin_api::RetryPolicy;
use anthropic_keys_exporter::app::{App, ReloadHandle};
use anthropic_keys_exporter::config::{Config, Invocation};
use anthropic_keys_exporter::sharding::Shard;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::admin_api::organization;
use crate::common::exporter::RunningExporter;
use crate::fixtures::*;
use crate::helpers::*;

/// Every source, as the `source` label.
const SOURCES: [&str; 5] = ["organization", "workspaces", "api_keys", "users", "usage"];

/// A directory of its own for one test's config file and key files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ake-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn key_file(&self, file: &str, admin_key: &str) {
        std::fs::write(self.0.join(file), format!("{admin_key}\n")).unwrap();
    }

    fn config_file(&self) -> PathBuf {
        self.0.join("organizations.yml")
    }

    /// Replaces the config file at once (as a ConfigMap update does), so that the exporter never
    /// reads half of it.
    fn write_config(&self, text: &str) -> PathBuf {
        let staged = self.0.join(".organizations.yml.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, self.config_file()).unwrap();
        self.config_file()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One organization of a config file, its key file relative to the config file.
fn entry(name: &str, key_file: &str, base_url: &str) -> String {
    format!("  - name: {name}\n    admin_key_file: {key_file}\n    base_url: {base_url}\n")
}

fn config_text(entries: &[String]) -> String {
    format!("organizations:\n{}", entries.concat())
}

/// The exporter running in-process from a config file, as `--config.file` and `flags` configure it.
struct Exporter {
    running: RunningExporter,
    http: reqwest::Client,
    reload: ReloadHandle,
}

async fn start_exporter(config_file: &Path, flags: &[&str]) -> Exporter {
    let config_file = config_file.to_str().unwrap();
    let mut args = vec![
        "anthropic-keys-exporter",
        "--config.file",
        config_file,
        "--web.listen-address",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    let Invocation::Run(config) =
        Config::parse(args, |_| None).expect("the configuration is valid")
    else {
        panic!("unexpected help output")
    };
    let mut config: Config = *config;
    config.poll.retry = RetryPolicy {
        max_retries: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    let app = App::build(config).await.expect("the app builds");
    let reload = app.reload_handle();
    let running = RunningExporter {
        address: app.local_addr(),
        shutdown: app.shutdown_token(),
        task: tokio::spawn(app.run_until_stopped()),
    };
    Exporter {
        running,
        http: reqwest::Client::new(),
        reload,
    }
}

impl Exporter {
    async fn metrics(&self) -> Metrics {
        self.running.metrics(&self.http).await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self.running.get(&self.http, path).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Scrapes until the metrics satisfy `condition`, for at most `timeout`.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let metrics = self.metrics().await;
            if condition(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last scrape:\n{}",
                metrics.excerpt()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.running
            .stop()
            .await
            .expect("the exporter stops cleanly");
    }

    /// Asks for `/readyz` until it answers 200, for at most `timeout`.
    async fn wait_until_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "still not ready: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn up(metrics: &Metrics, organization: &str) -> Option<f64> {
    metrics.value("anthropic_up", &[("organization", organization)])
}

/// The ids of the keys exported for `organization`, sorted.
fn keys_of(metrics: &Metrics, organization: &str) -> Vec<String> {
    let mut ids: Vec<String> = metrics
        .find("anthropic_api_key_info", &[("organization", organization)])
        .iter()
        .map(|sample| sample.labels["api_key_id"].clone())
        .collect();
    ids.sort();
    ids
}

/// Every value of the `organization` label in a scrape.
fn organizations_in(metrics: &Metrics) -> BTreeSet<String> {
    metrics
        .samples
        .iter()
        .filter_map(|sample| sample.labels.get("organization").cloned())
        .collect()
}

/// The families with at least one series of `organization`.
fn families_of(metrics: &Metrics, organization: &str) -> BTreeSet<String> {
    metrics
        .samples
        .iter()
        .filter(|sample| {
            sample.labels.get("organization").map(String::as_str) == Some(organization)
        })
        .map(|sample| sample.name.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

fn reload_successful(metrics: &Metrics) -> Option<f64> {
    metrics.value("anthropic_exporter_config_last_reload_successful", &[])
}

fn reload_timestamp(metrics: &Metrics) -> f64 {
    metrics
        .value(
            "anthropic_exporter_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .expect("the reload timestamp is exported")
}

/// One organization as the shared fake knows it.
#[derive(Clone)]
struct Tenant {
    label: String,
    keys: Vec<Value>,
    key_listing_delay: Duration,
}

/// A fake Admin API shared by several organizations, telling them apart by their admin key as the
/// real API does: a known key sees its own organization (one member, `user_01`, and its keys), any
/// other key gets 401.
#[derive(Clone, Default)]
struct Tenants(Arc<Mutex<HashMap<String, Tenant>>>);

impl Tenants {
    fn with(self, admin_key: &str, label: &str, key_ids: &[&str]) -> Self {
        self.with_slow_key_listing(admin_key, label, key_ids, Duration::ZERO)
    }

    fn with_slow_key_listing(
        self,
        admin_key: &str,
        label: &str,
        key_ids: &[&str],
        delay: Duration,
    ) -> Self {
        self.0.lock().unwrap().insert(
            admin_key.to_owned(),
            Tenant {
                label: label.to_owned(),
                keys: key_ids
                    .iter()
                    .map(|id| KeyFixture::new(id).json())
                    .collect(),
                key_listing_delay: delay,
            },
        );
        self
    }

    async fn serve(&self) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }
}

impl Respond for Tenants {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let admin_key = request
            .headers
            .get("x-api-key")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let Some(tenant) = self.0.lock().unwrap().get(admin_key).cloned() else {
            return ResponseTemplate::new(401).set_body_json(error_body(
                "authentication_error",
                "invalid x-api-key",
                "req_tenants_401",
            ));
        };
        let ok = ResponseTemplate::new(200);
        match request.url.path() {
            ME_PATH => ok.set_body_json(organization(
                &format!("uuid-{}", tenant.label),
                &tenant.label,
            )),
            KEYS_PATH => ok
                .set_body_json(page(&tenant.keys, false))
                .set_delay(tenant.key_listing_delay),
            USERS_PATH => ok.set_body_json(page(
                &[user("user_01", "Ada", "ada@example.com", "admin")],
                false,
            )),
            USAGE_PATH => ok.set_body_json(usage_report(&[], None)),
            _ => ok.set_body_json(page(&[], false)),
        }
    }
}

/// How many requests to `path` carried `admin_key`.
async fn requests_with(server: &MockServer, admin_key: &str, path: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|request| request.url.path() == path)
        .filter(|request| {
            request
                .headers
                .get("x-api-key")
                .is_some_and(|value| value.as_bytes() == admin_key.as_bytes())
        })
        .count()
}

const PROD_KEY: &str = "sk-ant-admin01-PROD-1b2c3d";
const STAGING_KEY: &str = "sk-ant-admin01-STAGING-revoked-4e5f6a";

#[tokio::test]
async fn a_rejected_admin_key_fails_only_its_own_organization() {
    // Arrange: one fake for both organizations; it knows prod's key and rejects staging's.
    let server = Tenants::default()
        .with(PROD_KEY, "prod", &["k_prod_1", "k_prod_2"])
        .serve()
        .await;
    let scratch = Scratch::new("rejected");
    scratch.key_file("prod.key", PROD_KEY);
    scratch.key_file("staging.key", STAGING_KEY);
    let config = scratch.write_config(&config_text(&[
        entry("prod", "prod.key", &server.uri()),
        entry("staging", "staging.key", &server.uri()),
    ]));

    // Act
    let exporter = start_exporter(&config, &[]).await;
    let metrics = exporter
        .wait_for(
            "every source of both organizations",
            Duration::from_secs(10),
            |m| {
                ["prod", "staging"].iter().all(|org| {
                    SOURCES.iter().all(|source| {
                        m.value(
                            "anthropic_exporter_source_up",
                            &[("organization", org), ("source", source)],
                        )
                        .is_some()
                    })
                }) && up(m, "prod").is_some()
                    && up(m, "staging").is_some()
            },
        )
        .await;

    // Assert: staging is down for the right reason, and has no key series.
    assert_eq!(up(&metrics, "staging"), Some(0.0), "{}", metrics.excerpt());
    let staging_failures = |reason: &str| {
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[
                ("organization", "staging"),
                ("source", "api_keys"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(staging_failures("unauthorized"), Some(1.0));
    assert_eq!(staging_failures("server_error"), Some(0.0));
    assert_eq!(
        metrics.sum(
            "anthropic_exporter_poll_failures_total",
            &[("organization", "staging"), ("source", "api_keys")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "anthropic_exporter_api_requests_total",
            &[
                ("organization", "staging"),
                ("endpoint", "api_keys"),
                ("code", "401")
            ]
        ),
        Some(1.0),
        "a rejected key is not retried"
    );
    assert!(keys_of(&metrics, "staging").is_empty());
    assert!(
        metrics
            .find("anthropic_api_keys", &[("organization", "staging")])
            .is_empty()
    );
    // Prod is untouched: up, its keys exported, not one failure.
    assert_eq!(up(&metrics, "prod"), Some(1.0));
    assert_eq!(keys_of(&metrics, "prod"), ["k_prod_1", "k_prod_2"]);
    for source in SOURCES {
        assert_eq!(
            metrics.value(
                "anthropic_exporter_source_up",
                &[("organization", "prod"), ("source", source)]
            ),
            Some(1.0),
            "{source}"
        );
    }
    assert_eq!(
        metrics.sum(
            "anthropic_exporter_poll_failures_total",
            &[("organization", "prod")]
        ),
        0.0
    );
    assert_eq!(
        metrics.value(
            "anthropic_organization_info",
            &[("organization", "prod"), ("organization_name", "prod")]
        ),
        Some(1.0)
    );
    assert_eq!(
        exporter.get("/readyz").await.0,
        200,
        "one organization succeeded"
    );
    assert_eq!(requests_with(&server, STAGING_KEY, KEYS_PATH).await, 1);
}

#[tokio::test]
async fn a_failing_workspaces_source_does_not_hold_back_key_changes() {
    // Arrange: the first poll sees two workspaces and keys k1, k2; then the workspace listing fails
    // and k2 is replaced by k3 in the Dev workspace.
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    let workspaces = [
        workspace("wrkspc_prod", "Production"),
        workspace("wrkspc_dev", "Dev"),
    ];
    let (listing, phase) = Phases::new(vec![
        ResponseTemplate::new(200).set_body_json(page(&workspaces, false)),
        ResponseTemplate::new(500).set_body_json(error_body("api_error", "boom", "req_ws_500")),
    ]);
    Mock::given(method("GET"))
        .and(path(WORKSPACES_PATH))
        .respond_with(listing)
        .mount(&server)
        .await;
    let before = [
        KeyFixture::new("k1").in_workspace("wrkspc_prod").json(),
        KeyFixture::new("k2").in_workspace("wrkspc_dev").json(),
    ];
    let after = [
        KeyFixture::new("k1").in_workspace("wrkspc_prod").json(),
        KeyFixture::new("k3").in_workspace("wrkspc_dev").json(),
    ];
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(Phases::following(
            &phase,
            vec![
                ResponseTemplate::new(200).set_body_json(page(&before, false)),
                ResponseTemplate::new(200).set_body_json(page(&after, false)),
            ],
        ))
        .mount(&server)
        .await;
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_secs(1);
        config.poll.request_timeout = Duration::from_secs(1);
        config.poll.deadline = Duration::from_secs(1);
    })
    .await;
    let first = app
        .wait_for("the first poll with workspace names", |m| {
            m.up() == Some(1.0) && m.keys() == ["k1", "k2"]
        })
        .await;

    // Act
    phase.store(1, Ordering::SeqCst);
    let metrics = app
        .wait_for("new keys while workspaces fail", |m| {
            m.keys() == ["k1", "k3"]
                && m.value("anthropic_exporter_source_up", &[("source", "workspaces")]) == Some(0.0)
        })
        .await;

    // Assert
    let name_of = |metrics: &Metrics, key: &str| {
        metrics.find("anthropic_api_key_info", &[("api_key_id", key)])[0].labels["workspace_name"]
            .clone()
    };
    assert_eq!(name_of(&first, "k2"), "Dev");
    assert_eq!(metrics.up(), Some(1.0), "{}", metrics.excerpt());
    assert_eq!(
        name_of(&metrics, "k3"),
        "Dev",
        "names from the last good listing"
    );
    assert_eq!(name_of(&metrics, "k1"), "Production");
    assert_eq!(
        metrics.value(
            "anthropic_api_keys",
            &[("workspace_name", "Dev"), ("status", "active")]
        ),
        Some(1.0)
    );
    assert!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "workspaces"), ("reason", "server_error")]
        ) >= Some(1.0)
    );
    assert_eq!(
        metrics.failures("server_error"),
        0.0,
        "api_keys never failed"
    );
    assert_eq!(
        metrics.value("anthropic_exporter_source_up", &[("source", "api_keys")]),
        Some(1.0)
    );
}

const ALPHA_KEY: &str = "sk-ant-admin01-ALPHA-11aa";
const ALPHA_ROTATED_KEY: &str = "sk-ant-admin01-ALPHA-NEW-22bb";
const BETA_KEY: &str = "sk-ant-admin01-BETA-33cc";
const GAMMA_KEY: &str = "sk-ant-admin01-GAMMA-44dd";
const DELTA_KEY: &str = "sk-ant-admin01-DELTA-55ee";
const STABLE_KEY: &str = "sk-ant-admin01-STABLE-66ff";

/// The families a polled organization has series in; all of them must go with the organization.
const PER_ORGANIZATION_FAMILIES: [&str; 14] = [
    "anthropic_up",
    "anthropic_api_keys",
    "anthropic_api_key_info",
    "anthropic_api_key_created_timestamp_seconds",
    "anthropic_organization_info",
    "anthropic_organization_users",
    "anthropic_exporter_polls_total",
    "anthropic_exporter_poll_failures_total",
    "anthropic_exporter_source_up",
    "anthropic_exporter_source_interval_seconds",
    "anthropic_exporter_poll_interval_seconds",
    "anthropic_exporter_api_requests_total",
    "anthropic_exporter_last_successful_poll_timestamp_seconds",
    "anthropic_exporter_usage_lookback_seconds",
];

#[tokio::test]
async fn a_changed_config_file_adds_restarts_and_removes_organizations() {
    // Arrange: four organizations on one fake; a second fake for beta's new base URL. Polls happen
    // once an hour, so every request the fakes see comes from a (re)start.
    let fake = Tenants::default()
        .with(ALPHA_KEY, "alpha", &["a1"])
        .with(ALPHA_ROTATED_KEY, "alpha", &["a2"])
        .with(BETA_KEY, "beta", &["b1"])
        .with(GAMMA_KEY, "gamma", &["g1"])
        .with(DELTA_KEY, "delta", &["d1"])
        .with(STABLE_KEY, "stable", &["s1"])
        .serve()
        .await;
    let moved = Tenants::default()
        .with(BETA_KEY, "beta", &["b2"])
        .serve()
        .await;
    let scratch = Scratch::new("reload");
    for (file, key) in [
        ("alpha.key", ALPHA_KEY),
        ("alpha-rotated.key", ALPHA_ROTATED_KEY),
        ("beta.key", BETA_KEY),
        ("gamma.key", GAMMA_KEY),
        ("delta.key", DELTA_KEY),
        ("stable.key", STABLE_KEY),
    ] {
        scratch.key_file(file, key);
    }
    let config = scratch.write_config(&config_text(&[
        entry("alpha", "alpha.key", &fake.uri()),
        entry("beta", "beta.key", &fake.uri()),
        entry("gamma", "gamma.key", &fake.uri()),
        entry("stable", "stable.key", &fake.uri()),
    ]));
    let exporter = start_exporter(&config, &["--poll.interval", "1h"]).await;
    let initial = exporter
        .wait_for(
            "every organization's first poll",
            Duration::from_secs(10),
            |m| {
                ["alpha", "beta", "gamma", "stable"]
                    .iter()
                    .all(|org| up(m, org) == Some(1.0))
                    && m.value(
                        "anthropic_exporter_usage_lookback_seconds",
                        &[("organization", "gamma")],
                    )
                    .is_some()
            },
        )
        .await;

    // Act 1: delta added, alpha's key file and beta's base URL changed, gamma removed, stable as is.
    scratch.write_config(&config_text(&[
        entry("alpha", "alpha-rotated.key", &fake.uri()),
        entry("beta", "beta.key", &moved.uri()),
        entry("delta", "delta.key", &fake.uri()),
        entry("stable", "stable.key", &fake.uri()),
    ]));
    let changed = exporter
        .wait_for("the reloaded organizations", Duration::from_secs(10), |m| {
            up(m, "delta") == Some(1.0)
                && keys_of(m, "alpha") == ["a2"]
                && keys_of(m, "beta") == ["b2"]
                && !organizations_in(m).contains("gamma")
        })
        .await;

    // Act 2: a broken edit that would also remove delta, applied at once through the reload handle
    // (SIGHUP's path) rather than at the next check of the file.
    scratch.write_config(&format!(
        "{}    colour: blue\n",
        config_text(&[
            entry("alpha", "alpha-rotated.key", &fake.uri()),
            entry("beta", "beta.key", &moved.uri()),
            entry("stable", "stable.key", &fake.uri()),
        ])
    ));
    exporter.reload.reload();
    let broken = exporter
        .wait_for("the failed reload", Duration::from_secs(10), |m| {
            reload_successful(m) == Some(0.0)
        })
        .await;
    let requests_while_broken = requests_with(&fake, DELTA_KEY, KEYS_PATH).await;

    // Act 3: the good version of that edit.
    scratch.write_config(&config_text(&[
        entry("alpha", "alpha-rotated.key", &fake.uri()),
        entry("beta", "beta.key", &moved.uri()),
        entry("stable", "stable.key", &fake.uri()),
    ]));
    exporter.reload.reload();
    let fixed = exporter
        .wait_for("the good reload", Duration::from_secs(10), |m| {
            reload_successful(m) == Some(1.0) && !organizations_in(m).contains("delta")
        })
        .await;

    // Assert: the removed organization had series in every family, and has none left.
    let gamma_families = families_of(&initial, "gamma");
    for family in PER_ORGANIZATION_FAMILIES {
        assert!(
            gamma_families.contains(family),
            "{family}: {gamma_families:?}"
        );
    }
    assert_eq!(families_of(&changed, "gamma"), BTreeSet::new());
    assert_eq!(reload_successful(&initial), Some(1.0));
    assert_eq!(reload_successful(&changed), Some(1.0));
    assert!(reload_timestamp(&changed) > reload_timestamp(&initial));
    assert_eq!(
        organizations_in(&changed),
        set(&["alpha", "beta", "delta", "stable"])
    );
    assert_eq!(keys_of(&changed, "delta"), ["d1"]);
    assert_eq!(keys_of(&changed, "stable"), ["s1"]);
    // Restarts happened exactly where the configuration changed.
    assert_eq!(requests_with(&fake, ALPHA_KEY, KEYS_PATH).await, 1);
    assert_eq!(requests_with(&fake, ALPHA_ROTATED_KEY, KEYS_PATH).await, 1);
    assert_eq!(requests_with(&fake, BETA_KEY, KEYS_PATH).await, 1);
    assert_eq!(requests_with(&moved, BETA_KEY, KEYS_PATH).await, 1);
    assert_eq!(
        requests_with(&fake, STABLE_KEY, KEYS_PATH).await,
        1,
        "an unchanged organization is not restarted"
    );
    assert_eq!(requests_with(&fake, GAMMA_KEY, KEYS_PATH).await, 1);
    // The broken edit changed nothing.
    assert_eq!(
        organizations_in(&broken),
        set(&["alpha", "beta", "delta", "stable"])
    );
    assert_eq!(broken.key_samples(), changed.key_samples());
    assert_eq!(reload_timestamp(&broken), reload_timestamp(&changed));
    assert_eq!(requests_while_broken, 1, "delta was not restarted");
    // The good edit applied, and is stamped.
    assert!(reload_timestamp(&fixed) > reload_timestamp(&broken));
    assert_eq!(organizations_in(&fixed), set(&["alpha", "beta", "stable"]));
    assert_eq!(exporter.get("/readyz").await.0, 200);
}

#[tokio::test]
async fn the_reload_handle_rereads_the_config_file_as_sighup_does() {
    // Arrange: alpha runs; an edit adds beta before beta's key file exists, so that reload fails.
    let fake = Tenants::default()
        .with(ALPHA_KEY, "alpha", &["a1"])
        .with(BETA_KEY, "beta", &["b1"])
        .serve()
        .await;
    let scratch = Scratch::new("reload-handle");
    scratch.key_file("alpha.key", ALPHA_KEY);
    let config = scratch.write_config(&config_text(&[entry("alpha", "alpha.key", &fake.uri())]));
    let exporter = start_exporter(&config, &["--poll.interval", "1h"]).await;
    exporter
        .wait_for("alpha's first poll", Duration::from_secs(10), |m| {
            up(m, "alpha") == Some(1.0)
        })
        .await;
    scratch.write_config(&config_text(&[
        entry("alpha", "alpha.key", &fake.uri()),
        entry("beta", "beta.key", &fake.uri()),
    ]));
    let failed = exporter
        .wait_for(
            "the reload that misses beta's key",
            Duration::from_secs(10),
            |m| reload_successful(m) == Some(0.0),
        )
        .await;

    // Act: the key file appears; the config file itself does not change again, so only an explicit
    // reload can pick beta up.
    scratch.key_file("beta.key", BETA_KEY);
    exporter.reload.reload();
    let reloaded = exporter
        .wait_for("beta after the reload", Duration::from_secs(10), |m| {
            up(m, "beta") == Some(1.0) && reload_successful(m) == Some(1.0)
        })
        .await;

    // Assert
    assert!(!organizations_in(&failed).contains("beta"));
    assert_eq!(up(&failed, "alpha"), Some(1.0));
    assert_eq!(keys_of(&reloaded, "beta"), ["b1"]);
    assert!(reload_timestamp(&reloaded) > reload_timestamp(&failed));
    assert_eq!(
        requests_with(&fake, ALPHA_KEY, KEYS_PATH).await,
        1,
        "alpha did not change, so it was not restarted"
    );
}

/// What the counting fake saw of one request.
#[derive(Debug, Clone)]
struct SeenRequest {
    path: String,
    /// The organization, from its admin key.
    organization: String,
    at: Instant,
}

#[derive(Debug, Default)]
struct Seen {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    requests: Mutex<Vec<SeenRequest>>,
}

impl Seen {
    fn key_listings(&self) -> Vec<SeenRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.path == KEYS_PATH)
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone)]
struct CountingFake {
    seen: Arc<Seen>,
    delay: Duration,
}

/// The admin key of organization `name` on the counting fake.
fn load_key(name: &str) -> String {
    format!("sk-ant-admin01-load-{name}")
}

/// Leaves the in-flight count when the request is answered or abandoned.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fake Admin API for many organizations that records when each request started and how many were
/// in flight at once; every answer takes `delay`. Organization `name` has one key, `apikey_<name>`.
/// (wiremock's delays cannot tell how many requests overlap, hence a fake of its own.)
async fn start_counting_fake(delay: Duration) -> (String, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let router = axum::Router::new()
        .fallback(answer_counting)
        .with_state(CountingFake {
            seen: Arc::clone(&seen),
            delay,
        });
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), seen)
}

async fn answer_counting(
    axum::extract::State(fake): axum::extract::State<CountingFake>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::Json<Value> {
    let now = fake.seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(&fake.seen.in_flight);
    fake.seen.peak.fetch_max(now, Ordering::SeqCst);
    let organization = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .and_then(|key| key.strip_prefix("sk-ant-admin01-load-"))
        .unwrap_or("unknown")
        .to_owned();
    fake.seen.requests.lock().unwrap().push(SeenRequest {
        path: uri.path().to_owned(),
        organization: organization.clone(),
        at: Instant::now(),
    });
    tokio::time::sleep(fake.delay).await;
    axum::Json(match uri.path() {
        ME_PATH => organization_body(&organization),
        KEYS_PATH => page(
            &[KeyFixture::new(&format!("apikey_{organization}")).json()],
            false,
        ),
        USAGE_PATH => usage_report(&[], None),
        _ => page(&[], false),
    })
}

fn organization_body(name: &str) -> Value {
    json!({"id": format!("uuid-{name}"), "type": "organization", "name": name})
}

/// A config file of `count` organizations `org-000`…, each with its own key file, all on `base_url`.
fn many_organizations(scratch: &Scratch, count: usize, base_url: &str) -> (PathBuf, Vec<String>) {
    let names: Vec<String> = (0..count).map(|i| format!("org-{i:03}")).collect();
    let entries: Vec<String> = names
        .iter()
        .map(|name| {
            scratch.key_file(&format!("{name}.key"), &load_key(name));
            entry(name, &format!("{name}.key"), base_url)
        })
        .collect();
    (scratch.write_config(&config_text(&entries)), names)
}

#[tokio::test]
async fn two_hundred_organizations_never_exceed_the_request_limit() {
    // Arrange
    let delay = Duration::from_millis(2);
    let (base_url, seen) = start_counting_fake(delay).await;
    let scratch = Scratch::new("two-hundred");
    let (config, names) = many_organizations(&scratch, 200, &base_url);

    // Act
    let exporter = start_exporter(&config, &["--poll.concurrency", "4"]).await;
    // NB: readiness, not scrapes, while waiting: a scrape of 200 organizations is costly in a debug
    // build, and would compete with the polls for the CPU.
    exporter.wait_until_ready(Duration::from_secs(40)).await;
    let metrics = exporter.metrics().await;

    // Assert
    let up = metrics.find("anthropic_up", &[]);
    assert_eq!(up.len(), 200);
    assert!(
        up.iter().all(|sample| sample.value == 1.0),
        "{}",
        metrics.excerpt()
    );
    let peak = seen.peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "{peak} requests in flight at once");
    assert!(
        peak > 1,
        "requests never overlapped: the limit was not used"
    );
    let exported: BTreeSet<(String, String)> = metrics
        .find("anthropic_api_key_info", &[])
        .iter()
        .map(|sample| {
            let labels = &sample.labels;
            (labels["organization"].clone(), labels["api_key_id"].clone())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = names
        .iter()
        .map(|name| (name.clone(), format!("apikey_{name}")))
        .collect();
    assert_eq!(exported, expected);
    let listings = seen.key_listings();
    let polled: BTreeSet<&str> = listings.iter().map(|r| r.organization.as_str()).collect();
    assert_eq!(polled.len(), 200);
    let first = listings.iter().map(|r| r.at).min().unwrap();
    let last = listings.iter().map(|r| r.at).max().unwrap();
    // At most 4 at a time, each taking the delay: 200 listings cannot start within 49 delays.
    assert!(
        last - first >= delay * 49,
        "200 key listings started within {:?}",
        last - first
    );
}

#[tokio::test]
async fn later_polls_of_many_organizations_are_spread_over_the_interval() {
    // Arrange: a limit high enough not to be what spreads them.
    let (base_url, seen) = start_counting_fake(Duration::ZERO).await;
    let scratch = Scratch::new("staggered");
    let (config, names) = many_organizations(&scratch, 20, &base_url);
    let interval = Duration::from_secs(2);

    // Act
    let exporter = start_exporter(
        &config,
        &["--poll.interval", "2s", "--poll.concurrency", "100"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let by_organization = loop {
        let mut by_organization: HashMap<String, Vec<Instant>> = HashMap::new();
        for request in seen.key_listings() {
            by_organization
                .entry(request.organization)
                .or_default()
                .push(request.at);
        }
        if names.iter().all(|name| {
            by_organization
                .get(name)
                .is_some_and(|starts| starts.len() >= 2)
        }) {
            break by_organization;
        }
        assert!(Instant::now() < deadline, "{by_organization:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    exporter.stop().await;

    // Assert: each organization keeps its interval...
    for (name, starts) in &by_organization {
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            // NB: 0.9 of the interval by design; the rest is room for a busy machine.
            assert!(gap >= interval.mul_f64(0.75), "{name}: {gap:?}");
        }
    }
    // ...and their second polls do not come in one burst.
    let mut second: Vec<Instant> = by_organization.values().map(|starts| starts[1]).collect();
    second.sort();
    let span = *second.last().unwrap() - second[0];
    assert!(
        span >= Duration::from_secs(1),
        "second polls within {span:?}"
    );
    let busiest_window = second
        .iter()
        .map(|&start| {
            second
                .iter()
                .filter(|&&other| other >= start && other - start < Duration::from_millis(100))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest_window <= names.len() * 3 / 10,
        "{busiest_window} of {} second polls within 100 ms",
        names.len()
    );
}

const FAST_KEY: &str = "sk-ant-admin01-FAST-77aa";
const HANGING_KEY: &str = "sk-ant-admin01-HANGING-88bb";
const REVOKED_KEY: &str = "sk-ant-admin01-REVOKED-99cc";

#[tokio::test]
async fn readiness_names_the_organizations_still_waiting_for_their_first_poll() {
    // Arrange: one organization answers, one's key is revoked, one's key listing hangs for a while.
    let fake = Tenants::default()
        .with(FAST_KEY, "fast", &["f1"])
        .with_slow_key_listing(HANGING_KEY, "hanging", &["h1"], Duration::from_secs(4))
        .serve()
        .await;
    let scratch = Scratch::new("readiness");
    scratch.key_file("fast.key", FAST_KEY);
    scratch.key_file("hanging.key", HANGING_KEY);
    scratch.key_file("revoked.key", REVOKED_KEY);
    let config = scratch.write_config(&config_text(&[
        entry("fast", "fast.key", &fake.uri()),
        entry("hanging", "hanging.key", &fake.uri()),
        entry("revoked", "revoked.key", &fake.uri()),
    ]));
    let exporter = start_exporter(&config, &[]).await;

    // Act
    let finished = exporter
        .wait_for("the two quick first polls", Duration::from_secs(10), |m| {
            up(m, "fast").is_some() && up(m, "revoked").is_some()
        })
        .await;
    let (waiting_status, waiting_body) = exporter.get("/readyz").await;
    let (alias_status, _) = exporter.get("/-/ready").await;
    let (health_while_waiting, _) = exporter.get("/healthz").await;
    let still_hanging = up(&exporter.metrics().await, "hanging");
    exporter.wait_until_ready(Duration::from_secs(10)).await;
    let done = exporter.metrics().await;

    // Assert
    assert_eq!(
        still_hanging, None,
        "the hanging listing answered too early for this test"
    );
    assert_eq!(
        (up(&finished, "fast"), up(&finished, "revoked")),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(waiting_status, 503, "{waiting_body}");
    assert_eq!(alias_status, 503);
    assert_eq!(waiting_body.trim().lines().count(), 1, "{waiting_body}");
    assert!(waiting_body.contains("hanging"), "{waiting_body}");
    assert!(
        !waiting_body.contains("fast") && !waiting_body.contains("revoked"),
        "only the organization still waiting is named: {waiting_body}"
    );
    assert_eq!(health_while_waiting, 200);
    assert_eq!(up(&done, "hanging"), Some(1.0));
    assert_eq!(
        up(&done, "revoked"),
        Some(0.0),
        "ready although one organization fails"
    );
    assert_eq!(exporter.get("/-/ready").await.0, 200);
    assert_eq!(exporter.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn three_shards_poll_every_organization_exactly_once() {
    // Arrange: twelve organizations on one fake, three replicas with the same config file.
    let names: Vec<String> = (0..12).map(|i| format!("tenant-{i:02}")).collect();
    let key = |name: &str| format!("sk-ant-admin01-shard-{name}");
    let mut tenants = Tenants::default();
    let scratch = Scratch::new("shards");
    let mut entries = Vec::new();
    for name in &names {
        tenants = tenants.with(&key(name), name, &[&format!("apikey_{name}")]);
        scratch.key_file(&format!("{name}.key"), &key(name));
    }
    let fake = tenants.serve().await;
    for name in &names {
        entries.push(entry(name, &format!("{name}.key"), &fake.uri()));
    }
    let config = scratch.write_config(&config_text(&entries));

    // Act
    let mut polled_by = Vec::new();
    for index in 0..3u32 {
        let shard = Shard { index, total: 3 };
        let owned: BTreeSet<String> = names.iter().filter(|n| shard.owns(n)).cloned().collect();
        assert!(
            !owned.is_empty(),
            "shard {index} owns nothing; pick other names"
        );
        let exporter = start_exporter(
            &config,
            &["--shard", &index.to_string(), "--total-shards", "3"],
        )
        .await;
        let metrics = exporter
            .wait_for(&format!("shard {index}"), Duration::from_secs(10), |m| {
                owned.iter().all(|name| up(m, name) == Some(1.0))
            })
            .await;
        // Assert: a replica exports its own organizations and nothing of the others.
        assert_eq!(organizations_in(&metrics), owned, "shard {index}");
        assert_eq!(exporter.get("/readyz").await.0, 200, "shard {index}");
        polled_by.push(owned);
    }

    // Assert: together they cover every organization once, and the fake saw each listed once.
    let mut all: Vec<&String> = polled_by.iter().flatten().collect();
    all.sort();
    assert_eq!(all, names.iter().collect::<Vec<_>>());
    for name in &names {
        assert_eq!(
            requests_with(&fake, &key(name), KEYS_PATH).await,
            1,
            "{name}"
        );
    }
}
