//! What `/metrics` serves: build info, config reload and process metrics from a `prometheus`
//! registry, then the health metrics of every organization (compressed when they change), then the
//! API-key metrics of every organization (rendered when their snapshots were published).

mod api_keys;
mod exporter;
mod gzip;
#[cfg(target_os = "linux")]
mod process;
mod store;
mod text;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prometheus::{Registry, TextEncoder};

pub use api_keys::{Encoding, RenderedOrganization};
pub use exporter::ExporterMetrics;
pub use store::SnapshotStore;

/// Everything served on the telemetry path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exposition {
    registry: Registry,
    health: ExporterMetrics,
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
        registry.register(Box::new(process::OncePerSecond::for_self()))?;
        Ok(Self {
            registry,
            health: exporter_metrics.clone(),
            store,
        })
    }

    /// Renders every metric in the Prometheus text format, as chunks to send one after the other: the
    /// large, publish-to-publish constant parts are shared between scrapes instead of copied into each.
    pub fn render_chunks(&self) -> Result<Vec<Bytes>, prometheus::Error> {
        self.render_encoded(Encoding::Identity)
    }

    /// The same body as [`Exposition::render_chunks`], or that body gzip-compressed as one member: the
    /// snapshot parts were compressed when they were published, only the exporter's own metrics and
    /// the `expires_in` values are compressed here.
    pub fn render_encoded(&self, encoding: Encoding) -> Result<Vec<Bytes>, prometheus::Error> {
        let mut own = String::with_capacity(16 * 1024);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut own)?;
        let mut body = match encoding {
            Encoding::Identity => gzip::Body::plain(),
            Encoding::Gzip => gzip::Body::gzip(),
        };
        body.push_text(Bytes::from(own));
        self.health.encode(&mut body);
        api_keys::encode(&self.store.all(), unix_now(), &mut body);
        Ok(body.finish())
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

/// Appends families one block each, as the text format requires: a family's header, then every
/// organization's part of it, in organization order. A family no organization has series of is left
/// out, header and all.
fn push_families<P>(
    body: &mut gzip::Body,
    headers: &[(Bytes, gzip::Deflated)],
    organizations: &[P],
    has_series: impl Fn(&P, usize) -> bool,
    mut push_part: impl FnMut(&mut gzip::Body, &P, usize),
) {
    body.reserve(headers.len() * (organizations.len() + 1));
    for (index, (plain_header, deflated_header)) in headers.iter().enumerate() {
        if !organizations
            .iter()
            .any(|organization| has_series(organization, index))
        {
            continue;
        }
        body.push(plain_header, deflated_header);
        for organization in organizations {
            push_part(body, organization, index);
        }
    }
}

/// A family's `# HELP` and `# TYPE` lines, plain and compressed.
fn family_header(name: &str, help: &str, kind: &str) -> (Bytes, gzip::Deflated) {
    let mut header = String::new();
    text::write_header(&mut header, name, help, kind);
    let gzipped = gzip::Deflated::new(header.as_bytes(), gzip::AT_PUBLISH);
    (Bytes::from(header), gzipped)
}

