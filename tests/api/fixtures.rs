//! Builders for Admin API objects and pages, and helpers that mount them on the fake Admin API.

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::ADMIN_KEY;

pub(crate) const KEYS_PATH: &str = "/v1/organizations/api_keys";
pub(crate) const WORKSPACES_PATH: &str = "/v1/organizations/workspaces";
pub(crate) const ME_PATH: &str = "/v1/organizations/me";

/// An API key in the current API shape; every builder method changes one aspect.
#[derive(Debug, Clone)]
pub(crate) struct KeyFixture(Value);

impl KeyFixture {
    pub(crate) fn new(id: &str) -> Self {
        Self(json!({
            "id": id,
            "type": "api_key",
            "name": format!("name of {id}"),
            "created_at": "2025-01-01T00:00:00Z",
            "created_by": {"id": "user_01", "type": "user"},
            "expires_at": null,
            "partial_key_hint": "sk-ant-api03-abc...xyzA",
            "principal": {"type": "user_actor", "user_id": "user_01"},
            "status": "active",
            "workspace_id": null,
        }))
    }

    pub(crate) fn name(mut self, name: &str) -> Self {
        self.0["name"] = json!(name);
        self
    }

    pub(crate) fn status(mut self, status: &str) -> Self {
        self.0["status"] = json!(status);
        self
    }

    pub(crate) fn expires_at(mut self, at: &str) -> Self {
        self.0["expires_at"] = json!(at);
        self
    }

    /// A key bound to a workspace, as the current API reports it.
    pub(crate) fn in_workspace(mut self, workspace_id: &str) -> Self {
        self.0["scope"] = json!({"type": "workspace", "workspace_id": workspace_id});
        self.0["workspace_id"] = json!(workspace_id);
        self
    }

    /// A key bound to a workspace, as older API versions report it (no `scope`).
    pub(crate) fn in_legacy_workspace(mut self, workspace_id: &str) -> Self {
        self.0["workspace_id"] = json!(workspace_id);
        self
    }

    pub(crate) fn created_by(mut self, id: &str, kind: &str) -> Self {
        self.0["created_by"] = json!({"id": id, "type": kind});
        self
    }

    pub(crate) fn set(mut self, field: &str, value: Value) -> Self {
        self.0[field] = value;
        self
    }

    pub(crate) fn without(mut self, field: &str) -> Self {
        if let Some(object) = self.0.as_object_mut() {
            object.remove(field);
        }
        self
    }

    pub(crate) fn json(self) -> Value {
        self.0
    }
}

pub(crate) fn workspace(id: &str, name: &str) -> Value {
    json!({"id": id, "type": "workspace", "name": name, "created_at": "2024-10-30T23:58:27.427722Z",
           "archived_at": null, "display_color": "#6C5BB9"})
}

/// A list page in the documented envelope.
pub(crate) fn page(items: &[Value], has_more: bool) -> Value {
    json!({
        "data": items,
        "first_id": items.first().map(|item| item["id"].clone()),
        "last_id": items.last().map(|item| item["id"].clone()),
        "has_more": has_more,
    })
}

pub(crate) fn error_body(kind: &str, message: &str, request_id: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
}

/// `GET /v1/organizations/me`, answering only requests that carry the test admin key and version.
pub(crate) async fn mount_organization(server: &MockServer, id: &str, name: &str) {
    Mock::given(method("GET"))
        .and(path(ME_PATH))
        .and(header("x-api-key", ADMIN_KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": id, "type": "organization", "name": name})),
        )
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
    for (index, items) in pages.iter().enumerate() {
        let has_more = index + 1 < pages.len();
        let mock = Mock::given(method("GET"))
            .and(path(KEYS_PATH))
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
