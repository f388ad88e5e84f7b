//! Key hygiene from the users and usage sources: who created each key and whether they are still a
//! member, keys orphaned by a creator who left, when each key was last used and which were never used,
//! with failing sources keeping their last good data and the usage report polled within its rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anthropic_keys_exporter::config::{Config, Invocation};
use anthropic_keys_exporter::demo::{self, FakeAdminApi};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::exporter::{RunningExporter, test_config};
use crate::fixtures::*;
use crate::helpers::*;

fn source_up(metrics: &Metrics, source: &str) -> Option<f64> {
    metrics.value("anthropic_exporter_source_up", &[("source", source)])
}

/// The labels of a key's `anthropic_api_key_info`.
fn info(metrics: &Metrics, key: &str) -> BTreeMap<String, String> {
    let found = metrics.find("anthropic_api_key_info", &[("api_key_id", key)]);
    assert_eq!(found.len(), 1, "{key}: {}", metrics.text);
    found[0].labels.clone()
}

fn creator(metrics: &Metrics, key: &str) -> (String, String, String) {
    let labels = info(metrics, key);
    (
        labels["created_by_member"].clone(),
        labels["created_by_name"].clone(),
        labels["created_by_email"].clone(),
    )
}

fn owned(member: &str, name: &str, email: &str) -> (String, String, String) {
    (member.to_owned(), name.to_owned(), email.to_owned())
}

fn count(metrics: &Metrics, family: &str, workspace_id: &str, status: &str) -> Option<f64> {
    metrics.value(
        family,
        &[("workspace_id", workspace_id), ("status", status)],
    )
}

fn last_used(metrics: &Metrics, key: &str) -> Option<f64> {
    metrics.value(
        "anthropic_api_key_last_used_timestamp_seconds",
        &[("api_key_id", key)],
    )
}

