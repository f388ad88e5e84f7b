//! Metrics about an organization's API keys, rendered from its [`Snapshot`] when the snapshot is
//! published: keys that disappeared from the API leave no stale series, and only `expires_in` is
//! computed per scrape.
//!
//! The labels of tens of thousands of keys only change when a source publishes, so each snapshot is
//! written to text once and every scrape until the next publish sends the same bytes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::text::{write_sample, write_series, write_value};
use super::{gzip, lock};
use crate::snapshot::{KeyRecord, Snapshot};
use crate::zero_copy;

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

/// One organization's snapshot, compressed: every family's sample lines, except that `expires_in`
/// keeps each series' name and expiry so that the value can be computed when scraped.
///
/// The text of a large organization is many times the size of its compressed form, so only the
/// compressed form is kept; scrapes without gzip get the text inflated once and shared while they keep
/// coming (see [`RenderedOrganization::drop_unused_text`]).
#[derive(Debug)]
pub struct RenderedOrganization {
    /// Per family of [`FAMILIES`], compressed when the snapshot was published; empty when the
    /// organization has no series of it.
    pub(crate) gzipped: Vec<gzip::Deflated>,
    plain: Mutex<PlainText>,
    /// The `expires_in` lines of the current second: every scrape within one second shares them.
    expires_in_cache: Mutex<Option<ExpiresIn>>,
    expires_in: ExpiresInSeries,
}

/// The families inflated for scrapes without gzip, and when one last used them.
#[derive(Debug, Default)]
struct PlainText {
    families: Option<Arc<[Bytes]>>,
    last_used: Option<Instant>,
}

/// `expires_in` series (escaped, without value) one after the other in one buffer, with where each
/// ends and its expiry, in key order: one allocation instead of one per key.
#[derive(Debug, Default)]
struct ExpiresInSeries {
    text: String,
    ends: Vec<(usize, f64)>,
}

impl ExpiresInSeries {
    fn push(&mut self, labels: &[(&str, &str)], expires_at: f64) {
        write_series(&mut self.text, EXPIRES_IN.name, labels);
        self.ends.push((self.text.len(), expires_at));
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// About how long the lines are with their values.
    fn text_len(&self) -> usize {
        self.text.len() + 24 * self.ends.len()
    }

    fn write(&self, now: f64, sink: &mut impl TextSink) {
        let mut start = 0;
        for &(end, expires_at) in &self.ends {
            let out = sink.text();
            out.push_str(&self.text[start..end]);
            out.push(' ');
            write_value(out, expires_at - now);
            out.push('\n');
            start = end;
        }
    }
}

/// Where text is written: a plain buffer, or a compressor's buffer that empties as it fills.
trait TextSink {
    fn text(&mut self) -> &mut String;
}

impl TextSink for String {
    fn text(&mut self) -> &mut String {
        self
    }
}

impl TextSink for gzip::PartWriter {
    fn text(&mut self) -> &mut String {
        gzip::PartWriter::text(self)
    }
}

impl RenderedOrganization {
    /// Writes every family of `snapshot` for the organization labelled `organization`, compressing as
    /// it goes: the whole text never exists at once.
    pub fn render(organization: &str, snapshot: &Snapshot) -> Self {
        let mut families: [gzip::PartWriter; FAMILIES.len()] =
            std::array::from_fn(|_| gzip::PartWriter::new(gzip::AT_PUBLISH));
        let mut expires_in = ExpiresInSeries::default();
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
                write_sample(keys.text(), KEYS.name, &labels, count.total as f64);
                write_sample(
                    never_expiring.text(),
                    NEVER_EXPIRING.name,
                    &labels,
                    count.never_expiring as f64,
                );
                if snapshot.users_by_role.is_some() {
                    write_sample(
                        orphaned.text(),
                        ORPHANED.name,
                        &labels,
                        count.orphaned as f64,
                    );
                }
                if snapshot.usage_lookback.is_some() {
                    write_sample(unused.text(), UNUSED.name, &labels, count.unused as f64);
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
                    info.text(),
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
                write_sample(created.text(), CREATED.name, &key_labels, key.created_at);
                if let Some(expires_at) = key.expires_at {
                    write_sample(expiry.text(), EXPIRY.name, &key_labels, expires_at);
                    expires_in.push(&key_labels, expires_at);
                }
                if let Some(at) = key.last_used {
                    write_sample(last_used.text(), LAST_USED.name, &key_labels, at);
                }
            }
            if let Some((id, name)) = &snapshot.organization_info {
                write_sample(
                    organization_info.text(),
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
                    users.text(),
                    USERS.name,
                    &[("organization", organization), ("role", role)],
                    *count as f64,
                );
            }
            if let Some(lookback) = snapshot.usage_lookback {
                write_sample(
                    usage_lookback.text(),
                    USAGE_LOOKBACK.name,
                    &[("organization", organization)],
                    lookback,
                );
            }
            if snapshot.has_inventory {
                write_sample(
                    truncated.text(),
                    TRUNCATED.name,
                    &[("organization", organization)],
                    snapshot.truncated_label_values as f64,
                );
            }
        }
        expires_in.text.shrink_to_fit();
        expires_in.ends.shrink_to_fit();
        Self {
            gzipped: families.into_iter().map(gzip::PartWriter::finish).collect(),
            plain: Mutex::default(),
            expires_in_cache: Mutex::new(None),
            expires_in,
        }
    }

    fn has_series(&self, index: usize) -> bool {
        match index {
            EXPIRES_IN_INDEX => !self.expires_in.is_empty(),
            _ => self.gzipped[index].text_len() > 0,
        }
    }

