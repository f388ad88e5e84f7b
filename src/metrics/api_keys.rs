//! Metrics about the organization's API keys, rendered from the latest snapshots: keys that disappeared
//! from the API leave no stale series, and `expires_in` is exact at scrape time.
//!
//! The labels of tens of thousands of keys only change when a poll publishes a new snapshot, so each
//! snapshot is rendered to text once (escaping done by the `prometheus` crate's encoder) and reused by
//! every scrape until the next poll; only the `expires_in` values are computed per scrape.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::snapshot::{KeyRecord, Snapshot, SnapshotStore};

const CACHED: &str = "Cached from the last successful background poll of the Admin API.";

struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const KEY_LABELS: &[&str] = &[
    "organization",
    "api_key_id",
    "api_key_name",
    "workspace_id",
    "workspace_name",
];
const COUNT_LABELS: &[&str] = &["organization", "workspace_id", "workspace_name", "status"];

const KEYS: Family = Family {
    name: "anthropic_api_keys",
    help: "Number of API keys by workspace and status. Cached from the last successful background poll of the Admin API.",
    labels: COUNT_LABELS,
};
const NEVER_EXPIRING: Family = Family {
    name: "anthropic_api_keys_never_expiring",
    help: "Number of API keys without an expiry date, by workspace and status. Cached from the last successful background poll of the Admin API.",
    labels: COUNT_LABELS,
};
const INFO: Family = Family {
    name: "anthropic_api_key_info",
    help: "Information about an API key, value 1. Cached from the last successful background poll of the Admin API.",
    labels: &[
        "organization",
        "api_key_id",
        "api_key_name",
        "workspace_id",
        "workspace_name",
        "status",
        "created_by_id",
        "created_by_type",
    ],
};
const CREATED: Family = Family {
    name: "anthropic_api_key_created_timestamp_seconds",
    help: "Unix time at which the API key was created. Cached from the last successful background poll of the Admin API.",
    labels: KEY_LABELS,
};
const EXPIRY: Family = Family {
    name: "anthropic_api_key_expiry_timestamp_seconds",
    help: "Unix time at which the API key expires; absent for keys that never expire. Cached from the last successful background poll of the Admin API.",
    labels: KEY_LABELS,
};
const EXPIRES_IN: Family = Family {
    name: "anthropic_api_key_expires_in_seconds",
    help: "Seconds until the API key expires, negative once past, computed at scrape time; absent for keys that never expire. Cached from the last successful background poll of the Admin API.",
    labels: KEY_LABELS,
};
const ORGANIZATION_INFO: Family = Family {
    name: "anthropic_organization_info",
    help: "Information about the organization the admin key belongs to, value 1. Cached from the last successful background poll of the Admin API.",
    labels: &["organization", "organization_id", "organization_name"],
};

const FAMILIES: [&Family; 7] = [
    &KEYS,
    &NEVER_EXPIRING,
    &INFO,
    &CREATED,
    &EXPIRY,
    &EXPIRES_IN,
    &ORGANIZATION_INFO,
];

/// Renders the API-key families from the [`SnapshotStore`]; it never calls the Admin API.
#[derive(Debug)]
pub struct ApiKeysMetrics {
    store: Arc<SnapshotStore>,
    rendered: Mutex<HashMap<String, Arc<RenderedOrganization>>>,
}

/// One organization's snapshot as text: every family's sample lines, except that `expires_in` keeps the
/// series names and expiry times so the value can be computed when scraped.
#[derive(Debug)]
struct RenderedOrganization {
    snapshot: Arc<Snapshot>,
    /// Reference-counted: every scrape sends the same bytes.
    families: Vec<Bytes>,
    expires_in: Vec<(String, f64)>,
    /// About how long the `expires_in` text is, to allocate it once per scrape.
    expires_in_len: usize,
}

impl ApiKeysMetrics {
    pub fn new(store: Arc<SnapshotStore>) -> Self {
        debug_assert!(FAMILIES.iter().all(|family| family.help.ends_with(CACHED)));
        Self {
            store,
            rendered: Mutex::new(HashMap::new()),
        }
    }

    /// Appends every API-key family, in the Prometheus text format, to `out`.
    /// Appends every API-key family, in the Prometheus text format, to `chunks`. The text that only
    /// changes with a poll is shared with every other scrape rather than copied.
    pub fn encode(&self, chunks: &mut Vec<Bytes>) -> Result<(), prometheus::Error> {
        let now = unix_seconds(SystemTime::now());
        let organizations = self
            .store
            .all()
            .into_iter()
            .map(|(organization, snapshot)| self.rendered(&organization, snapshot))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, family) in FAMILIES.iter().enumerate() {
            let is_expires_in = std::ptr::eq(*family, &EXPIRES_IN);
            let empty = organizations.iter().all(|rendered| match is_expires_in {
                true => rendered.expires_in.is_empty(),
                false => rendered.families[index].is_empty(),
            });
            if empty {
                continue;
            }
            chunks.push(Bytes::from(format!(
                "# HELP {} {}\n# TYPE {} gauge\n",
                family.name, family.help, family.name
            )));
            for rendered in &organizations {
                if is_expires_in {
                    let mut text = String::with_capacity(rendered.expires_in_len);
                    for (series, expires_at) in &rendered.expires_in {
                        let _ = writeln!(text, "{series} {}", expires_at - now);
                    }
                    chunks.push(Bytes::from(text));
                } else {
                    chunks.push(rendered.families[index].clone());
                }
            }
        }
        Ok(())
    }

    /// The text of `snapshot`, rendered on the first scrape after the poll that published it.
    fn rendered(
        &self,
        organization: &str,
        snapshot: Arc<Snapshot>,
    ) -> Result<Arc<RenderedOrganization>, prometheus::Error> {
        let mut cache = self
            .rendered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(rendered) = cache
            .get(organization)
            .filter(|r| Arc::ptr_eq(&r.snapshot, &snapshot))
        {
            return Ok(Arc::clone(rendered));
        }
        let rendered = Arc::new(render_organization(organization, snapshot)?);
        cache.insert(organization.to_owned(), Arc::clone(&rendered));
        Ok(rendered)
    }
}

