//! Joins an organization's last good data from every source into one immutable [`Snapshot`]: each key
//! with its workspace name, creator and last use, and the counts per workspace and status.
//!
//! A snapshot is built whenever a source publishes, from whatever the other sources last fetched
//! successfully: a failing `workspaces` or `users` source never holds back new key data.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::admin_api::ApiError;
use crate::admin_api::model::{ApiKey, Organization, Workspace};
use crate::sources::LastGood;
pub use crate::sources::api_keys::KeyStatus;
use crate::sources::api_keys::{InventoryBuilder, WorkspaceRef};
use crate::sources::workspaces::{WorkspaceNames, add_workspaces};

/// `workspace_id` / `workspace_name` of keys in the Default workspace as older API versions report
/// them (`workspace_id: null` and no `scope`).
pub const DEFAULT_WORKSPACE: (&str, &str) = ("default", "Default");
/// `workspace_id` / `workspace_name` of keys scoped to the whole organization rather than a workspace.
pub const ORGANIZATION_SCOPE: (&str, &str) = ("organization", "Organization");
/// Exported label values from upstream are cut to this many characters (a marker included), so that
/// one absurd key name cannot blow up every scrape.
pub const MAX_LABEL_CHARS: usize = 256;
/// Ends a label value that was cut.
pub const TRUNCATION_MARKER: &str = "…";

/// Whether a key's creator is still a member of the organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    Left,
    /// A service account, no recorded creator, or no users listing yet.
    Unknown,
}

impl Membership {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "true",
            Self::Left => "false",
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
    /// Empty when unknown, or when creator labels are turned off.
    pub created_by_name: String,
    pub created_by_email: String,
    pub created_by_member: Membership,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds; `None` for keys that never expire.
    pub expires_at: Option<f64>,
    /// Unix seconds; `None` when not used within the lookback, or without usage data.
    pub last_used: Option<f64>,
}

/// Per workspace and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCount {
    pub total: u64,
    pub never_expiring: u64,
    /// Keys whose creator left; meaningful only with users data.
    pub orphaned: u64,
    /// Keys with no use in the lookback; meaningful only with usage data.
    pub unused: u64,
}

/// Everything known about one organization at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// From `/v1/organizations/me`, once that source has succeeded: (id, name).
    pub organization_info: Option<(String, String)>,
    /// Whether the key inventory has been listed at least once; without it there are no key series.
    pub has_inventory: bool,
    /// Keys sorted by id, each id once.
    pub keys: Vec<KeyRecord>,
    /// Counts per (workspace id, status); every workspace seen has all [`KeyStatus::KNOWN`] statuses.
    pub counts: BTreeMap<(String, KeyStatus), KeyCount>,
    /// Workspace id to name, for every workspace seen (listed, or referenced by a key).
    pub workspaces: BTreeMap<String, String>,
    /// Members per role, once the users source has succeeded.
    pub users_by_role: Option<BTreeMap<String, u64>>,
    /// The usage lookback in seconds, once the usage source has succeeded.
    pub usage_lookback: Option<f64>,
    /// Label values from upstream that were cut to [`MAX_LABEL_CHARS`].
    pub truncated_label_values: u64,
}

/// How the snapshot is built, beyond the data.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Export creators' names and e-mail addresses.
    pub creator_labels: bool,
}