/// Unix seconds as the usage report writes them.
fn at(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

#[tokio::test]
async fn members_are_read_over_every_page_and_counted_per_role() {
    // Arrange: five members over three pages; keys by a member on the last page, by a member, by
    // someone who is not a member, by a service account and by nobody recorded.
    let server = MockServer::start().await;
    let keys = [
        KeyFixture::new("k_alice")
            .in_workspace("wrkspc_prod")
            .created_by("user_alice", "user")
            .json(),
        KeyFixture::new("k_erin")
            .in_workspace("wrkspc_prod")
            .status("inactive")
            .created_by("user_erin", "user")
            .json(),
        KeyFixture::new("k_gone")
            .in_workspace("wrkspc_prod")
            .created_by("user_gone", "user")
            .json(),
        KeyFixture::new("k_ci")
            .in_workspace("wrkspc_prod")
            .created_by("svac_ci", "service_account")
            .json(),
        KeyFixture::new("k_nobody")
            .in_workspace("wrkspc_prod")
            .set("created_by", json!(null))
            .json(),
    ];
    mount_simple_organization(&server, &keys).await;
    mount_list_pages(
        &server,
        USERS_PATH,
        &[
            vec![
                user("user_alice", "Alice", "alice@example.com", "admin"),
                user("user_bob", "Bob", "bob@example.com", "developer"),
            ],
            vec![
                user("user_carol", "Carol", "carol@example.com", "developer"),
                user("user_dan", "Dan", "dan@example.com", "billing"),
            ],
            vec![user("user_erin", "Erin", "erin@example.com", "developer")],
        ],
    )
    .await;
    mount_usage(&server, &[]).await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app
        .wait_for("keys and members", |m| {
            m.up() == Some(1.0) && source_up(m, "users") == Some(1.0)
        })
        .await;

    // Assert
    let role = |role: &str| metrics.value("anthropic_organization_users", &[("role", role)]);
    assert_eq!(role("admin"), Some(1.0));
    assert_eq!(role("developer"), Some(3.0));
    assert_eq!(role("billing"), Some(1.0));
    assert_eq!(metrics.sum("anthropic_organization_users", &[]), 5.0);
    assert_eq!(
        creator(&metrics, "k_alice"),
        owned("true", "Alice", "alice@example.com")
    );
    assert_eq!(
        creator(&metrics, "k_erin"),
        owned("true", "Erin", "erin@example.com"),
        "the last page was read"
    );
    assert_eq!(creator(&metrics, "k_gone"), owned("false", "", ""));
    assert_eq!(creator(&metrics, "k_ci"), owned("unknown", "", ""));
    assert_eq!(creator(&metrics, "k_nobody"), owned("unknown", "", ""));
    assert_eq!(info(&metrics, "k_nobody")["created_by_id"], "");
    assert_eq!(info(&metrics, "k_ci")["created_by_type"], "service_account");
    let orphaned = |status| {
        count(
            &metrics,
            "anthropic_api_keys_orphaned",
            "wrkspc_prod",
            status,
        )
    };
    assert_eq!(orphaned("active"), Some(1.0));
    assert_eq!(orphaned("inactive"), Some(0.0));
    assert_eq!(orphaned("expired"), Some(0.0), "zero-filled");
    assert_eq!(metrics.sum("anthropic_api_keys_orphaned", &[]), 1.0);
    // Each page was asked for exactly once, with the previous page's last id (checked on drop).
}

fn users_page(users: &[Value]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(page(users, false))
}

fn alice() -> Value {
    user("user_alice", "Alice", "alice@example.com", "admin")
}

fn bob() -> Value {
    user("user_bob", "Bob", "bob@example.com", "developer")
}

#[tokio::test]
async fn a_creator_who_leaves_orphans_their_keys_and_a_failing_listing_changes_nothing() {
    // Arrange: Bob is a member, then leaves, then the users listing fails.
    let server = MockServer::start().await;
    let keys = [
        KeyFixture::new("k_alice")
            .created_by("user_alice", "user")
            .json(),
        KeyFixture::new("k_bob")
            .created_by("user_bob", "user")
            .json(),
    ];
    mount_simple_organization(&server, &keys).await;
    mount_usage(&server, &[]).await;
    let (users, phase) = Phases::new(vec![
        users_page(&[alice(), bob()]),
        users_page(&[alice()]),
        ResponseTemplate::new(500).set_body_json(error_body("api_error", "boom", "req_u")),
    ]);
    Mock::given(method("GET"))
        .and(path(USERS_PATH))
        .respond_with(users)
        .mount(&server)
        .await;
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_secs(1);
        config.users.interval = Duration::from_secs(1);
    })
    .await;
    let member = app
        .wait_for("Bob as a member", |m| {
            m.up() == Some(1.0) && source_up(m, "users") == Some(1.0)
        })
        .await;

    // Act 1: Bob leaves.
    phase.store(1, std::sync::atomic::Ordering::SeqCst);
    let left = app
        .wait_for("Bob gone", |m| creator(m, "k_bob").0 == "false")
        .await;

    // Act 2: the listing fails; every scrape until two failed polls must look the same.
    phase.store(2, std::sync::atomic::Ordering::SeqCst);
    let polls_before = left
        .value("anthropic_exporter_polls_total", &[("source", "api_keys")])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let failing = loop {
        let metrics = app.metrics().await;
        assert_eq!(
            creator(&metrics, "k_bob"),
            owned("false", "", ""),
            "flapped"
        );
        assert_eq!(
            creator(&metrics, "k_alice"),
            owned("true", "Alice", "alice@example.com"),
            "the last good listing stays"
        );
        assert_eq!(
            count(&metrics, "anthropic_api_keys_orphaned", "default", "active"),
            Some(1.0),
            "orphaned flapped"
        );
        assert_eq!(metrics.up(), Some(1.0));
        let failures = metrics
            .value(
                "anthropic_exporter_poll_failures_total",
                &[("source", "users"), ("reason", "server_error")],
            )
            .unwrap();
        if failures >= 2.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{}", metrics.excerpt());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Assert
    assert_eq!(
        creator(&member, "k_bob"),
        owned("true", "Bob", "bob@example.com")
    );
    assert_eq!(
        count(&member, "anthropic_api_keys_orphaned", "default", "active"),
        Some(0.0)
    );
    assert_eq!(
        left.value("anthropic_organization_users", &[("role", "developer")]),
        None,
        "Bob was the only developer"
    );
    assert_eq!(
        left.value("anthropic_organization_users", &[("role", "admin")]),
        Some(1.0)
    );
    assert_eq!(info(&left, "k_bob")["created_by_id"], "user_bob");
    assert_eq!(source_up(&failing, "users"), Some(0.0));
    assert_eq!(source_up(&failing, "api_keys"), Some(1.0));
    assert_eq!(
        failing.value("anthropic_organization_users", &[("role", "admin")]),
        Some(1.0)
    );
    assert!(
        failing
            .value("anthropic_exporter_polls_total", &[("source", "api_keys")])
            .unwrap()
            > polls_before,
        "the key inventory kept being polled"
    );
}

