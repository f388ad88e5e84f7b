//! What `/metrics` serves: the exporter's own health metrics, build info and process metrics from a
//! `prometheus` registry, followed by the API-key metrics of every organization, rendered when their
//! snapshots were published.

mod api_keys;
mod exporter;
mod store;
mod text;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prometheus::{Registry, TextEncoder};

pub use api_keys::RenderedOrganization;
pub use exporter::ExporterMetrics;
pub use store::SnapshotStore;

/// Everything served on the telemetry path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exposition {
    registry: Registry,
    store: Arc<SnapshotStore>,
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
        Ok(Self { registry, store })
    }

    /// Renders every metric in the Prometheus text format, as chunks to send one after the other: the
    /// large, publish-to-publish constant parts are shared between scrapes instead of copied into each.
    pub fn render_chunks(&self) -> Result<Vec<Bytes>, prometheus::Error> {
        let mut own = String::with_capacity(16 * 1024);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut own)?;
        let mut chunks = vec![Bytes::from(own)];
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since_epoch| since_epoch.as_secs_f64())
            .unwrap_or_default();
        api_keys::encode(&self.store.all(), now, &mut chunks);
        Ok(chunks)
    }

    /// Renders every metric in the Prometheus text format, as one buffer.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let chunks = self.render_chunks()?;
        let mut text = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
        for chunk in chunks {
            text.extend_from_slice(&chunk);
        }
        Ok(text)
    }
}
