//! The immutable result of one successful poll, and the store that hands the latest one to scrapes.
//!
//! A poll builds a complete [`Snapshot`] and swaps it in at once, so a scrape sees either the previous
//! organization or the new one, never half of each; a failed poll simply publishes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::admin_api::model::{ApiKey, Inventory};
use crate::admin_api::{ApiError, Endpoint};

/// `workspace_id` / `workspace_name` of keys in the Default workspace as older API versions report
/// them (`workspace_id: null` and no `scope`).
pub const DEFAULT_WORKSPACE: (&str, &str) = ("default", "Default");
/// `workspace_id` / `workspace_name` of keys scoped to the whole organization rather than a workspace.
pub const ORGANIZATION_SCOPE: (&str, &str) = ("organization", "Organization");

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

/// One API key, resolved to the labels it is exported with.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub workspace_id: String,
    pub workspace_name: String,
    pub status: KeyStatus,
    /// Empty when the API did not record the creator.
    pub created_by_id: String,
    pub created_by_type: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds; `None` for keys that never expire.
    pub expires_at: Option<f64>,
}

/// Per workspace and status: how many keys, and how many of those never expire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCount {
    pub total: u64,
    pub never_expiring: u64,
}

/// Everything one successful poll learned about one organization.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub organization_id: String,
    pub organization_name: String,
    /// Keys sorted by id, each id once.
    pub keys: Vec<KeyRecord>,
    /// Counts per (workspace id, status); every workspace seen has all [`KeyStatus::KNOWN`] statuses.
    pub counts: BTreeMap<(String, KeyStatus), KeyCount>,
    /// Workspace id to name, for every workspace seen (listed, or referenced by a key).
    pub workspaces: BTreeMap<String, String>,
    /// Raw status values the exporter did not recognise, for a warning.
    pub unknown_statuses: BTreeSet<String>,
    pub polled_at: SystemTime,
}

impl Snapshot {
    /// Resolves an inventory into labelled records. Fails (as a decode error) only when a key carries a
    /// timestamp that is not RFC 3339: silently dropping an expiry would hide exactly what we alert on.
    pub fn from_inventory(inventory: Inventory, polled_at: SystemTime) -> Result<Self, ApiError> {
        let mut workspaces: BTreeMap<String, String> = inventory
            .workspaces
            .into_iter()
            .map(|workspace| {
                let name = workspace.name.unwrap_or_else(|| workspace.id.clone());
                (workspace.id, name)
            })
            .collect();

        let mut unknown_statuses = BTreeSet::new();
        let mut by_id: HashMap<String, KeyRecord> =
            HashMap::with_capacity(inventory.api_keys.len());
        for key in inventory.api_keys {
            let status = KeyStatus::from_api(key.status.as_deref());
            if status == KeyStatus::Unknown {
                unknown_statuses.insert(key.status.clone().unwrap_or_else(|| "(none)".to_owned()));
            }
            let (workspace_id, workspace_name) = resolve_workspace(&key, &workspaces);
            workspaces
                .entry(workspace_id.clone())
                .or_insert_with(|| workspace_name.clone());
            let created_at = parse_timestamp(&key.id, "created_at", &key.created_at)?;
            let expires_at = key
                .expires_at
                .as_deref()
                .map(|value| parse_timestamp(&key.id, "expires_at", value))
                .transpose()?;
            let (created_by_id, created_by_type) = key
                .created_by
                .map(|actor| (actor.id.unwrap_or_default(), actor.kind.unwrap_or_default()))
                .unwrap_or_default();
            // NB: a key listed twice (the list moved under our cursor) must still be one series.
            by_id.insert(
                key.id.clone(),
                KeyRecord {
                    id: key.id,
                    name: key.name.unwrap_or_default(),
                    workspace_id,
                    workspace_name,
                    status,
                    created_by_id,
                    created_by_type,
                    created_at,
                    expires_at,
                },
            );
        }
        let mut keys: Vec<KeyRecord> = by_id.into_values().collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));

        let mut counts = BTreeMap::new();
        for workspace_id in workspaces.keys() {
            for status in KeyStatus::KNOWN {
                counts.insert((workspace_id.clone(), status), KeyCount::default());
            }
        }
        for key in &keys {
            let count: &mut KeyCount = counts
                .entry((key.workspace_id.clone(), key.status))
                .or_default();
            count.total += 1;
            if key.expires_at.is_none() {
                count.never_expiring += 1;
            }
        }

        Ok(Self {
            organization_id: inventory.organization.id,
            organization_name: inventory.organization.name.unwrap_or_default(),
            keys,
            counts,
            workspaces,
            unknown_statuses,
            polled_at,
        })
    }
}