impl Snapshot {
    pub fn build(last: &LastGood, options: BuildOptions) -> Self {
        let mut cap = Capper::default();
        let mut workspaces: BTreeMap<String, String> = last
            .workspaces
            .iter()
            .flat_map(|names| names.iter())
            .map(|(id, name)| (cap.value(id), cap.value(name)))
            .collect();
        let users = last.users.as_deref();
        let usage = last.usage.as_deref();

        let mut keys = Vec::new();
        if let Some(inventory) = &last.api_keys {
            keys.reserve(inventory.keys.len());
            let mut previous_id: Option<String> = None;
            for key in &inventory.keys {
                let id = cap.value(&key.id);
                // NB: two absurdly long ids could truncate to the same value; one series only.
                if previous_id.as_deref() == Some(id.as_str()) {
                    continue;
                }
                let (workspace_id, workspace_name) = match &key.workspace {
                    WorkspaceRef::Organization => (
                        ORGANIZATION_SCOPE.0.to_owned(),
                        ORGANIZATION_SCOPE.1.to_owned(),
                    ),
                    WorkspaceRef::Default => (
                        DEFAULT_WORKSPACE.0.to_owned(),
                        DEFAULT_WORKSPACE.1.to_owned(),
                    ),
                    WorkspaceRef::Id(raw) => {
                        let id = cap.value(raw);
                        let name = workspaces.get(&id).cloned().unwrap_or_else(|| id.clone());
                        (id, name)
                    }
                };
                workspaces
                    .entry(workspace_id.clone())
                    .or_insert_with(|| workspace_name.clone());
                let (created_by_id, created_by_type) = key.created_by.clone().unwrap_or_default();
                let member = match (users, created_by_type.as_str()) {
                    (Some(users), "user") => users.members.get(&created_by_id),
                    _ => None,
                };
                let created_by_member = match (users, created_by_type.as_str()) {
                    (Some(_), "user") if member.is_some() => Membership::Member,
                    (Some(_), "user") if !created_by_id.is_empty() => Membership::Left,
                    _ => Membership::Unknown,
                };
                let (created_by_name, created_by_email) = match member {
                    Some(member) if options.creator_labels => {
                        (cap.value(&member.name), cap.value(&member.email))
                    }
                    _ => (String::new(), String::new()),
                };
                keys.push(KeyRecord {
                    name: cap.value(&key.name),
                    workspace_id,
                    workspace_name,
                    status: key.status,
                    created_by_id: cap.value(&created_by_id),
                    created_by_type: cap.value(&created_by_type),
                    created_by_name,
                    created_by_email,
                    created_by_member,
                    created_at: key.created_at,
                    expires_at: key.expires_at,
                    last_used: usage.and_then(|usage| usage.last_used.get(&key.id).copied()),
                    id: id.clone(),
                });
                previous_id = Some(id);
            }
        }

        let mut counts = BTreeMap::new();
        if last.api_keys.is_some() {
            for workspace_id in workspaces.keys() {
                for status in KeyStatus::KNOWN {
                    counts.insert((workspace_id.clone(), status), KeyCount::default());
                }
            }
        }
        for key in &keys {
            let count: &mut KeyCount = counts
                .entry((key.workspace_id.clone(), key.status))
                .or_default();
            count.total += 1;
            count.never_expiring += u64::from(key.expires_at.is_none());
            count.orphaned += u64::from(key.created_by_member == Membership::Left);
            count.unused += u64::from(usage.is_some() && key.last_used.is_none());
        }

        let organization_info = last.organization.as_ref().map(|organization| {
            (
                cap.value(&organization.id),
                cap.value(organization.name.as_deref().unwrap_or_default()),
            )
        });
        let users_by_role = users.map(|users| {
            users
                .roles
                .iter()
                .map(|(role, count)| (cap.value(role), *count))
                .collect()
        });
        Self {
            organization_info,
            has_inventory: last.api_keys.is_some(),
            keys,
            counts,
            workspaces,
            users_by_role,
            usage_lookback: usage.map(|usage| usage.lookback.as_secs_f64()),
            truncated_label_values: cap.truncated,
        }
    }
}

impl Snapshot {
    /// The snapshot of one complete listing, as if the organization, workspaces and key sources had
    /// just succeeded with it (for benchmarks and tests that start from API objects). Fails as the key
    /// source would, on a timestamp that is not RFC 3339.
    pub fn from_listing(
        organization: Organization,
        workspaces: Vec<Workspace>,
        api_keys: Vec<ApiKey>,
    ) -> Result<Self, ApiError> {
        let mut inventory = InventoryBuilder::default();
        inventory.add(api_keys)?;
        let mut names = WorkspaceNames::new();
        add_workspaces(&mut names, workspaces);
        let last = LastGood {
            organization: Some(Arc::new(organization)),
            workspaces: Some(Arc::new(names)),
            api_keys: Some(Arc::new(inventory.finish())),
            ..LastGood::default()
        };
        Ok(Self::build(
            &last,
            BuildOptions {
                creator_labels: true,
            },
        ))
    }
}

/// Cuts label values to [`MAX_LABEL_CHARS`] characters and counts how many it cut.
#[derive(Debug, Default)]
struct Capper {
    truncated: u64,
}