#[tokio::test]
async fn without_creator_labels_names_and_emails_go_but_membership_stays() {
    // Arrange
    let server = MockServer::start().await;
    let keys = [
        KeyFixture::new("k_alice")
            .created_by("user_alice", "user")
            .json(),
        KeyFixture::new("k_bob")
            .created_by("user_bob", "user")
            .json(),
    ];
    mount_simple_organization(&server, &keys).await;
    mount_users(&server, &[alice()]).await;
    mount_usage(&server, &[]).await;
    let parsed = Config::parse(
        ["anthropic-keys-exporter", "--users.creator-labels=false"],
        |name| (name == "ANTHROPIC_ADMIN_KEY").then(|| ADMIN_KEY.to_owned()),
    )
    .unwrap();
    let Invocation::Run(parsed) = parsed else {
        panic!("unexpected help output")
    };

    // Act
    let app = spawn_app_with(server, |config| config.users = parsed.users).await;
    let metrics = app
        .wait_for("keys and members", |m| {
            m.up() == Some(1.0) && source_up(m, "users") == Some(1.0)
        })
        .await;

    // Assert
    assert!(!parsed.users.creator_labels);
    assert_eq!(creator(&metrics, "k_alice"), owned("true", "", ""));
    assert_eq!(creator(&metrics, "k_bob"), owned("false", "", ""));
    assert_eq!(info(&metrics, "k_alice")["created_by_id"], "user_alice");
    assert_eq!(
        count(&metrics, "anthropic_api_keys_orphaned", "default", "active"),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("anthropic_organization_users", &[("role", "admin")]),
        Some(1.0)
    );
    assert!(
        !metrics.text.contains("alice@example.com"),
        "{}",
        metrics.text
    );
    assert!(!metrics.text.contains("Alice"), "{}", metrics.text);
}

#[tokio::test]
async fn membership_is_unknown_until_the_users_listing_succeeds_once() {
    // Arrange: the users listing is refused from the start.
    let server = MockServer::start().await;
    let keys = [KeyFixture::new("k_bob")
        .created_by("user_bob", "user")
        .json()];
    mount_simple_organization(&server, &keys).await;
    mount_usage(&server, &[]).await;
    Mock::given(method("GET"))
        .and(path(USERS_PATH))
        .respond_with(ResponseTemplate::new(403).set_body_json(error_body(
            "permission_error",
            "no",
            "req_403",
        )))
        .mount(&server)
        .await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app
        .wait_for("keys, and a refused users listing", |m| {
            m.up() == Some(1.0) && source_up(m, "users") == Some(0.0)
        })
        .await;

    // Assert: nobody is claimed to have left without a listing.
    assert_eq!(creator(&metrics, "k_bob"), owned("unknown", "", ""));
    assert_eq!(info(&metrics, "k_bob")["created_by_id"], "user_bob");
    assert!(metrics.find("anthropic_api_keys_orphaned", &[]).is_empty());
    assert!(metrics.find("anthropic_organization_users", &[]).is_empty());
    assert_eq!(
        metrics.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "users"), ("reason", "forbidden")]
        ),
        Some(1.0)
    );
}

