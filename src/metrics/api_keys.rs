//! Metrics about an organization's API keys, rendered from its [`Snapshot`] when the snapshot is
//! published: keys that disappeared from the API leave no stale series, and only `expires_in` is
//! computed per scrape.
//!
//! The labels of tens of thousands of keys only change when a source publishes, so each snapshot is
//! written to text once and every scrape until the next publish sends the same bytes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::gzip;
use super::text::{write_gauge_header, write_sample, write_series, write_value};
use crate::snapshot::{KeyRecord, Snapshot};

#[cfg(test)]
const CACHED: &str = "Cached from the last successful background poll of the Admin API.";
#[cfg(test)]
const USAGE_NOTE: &str = "The usage report lags real use by minutes; its granularity is an hour for the last 24 hours and a day before that.";

/// A family of the API-key metrics: its name and HELP text.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
}

const KEYS: Family = Family {
    name: "anthropic_api_keys",
    help: "Number of API keys by workspace and status. Cached from the last successful background poll of the Admin API.",
};
const NEVER_EXPIRING: Family = Family {
    name: "anthropic_api_keys_never_expiring",
    help: "Number of API keys without an expiry date, by workspace and status. Cached from the last successful background poll of the Admin API.",
};
const ORPHANED: Family = Family {
    name: "anthropic_api_keys_orphaned",
    help: "Number of API keys whose creator is no longer a member of the organization, by workspace and status; absent until the users source has succeeded. Cached from the last successful background poll of the Admin API.",
};
const UNUSED: Family = Family {
    name: "anthropic_api_keys_unused",
    help: "Number of API keys without any use in the usage lookback, by workspace and status; absent until the usage source has succeeded. The usage report lags real use by minutes. Cached from the last successful background poll of the Admin API.",
};
const INFO: Family = Family {
    name: "anthropic_api_key_info",
    help: "Information about an API key, value 1; created_by_member is true, false (the creator left) or unknown. Cached from the last successful background poll of the Admin API.",
};
const CREATED: Family = Family {
    name: "anthropic_api_key_created_timestamp_seconds",
    help: "Unix time at which the API key was created. Cached from the last successful background poll of the Admin API.",
};
const EXPIRY: Family = Family {
    name: "anthropic_api_key_expiry_timestamp_seconds",
    help: "Unix time at which the API key expires; absent for keys that never expire. Cached from the last successful background poll of the Admin API.",
};
const EXPIRES_IN: Family = Family {
    name: "anthropic_api_key_expires_in_seconds",
    help: "Seconds until the API key expires, negative once past, computed at scrape time (once per second for all scrapes within it); absent for keys that never expire. Cached from the last successful background poll of the Admin API.",
};
const LAST_USED: Family = Family {
    name: "anthropic_api_key_last_used_timestamp_seconds",
    help: "Unix time of the end of the latest usage-report bucket in which the API key was used, at most the time of the report; only for keys used within the usage lookback. The usage report lags real use by minutes; its granularity is an hour for the last 24 hours and a day before that. Cached from the last successful background poll of the Admin API.",
};
const ORGANIZATION_INFO: Family = Family {
    name: "anthropic_organization_info",
    help: "Information about the organization the admin key belongs to, value 1. Cached from the last successful background poll of the Admin API.",
};
const USERS: Family = Family {
    name: "anthropic_organization_users",
    help: "Number of members of the organization by role. Cached from the last successful background poll of the Admin API.",
};
const USAGE_LOOKBACK: Family = Family {
    name: "anthropic_exporter_usage_lookback_seconds",
    help: "How far back the usage report is read for last use; keys without use in it count as unused. Cached from the last successful background poll of the Admin API.",
};
const TRUNCATED: Family = Family {
    name: "anthropic_exporter_label_values_truncated",
    help: "Label values from the Admin API in the current data that were cut to 256 characters (marked with a trailing …). Cached from the last successful background poll of the Admin API.",
};

/// Every family, in the order of the exposition.
pub(crate) const FAMILIES: [&Family; 13] = [
    &KEYS,
    &NEVER_EXPIRING,
    &ORPHANED,
    &UNUSED,
    &INFO,
    &CREATED,
    &EXPIRY,
    &EXPIRES_IN,
    &LAST_USED,
    &ORGANIZATION_INFO,
    &USERS,
    &USAGE_LOOKBACK,
    &TRUNCATED,
];

