//! Metrics about the organization's API keys, built fresh from the latest snapshots at every scrape:
//! keys that disappeared from the API leave no stale series, and `expires_in` is exact at scrape time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

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

/// Reads the [`SnapshotStore`] on every scrape; it never calls the Admin API.
#[derive(Debug)]
pub struct ApiKeysCollector {
    store: Arc<SnapshotStore>,
    descs: Vec<Desc>,
}

impl ApiKeysCollector {
    pub fn new(store: Arc<SnapshotStore>) -> Result<Self, prometheus::Error> {
        debug_assert!(FAMILIES.iter().all(|family| family.help.ends_with(CACHED)));
        let descs = FAMILIES
            .iter()
            .map(|family| {
                Desc::new(
                    family.name.to_owned(),
                    family.help.to_owned(),
                    family
                        .labels
                        .iter()
                        .map(|label| (*label).to_owned())
                        .collect(),
                    HashMap::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { store, descs })
    }
}

impl Collector for ApiKeysCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = unix_seconds(SystemTime::now());
        let mut families: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        for (organization, snapshot) in self.store.all() {
            collect_organization(&organization, &snapshot, now, &mut families);
        }
        FAMILIES
            .iter()
            .zip(families)
            .map(|(family, metrics)| {
                let mut metric_family = MetricFamily::default();
                metric_family.set_name(family.name.to_owned());
                metric_family.set_help(family.help.to_owned());
                metric_family.set_field_type(MetricType::GAUGE);
                metric_family.set_metric(metrics);
                metric_family
            })
            .collect()
    }
}

fn collect_organization(
    organization: &str,
    snapshot: &Snapshot,
    now: f64,
    families: &mut [Vec<Metric>],
) {
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
            expires_in.push(gauge(&key_values, KEY_LABELS, expires_at - now));
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