/// A lock that a panic elsewhere does not make unusable: what it guards stays consistent between
/// statements.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The time `expires_in` is computed against.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|since_epoch| since_epoch.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::admin_api::model::{ApiKey, Organization, Workspace};
    use crate::snapshot::Snapshot;

    /// Organizations `a` and `b`, 50 keys each, half of them expiring.
    fn store_of_two_organizations() -> Arc<SnapshotStore> {
        let snapshot = snapshot_of(50);
        let store = Arc::new(SnapshotStore::new(["a", "b"]));
        for organization in ["a", "b"] {
            store.publish(
                organization,
                Arc::new(RenderedOrganization::render(organization, &snapshot)),
            );
        }
        store
    }

    /// `keys` keys, half of them expiring.
    fn snapshot_of(keys: usize) -> Snapshot {
        let keys: Vec<ApiKey> = (0..keys)
            .map(|i| {
                serde_json::from_value(serde_json::json!({"id": format!("k{i}"), "name": format!("n\"{i}"),
                    "created_at": "2025-01-01T00:00:00Z", "status": "active",
                    "expires_at": if i % 2 == 0 { serde_json::Value::Null } else { serde_json::json!("2030-01-01T00:00:00Z") }}))
                .unwrap()
            })
            .collect();
        let organization = Organization {
            id: "o".into(),
            name: Some("O".into()),
        };
        let workspace: Workspace =
            serde_json::from_value(serde_json::json!({"id": "w", "name": "W"})).unwrap();
        Snapshot::from_listing(organization, vec![workspace], keys).unwrap()
    }

    #[test]
    fn the_gzip_body_decompresses_to_exactly_the_plain_body() {
        let store = store_of_two_organizations();
        let exposition = Exposition::new(&ExporterMetrics::new().unwrap(), store).unwrap();

        // Within one second both encodings carry the same expires_in values; retry across a boundary.
        for _ in 0..3 {
            let plain: Vec<u8> = exposition.render().unwrap();
            let gzipped: Vec<u8> = exposition.render_encoded(Encoding::Gzip).unwrap().concat();
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&gzipped[..])
                .read_to_end(&mut text)
                .unwrap();
            let strip = |body: &[u8]| -> String {
                String::from_utf8_lossy(body)
                    .lines()
                    .filter(|line| !line.starts_with("process_"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if strip(&text) == strip(&plain) {
                assert!(
                    gzipped.len() * 4 < plain.len(),
                    "{} vs {}",
                    gzipped.len(),
                    plain.len()
                );
                return;
            }
        }
        panic!("the gzip body differs from the plain body");
    }

    #[test]
    fn plain_text_is_inflated_on_demand_and_dropped_once_unused() {
        let store = store_of_two_organizations();
        let exposition =
            Exposition::new(&ExporterMetrics::new().unwrap(), Arc::clone(&store)).unwrap();
        let keys_only = |body: Vec<u8>| -> String {
            String::from_utf8(body)
                .unwrap()
                .lines()
                .filter(|line| line.starts_with("anthropic_api_key_info"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let first = keys_only(exposition.render().unwrap());
        assert_eq!(first.lines().count(), 100);

        // A scrape since the cutoff keeps the text; none since, and it goes.
        let before_scrape = Instant::now() - Duration::from_secs(1);
        for rendered in store.all() {
            rendered.drop_unused_text(before_scrape, 0.0);
            assert!(rendered.plain_is_kept(), "used since the cutoff");
        }
        let after_scrape = Instant::now() + Duration::from_secs(1);
        for rendered in store.all() {
            assert!(rendered.drop_unused_text(after_scrape, 0.0));
            assert!(!rendered.plain_is_kept());
        }

        // Assert: the next scrape inflates the same text again.
        assert_eq!(keys_only(exposition.render().unwrap()), first);
    }

    #[test]
    fn a_new_snapshot_is_inflated_before_it_is_published_only_while_plain_scrapes_use_the_old_one()
    {
        let store = store_of_two_organizations();
        let exposition =
            Exposition::new(&ExporterMetrics::new().unwrap(), Arc::clone(&store)).unwrap();
        let first_plain = exposition.render().unwrap();
        assert!(!first_plain.is_empty());

        let replacement = RenderedOrganization::render("a", &snapshot_of(60));
        replacement.keep_plain_text_in_use(&store.get("a").unwrap());
        assert!(
            replacement.plain_is_kept(),
            "plain scrapes were using the old text"
        );
        store.publish("a", Arc::new(replacement));
        let infos = String::from_utf8(exposition.render().unwrap())
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("anthropic_api_key_info{"))
            .count();
        assert_eq!(infos, 60 + 50, "the inflated text is the new snapshot's");

        // Assert: with no plain scrape since the old text was dropped, nothing is inflated ahead.
        store.drop_unused_text(Duration::ZERO);
        let unused = RenderedOrganization::render("b", &snapshot_of(60));
        unused.keep_plain_text_in_use(&store.get("b").unwrap());
        assert!(!unused.plain_is_kept());
    }

    #[test]
    fn expires_in_lines_still_in_use_are_not_dropped_so_that_a_busy_exporter_is_not_trimmed() {
        let store = store_of_two_organizations();
        let exposition =
            Exposition::new(&ExporterMetrics::new().unwrap(), Arc::clone(&store)).unwrap();
        exposition.render_encoded(Encoding::Gzip).unwrap();
        let computed_at = unix_now();
        let long_ago = Instant::now() - Duration::from_secs(3600);

        // Computed a moment ago, and no plain text kept: nothing to drop, nothing freed.
        for rendered in store.all() {
            assert!(!rendered.drop_unused_text(long_ago, computed_at - 10.0));
        }
        // Not asked for since the cutoff: dropped.
        for rendered in store.all() {
            assert!(rendered.drop_unused_text(long_ago, computed_at + 1.0));
            assert!(!rendered.drop_unused_text(long_ago, computed_at + 1.0));
        }
    }
}
