//! `api_keys`: the key inventory (`GET /v1/organizations/api_keys`, every page, every status). Its
//! success is what `anthropic_up` reports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{LastGood, Source, SourceKind, Update};
use crate::admin_api::model::{ApiKey, Time};
use crate::admin_api::{ApiError, Endpoint, Session};

/// The status of a key. Statuses the exporter does not know yet are kept as `Unknown` rather than
/// failing the poll: the API has grown this enum before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyStatus {
    Active,
    Inactive,
    Archived,
    Expired,
    Unknown,
}

impl KeyStatus {
    /// The statuses that are zero-filled in every workspace.
    pub const KNOWN: [KeyStatus; 4] = [Self::Active, Self::Inactive, Self::Archived, Self::Expired];

    pub fn from_api(status: Option<&str>) -> Self {
        match status {
            Some("active") => Self::Active,
            Some("inactive") => Self::Inactive,
            Some("archived") => Self::Archived,
            Some("expired") => Self::Expired,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Archived => "archived",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

/// Where a key belongs, before workspace names are joined in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceRef {
    /// A workspace by id (from `scope.workspace_id`, else the deprecated `workspace_id`).
    Id(String),
    /// The Default workspace as older API versions report it: no `scope`, `workspace_id: null`.
    Default,
    /// Scoped to the whole organization.
    Organization,
}

/// One key as listed, with its timestamps parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryKey {
    pub id: String,
    pub name: String,
    pub status: KeyStatus,
    pub workspace: WorkspaceRef,
    /// `(id, type)` of the creator, when the API recorded one.
    pub created_by: Option<(String, String)>,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds; `None` for keys that never expire.
    pub expires_at: Option<f64>,
}

/// The whole listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Sorted by id, each id once (a key listed twice because the list moved under the cursor is one
    /// series).
    pub keys: Vec<InventoryKey>,
    /// Raw status values the exporter did not recognise, for a warning.
    pub unknown_statuses: BTreeSet<String>,
}

#[derive(Debug)]
pub struct ApiKeysSource {
    pub interval: Duration,
}

impl Source for ApiKeysSource {
    fn kind(&self) -> SourceKind {
        SourceKind::ApiKeys
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn fetch<'a>(&'a self, session: &'a Session<'a>) -> BoxFuture<'a, Result<Update, ApiError>> {
        Box::pin(async move {
            let mut inventory = InventoryBuilder::default();
            session
                .list_all(
                    Endpoint::ApiKeys,
                    &[],
                    |key: &ApiKey| key.id.as_str(),
                    |page: Vec<ApiKey>| inventory.add(page),
                )
                .await?;
            let inventory = Arc::new(inventory.finish());
            Ok(Box::new(move |last: &mut LastGood| last.api_keys = Some(inventory)) as Update)
        })
    }
}

/// Collects a listing page by page into an [`Inventory`].
#[derive(Debug, Default)]
pub struct InventoryBuilder {
    /// In listing order; a key listed twice is in it twice until [`InventoryBuilder::finish`].
    keys: Vec<InventoryKey>,
    unknown_statuses: BTreeSet<String>,
}

impl InventoryBuilder {
    /// Adds one page; fails on the first key whose timestamps cannot be read.
    pub fn add(&mut self, keys: Vec<ApiKey>) -> Result<(), ApiError> {
        for key in keys {
            if KeyStatus::from_api(key.status.as_deref()) == KeyStatus::Unknown {
                self.unknown_statuses
                    .insert(key.status.clone().unwrap_or_else(|| "(none)".to_owned()));
            }
            self.keys.push(InventoryKey::from_api(key)?);
        }
        Ok(())
    }

    pub fn finish(self) -> Inventory {
        let mut keys = self.keys;
        // NB: a key listed twice (the list moved under the cursor) must still be one series: the
        // later listing wins. Reversed, the latest listing of an id comes first; the sort is stable
        // and `dedup_by` keeps the first of a run.
        keys.reverse();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys.dedup_by(|earlier_listing, later_listing| earlier_listing.id == later_listing.id);
        Inventory {
            keys,
            unknown_statuses: self.unknown_statuses,
        }
    }
}