impl Capper {
    fn value(&mut self, text: &str) -> String {
        let keep = MAX_LABEL_CHARS - TRUNCATION_MARKER.chars().count();
        match text.char_indices().nth(MAX_LABEL_CHARS) {
            None => text.to_owned(),
            Some(_) => {
                self.truncated += 1;
                let end = text
                    .char_indices()
                    .nth(keep)
                    .map_or(text.len(), |(at, _)| at);
                format!("{}{TRUNCATION_MARKER}", &text[..end])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::api_keys::{Inventory, InventoryKey};
    use crate::sources::usage::UsageReport;
    use crate::sources::users::{Member, UserDirectory};

    fn key(json: serde_json::Value) -> InventoryKey {
        InventoryKey::from_api(serde_json::from_value::<ApiKey>(json).unwrap()).unwrap()
    }

    fn last_good(keys: Vec<InventoryKey>) -> LastGood {
        LastGood {
            workspaces: Some(Arc::new(
                [("wrkspc_prod".to_owned(), "Production".to_owned())].into(),
            )),
            api_keys: Some(Arc::new(Inventory {
                keys,
                unknown_statuses: Default::default(),
            })),
            ..LastGood::default()
        }
    }

    const OPTIONS: BuildOptions = BuildOptions {
        creator_labels: true,
    };

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
        let snapshot = Snapshot::build(&last_good(keys), OPTIONS);
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
        ];
        let snapshot = Snapshot::build(&last_good(keys), OPTIONS);
        let count = |ws: &str, status| snapshot.counts.get(&(ws.to_owned(), status)).copied();
        assert_eq!(
            count("default", KeyStatus::Active).unwrap().never_expiring,
            1
        );
        assert_eq!(count("default", KeyStatus::Unknown).unwrap().total, 1);
        assert_eq!(
            count("wrkspc_prod", KeyStatus::Expired),
            Some(KeyCount::default())
        );
        assert_eq!(count("wrkspc_prod", KeyStatus::Unknown), None);
    }

    #[test]
    fn creators_and_last_use_are_joined_only_when_their_sources_have_data() {
        let keys = vec![
            key(
                serde_json::json!({"id":"a","created_at":"2025-01-01T00:00:00Z","status":"active",
                "created_by":{"id":"user_alice","type":"user"}}),
            ),
            key(
                serde_json::json!({"id":"b","created_at":"2025-01-01T00:00:00Z","status":"active",
                "created_by":{"id":"user_gone","type":"user"}}),
            ),
            key(
                serde_json::json!({"id":"c","created_at":"2025-01-01T00:00:00Z","status":"active",
                "created_by":{"id":"svac_ci","type":"service_account"}}),
            ),
        ];
        let mut last = last_good(keys);
        let before = Snapshot::build(&last, OPTIONS);
        assert!(
            before
                .keys
                .iter()
                .all(|k| k.created_by_member == Membership::Unknown)
        );
        assert!(before.keys.iter().all(|k| k.last_used.is_none()));
        assert!(before.users_by_role.is_none() && before.usage_lookback.is_none());

        last.users = Some(Arc::new(UserDirectory {
            members: [(
                "user_alice".to_owned(),
                Member {
                    name: "Alice".into(),
                    email: "alice@example.com".into(),
                },
            )]
            .into(),
            roles: [("admin".to_owned(), 1)].into(),
        }));
        last.usage = Some(Arc::new(UsageReport {
            last_used: [("a".to_owned(), 1_700_000_000.0)].into(),
            reported_at: 1_700_000_100.0,
            lookback: std::time::Duration::from_secs(30 * 86_400),
        }));
        let after = Snapshot::build(&last, OPTIONS);
        let member: Vec<_> = after.keys.iter().map(|k| k.created_by_member).collect();
        assert_eq!(
            member,
            [Membership::Member, Membership::Left, Membership::Unknown]
        );
        assert_eq!(after.keys[0].created_by_email, "alice@example.com");
        assert_eq!(after.keys[0].last_used, Some(1_700_000_000.0));
        let active = after.counts[&("default".to_owned(), KeyStatus::Active)];
        assert_eq!((active.orphaned, active.unused), (1, 2));

        let private = Snapshot::build(
            &last,
            BuildOptions {
                creator_labels: false,
            },
        );
        assert!(
            private
                .keys
                .iter()
                .all(|k| k.created_by_name.is_empty() && k.created_by_email.is_empty())
        );
        assert_eq!(private.keys[1].created_by_member, Membership::Left);
    }

    #[test]
    fn absurdly_long_label_values_are_cut_with_a_marker_and_counted() {
        let long = "n".repeat(1_000_000);
        let keys = vec![key(serde_json::json!({"id":"a","name": long,
            "created_at":"2025-01-01T00:00:00Z","status":"active"}))];
        let snapshot = Snapshot::build(&last_good(keys), OPTIONS);
        let name = &snapshot.keys[0].name;
        assert_eq!(name.chars().count(), MAX_LABEL_CHARS);
        assert!(name.ends_with(TRUNCATION_MARKER));
        assert_eq!(snapshot.truncated_label_values, 1);
    }
}