/// `scope.workspace_id`, else the deprecated `workspace_id`, else the Default workspace; an
/// organization scope means no workspace at all. A workspace the list did not return (the Default one,
/// when the API leaves it out) is named by its id rather than guessed.
fn resolve_workspace(key: &ApiKey, names: &BTreeMap<String, String>) -> (String, String) {
    let scope = key.scope.as_ref();
    if scope.and_then(|scope| scope.kind.as_deref()) == Some("organization") {
        return (
            ORGANIZATION_SCOPE.0.to_owned(),
            ORGANIZATION_SCOPE.1.to_owned(),
        );
    }
    let id = scope
        .and_then(|scope| scope.workspace_id.clone())
        .or_else(|| key.workspace_id.clone());
    match id {
        Some(id) => {
            let name = names.get(&id).cloned().unwrap_or_else(|| id.clone());
            (id, name)
        }
        None => (
            DEFAULT_WORKSPACE.0.to_owned(),
            DEFAULT_WORKSPACE.1.to_owned(),
        ),
    }
}

fn parse_timestamp(key_id: &str, field: &str, value: &str) -> Result<f64, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|at| at.unix_timestamp_nanos() as f64 / 1e9)
        .map_err(|_| ApiError::Decode {
            endpoint: Endpoint::ApiKeys,
            request_id: None,
            detail: format!(
                "key {}: {field} {:?} is not an RFC 3339 time",
                key_id.chars().take(100).collect::<String>(),
                value.chars().take(100).collect::<String>()
            ),
        })
}

/// The latest snapshot of each configured organization. Readers clone an `Arc`; the lock is never held
/// across an await or while rendering.
#[derive(Debug)]
pub struct SnapshotStore {
    latest: RwLock<BTreeMap<String, Option<Arc<Snapshot>>>>,
}

