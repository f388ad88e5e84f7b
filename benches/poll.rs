//! What a poll of the key inventory costs beyond fetching its pages: decoding pages of 1,000 keys
//! (the API's largest page) and building the inventory, against the floor of reading over the same
//! bytes and taking only the cursor, as `scripts/bench`'s fetch floor does. In-process, no HTTP.
//!
//! Run with `cargo bench --bench poll`; the figures are recorded in `docs/performance.md`.

// A benchmark that cannot set up should stop right there.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use anthropic_keys_exporter::admin_api::model::{ApiKey, Page};
use anthropic_keys_exporter::sources::api_keys::InventoryBuilder;
use serde::Deserialize;
use serde_json::json;

const PAGE: usize = 1000;

/// Pages shaped as the Admin API sends them, with the fields a key has today.
fn pages(keys: usize) -> Vec<Vec<u8>> {
    (0..keys.div_ceil(PAGE))
        .map(|page| {
            let data: Vec<serde_json::Value> = (page * PAGE..keys.min((page + 1) * PAGE))
                .map(|i| {
                    json!({
                        "id": format!("apikey_01{i:022}"),
                        "type": "api_key",
                        "name": format!("service-{i:06}-production"),
                        "created_at": "2025-03-01T12:34:56.123456Z",
                        "created_by": {"id": format!("user_01{:022}", i % 300), "type": "user"},
                        "expires_at": if i % 4 == 0 { serde_json::Value::Null } else { json!("2027-03-01T12:34:56.123456Z") },
                        "partial_key_hint": format!("sk-ant-api03-{i:06}...AA"),
                        "status": (["active", "active", "inactive", "archived", "expired"][i % 5]),
                        "workspace_id": format!("wrkspc_{:02}", i % 20),
                        "scope": {"type": "workspace", "workspace_id": format!("wrkspc_{:02}", i % 20)},
                    })
                })
                .collect();
            let last_id = data.last().map(|key| key["id"].clone());
            serde_json::to_vec(&json!({"data": data, "has_more": true, "last_id": last_id})).unwrap()
        })
        .collect()
}

#[derive(Deserialize)]
struct Envelope {
    #[allow(dead_code)]
    data: Vec<serde::de::IgnoredAny>,
    #[allow(dead_code)]
    last_id: Option<String>,
}

/// The median of `rounds` timings of `f`, in milliseconds.
fn median_ms(rounds: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::with_capacity(rounds);
    let mut size = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        size = f();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[rounds / 2], size)
}

fn main() {
    println!("| keys | floor: envelope only, ms | decode and build the inventory, ms | ratio |");
    println!("| ---: | ---: | ---: | ---: |");
    for keys in [10_000, 100_000] {
        let pages = pages(keys);
        let rounds = if keys > 10_000 { 5 } else { 21 };
        let (floor, _) = median_ms(rounds, || {
            pages
                .iter()
                .map(|page| serde_json::from_slice::<Envelope>(page).unwrap().data.len())
                .sum()
        });
        let (decode, decoded) = median_ms(rounds, || {
            let mut inventory = InventoryBuilder::default();
            for page in &pages {
                let page: Page<ApiKey> = serde_json::from_slice(page).unwrap();
                inventory.add(page.data).unwrap();
            }
            inventory.finish().keys.len()
        });
        assert_eq!(decoded, keys);
        println!(
            "| {keys} | {floor:.2} | {decode:.2} | {:.2} |",
            decode / floor
        );
    }
}
