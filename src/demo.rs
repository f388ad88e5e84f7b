//! A small, faithful imitation of the Admin API's list endpoints, serving a fixed data set on loopback.
//!
//! `--demo` runs the exporter against it with a simulated organization, so a newcomer sees real metrics
//! with no key and no network; the tests use it as the fake upstream for end-to-end runs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use url::Url;

/// The admin key the demo organization accepts. It is not a secret: it opens nothing but the demo.
pub const DEMO_ADMIN_KEY: &str = "sk-ant-admin01-demo-not-a-real-key";

/// What the fake Admin API serves: raw JSON objects, exactly as the real API would send them.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub admin_key: String,
    pub organization: Value,
    pub workspaces: Vec<Value>,
    pub api_keys: Vec<Value>,
    pub users: Vec<Value>,
    /// What the usage report is computed from.
    pub usage: Vec<UsageEvent>,
}

/// Tokens one key (or the Console Workbench, without a key) used at one moment.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub api_key_id: Option<String>,
    pub at: OffsetDateTime,
    pub output_tokens: u64,
}

/// A running fake Admin API.
#[derive(Debug)]
pub struct FakeAdminApi {
    address: SocketAddr,
}

impl FakeAdminApi {
    /// Serves `dataset` on `127.0.0.1` at a free port until `shutdown` is cancelled.
    pub async fn start(dataset: Dataset, shutdown: CancellationToken) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let router = Router::new()
            .route("/v1/organizations/me", get(organization))
            .route("/v1/organizations/workspaces", get(workspaces))
            .route("/v1/organizations/api_keys", get(api_keys))
            .route("/v1/organizations/users", get(users))
            .route("/v1/organizations/usage_report/messages", get(usage_report))
            .with_state(Arc::new(dataset));
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(error = %error, "The fake Admin API stopped.");
            }
        });
        Ok(Self { address })
    }

    pub fn base_url(&self) -> Result<Url, url::ParseError> {
        Url::parse(&format!("http://{}", self.address))
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after_id: Option<String>,
}

fn is_authorized(dataset: &Dataset, headers: &HeaderMap) -> bool {
    headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        == Some(dataset.admin_key.as_str())
}

fn unauthorized() -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": "req_demo_unauthorized"
    });
    (
        StatusCode::UNAUTHORIZED,
        [("request-id", "req_demo_unauthorized")],
        Json(body),
    )
        .into_response()
}

async fn organization(State(dataset): State<Arc<Dataset>>, headers: HeaderMap) -> Response {
    if !is_authorized(&dataset, &headers) {
        return unauthorized();
    }
    Json(dataset.organization.clone()).into_response()
}

async fn workspaces(
    State(dataset): State<Arc<Dataset>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    authorized_page(&dataset, &headers, &query, &dataset.workspaces)
}

async fn api_keys(
    State(dataset): State<Arc<Dataset>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    authorized_page(&dataset, &headers, &query, &dataset.api_keys)
}

async fn users(
    State(dataset): State<Arc<Dataset>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    authorized_page(&dataset, &headers, &query, &dataset.users)
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    starting_at: String,
    bucket_width: Option<String>,
    limit: Option<i64>,
    page: Option<String>,
}

