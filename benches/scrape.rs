//! How long a scrape takes, and how large it is, for organizations of 1,000 to 50,000 keys.
//!
//! Run with `cargo bench --bench scrape`; the figures are recorded in `docs/performance.md`.

// A benchmark that cannot set up should stop right there.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use anthropic_keys_exporter::admin_api::model::{ApiKey, Organization, Workspace};
use anthropic_keys_exporter::metrics::{
    ExporterMetrics, Exposition, RenderedOrganization, SnapshotStore,
};
use anthropic_keys_exporter::snapshot::Snapshot;
use serde_json::json;

fn listing(keys: usize) -> (Organization, Vec<Workspace>, Vec<ApiKey>) {
    let workspaces: Vec<Workspace> = (0..20)
        .map(|i| {
            serde_json::from_value(
                json!({"id": format!("wrkspc_{i:02}"), "name": format!("Workspace {i}")}),
            )
            .unwrap()
        })
        .collect();
    let api_keys: Vec<ApiKey> = (0..keys)
        .map(|i| {
            serde_json::from_value(json!({
                "id": format!("apikey_01{i:022}"),
                "name": format!("service-{i}-production-key"),
                "created_at": "2025-03-01T12:34:56.123456Z",
                "created_by": {"id": format!("user_01{:022}", i % 300), "type": "user"},
                "expires_at": if i % 4 == 0 { serde_json::Value::Null } else { json!("2027-03-01T12:34:56.123456Z") },
                "status": (["active", "active", "inactive", "archived", "expired"][i % 5]),
                "scope": {"type": "workspace", "workspace_id": format!("wrkspc_{:02}", i % 20)},
            }))
            .unwrap()
        })
        .collect();
    let organization = Organization {
        id: "org".into(),
        name: Some("Bench".into()),
    };
    (organization, workspaces, api_keys)
}

fn main() {
    println!(
        "{:>8} {:>12} {:>18} {:>10} {:>12} {:>12}",
        "keys", "snapshot_ms", "render_at_publish_ms", "scrape_ms", "bytes", "gzip_bytes"
    );
    for keys in [1_000, 10_000, 50_000] {
        let (organization, workspaces, api_keys) = listing(keys);
        let started = Instant::now();
        let snapshot = Snapshot::from_listing(organization, workspaces, api_keys).unwrap();
        let snapshot_ms = started.elapsed().as_secs_f64() * 1000.0;

        // What a poll does when it publishes: render the snapshot's text once.
        let started = Instant::now();
        let rendered = Arc::new(RenderedOrganization::render("bench", &snapshot));
        let first_ms = started.elapsed().as_secs_f64() * 1000.0;
        let store = Arc::new(SnapshotStore::new(["bench"]));
        store.publish("bench", rendered);
        let metrics = ExporterMetrics::new().unwrap();
        let exposition = Exposition::new(&metrics, store).unwrap();
        let first: usize = exposition
            .render_chunks()
            .unwrap()
            .iter()
            .map(|chunk| chunk.len())
            .sum();
        let rounds = 10;
        let mut size = first;
        let started = Instant::now();
        for _ in 0..rounds {
            size = exposition
                .render_chunks()
                .unwrap()
                .iter()
                .map(|chunk| chunk.len())
                .sum();
        }
        let scrape_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        let body = exposition.render().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &body).unwrap();
        let gzip = encoder.finish().unwrap().len();
        println!(
            "{keys:>8} {snapshot_ms:>12.1} {first_ms:>18.1} {scrape_ms:>10.1} {size:>12} {gzip:>12}"
        );
    }
}
