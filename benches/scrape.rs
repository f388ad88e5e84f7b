//! How long a publish and a scrape take, and how large the body is, for organizations of 1,000 to
//! 50,000 keys, in-process (no HTTP): the cost of the exposition alone.
//!
//! Run with `cargo bench --bench scrape`; the figures are recorded in `docs/performance.md`.

// A benchmark that cannot set up should stop right there.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anthropic_keys_exporter::admin_api::model::{ApiKey, Organization, Workspace};
use anthropic_keys_exporter::metrics::{
    Encoding, ExporterMetrics, Exposition, RenderedOrganization, SnapshotStore,
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

/// Milliseconds `f` takes, averaged over `rounds`, with `before` run (untimed) ahead of each round.
fn average_ms(rounds: u32, mut before: impl FnMut(), mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut total = 0.0;
    let mut size = 0;
    for _ in 0..rounds {
        before();
        let started = Instant::now();
        size = f();
        total += started.elapsed().as_secs_f64() * 1000.0;
    }
    (total / f64::from(rounds), size)
}

/// Sleeps into the next wall-clock second, where a scrape computes `expires_in` afresh.
fn into_next_second() {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 1_000_000,
    ));
}

fn main() {
    println!(
        "{:>7} {:>11} {:>10} {:>15} {:>15} {:>15} {:>15} {:>11} {:>10}",
        "keys",
        "snapshot_ms",
        "publish_ms",
        "gzip_first_ms",
        "gzip_same_s_ms",
        "plain_first_ms",
        "plain_later_ms",
        "plain_bytes",
        "gzip_bytes"
    );
    for keys in [1_000, 10_000, 50_000] {
        let (organization, workspaces, api_keys) = listing(keys);
        let started = Instant::now();
        let snapshot = Snapshot::from_listing(organization, workspaces, api_keys).unwrap();
        let snapshot_ms = started.elapsed().as_secs_f64() * 1000.0;

        // What a poll does when it publishes: render the snapshot, compressing as it goes.
        let started = Instant::now();
        let rendered = Arc::new(RenderedOrganization::render("bench", &snapshot));
        let publish_ms = started.elapsed().as_secs_f64() * 1000.0;
        let store = Arc::new(SnapshotStore::new(["bench"]));
        store.publish("bench", rendered);
        let metrics = ExporterMetrics::new().unwrap();
        let exposition = Exposition::new(&metrics, store).unwrap();
        let size = |encoding| -> usize {
            exposition
                .render_encoded(encoding)
                .unwrap()
                .iter()
                .map(|chunk| chunk.len())
                .sum()
        };

        // The first scrape of a second computes expires_in; the others of that second share it.
        let (gzip_first_ms, gzip_bytes) = average_ms(5, into_next_second, || size(Encoding::Gzip));
        let (gzip_same_ms, _) = average_ms(10, || {}, || size(Encoding::Gzip));
        // The first scrape without gzip inflates the text, which later ones share.
        let (plain_first_ms, plain_bytes) = average_ms(1, || {}, || size(Encoding::Identity));
        let (plain_later_ms, _) = average_ms(10, || {}, || size(Encoding::Identity));
        println!(
            "{keys:>7} {snapshot_ms:>11.1} {publish_ms:>10.1} {gzip_first_ms:>15.2} {gzip_same_ms:>15.2} \
             {plain_first_ms:>15.2} {plain_later_ms:>15.2} {plain_bytes:>11} {gzip_bytes:>10}"
        );
    }
}