    /// The families as text, inflated by the first scrape without gzip and shared by the next ones.
    fn plain_families(&self) -> Arc<[Bytes]> {
        let mut plain = lock(&self.plain);
        plain.last_used = Some(Instant::now());
        Arc::clone(
            plain
                .families
                .get_or_insert_with(|| self.inflate_families()),
        )
    }

    fn inflate_families(&self) -> Arc<[Bytes]> {
        let len = self.gzipped.iter().map(gzip::Deflated::text_len).sum();
        let inflated = || self.gzipped.iter().map(gzip::Deflated::inflate);
        zero_copy::share(len, inflated()).map_or_else(|| inflated().collect(), Arc::from)
    }

    /// Inflates the text now if scrapes without gzip were using `previous`'s, the snapshot this one
    /// replaces: called before publishing, so that the first such scrape after a poll is no slower
    /// than the others. The text then stays as long as it would have stayed with `previous`.
    pub fn keep_plain_text_in_use(&self, previous: &Self) {
        let last_used = {
            let previous = lock(&previous.plain);
            match (&previous.families, previous.last_used) {
                (Some(_), Some(last_used)) => last_used,
                _ => return,
            }
        };
        let families = self.inflate_families();
        let mut plain = lock(&self.plain);
        plain.families = Some(families);
        plain.last_used = Some(last_used);
    }

    /// Drops the inflated text if no scrape has used it since `cutoff`, and the `expires_in` lines if
    /// no scrape has computed them since `cutoff_unix` (Unix seconds); true if anything was dropped.
    ///
    /// NB: while scrapes keep coming, each second's first scrape replaces the `expires_in` lines
    /// itself; dropping them here too would make every tick free something and trim the heap under
    /// load, which stalls the scrapes in flight.
    pub(crate) fn drop_unused_text(&self, cutoff: Instant, cutoff_unix: f64) -> bool {
        let mut dropped = false;
        let mut cache = lock(&self.expires_in_cache);
        if cache
            .as_ref()
            .is_some_and(|cached| cached.now < cutoff_unix)
        {
            *cache = None;
            dropped = true;
        }
        drop(cache);
        let mut plain = lock(&self.plain);
        if plain.families.is_some() && plain.last_used.is_none_or(|used| used < cutoff) {
            plain.families = None;
            dropped = true;
        }
        dropped
    }

    #[cfg(test)]
    pub(crate) fn plain_is_kept(&self) -> bool {
        lock(&self.plain).families.is_some()
    }

    /// Appends the `expires_in` lines as of `now`, computed by the first scrape of each second (per
    /// encoding) and shared by the others of that second.
    fn push_expires_in(&self, now: f64, body: &mut gzip::Body) {
        let second = now.floor() as i64;
        let mut cache = lock(&self.expires_in_cache);
        let cached = match cache.take() {
            Some(cached) if cached.second() == second => cache.insert(cached),
            _ => cache.insert(ExpiresIn {
                now,
                plain: None,
                gzipped: None,
            }),
        };
        // NB: both encodings of one second carry the same values.
        let now = cached.now;
        if body.is_gzip() {
            let gzipped = cached.gzipped.get_or_insert_with(|| {
                let mut writer = gzip::PartWriter::new(gzip::PER_SCRAPE);
                self.expires_in.write(now, &mut writer);
                writer.finish()
            });
            body.push_deflated(gzipped);
        } else {
            let plain = cached.plain.get_or_insert_with(|| {
                let mut text = String::with_capacity(self.expires_in.text_len());
                self.expires_in.write(now, &mut text);
                zero_copy::share(text.len(), [&text])
                    .and_then(|mut shared| shared.pop())
                    .unwrap_or_else(|| Bytes::from(text))
            });
            body.push_plain(plain);
        }
    }
}

#[derive(Debug)]
struct ExpiresIn {
    /// The time of the first scrape of the second: what its values are computed against.
    now: f64,
    plain: Option<Bytes>,
    gzipped: Option<gzip::Deflated>,
}

impl ExpiresIn {
    fn second(&self) -> i64 {
        self.now.floor() as i64
    }
}

/// Whether the body is sent as text or as a stream of gzip members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The family headers, plain and compressed, built once for the whole process.
fn headers() -> &'static [(Bytes, gzip::Deflated)] {
    static HEADERS: std::sync::OnceLock<Vec<(Bytes, gzip::Deflated)>> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        FAMILIES
            .iter()
            .map(|family| super::family_header(family.name, family.help, "gauge"))
            .collect()
    })
}

/// Appends every API-key family of `organizations`, in the Prometheus text format, to `body` (plain or
/// compressed): one header per family, then each organization's lines. Text that only changes with a
/// publish is shared with every other scrape rather than copied, and compressed only once.
pub(crate) fn encode(organizations: &[Arc<RenderedOrganization>], now: f64, body: &mut gzip::Body) {
    let gzip = body.is_gzip();
    let parts: Vec<(&RenderedOrganization, Option<Arc<[Bytes]>>)> = organizations
        .iter()
        .map(|rendered| {
            (
                rendered.as_ref(),
                (!gzip).then(|| rendered.plain_families()),
            )
        })
        .collect();
    super::push_families(
        body,
        headers(),
        &parts,
        |(rendered, _), index| rendered.has_series(index),
        |body, (rendered, plain), index| match plain {
            _ if index == EXPIRES_IN_INDEX => rendered.push_expires_in(now, body),
            Some(families) => body.push_plain(&families[index]),
            None => body.push_deflated(&rendered.gzipped[index]),
        },
    );
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