/// One page of the usage report, for requests with `bucket_width` and the `page` token (none for the
/// first page), answered exactly once.
async fn mount_usage_page(
    server: &MockServer,
    bucket_width: &str,
    token: Option<&str>,
    buckets: &[Value],
    next_page: Option<&str>,
) {
    let limit = if bucket_width == "1d" { "31" } else { "168" };
    let mock = Mock::given(method("GET"))
        .and(path(USAGE_PATH))
        .and(query_param("bucket_width", bucket_width))
        .and(query_param("group_by[]", "api_key_id"))
        .and(query_param("limit", limit));
    let mock = match token {
        Some(token) => mock.and(query_param("page", token)),
        None => mock.and(query_param_is_missing("page")),
    };
    mock.respond_with(ResponseTemplate::new(200).set_body_json(usage_report(buckets, next_page)))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn last_use_comes_from_every_page_of_the_usage_report() {
    // Arrange: daily and hourly reports of two pages each. A key used in the last hour, one used 20
    // days ago, one never used, one with zero tokens only; usage by a key not in the inventory and by
    // the Workbench (no key).
    let now = unix_now();
    let (hour, day) = (now - now.rem_euclid(HOUR), now - now.rem_euclid(DAY));
    let server = MockServer::start().await;
    let keys = [
        KeyFixture::new("k_today").json(),
        KeyFixture::new("k_old").json(),
        KeyFixture::new("k_never").json(),
        KeyFixture::new("apikey_idle").status("archived").json(),
    ];
    mount_simple_organization(&server, &keys).await;
    mount_users(&server, &[]).await;
    let daily = |start: i64, used: &[&str]| usage_bucket(&at(start), &at(start + DAY), used);
    let hourly = |start: i64, used: &[&str]| usage_bucket(&at(start), &at(start + HOUR), used);
    mount_usage_page(
        &server,
        "1d",
        None,
        &[
            daily(day - 20 * DAY, &["k_old", "apikey_unlisted"]),
            daily(day - 10 * DAY, &[]),
        ],
        Some("daily-2"),
    )
    .await;
    mount_usage_page(
        &server,
        "1d",
        Some("daily-2"),
        &[daily(day, &["k_today"])],
        None,
    )
    .await;
    mount_usage_page(
        &server,
        "1h",
        None,
        &[hourly(hour - 3 * HOUR, &[])],
        Some("hourly-2"),
    )
    .await;
    mount_usage_page(
        &server,
        "1h",
        Some("hourly-2"),
        &[hourly(hour - HOUR, &["k_today"])],
        None,
    )
    .await;

    // Act
    let app = spawn_app(server).await;
    let metrics = app
        .wait_for("keys and usage", |m| {
            m.up() == Some(1.0) && source_up(m, "usage").is_some()
        })
        .await;

    // Assert
    assert_eq!(
        source_up(&metrics, "usage"),
        Some(1.0),
        "{}",
        metrics.excerpt()
    );
    assert_eq!(
        last_used(&metrics, "k_today"),
        Some(hour as f64),
        "the end of the hourly bucket, not of today's daily one"
    );
    assert_eq!(last_used(&metrics, "k_old"), Some((day - 19 * DAY) as f64));
    assert_eq!(last_used(&metrics, "k_never"), None);
    assert_eq!(
        last_used(&metrics, "apikey_idle"),
        None,
        "zero tokens are no use"
    );
    assert!(
        !metrics.text.contains("apikey_unlisted"),
        "a key the inventory does not list is ignored"
    );
    assert_eq!(
        metrics
            .find("anthropic_api_key_last_used_timestamp_seconds", &[])
            .len(),
        2,
        "the Workbench has no key"
    );
    let unused = |status| count(&metrics, "anthropic_api_keys_unused", "default", status);
    assert_eq!(unused("active"), Some(1.0));
    assert_eq!(unused("archived"), Some(1.0));
    assert_eq!(unused("inactive"), Some(0.0), "zero-filled");
    assert_eq!(
        count(
            &metrics,
            "anthropic_api_keys_unused",
            "wrkspc_prod",
            "active"
        ),
        Some(0.0)
    );
    assert_eq!(
        metrics.value("anthropic_exporter_usage_lookback_seconds", &[]),
        Some(30.0 * DAY as f64)
    );
    let requests = app.admin_api.received_requests().await.unwrap();
    let daily_start = requests
        .iter()
        .find(|r| r.url.path() == USAGE_PATH && r.url.query().unwrap_or("").contains("1d"))
        .and_then(|r| r.url.query_pairs().find(|(k, _)| k == "starting_at"))
        .map(|(_, v)| {
            OffsetDateTime::parse(&v, &Rfc3339)
                .unwrap()
                .unix_timestamp()
        })
        .expect("a daily request with starting_at");
    assert_eq!(
        daily_start.rem_euclid(DAY),
        0,
        "daily buckets start at midnight"
    );
    assert!(
        (30 * DAY..=31 * DAY).contains(&(now - daily_start)),
        "the lookback: {}",
        now - daily_start
    );
    // Every page was asked for exactly once, with the token of the previous one (checked on drop).
}

#[tokio::test]
async fn a_failing_usage_report_keeps_last_use_while_the_keys_stay_current() {
    // Arrange: k1 used in the last hour; then the report fails and k2 is replaced by k3.
    let now = unix_now();
    let hour = now - now.rem_euclid(HOUR);
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[]).await;
    mount_users(&server, &[]).await;
    let (usage, phase) = Phases::new(vec![
        ResponseTemplate::new(200).set_body_json(usage_report(
            &[usage_bucket(&at(hour - HOUR), &at(hour), &["k1"])],
            None,
        )),
        ResponseTemplate::new(500).set_body_json(error_body("api_error", "boom", "req_usage")),
    ]);
    Mock::given(method("GET"))
        .and(path(USAGE_PATH))
        .respond_with(usage)
        .mount(&server)
        .await;
    let before = [KeyFixture::new("k1").json(), KeyFixture::new("k2").json()];
    let after = [KeyFixture::new("k1").json(), KeyFixture::new("k3").json()];
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
        // NB: below the 1m the flag allows, so that the test sees a second report within seconds.
        config.usage.interval = Duration::from_secs(1);
    })
    .await;
    let good = app
        .wait_for("the first usage report", |m| {
            m.up() == Some(1.0) && source_up(m, "usage") == Some(1.0)
        })
        .await;

    // Act
    phase.store(1, std::sync::atomic::Ordering::SeqCst);
    let failing = app
        .wait_for("new keys while the report fails", |m| {
            m.keys() == ["k1", "k3"] && source_up(m, "usage") == Some(0.0)
        })
        .await;

    // Assert
    assert_eq!(last_used(&good, "k1"), Some(hour as f64));
    assert_eq!(
        count(&good, "anthropic_api_keys_unused", "default", "active"),
        Some(1.0)
    );
    assert_eq!(failing.up(), Some(1.0), "{}", failing.excerpt());
    assert_eq!(
        last_used(&failing, "k1"),
        Some(hour as f64),
        "from the last good report"
    );
    assert_eq!(last_used(&failing, "k3"), None);
    assert_eq!(
        count(&failing, "anthropic_api_keys_unused", "default", "active"),
        Some(1.0),
        "k3 is not in the last good report"
    );
    assert!(!failing.text.contains("\"k2\""), "k2 is gone");
    let last_success = |m: &Metrics| {
        m.value(
            "anthropic_exporter_source_last_success_timestamp_seconds",
            &[("source", "usage")],
        )
    };
    assert_eq!(last_success(&failing), last_success(&good));
    assert!(
        failing.value(
            "anthropic_exporter_poll_failures_total",
            &[("source", "usage"), ("reason", "server_error")]
        ) >= Some(1.0)
    );
}