/// The messages usage report grouped by `api_key_id`, as the API documents it: buckets from
/// `starting_at` (or from the `page` token) up to now, at most `limit` per page, `next_page` while
/// more remain.
async fn usage_report(
    State(dataset): State<Arc<Dataset>>,
    headers: HeaderMap,
    Query(query): Query<ReportQuery>,
) -> Response {
    if !is_authorized(&dataset, &headers) {
        return unauthorized();
    }
    let (width, default_limit, max_limit) = match query.bucket_width.as_deref().unwrap_or("1d") {
        "1d" => (Duration::days(1), 7, 31),
        "1h" => (Duration::hours(1), 24, 168),
        _ => return bad_request("bucket_width must be 1d or 1h"),
    };
    let limit = query.limit.unwrap_or(default_limit).clamp(1, max_limit);
    let start = match query.page.as_deref() {
        Some(token) => token
            .strip_prefix("page_")
            .and_then(|seconds| seconds.parse::<i64>().ok())
            .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok()),
        None => OffsetDateTime::parse(&query.starting_at, &Rfc3339).ok(),
    };
    let Some(start) = start else {
        return bad_request("invalid starting_at or page");
    };
    let now = OffsetDateTime::now_utc();
    let mut bucket_start = snap(start, width);
    let mut data = Vec::new();
    while bucket_start < now && (data.len() as i64) < limit {
        let bucket_end = bucket_start + width;
        let mut per_key: std::collections::BTreeMap<Option<String>, u64> = Default::default();
        for event in &dataset.usage {
            if event.at >= bucket_start && event.at < bucket_end {
                *per_key.entry(event.api_key_id.clone()).or_default() += event.output_tokens;
            }
        }
        let results: Vec<Value> = per_key
            .into_iter()
            .map(|(api_key_id, tokens)| {
                json!({"api_key_id": api_key_id, "workspace_id": null, "model": null, "service_tier": null,
                       "context_window": null, "uncached_input_tokens": tokens * 3,
                       "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                       "cache_read_input_tokens": 0, "output_tokens": tokens,
                       "server_tool_use": {"web_search_requests": 0}})
            })
            .collect();
        data.push(json!({"starting_at": at_text(bucket_start), "ending_at": at_text(bucket_end), "results": results}));
        bucket_start = bucket_end;
    }
    let has_more = bucket_start < now;
    Json(json!({
        "data": data,
        "has_more": has_more,
        "next_page": has_more.then(|| format!("page_{}", bucket_start.unix_timestamp())),
    }))
    .into_response()
}

/// Buckets snap to the start of the hour or day in UTC.
fn snap(at: OffsetDateTime, width: Duration) -> OffsetDateTime {
    let seconds = width.whole_seconds();
    let snapped = at.unix_timestamp().div_euclid(seconds) * seconds;
    OffsetDateTime::from_unix_timestamp(snapped).unwrap_or(at)
}

