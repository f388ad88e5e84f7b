//! The parts of the Admin API's JSON that the exporter reads, decoded tolerantly: unknown fields are
//! ignored, and every field that the API documents as nullable or added later may be absent or null.

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One page of a cursor-paginated list (`data`, `has_more`, `last_id`).
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    /// Required: a body without it is not a page, and treating it as an empty one would make every
    /// key vanish.
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// What following a cursor-paginated list needs of a page, read with its items skipped over, so that
/// the next page can be requested before this one's items are decoded.
#[derive(Debug, Deserialize)]
pub struct PageCursor {
    /// Required, as in [`Page`].
    #[serde(rename = "data")]
    _items: serde::de::IgnoredAny,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// An API key as `GET /v1/organizations/api_keys` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKey {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub created_at: Time,
    #[serde(default)]
    pub created_by: Option<Actor>,
    /// `None` means the key never expires.
    #[serde(default)]
    pub expires_at: Option<Time>,
    #[serde(default)]
    pub status: Option<String>,
    /// Deprecated by the API in favour of `scope`, but still sent; null both for Default-workspace keys
    /// and for keys without a workspace.
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// An RFC 3339 time, parsed as it is decoded, so that a listing of many keys keeps no text of them.
/// A value that does not parse is kept (cut to 100 characters) for the error that names its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Time {
    /// Unix seconds.
    Unix(f64),
    Invalid(String),
}

impl Time {
    pub fn parse(value: &str) -> Self {
        match OffsetDateTime::parse(value, &Rfc3339) {
            Ok(at) => Self::Unix(at.unix_timestamp_nanos() as f64 / 1e9),
            Err(_) => Self::Invalid(value.chars().take(100).collect()),
        }
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;

        impl serde::de::Visitor<'_> for TimeVisitor {
            type Value = Time;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 time")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Time, E> {
                Ok(Time::parse(value))
            }
        }

        deserializer.deserialize_str(TimeVisitor)
    }
}

/// Who created a key. Both fields are typed loosely because older API versions sent free text.
#[derive(Debug, Clone, Deserialize)]
pub struct Actor {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// What a key is bound to: a workspace (`workspace_id` is then the real id, even for the Default
/// workspace) or the whole organization.
#[derive(Debug, Clone, Deserialize)]
pub struct Scope {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// A workspace as `GET /v1/organizations/workspaces` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Workspace {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The organization the admin key belongs to (`GET /v1/organizations/me`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Organization {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The error envelope of the Anthropic API: `{"type":"error","error":{"type","message"},"request_id"}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    #[serde(default)]
    pub(crate) error: Option<ErrorBody>,
    #[serde(default)]
    pub(crate) request_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default, rename = "type")]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

/// One page of a report (usage, cost): `data`, `has_more`, and an opaque `next_page` token.
#[derive(Debug, Deserialize)]
pub struct ReportPage<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub next_page: Option<String>,
}

/// A member of the organization (`GET /v1/organizations/users`).
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
}

/// One time bucket of the messages usage report.
#[derive(Debug, Deserialize)]
pub struct UsageBucket {
    pub starting_at: String,
    pub ending_at: String,
    #[serde(default)]
    pub results: Vec<UsageResult>,
}

/// One group of a usage bucket; with `group_by[]=api_key_id`, one key (or `null` for Console
/// Workbench usage). Token counts are read as numbers of any JSON kind.
#[derive(Debug, Deserialize)]
pub struct UsageResult {
    #[serde(default)]
    pub api_key_id: Option<String>,
    #[serde(default)]
    pub uncached_input_tokens: Option<f64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<f64>,
    #[serde(default)]
    pub output_tokens: Option<f64>,
    #[serde(default)]
    pub cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Deserialize)]
pub struct CacheCreation {
    #[serde(default)]
    pub ephemeral_1h_input_tokens: Option<f64>,
    #[serde(default)]
    pub ephemeral_5m_input_tokens: Option<f64>,
}

impl UsageResult {
    /// A key counts as used in a bucket when any of its token counts is above zero.
    pub fn has_use(&self) -> bool {
        let cache = self.cache_creation.as_ref();
        [
            self.uncached_input_tokens,
            self.cache_read_input_tokens,
            self.output_tokens,
            cache.and_then(|c| c.ephemeral_1h_input_tokens),
            cache.and_then(|c| c.ephemeral_5m_input_tokens),
        ]
        .into_iter()
        .flatten()
        .any(|tokens| tokens > 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_documented_key_shape_decodes() {
        let key: ApiKey = serde_json::from_str(
            r#"{"id":"apikey_1","type":"api_key","name":"k","created_at":"2024-10-30T23:58:27.427722Z",
                "created_by":{"id":"user_1","type":"user"},"partial_key_hint":"sk-ant-api03-R2D...igAA",
                "status":"active","workspace_id":null}"#,
        )
        .unwrap();
        assert!(key.expires_at.is_none() && key.scope.is_none() && key.workspace_id.is_none());
        assert_eq!(key.created_at, Time::Unix(1_730_332_707.427_722));
    }

    #[test]
    fn a_time_that_is_not_rfc_3339_is_kept_for_the_error_and_a_number_is_refused() {
        let key: ApiKey = serde_json::from_str(
            r#"{"id":"k","created_at":"2024-10-30T23:58:27Z","expires_at":"tomorrow"}"#,
        )
        .unwrap();
        assert_eq!(key.created_at, Time::Unix(1_730_332_707.0));
        assert_eq!(key.expires_at, Some(Time::Invalid("tomorrow".into())));
        assert!(serde_json::from_str::<ApiKey>(r#"{"id":"k","created_at":1730332707}"#).is_err());
    }

    #[test]
    fn nulls_unknown_fields_and_both_principal_shapes_decode() {
        for principal in [
            r#"{"type":"user_actor","user_id":"user_1"}"#,
            r#"{"id":"user_1","type":"user"}"#,
            "null",
        ] {
            let json = format!(
                r#"{{"id":"apikey_1","name":null,"created_at":"2024-10-30T23:58:27Z","created_by":null,
                    "expires_at":null,"partial_key_hint":null,"principal":{principal},"scope":null,
                    "status":"brand_new_status","workspace_id":null,"something_new":{{"nested":[1,2]}}}}"#
            );
            let key: ApiKey = serde_json::from_str(&json).unwrap();
            assert_eq!(key.status.as_deref(), Some("brand_new_status"));
            assert!(key.created_by.is_none() && key.name.is_none());
        }
    }

    #[test]
    fn a_page_without_data_is_an_error_not_an_empty_page() {
        assert!(serde_json::from_str::<Page<ApiKey>>(r#"{"has_more":false}"#).is_err());
        let page: Page<Workspace> =
            serde_json::from_str(r#"{"data":[],"first_id":null,"last_id":null}"#).unwrap();
        assert!(!page.has_more && page.last_id.is_none());
    }
}