#[tokio::test]
async fn no_key_counts_as_unused_before_the_usage_report_was_read() {
    // Arrange: the report fails at first, then answers with k1 used.
    let now = unix_now();
    let hour = now - now.rem_euclid(HOUR);
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    mount_users(&server, &[]).await;
    let (usage, phase) = Phases::new(vec![
        ResponseTemplate::new(503).set_body_json(error_body("api_error", "down", "req_503")),
        ResponseTemplate::new(200).set_body_json(usage_report(
            &[usage_bucket(&at(hour - HOUR), &at(hour), &["k1"])],
            None,
        )),
    ]);
    Mock::given(method("GET"))
        .and(path(USAGE_PATH))
        .respond_with(usage)
        .mount(&server)
        .await;
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_secs(1);
        // NB: below the 1m the flag allows, so that the test sees a second report within seconds.
        config.usage.interval = Duration::from_secs(1);
    })
    .await;

    // Act
    let without = app
        .wait_for("keys, and a failed report", |m| {
            m.up() == Some(1.0) && source_up(m, "usage") == Some(0.0)
        })
        .await;
    phase.store(1, std::sync::atomic::Ordering::SeqCst);
    let with = app
        .wait_for("a good report", |m| source_up(m, "usage") == Some(1.0))
        .await;

    // Assert
    for family in [
        "anthropic_api_keys_unused",
        "anthropic_api_key_last_used_timestamp_seconds",
        "anthropic_exporter_usage_lookback_seconds",
    ] {
        assert!(without.find(family, &[]).is_empty(), "{family}");
        assert!(!with.find(family, &[]).is_empty(), "{family}");
    }
    assert_eq!(without.keys(), ["k1"]);
    assert_eq!(last_used(&with, "k1"), Some(hour as f64));
    assert_eq!(
        count(&with, "anthropic_api_keys_unused", "default", "active"),
        Some(0.0)
    );
}