fn at_text(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn bad_request(message: &str) -> Response {
    let body =
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn authorized_page(
    dataset: &Dataset,
    headers: &HeaderMap,
    query: &PageQuery,
    items: &[Value],
) -> Response {
    if !is_authorized(dataset, headers) {
        return unauthorized();
    }
    page(items, query)
}

/// Cursor pagination as the API documents it: `limit` 1–1000 (default 20), `after_id`, and an envelope
/// with `first_id`, `last_id` and `has_more`.
fn page(items: &[Value], query: &PageQuery) -> Response {
    let limit = query.limit.unwrap_or(20).clamp(1, 1000);
    let start = match &query.after_id {
        Some(after_id) => match items
            .iter()
            .position(|item| item["id"] == after_id.as_str())
        {
            Some(index) => index + 1,
            None => {
                let body = json!({"type": "error", "error": {"type": "invalid_request_error",
                    "message": "after_id does not match any object"}});
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
        },
        None => 0,
    };
    let data: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + data.len() < items.len();
    Json(json!({
        "data": data,
        "first_id": data.first().map(|item| item["id"].clone()),
        "last_id": data.last().map(|item| item["id"].clone()),
        "has_more": has_more,
    }))
    .into_response()
}

/// The simulated organization of `--demo`: several workspaces (one archived, the Default one), keys of
/// every status, some expiring within days, short-lived CI keys, keys that never expire, and names in
/// several scripts. Times are relative to `now`, so expiry alerts look the same whenever it runs.
pub fn demo_dataset(now: OffsetDateTime) -> Dataset {
    let at = |offset: Duration| (now + offset).format(&Rfc3339).unwrap_or_default();
    let workspace = |id: &str, name: &str, archived: bool| {
        json!({
            "id": id, "type": "workspace", "name": name, "display_color": "#6C5BB9",
            "created_at": at(Duration::days(-720)),
            "archived_at": if archived { Value::from(at(Duration::days(-30))) } else { Value::Null },
        })
    };
    let workspaces = vec![
        workspace("wrkspc_demo_data", "Équipe données", false),
        workspace("wrkspc_demo_legacy", "Legacy", true),
        workspace("wrkspc_demo_prod", "Production", false),
        workspace("wrkspc_demo_research", "研究開発", false),
        workspace("wrkspc_demo_staging", "Staging", false),
    ];

    struct DemoKey {
        name: String,
        workspace: Option<&'static str>,
        status: &'static str,
        created: Duration,
        expires: Option<Duration>,
        creator: Option<(&'static str, &'static str)>,
    }
    let alice = Some(("user_demo_alice", "user"));
    let bob = Some(("user_demo_bob", "user"));
    let ci = Some(("svac_demo_ci", "service_account"));
    let key = |name: &str, workspace, status, created, expires, creator| DemoKey {
        name: name.to_owned(),
        workspace,
        status,
        created,
        expires,
        creator,
    };
    let (d, h) = (Duration::days, Duration::hours);
    let mut keys = vec![
        key(
            "prod-api-gateway",
            Some("wrkspc_demo_prod"),
            "active",
            d(-350),
            Some(d(2)),
            alice,
        ),
        key(
            "prod-billing-service",
            Some("wrkspc_demo_prod"),
            "active",
            d(-80),
            Some(d(10)),
            bob,
        ),
        key(
            "prod-search",
            Some("wrkspc_demo_prod"),
            "active",
            d(-30),
            Some(d(60)),
            alice,
        ),
        key(
            "prod-legacy-batch",
            Some("wrkspc_demo_prod"),
            "active",
            d(-400),
            None,
            None,
        ),
        key(
            "partner-integration",
            Some("wrkspc_demo_prod"),
            "expired",
            d(-30),
            Some(h(-3)),
            bob,
        ),
        key(
            "ci-runner 🚀",
            Some("wrkspc_demo_staging"),
            "active",
            h(-1),
            Some(h(2)),
            ci,
        ),
        key(
            "staging-smoke-tests",
            Some("wrkspc_demo_staging"),
            "active",
            d(-20),
            Some(d(25)),
            ci,
        ),
        key(
            "staging-old",
            Some("wrkspc_demo_staging"),
            "inactive",
            d(-200),
            Some(d(160)),
            bob,
        ),
        key(
            "staging-review",
            Some("wrkspc_demo_staging"),
            "pending_review",
            d(-2),
            Some(d(28)),
            bob,
        ),
        key(
            "Ключ аналитики",
            Some("wrkspc_demo_data"),
            "active",
            d(-45),
            Some(d(13)),
            alice,
        ),
        key(
            "مفتاح الدعم",
            Some("wrkspc_demo_data"),
            "archived",
            d(-300),
            None,
            bob,
        ),
        key(
            "数据管道",
            Some("wrkspc_demo_research"),
            "active",
            d(-90),
            None,
            alice,
        ),
        key(
            "実験用キー \"beta\"",
            Some("wrkspc_demo_research"),
            "active",
            d(-5),
            Some(d(85)),
            alice,
        ),
        key("intern-laptop", None, "expired", d(-40), Some(d(-1)), None),
        key(
            "notebook C:\\keys",
            None,
            "active",
            d(-10),
            Some(d(20)),
            bob,
        ),
        key(
            "legacy-etl",
            Some("wrkspc_demo_legacy"),
            "archived",
            d(-700),
            Some(d(-300)),
            bob,
        ),
        key(
            "org-automation",
            Some("organization"),
            "active",
            d(-15),
            None,
            ci,
        ),
    ];
    for worker in 1..=12 {
        keys.push(key(
            &format!("worker-{worker:02}"),
            Some("wrkspc_demo_prod"),
            "active",
            d(-10 * worker),
            Some(d(15 * worker)),
            ci,
        ));
    }

    let api_keys = keys
        .into_iter()
        .enumerate()
        .map(|(index, key)| {
            let id = format!("apikey_demo_{index:03}");
            let mut object = json!({
                "id": id,
                "type": "api_key",
                "name": key.name,
                "created_at": at(key.created),
                "created_by": key.creator.map(|(id, kind)| json!({"id": id, "type": kind})),
                "expires_at": key.expires.map(at),
                "partial_key_hint": format!("sk-ant-api03-dem...{index:03}A"),
                "status": key.status,
            });
            // Mix the current API shape (`scope`) with the older one (`workspace_id` only, null for the
            // Default workspace), as a long-lived organization really returns.
            match key.workspace {
                Some("organization") => {
                    object["scope"] = json!({"type": "organization"});
                    object["workspace_id"] = Value::Null;
                }
                Some(workspace_id) if index % 2 == 0 => {
                    object["scope"] = json!({"type": "workspace", "workspace_id": workspace_id});
                    object["workspace_id"] = json!(workspace_id);
                }
                Some(workspace_id) => object["workspace_id"] = json!(workspace_id),
                None => object["workspace_id"] = Value::Null,
            }
            object
        })
        .collect();

    let user = |id: &str, name: &str, email: &str, role: &str| {
        json!({"id": id, "type": "user", "name": name, "email": email, "role": role,
               "added_at": at(Duration::days(-800))})
    };
    // Bob has left the organization: his keys are orphaned.
    let users = vec![
        user(
            "user_demo_alice",
            "Alice Martin",
            "alice@acme.example",
            "admin",
        ),
        user(
            "user_demo_carol",
            "Carol Chen",
            "carol@acme.example",
            "developer",
        ),
        user(
            "user_demo_dan",
            "Dan Okafor",
            "dan@acme.example",
            "developer",
        ),
        user(
            "user_demo_erin",
            "Erin Ruiz",
            "erin@acme.example",
            "billing",
        ),
    ];
    // Recent use of most active keys; some keys have not been used for weeks, some never.
    let used = |index: usize, ago: Duration| UsageEvent {
        api_key_id: Some(format!("apikey_demo_{index:03}")),
        at: now + ago,
        output_tokens: 1_000 + index as u64,
    };
    let mut usage = vec![
        used(0, h(-1)),
        used(0, d(-3)),
        used(1, d(-2)),
        used(2, Duration::minutes(-20)),
        used(3, d(-20)),
        used(5, Duration::minutes(-40)),
        used(9, d(-1)),
        used(11, h(-5)),
        used(16, d(-8)),
        UsageEvent {
            api_key_id: None,
            at: now + h(-2),
            output_tokens: 500,
        },
    ];
    for worker in 0..12 {
        usage.push(used(17 + worker, h(-(worker as i64) - 1)));
    }

    Dataset {
        admin_key: DEMO_ADMIN_KEY.to_owned(),
        users,
        usage,
        organization: json!({
            "id": "00000000-0000-4000-8000-00000000de70",
            "type": "organization",
            "name": "Acme Robotics (demo)",
        }),
        workspaces,
        api_keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_organization_has_every_status_and_kind_of_expiry() {
        let dataset = demo_dataset(OffsetDateTime::now_utc());
        for status in ["active", "inactive", "archived", "expired"] {
            assert!(
                dataset.api_keys.iter().any(|key| key["status"] == status),
                "{status}"
            );
        }
        assert!(
            dataset
                .api_keys
                .iter()
                .any(|key| key["expires_at"].is_null())
        );
        assert!(
            dataset
                .api_keys
                .iter()
                .any(|key| key["workspace_id"].is_null() && key.get("scope").is_none())
        );
    }

    #[test]
    fn pages_follow_the_documented_cursor_envelope() {
        let items: Vec<Value> = (0..5).map(|i| json!({"id": format!("id{i}")})).collect();
        let first = page(
            &items,
            &PageQuery {
                limit: Some(2),
                after_id: None,
            },
        );
        assert_eq!(first.status(), StatusCode::OK);
        let missing = page(
            &items,
            &PageQuery {
                limit: Some(2),
                after_id: Some("nope".into()),
            },
        );
        assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    }
}