fn render_organization(
    organization: &str,
    snapshot: Arc<Snapshot>,
) -> Result<RenderedOrganization, prometheus::Error> {
    let mut metrics: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
    collect_organization(organization, &snapshot, &mut metrics);
    let mut families = Vec::with_capacity(FAMILIES.len());
    let mut expires_in = Vec::new();
    for (family, metrics) in FAMILIES.iter().zip(metrics) {
        let text = sample_lines(family, metrics)?;
        if std::ptr::eq(*family, &EXPIRES_IN) {
            // Keep each series' escaped name (the line up to its value) beside its key's expiry; the
            // lines follow the keys' order, as `collect_organization` emits them.
            let expiries = snapshot.keys.iter().filter_map(|key| key.expires_at);
            for (line, expires_at) in text.lines().zip(expiries) {
                let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
                expires_in.push((series.to_owned(), expires_at));
            }
            families.push(Bytes::new());
        } else {
            families.push(Bytes::from(text));
        }
    }
    let expires_in_len = expires_in.iter().map(|(series, _)| series.len() + 24).sum();
    Ok(RenderedOrganization {
        snapshot,
        families,
        expires_in,
        expires_in_len,
    })
}

/// The sample lines of one family (no HELP or TYPE), escaped by the `prometheus` crate's encoder.
fn sample_lines(family: &Family, metrics: Vec<Metric>) -> Result<String, prometheus::Error> {
    if metrics.is_empty() {
        return Ok(String::new());
    }
    let mut metric_family = MetricFamily::default();
    metric_family.set_name(family.name.to_owned());
    metric_family.set_help(family.help.to_owned());
    metric_family.set_field_type(MetricType::GAUGE);
    metric_family.set_metric(metrics);
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&[metric_family], &mut buffer)?;
    let text =
        String::from_utf8(buffer).map_err(|error| prometheus::Error::Msg(error.to_string()))?;
    let mut lines = String::with_capacity(text.len());
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        lines.push_str(line);
        lines.push('\n');
    }
    Ok(lines)
}

fn collect_organization(organization: &str, snapshot: &Snapshot, families: &mut [Vec<Metric>]) {
    let [
        keys,
        never_expiring,
        info,
        created,
        expiry,
        expires_in,
        organization_info,
    ] = families
    else {
        return;
    };
    organization_info.push(gauge(
        &[
            organization,
            &snapshot.organization_id,
            &snapshot.organization_name,
        ],
        ORGANIZATION_INFO.labels,
        1.0,
    ));
    for ((workspace_id, status), count) in &snapshot.counts {
        let workspace_name = snapshot
            .workspaces
            .get(workspace_id)
            .map_or(workspace_id.as_str(), String::as_str);
        let values = [
            organization,
            workspace_id.as_str(),
            workspace_name,
            status.as_str(),
        ];
        keys.push(gauge(&values, COUNT_LABELS, count.total as f64));
        never_expiring.push(gauge(&values, COUNT_LABELS, count.never_expiring as f64));
    }
    for key in &snapshot.keys {
        let KeyRecord {
            id,
            name,
            workspace_id,
            workspace_name,
            ..
        } = key;
        let key_values = [
            organization,
            id.as_str(),
            name.as_str(),
            workspace_id.as_str(),
            workspace_name.as_str(),
        ];
        info.push(gauge(
            &[
                organization,
                id,
                name,
                workspace_id,
                workspace_name,
                key.status.as_str(),
                &key.created_by_id,
                &key.created_by_type,
            ],
            INFO.labels,
            1.0,
        ));
        created.push(gauge(&key_values, KEY_LABELS, key.created_at));
        if let Some(expires_at) = key.expires_at {
            expiry.push(gauge(&key_values, KEY_LABELS, expires_at));
            expires_in.push(gauge(&key_values, KEY_LABELS, expires_at));
        }
    }
}

fn gauge(values: &[&str], names: &[&str], value: f64) -> Metric {
    let labels = names
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_gauge(gauge);
    metric.set_label(labels);
    metric
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since_epoch| since_epoch.as_secs_f64())
        .unwrap_or_default()
}