impl InventoryKey {
    /// Fails (as a decode error) only when a key carries a timestamp that is not RFC 3339: silently
    /// dropping an expiry would hide exactly what we alert on.
    pub fn from_api(key: ApiKey) -> Result<Self, ApiError> {
        let created_at = key_time(&key.id, "created_at", &key.created_at)?;
        let expires_at = key
            .expires_at
            .as_ref()
            .map(|value| key_time(&key.id, "expires_at", value))
            .transpose()?;
        let scope = key.scope.as_ref();
        let workspace = if scope.and_then(|scope| scope.kind.as_deref()) == Some("organization") {
            WorkspaceRef::Organization
        } else {
            match scope
                .and_then(|scope| scope.workspace_id.clone())
                .or(key.workspace_id)
            {
                Some(id) => WorkspaceRef::Id(id),
                None => WorkspaceRef::Default,
            }
        };
        let created_by = key
            .created_by
            .map(|actor| (actor.id.unwrap_or_default(), actor.kind.unwrap_or_default()));
        Ok(Self {
            status: KeyStatus::from_api(key.status.as_deref()),
            id: key.id,
            name: key.name.unwrap_or_default(),
            workspace,
            created_by,
            created_at,
            expires_at,
        })
    }
}

/// Unix seconds of the RFC 3339 time `value`, or a decode error naming `what` (the key and field, or
/// the bucket) and the value.
pub(crate) fn parse_time(endpoint: Endpoint, what: &str, value: &str) -> Result<f64, ApiError> {
    seconds_or_decode_error(endpoint, what, &Time::parse(value))
}

fn seconds_or_decode_error(endpoint: Endpoint, what: &str, value: &Time) -> Result<f64, ApiError> {
    match value {
        Time::Unix(seconds) => Ok(*seconds),
        Time::Invalid(value) => Err(ApiError::Decode {
            endpoint,
            request_id: None,
            detail: format!("{what} {value:?} is not an RFC 3339 time"),
        }),
    }
}

fn key_time(key_id: &str, field: &str, value: &Time) -> Result<f64, ApiError> {
    if let Time::Unix(seconds) = value {
        return Ok(*seconds);
    }
    // NB: the key is named only once a time is bad: formatting it for every key cost more than
    // decoding the key.
    let key: String = key_id.chars().take(100).collect();
    seconds_or_decode_error(Endpoint::ApiKeys, &format!("key {key}: {field}"), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, name: &str) -> ApiKey {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "created_at": "2025-01-01T00:00:00Z", "status": "active",
        }))
        .unwrap()
    }

    #[test]
    fn a_key_listed_twice_is_one_key_as_its_later_listing_says_and_keys_come_sorted() {
        let mut inventory = InventoryBuilder::default();
        inventory
            .add(vec![key("k3", "old"), key("k1", "one"), key("k2", "two")])
            .unwrap();
        // The list moved under the cursor: k3 comes again, renamed, and k2 again, unchanged.
        inventory
            .add(vec![key("k2", "two"), key("k3", "new"), key("k0", "zero")])
            .unwrap();

        let keys = inventory.finish().keys;
        let listed: Vec<(&str, &str)> = keys
            .iter()
            .map(|key| (key.id.as_str(), key.name.as_str()))
            .collect();
        assert_eq!(
            listed,
            [("k0", "zero"), ("k1", "one"), ("k2", "two"), ("k3", "new")]
        );
    }

    #[test]
    fn a_bad_time_names_the_key_and_the_field() {
        let mut bad = key("k1", "one");
        bad.expires_at = Some(Time::Invalid("next tuesday".into()));
        let error = InventoryBuilder::default().add(vec![bad]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("key k1: expires_at") && message.contains("next tuesday"),
            "{message}"
        );
    }
}