/// Index of the family whose values are computed at scrape time.
pub(crate) const EXPIRES_IN_INDEX: usize = 7;

/// One organization's snapshot as text: every family's sample lines, except that `expires_in` keeps
/// each series' name and expiry so that the value can be computed when scraped.
#[derive(Debug)]
pub struct RenderedOrganization {
    /// Per family of [`FAMILIES`]; empty when the organization has no series of it. Reference-counted:
    /// every scrape sends the same bytes.
    pub(crate) families: Vec<Bytes>,
    /// The same, each compressed once.
    pub(crate) gzipped: Vec<gzip::Deflated>,
    /// The `expires_in` lines of the current second, plain and compressed: every scrape within one
    /// second shares them.
    expires_in_cache: Mutex<Option<ExpiresIn>>,
    /// `expires_in` series (escaped, without value) and their expiry, in key order.
    pub(crate) expires_in: Vec<(Box<str>, f64)>,
    /// About how long the `expires_in` text is, to allocate it once per scrape.
    pub(crate) expires_in_len: usize,
}

impl RenderedOrganization {
    /// Writes every family of `snapshot` for the organization labelled `organization`.
    pub fn render(organization: &str, snapshot: &Snapshot) -> Self {
        let mut families: [String; FAMILIES.len()] = std::array::from_fn(|_| String::new());
        let mut expires_in = Vec::new();
        {
            let [
                keys,
                never_expiring,
                orphaned,
                unused,
                info,
                created,
                expiry,
                _expires_in,
                last_used,
                organization_info,
                users,
                usage_lookback,
                truncated,
            ] = &mut families;
            for ((workspace_id, status), count) in &snapshot.counts {
                let workspace_name = snapshot
                    .workspaces
                    .get(workspace_id)
                    .map_or(workspace_id.as_str(), String::as_str);
                let labels = [
                    ("organization", organization),
                    ("workspace_id", workspace_id.as_str()),
                    ("workspace_name", workspace_name),
                    ("status", status.as_str()),
                ];
                write_sample(keys, KEYS.name, &labels, count.total as f64);
                write_sample(
                    never_expiring,
                    NEVER_EXPIRING.name,
                    &labels,
                    count.never_expiring as f64,
                );
                if snapshot.users_by_role.is_some() {
                    write_sample(orphaned, ORPHANED.name, &labels, count.orphaned as f64);
                }
                if snapshot.usage_lookback.is_some() {
                    write_sample(unused, UNUSED.name, &labels, count.unused as f64);
                }
            }
            for key in &snapshot.keys {
                let KeyRecord {
                    id,
                    name,
                    workspace_id,
                    workspace_name,
                    ..
                } = key;
                let key_labels = [
                    ("organization", organization),
                    ("api_key_id", id.as_str()),
                    ("api_key_name", name.as_str()),
                    ("workspace_id", workspace_id.as_str()),
                    ("workspace_name", workspace_name.as_str()),
                ];
                write_sample(
                    info,
                    INFO.name,
                    &[
                        ("organization", organization),
                        ("api_key_id", id),
                        ("api_key_name", name),
                        ("workspace_id", workspace_id),
                        ("workspace_name", workspace_name),
                        ("status", key.status.as_str()),
                        ("created_by_id", &key.created_by_id),
                        ("created_by_type", &key.created_by_type),
                        ("created_by_name", &key.created_by_name),
                        ("created_by_email", &key.created_by_email),
                        ("created_by_member", key.created_by_member.as_str()),
                    ],
                    1.0,
                );
                write_sample(created, CREATED.name, &key_labels, key.created_at);
                if let Some(expires_at) = key.expires_at {
                    write_sample(expiry, EXPIRY.name, &key_labels, expires_at);
                    let mut series = String::new();
                    write_series(&mut series, EXPIRES_IN.name, &key_labels);
                    expires_in.push((series.into_boxed_str(), expires_at));
                }
                if let Some(at) = key.last_used {
                    write_sample(last_used, LAST_USED.name, &key_labels, at);
                }
            }
            if let Some((id, name)) = &snapshot.organization_info {
                write_sample(
                    organization_info,
                    ORGANIZATION_INFO.name,
                    &[
                        ("organization", organization),
                        ("organization_id", id),
                        ("organization_name", name),
                    ],
                    1.0,
                );
            }
            for (role, count) in snapshot.users_by_role.iter().flatten() {
                write_sample(
                    users,
                    USERS.name,
                    &[("organization", organization), ("role", role)],
                    *count as f64,
                );
            }
            if let Some(lookback) = snapshot.usage_lookback {
                write_sample(
                    usage_lookback,
                    USAGE_LOOKBACK.name,
                    &[("organization", organization)],
                    lookback,
                );
            }
            if snapshot.has_inventory {
                write_sample(
                    truncated,
                    TRUNCATED.name,
                    &[("organization", organization)],
                    snapshot.truncated_label_values as f64,
                );
            }
        }
        let expires_in_len = expires_in.iter().map(|(series, _)| series.len() + 24).sum();
        let families: Vec<Bytes> = families.into_iter().map(Bytes::from).collect();
        let gzipped = families
            .iter()
            .map(|text| gzip::Deflated::new(text, gzip::AT_PUBLISH))
            .collect();
        Self {
            families,
            gzipped,
            expires_in_cache: Mutex::new(None),
            expires_in,
            expires_in_len,
        }
    }

