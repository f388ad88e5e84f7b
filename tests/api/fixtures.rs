//! Helpers that mount Admin API objects and pages on the fake Admin API; the builders themselves are
//! shared with the other test crates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::admin_api::organization;
pub(crate) use crate::common::admin_api::{
    KEYS_PATH, KeyFixture, ME_PATH, USAGE_PATH, USERS_PATH, WORKSPACES_PATH, error_body, page,
    usage_bucket, usage_report, user, workspace,
};
use crate::helpers::ADMIN_KEY;

/// `GET /v1/organizations/me`, answering only requests that carry the test admin key and version.
pub(crate) async fn mount_organization(server: &MockServer, id: &str, name: &str) {
    Mock::given(method("GET"))
        .and(path(ME_PATH))
        .and(header("x-api-key", ADMIN_KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(organization(id, name)))
        .mount(server)
        .await;
}

pub(crate) async fn mount_workspaces(server: &MockServer, workspaces: &[Value]) {
    Mock::given(method("GET"))
        .and(path(WORKSPACES_PATH))
        .and(query_param("include_archived", "true"))
        .and(query_param("limit", "1000"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(workspaces, false)))
        .mount(server)
        .await;
}

/// Mounts key pages so that page N only answers `after_id` = the last id of page N-1, each exactly once.
pub(crate) async fn mount_key_pages(server: &MockServer, pages: &[Vec<Value>]) {
    mount_list_pages(server, KEYS_PATH, pages).await;
}

/// An organization without workspaces whose key listing always answers with `keys`.
pub(crate) async fn organization_answering_keys_with(keys: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    mount_organization(&server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(&server, &[]).await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(keys)
        .mount(&server)
        .await;
    server
}

/// The organization, one workspace and the given keys on a single page, each answered any number of times.
pub(crate) async fn mount_simple_organization(server: &MockServer, keys: &[Value]) {
    mount_organization(server, "org-uuid-1", "Acme Corp").await;
    mount_workspaces(server, &[workspace("wrkspc_prod", "Production")]).await;
    Mock::given(method("GET"))
        .and(path(KEYS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(keys, false)))
        .mount(server)
        .await;
}

/// `GET /v1/organizations/users`: `users` on one page.
pub(crate) async fn mount_users(server: &MockServer, users: &[Value]) {
    Mock::given(method("GET"))
        .and(path(USERS_PATH))
        .and(query_param("limit", "1000"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(users, false)))
        .mount(server)
        .await;
}

/// The usage report: `buckets` on one page, whatever the query (daily and hourly alike).
pub(crate) async fn mount_usage(server: &MockServer, buckets: &[Value]) {
    Mock::given(method("GET"))
        .and(path(USAGE_PATH))
        .and(query_param("group_by[]", "api_key_id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"data": buckets, "has_more": false, "next_page": null}),
        ))
        .mount(server)
        .await;
}

/// Mounts pages of the cursor-paginated list at `list_path` so that page N only answers `after_id` =
/// the last id of page N-1 with the test admin key, each exactly once.
pub(crate) async fn mount_list_pages(server: &MockServer, list_path: &str, pages: &[Vec<Value>]) {
    for (index, items) in pages.iter().enumerate() {
        let has_more = index + 1 < pages.len();
        let mock = Mock::given(method("GET"))
            .and(path(list_path))
            .and(query_param("limit", "1000"))
            .and(header("x-api-key", ADMIN_KEY));
        let mock = match index {
            0 => mock.and(query_param_is_missing("after_id")),
            _ => {
                let previous_last = pages[index - 1].last().expect("pages are not empty")["id"]
                    .as_str()
                    .expect("ids are strings")
                    .to_owned();
                mock.and(query_param("after_id", previous_last))
            }
        };
        mock.respond_with(ResponseTemplate::new(200).set_body_json(page(items, has_more)))
            .expect(1)
            .mount(server)
            .await;
    }
}

/// Answers with the response of the current phase, which the test moves on; past the last response,
/// the last one stays.
#[derive(Clone)]
pub(crate) struct Phases {
    phase: Arc<AtomicUsize>,
    responses: Vec<ResponseTemplate>,
}

impl Phases {
    pub(crate) fn new(responses: Vec<ResponseTemplate>) -> (Self, Arc<AtomicUsize>) {
        let phase = Arc::new(AtomicUsize::new(0));
        let phases = Self {
            phase: Arc::clone(&phase),
            responses,
        };
        (phases, phase)
    }

    /// Another responder that follows the same phase.
    pub(crate) fn following(phase: &Arc<AtomicUsize>, responses: Vec<ResponseTemplate>) -> Self {
        Self {
            phase: Arc::clone(phase),
            responses,
        }
    }
}

impl Respond for Phases {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let phase = self.phase.load(Ordering::SeqCst);
        self.responses[phase.min(self.responses.len() - 1)].clone()
    }
}
