//! What `/metrics` serves: the exporter's own health metrics, build info and process metrics from a
//! `prometheus` registry, followed by the API-key metrics rendered from the latest snapshots.

mod api_keys;
mod exporter;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{Registry, TextEncoder};

pub use api_keys::ApiKeysMetrics;
pub use exporter::ExporterMetrics;

use crate::snapshot::SnapshotStore;

/// Everything served on the telemetry path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exposition {
    registry: Registry,
    api_keys: Arc<ApiKeysMetrics>,
    /// Size of the previous scrape, so the next one allocates its buffer once instead of doubling
    /// its way up to megabytes (and leaving the allocator with a trail of freed blocks).
    last_size: Arc<AtomicUsize>,
}

impl Exposition {
    pub fn new(
        exporter_metrics: &ExporterMetrics,
        store: Arc<SnapshotStore>,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        exporter_metrics.register(&registry)?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            api_keys: Arc::new(ApiKeysMetrics::new(store)),
            last_size: Arc::new(AtomicUsize::new(64 * 1024)),
        })
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut text = String::with_capacity(self.last_size.load(Ordering::Relaxed) + 4096);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text)?;
        self.api_keys.encode(&mut text)?;
        self.last_size.store(text.len(), Ordering::Relaxed);
        Ok(text.into_bytes())
    }
}