impl SnapshotStore {
    pub fn new<'a>(organizations: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            latest: RwLock::new(
                organizations
                    .into_iter()
                    .map(|organization| (organization.to_owned(), None))
                    .collect(),
            ),
        }
    }

    pub fn publish(&self, organization: &str, snapshot: Snapshot) {
        let mut latest = self
            .latest
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latest.insert(organization.to_owned(), Some(Arc::new(snapshot)));
    }

    pub fn get(&self, organization: &str) -> Option<Arc<Snapshot>> {
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latest.get(organization).cloned().flatten()
    }

    /// Every organization that has a snapshot, with it.
    pub fn all(&self) -> Vec<(String, Arc<Snapshot>)> {
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latest
            .iter()
            .filter_map(|(organization, snapshot)| Some((organization.clone(), snapshot.clone()?)))
            .collect()
    }

    /// The organizations that have not been polled successfully yet; empty once the exporter is ready.
    pub fn not_ready(&self) -> Vec<String> {
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latest
            .iter()
            .filter(|(_, snapshot)| snapshot.is_none())
            .map(|(organization, _)| organization.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin_api::model::{Organization, Workspace};

    fn key(json: serde_json::Value) -> ApiKey {
        serde_json::from_value(json).unwrap()
    }

    fn inventory(keys: Vec<ApiKey>) -> Inventory {
        Inventory {
            organization: Organization {
                id: "org-uuid".into(),
                name: Some("Acme".into()),
            },
            workspaces: vec![Workspace {
                id: "wrkspc_prod".into(),
                name: Some("Production".into()),
            }],
            api_keys: keys,
        }
    }

    #[test]
    fn workspace_comes_from_scope_then_workspace_id_then_default() {
        let keys = vec![
            key(
                serde_json::json!({"id":"a","created_at":"2025-01-01T00:00:00Z","status":"active",
                "scope":{"type":"workspace","workspace_id":"wrkspc_prod"},"workspace_id":"wrkspc_other"}),
            ),
            key(
                serde_json::json!({"id":"b","created_at":"2025-01-01T00:00:00Z","status":"active",
                "workspace_id":"wrkspc_prod"}),
            ),
            key(
                serde_json::json!({"id":"c","created_at":"2025-01-01T00:00:00Z","status":"active"}),
            ),
            key(
                serde_json::json!({"id":"d","created_at":"2025-01-01T00:00:00Z","status":"active",
                "scope":{"type":"organization"}}),
            ),
            key(
                serde_json::json!({"id":"e","created_at":"2025-01-01T00:00:00Z","status":"active",
                "scope":{"type":"workspace","workspace_id":"wrkspc_unlisted"}}),
            ),
        ];
        let snapshot = Snapshot::from_inventory(inventory(keys), SystemTime::now()).unwrap();
        let labels: Vec<(&str, &str)> = snapshot
            .keys
            .iter()
            .map(|k| (k.workspace_id.as_str(), k.workspace_name.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("wrkspc_prod", "Production"),
                ("wrkspc_prod", "Production"),
                ("default", "Default"),
                ("organization", "Organization"),
                ("wrkspc_unlisted", "wrkspc_unlisted"),
            ]
        );
    }

    #[test]
    fn counts_are_zero_filled_and_unknown_statuses_are_kept() {
        let keys = vec![
            key(
                serde_json::json!({"id":"a","created_at":"2025-01-01T00:00:00Z","status":"active"}),
            ),
            key(
                serde_json::json!({"id":"b","created_at":"2025-01-01T00:00:00Z","status":"suspended",
                "expires_at":"2030-01-01T00:00:00Z"}),
            ),
            // The same key twice must count once.
            key(
                serde_json::json!({"id":"a","created_at":"2025-01-01T00:00:00Z","status":"active"}),
            ),
        ];
        let snapshot = Snapshot::from_inventory(inventory(keys), SystemTime::now()).unwrap();
        let count = |ws: &str, status| snapshot.counts.get(&(ws.to_owned(), status)).copied();
        assert_eq!(
            count("default", KeyStatus::Active),
            Some(KeyCount {
                total: 1,
                never_expiring: 1
            })
        );
        assert_eq!(
            count("default", KeyStatus::Unknown),
            Some(KeyCount {
                total: 1,
                never_expiring: 0
            })
        );
        assert_eq!(
            count("wrkspc_prod", KeyStatus::Expired),
            Some(KeyCount::default())
        );
        assert_eq!(count("wrkspc_prod", KeyStatus::Unknown), None);
        assert_eq!(
            snapshot.unknown_statuses.iter().collect::<Vec<_>>(),
            vec!["suspended"]
        );
        assert_eq!(snapshot.keys.len(), 2);
    }

    #[test]
    fn timestamps_keep_their_fraction_and_bad_ones_fail_the_poll() {
        let keys = vec![key(
            serde_json::json!({"id":"a","created_at":"2024-10-30T23:58:27.5Z",
            "expires_at":"2024-10-31T00:00:00+01:00","status":"active"}),
        )];
        let snapshot = Snapshot::from_inventory(inventory(keys), SystemTime::now()).unwrap();
        assert_eq!(snapshot.keys[0].created_at, 1_730_332_707.5);
        assert_eq!(snapshot.keys[0].expires_at, Some(1_730_329_200.0));

        let keys = vec![key(
            serde_json::json!({"id":"a","created_at":"2024-10-30T23:58:27Z",
            "expires_at":"next tuesday","status":"active"}),
        )];
        let error = Snapshot::from_inventory(inventory(keys), SystemTime::now()).unwrap_err();
        assert_eq!(error.reason().as_str(), "decode");
        assert!(error.to_string().contains("expires_at"), "{error}");
    }
}
