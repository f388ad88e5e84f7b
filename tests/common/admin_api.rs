//! The JSON of the Admin API, in its current shape, as the fakes serve it.

use serde_json::{Value, json};

pub(crate) const KEYS_PATH: &str = "/v1/organizations/api_keys";
pub(crate) const WORKSPACES_PATH: &str = "/v1/organizations/workspaces";
pub(crate) const ME_PATH: &str = "/v1/organizations/me";
pub(crate) const USERS_PATH: &str = "/v1/organizations/users";
pub(crate) const USAGE_PATH: &str = "/v1/organizations/usage_report/messages";

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

/// `GET /v1/organizations/me`.
pub(crate) fn organization(id: &str, name: &str) -> Value {
    json!({"id": id, "type": "organization", "name": name})
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

/// A member of the organization.
pub(crate) fn user(id: &str, name: &str, email: &str, role: &str) -> Value {
    json!({"id": id, "type": "user", "name": name, "email": email, "role": role,
           "added_at": "2024-10-30T23:58:27.427722Z"})
}

/// A usage-report bucket in which each key of `used` has output tokens, plus one Workbench result
/// without a key and one key with zero tokens (neither counts as use).
pub(crate) fn usage_bucket(starting_at: &str, ending_at: &str, used: &[&str]) -> Value {
    let mut results: Vec<Value> = used
        .iter()
        .map(|id| json!({"api_key_id": id, "uncached_input_tokens": 10, "output_tokens": 5,
                         "cache_read_input_tokens": 0,
                         "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0}}))
        .collect();
    results.push(json!({"api_key_id": null, "uncached_input_tokens": 7, "output_tokens": 7}));
    results.push(
        json!({"api_key_id": "apikey_idle", "uncached_input_tokens": 0, "output_tokens": 0,
                        "cache_read_input_tokens": 0}),
    );
    json!({"starting_at": starting_at, "ending_at": ending_at, "results": results})
}

/// A page of the usage report in its envelope; `next_page` set means `has_more`.
pub(crate) fn usage_report(buckets: &[Value], next_page: Option<&str>) -> Value {
    json!({"data": buckets, "has_more": next_page.is_some(), "next_page": next_page})
}