#[test]
fn the_usage_interval_cannot_be_set_below_a_minute() {
    let parse = |interval: &str| {
        Config::parse(
            ["anthropic-keys-exporter", "--usage.interval", interval],
            |name| (name == "ANTHROPIC_ADMIN_KEY").then(|| ADMIN_KEY.to_owned()),
        )
    };
    for too_short in ["59s", "30s", "1s"] {
        let message = parse(too_short).unwrap_err().to_string();
        assert!(message.contains("--usage.interval"), "{message}");
        assert!(
            message.contains("ANTHROPIC_KEYS_EXPORTER_USAGE_INTERVAL"),
            "{message}"
        );
        assert!(message.contains("1m"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
    let Ok(Invocation::Run(config)) = parse("1m") else {
        panic!("1m is accepted")
    };
    assert_eq!(config.usage.interval, Duration::from_secs(60));
}

#[tokio::test]
async fn at_the_minimum_interval_the_usage_report_is_read_once_a_minute() {
    // Arrange: the key inventory every second, the usage report at the minimum the flag allows.
    let Ok(Invocation::Run(minimum)) = Config::parse(
        ["anthropic-keys-exporter", "--usage.interval", "1m"],
        |name| (name == "ANTHROPIC_ADMIN_KEY").then(|| ADMIN_KEY.to_owned()),
    ) else {
        panic!("1m is accepted")
    };
    let server = MockServer::start().await;
    mount_simple_organization(&server, &[KeyFixture::new("k1").json()]).await;
    mount_users(&server, &[]).await;
    mount_usage(&server, &[]).await;
    let app = spawn_app_with(server, |config| {
        config.poll.interval = Duration::from_secs(1);
        config.usage = minimum.usage;
    })
    .await;

    // Act: four key listings take three seconds and more.
    app.wait_for_polls(4.0).await;

    // Assert: one report (a daily and an hourly page) and no other.
    let requests = app.admin_api.received_requests().await.unwrap();
    let count = |path: &str| requests.iter().filter(|r| r.url.path() == path).count();
    assert!(count(KEYS_PATH) >= 4);
    assert_eq!(
        count(USAGE_PATH),
        2,
        "{:?}",
        requests
            .iter()
            .map(|r| r.url.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_demo_organization_shows_creators_membership_and_last_use() {
    // Arrange
    let now = OffsetDateTime::now_utc();
    let stop = CancellationToken::new();
    let fake = FakeAdminApi::start(demo::demo_dataset(now), stop.child_token())
        .await
        .unwrap();
    let config = test_config(fake.base_url().unwrap().as_str(), demo::DEMO_ADMIN_KEY);
    let exporter = RunningExporter::start(config).await;
    let http = reqwest::Client::new();

    // Act
    let metrics = exporter
        .wait_for(
            &http,
            "every source of the demo organization",
            |m| {
                ["organization", "workspaces", "api_keys", "users", "usage"]
                    .iter()
                    .all(|source| source_up(m, source) == Some(1.0))
                    && m.up() == Some(1.0)
            },
            Metrics::excerpt,
        )
        .await;
    stop.cancel();

    // Assert: creators (Alice is a member, Bob left, CI is a service account).
    let key = |index: usize| format!("apikey_demo_{index:03}");
    assert_eq!(
        creator(&metrics, &key(0)),
        owned("true", "Alice Martin", "alice@acme.example")
    );
    assert_eq!(creator(&metrics, &key(1)), owned("false", "", ""));
    assert_eq!(info(&metrics, &key(1))["created_by_id"], "user_demo_bob");
    assert_eq!(creator(&metrics, &key(5)), owned("unknown", "", ""));
    assert_eq!(
        info(&metrics, &key(5))["created_by_type"],
        "service_account"
    );
    assert_eq!(creator(&metrics, &key(3)), owned("unknown", "", ""));
    // Bob's seven keys are orphaned, wherever they are.
    assert_eq!(metrics.sum("anthropic_api_keys_orphaned", &[]), 7.0);
    assert_eq!(
        count(
            &metrics,
            "anthropic_api_keys_orphaned",
            "wrkspc_demo_prod",
            "active"
        ),
        Some(1.0)
    );
    assert_eq!(
        count(&metrics, "anthropic_api_keys_orphaned", "default", "active"),
        Some(1.0)
    );
    let role = |role: &str| metrics.value("anthropic_organization_users", &[("role", role)]);
    assert_eq!(
        (role("admin"), role("developer"), role("billing")),
        (Some(1.0), Some(2.0), Some(1.0))
    );
    // Last use: an hour ago is precise to the hour; 20 days ago to the day.
    let unix = now.unix_timestamp();
    let hour_of = |at: i64| at - at.rem_euclid(HOUR);
    assert_eq!(
        last_used(&metrics, &key(0)),
        Some((hour_of(unix - HOUR) + HOUR) as f64)
    );
    let day_of = |at: i64| at - at.rem_euclid(DAY);
    assert_eq!(
        last_used(&metrics, &key(3)),
        Some((day_of(unix - 20 * DAY) + DAY) as f64)
    );
    let mut used: Vec<String> = metrics
        .find("anthropic_api_key_last_used_timestamp_seconds", &[])
        .iter()
        .map(|sample| sample.labels["api_key_id"].clone())
        .collect();
    used.sort();
    let mut expected: Vec<String> = [0, 1, 2, 3, 5, 9, 11, 16]
        .into_iter()
        .chain(17..29)
        .map(key)
        .collect();
    expected.sort();
    assert_eq!(used, expected);
    assert_eq!(metrics.sum("anthropic_api_keys_unused", &[]), 9.0);
    assert_eq!(
        count(
            &metrics,
            "anthropic_api_keys_unused",
            "wrkspc_demo_prod",
            "expired"
        ),
        Some(1.0),
        "partner-integration was never used"
    );
    exporter.stop().await.unwrap();
}
