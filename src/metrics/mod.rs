//! The metrics registry: the exporter's own health metrics, the API-key metrics read from the latest
//! snapshots at scrape time, build info and process metrics.

mod api_keys;
mod exporter;

use std::sync::Arc;

use prometheus::{Encoder, Registry, TextEncoder};

pub use api_keys::ApiKeysCollector;
pub use exporter::ExporterMetrics;

use crate::snapshot::SnapshotStore;

/// Builds the registry served on the telemetry path.
pub fn build_registry(
    exporter_metrics: &ExporterMetrics,
    store: Arc<SnapshotStore>,
) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    exporter_metrics.register(&registry)?;
    registry.register(Box::new(ApiKeysCollector::new(store)?))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<Vec<u8>, prometheus::Error> {
    let families = registry.gather();
    let mut buffer = Vec::with_capacity(64 * 1024);
    TextEncoder::new().encode(&families, &mut buffer)?;
    Ok(buffer)
}