    fn has_series(&self, index: usize) -> bool {
        match index {
            EXPIRES_IN_INDEX => !self.expires_in.is_empty(),
            _ => !self.families[index].is_empty(),
        }
    }

    /// The `expires_in` lines as of `now`, computed by the first scrape of each second and shared by
    /// the others of that second.
    fn expires_in(&self, now: f64) -> ExpiresIn {
        let second = now.floor() as i64;
        let mut cache = self
            .expires_in_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = cache.as_ref().filter(|cached| cached.second == second) {
            return cached.clone();
        }
        let mut text = String::with_capacity(self.expires_in_len);
        for (series, expires_at) in &self.expires_in {
            text.push_str(series);
            text.push(' ');
            write_value(&mut text, expires_at - now);
            text.push('\n');
        }
        let fresh = ExpiresIn {
            second,
            gzipped: Arc::new(gzip::Deflated::new(text.as_bytes(), gzip::PER_SCRAPE)),
            plain: Bytes::from(text),
        };
        *cache = Some(fresh.clone());
        fresh
    }
}

#[derive(Debug, Clone)]
struct ExpiresIn {
    second: i64,
    plain: Bytes,
    gzipped: Arc<gzip::Deflated>,
}

/// Whether the body is sent as text or as a stream of gzip members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The family headers, plain and as gzip members, built once for the whole process.
fn headers() -> &'static [(Bytes, gzip::Deflated)] {
    static HEADERS: std::sync::OnceLock<Vec<(Bytes, gzip::Deflated)>> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        FAMILIES
            .iter()
            .map(|family| {
                let mut header = String::new();
                write_gauge_header(&mut header, family.name, family.help);
                let gzipped = gzip::Deflated::new(header.as_bytes(), gzip::AT_PUBLISH);
                (Bytes::from(header), gzipped)
            })
            .collect()
    })
}

/// Appends every API-key family of `organizations`, in the Prometheus text format, to `body` (plain or
/// compressed): one header per family, then each organization's lines. Text that only changes with a
/// publish is shared with every other scrape rather than copied, and compressed only once.
pub(crate) fn encode(organizations: &[Arc<RenderedOrganization>], now: f64, body: &mut gzip::Body) {
    for (index, (plain_header, deflated_header)) in headers().iter().enumerate() {
        if !organizations
            .iter()
            .any(|rendered| rendered.has_series(index))
        {
            continue;
        }
        body.push(plain_header, deflated_header);
        for rendered in organizations {
            if index == EXPIRES_IN_INDEX {
                let expires_in = rendered.expires_in(now);
                body.push(&expires_in.plain, &expires_in.gzipped);
            } else {
                body.push(&rendered.families[index], &rendered.gzipped[index]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_help_says_the_values_are_cached_and_usage_help_states_its_limits() {
        assert!(FAMILIES.iter().all(|family| family.help.ends_with(CACHED)));
        assert!(LAST_USED.help.contains(USAGE_NOTE));
        assert_eq!(FAMILIES[EXPIRES_IN_INDEX].name, EXPIRES_IN.name);
    }
}
