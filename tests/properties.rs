//! Properties that must hold for any input, checked with proptest:
//!
//! - whatever bytes the Admin API sends (random bytes, or a valid page whose fields are replaced by
//!   random JSON, removed or nulled), decoding it and building a snapshot never panics, and whatever
//!   snapshot results renders to text a strict parser accepts;
//! - any key, workspace and organization name, and any `organization` label, however hostile (quotes,
//!   backslashes, newlines, control characters, emoji, empty), comes out of `/metrics` exactly as it
//!   went in.

// Helpers outside `#[test]` functions panic on purpose: a broken expectation must fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use anthropic_keys_exporter::admin_api::FailureReason;
use anthropic_keys_exporter::admin_api::model::{ApiKey, Organization, Page, Workspace};
use anthropic_keys_exporter::metrics::{ExporterMetrics, Exposition};
use anthropic_keys_exporter::metrics::{RenderedOrganization, SnapshotStore};
use anthropic_keys_exporter::snapshot::Snapshot;
use anthropic_keys_exporter::sources::SourceKind;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Value, json};

use common::admin_api::{organization, page};
use common::exposition::{Sample, parse_exposition, parse_sample};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // NB: a failure prints its minimal input; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------------

/// Text that is hard on the exposition format: its escapes and delimiters, control characters,
/// characters outside the BMP, and anything else Unicode allows.
fn hostile_text() -> impl Strategy<Value = String> {
    let hostile_char = prop_oneof![
        3 => prop::sample::select(vec![
            '"', '\\', '\n', '\r', '\t', '\0', '\u{7f}', '\u{1b}', 'n', '{', '}', ',', '=', ' ', '#',
            '🚀', 'é', 'Ж', '研', '\u{2028}', '\u{feff}', '\u{200b}', '\u{10ffff}',
        ]),
        2 => any::<char>(),
        1 => prop::char::range('a', 'z'),
    ];
    prop::collection::vec(hostile_char, 0..24).prop_map(String::from_iter)
}

/// Timestamps: mostly valid RFC 3339 with varied offsets and fractions, sometimes at or past the edges
/// (leap second, minute 60, day 31 of a short month, offset +24:00, no offset, year 0), sometimes
/// anything at all.
fn timestamp_text() -> impl Strategy<Value = String> {
    let edgy = (
        0i32..=9999,
        1u8..=12,
        1u8..=31,
        0u8..=24,
        0u8..=60,
        0u8..=60,
        prop::option::of(0u32..1_000_000_000),
        prop::sample::select(vec!["Z", "z", "+00:00", "-23:59", "+14:00", "+24:00", ""]),
    )
        .prop_map(|(y, mo, d, h, mi, s, fraction, offset)| {
            let fraction = fraction.map(|f| format!(".{f:09}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        });
    let valid = (
        1970i32..=2100,
        1u8..=12,
        1u8..=28,
        0u8..=23,
        0u8..=59,
        0u8..=59,
        prop::option::of(0u32..1_000_000),
        prop::sample::select(vec!["Z", "+00:00", "-08:00", "+05:30"]),
    )
        .prop_map(|(y, mo, d, h, mi, s, fraction, offset)| {
            let fraction = fraction.map(|f| format!(".{f:06}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        });
    prop_oneof![
        6 => valid,
        2 => edgy,
        1 => hostile_text(),
    ]
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        hostile_text().prop_map(Value::from),
        timestamp_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(hostile_text(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// What happens to one field of a valid object.
#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Null,
    Replace(Value),
}

/// Often none, else one or two fields of an object with `fields` fields, each removed, nulled or
/// replaced: few enough that many mutated objects still decode and reach the snapshot.
fn mutations(fields: usize) -> impl Strategy<Value = Vec<(usize, Mutation)>> {
    let mutation = prop_oneof![
        1 => Just(Mutation::Remove),
        1 => Just(Mutation::Null),
        2 => json_value().prop_map(Mutation::Replace),
    ];
    prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec((0..fields, mutation), 1..=2),
    ]
}

/// Applies each mutation to the field it names in `fields`.
fn mutate(target: &mut Value, fields: &[&[&str]], mutations: &[(usize, Mutation)]) {
    for (field, mutation) in mutations {
        apply(target, fields[*field], mutation);
    }
}

/// Applies `mutation` to the field at `path`, if the objects on the way are still objects.
fn apply(target: &mut Value, path: &[&str], mutation: &Mutation) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut object = target;
    for parent in parents {
        match object.get_mut(*parent) {
            Some(child) => object = child,
            None => return,
        }
    }
    let Some(object) = object.as_object_mut() else {
        return;
    };
    match mutation {
        Mutation::Remove => {
            object.remove(*last);
        }
        Mutation::Null => {
            object.insert((*last).to_owned(), Value::Null);
        }
        Mutation::Replace(value) => {
            object.insert((*last).to_owned(), value.clone());
        }
    }
}

const KEY_FIELDS: &[&[&str]] = &[
    &["id"],
    &["type"],
    &["name"],
    &["created_at"],
    &["created_by"],
    &["created_by", "id"],
    &["created_by", "type"],
    &["expires_at"],
    &["partial_key_hint"],
    &["status"],
    &["workspace_id"],
    &["scope"],
    &["scope", "type"],
    &["scope", "workspace_id"],
];
const WORKSPACE_FIELDS: &[&[&str]] = &[&["id"], &["type"], &["name"], &["archived_at"]];
const ORGANIZATION_FIELDS: &[&[&str]] = &[&["id"], &["type"], &["name"]];
const PAGE_FIELDS: &[&[&str]] = &[&["data"], &["has_more"], &["first_id"], &["last_id"]];

/// A key in the current API shape, with a timestamp and status that vary but are mostly valid.
fn valid_key() -> impl Strategy<Value = Value> {
    (
        "[a-z0-9_]{1,12}",
        timestamp_text(),
        prop::option::of(timestamp_text()),
        prop::sample::select(vec![
            "active",
            "inactive",
            "archived",
            "expired",
            "brand_new",
        ]),
        prop::sample::select(vec!["workspace", "organization", "something_else"]),
    )
        .prop_map(|(id, created_at, expires_at, status, scope)| {
            json!({
                "id": format!("apikey_{id}"),
                "type": "api_key",
                "name": format!("key {id}"),
                "created_at": created_at,
                "created_by": {"id": "user_01", "type": "user"},
                "expires_at": expires_at,
                "partial_key_hint": "sk-ant-api03-abc...xyzA",
                "status": status,
                "workspace_id": "wrkspc_prod",
                "scope": {"type": scope, "workspace_id": "wrkspc_prod"},
            })
        })
}

/// A key page with 0–3 keys, each field of each key and of the page mutated or not, serialised.
fn mutated_key_page() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((valid_key(), mutations(KEY_FIELDS.len())), 0..4),
        mutations(PAGE_FIELDS.len()),
    )
        .prop_map(|(keys, page_mutations)| {
            let keys: Vec<Value> = keys
                .into_iter()
                .map(|(mut key, key_mutations)| {
                    mutate(&mut key, KEY_FIELDS, &key_mutations);
                    key
                })
                .collect();
            let mut page = page(&keys, false);
            mutate(&mut page, PAGE_FIELDS, &page_mutations);
            serde_json::to_vec(&page).unwrap()
        })
}

fn mutated_workspace_page() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((hostile_text(), mutations(WORKSPACE_FIELDS.len())), 0..3).prop_map(
        |workspaces| {
            let workspaces: Vec<Value> = workspaces
                .into_iter()
                .enumerate()
                .map(|(index, (name, workspace_mutations))| {
                    let id = if index == 0 {
                        "wrkspc_prod".to_owned()
                    } else {
                        format!("wrkspc_{index}")
                    };
                    let mut workspace = json!({"id": id, "type": "workspace", "name": name,
                        "created_at": "2024-10-30T23:58:27.427722Z", "archived_at": null});
                    mutate(&mut workspace, WORKSPACE_FIELDS, &workspace_mutations);
                    workspace
                })
                .collect();
            serde_json::to_vec(&page(&workspaces, false)).unwrap()
        },
    )
}

fn mutated_organization() -> impl Strategy<Value = Vec<u8>> {
    (hostile_text(), mutations(ORGANIZATION_FIELDS.len())).prop_map(|(name, org_mutations)| {
        let mut organization = organization("org-uuid-1", &name);
        mutate(&mut organization, ORGANIZATION_FIELDS, &org_mutations);
        serde_json::to_vec(&organization).unwrap()
    })
}

/// Bytes cut short at a random point, as a connection that dropped mid-body would leave them.
fn maybe_truncated(bytes: Vec<u8>, cut: Option<prop::sample::Index>) -> Vec<u8> {
    match cut {
        Some(index) if !bytes.is_empty() => bytes[..index.index(bytes.len())].to_vec(),
        _ => bytes,
    }
}

// ---------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Arrange: nothing to arrange, the bytes are the input.

        // Act
        let keys = serde_json::from_slice::<Page<ApiKey>>(&bytes);
        let workspaces = serde_json::from_slice::<Page<Workspace>>(&bytes);
        let organization = serde_json::from_slice::<Organization>(&bytes);

        // Assert: errors are fine; whatever decoded also builds a snapshot without panicking.
        if let (Ok(keys), Ok(workspaces), Ok(organization)) = (keys, workspaces, organization) {
            let _ = snapshot_and_render(organization, workspaces.data, keys.data);
        }
    }

    #[test]
    fn mutated_api_json_never_panics_and_whatever_is_accepted_renders_parseably(
        key_page in mutated_key_page(),
        workspace_page in mutated_workspace_page(),
        organization in mutated_organization(),
        cut in prop::option::weighted(0.05, any::<prop::sample::Index>()),
    ) {
        // Arrange
        let key_page = maybe_truncated(key_page, cut);

        // Act
        let keys = serde_json::from_slice::<Page<ApiKey>>(&key_page);
        let workspaces = serde_json::from_slice::<Page<Workspace>>(&workspace_page);
        let organization = serde_json::from_slice::<Organization>(&organization);

        // Assert
        if let (Ok(keys), Ok(workspaces), Ok(organization)) = (keys, workspaces, organization) {
            let key_count = keys.data.len();
            if let Some((snapshot_keys, text)) =
                snapshot_and_render(organization, workspaces.data, keys.data)
            {
                let samples = parse_exposition(&text)
                    .unwrap_or_else(|error| panic!("{error}\n--- scrape:\n{text}"));
                let info = samples.iter().filter(|s| s.name == "anthropic_api_key_info").count();
                prop_assert_eq!(info, snapshot_keys);
                prop_assert!(snapshot_keys <= key_count);
            }
        }
    }

    #[test]
    fn any_names_and_organization_label_survive_the_exposition_format(
        organization in hostile_text(),
        organization_id in hostile_text(),
        organization_name in hostile_text(),
        workspace_id in hostile_text(),
        workspace_name in hostile_text(),
        keys in prop::collection::vec(
            (hostile_text(), hostile_text(), hostile_text(), hostile_text()),
            1..4,
        ),
    ) {
        // Arrange: keys with hostile ids (made unique), names and creators, all in one workspace.
        let keys: Vec<(String, String, String, String)> = keys
            .into_iter()
            .enumerate()
            .map(|(index, (id, name, by_id, by_type))| (format!("{index}{id}"), name, by_id, by_type))
            .collect();
        let api_keys = keys
            .iter()
            .map(|(id, name, by_id, by_type)| {
                serde_json::from_value::<ApiKey>(json!({
                    "id": id, "type": "api_key", "name": name,
                    "created_at": "2025-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z",
                    "created_by": {"id": by_id, "type": by_type}, "status": "active",
                    "workspace_id": workspace_id,
                    "scope": {"type": "workspace", "workspace_id": workspace_id},
                }))
                .unwrap()
            })
            .collect();
        let snapshot = Snapshot::from_listing(
            serde_json::from_value(json!({"id": organization_id, "name": organization_name}))
                .unwrap(),
            vec![
                serde_json::from_value(json!({"id": workspace_id, "name": workspace_name})).unwrap(),
            ],
            api_keys,
        )
        .unwrap();

        // Act
        let text = render(&organization, snapshot);
        let samples = parse_exposition(&text)
            .unwrap_or_else(|error| panic!("{error}\n--- scrape:\n{text}"));

        // Assert
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let of = |name: &str| -> Vec<&Sample> { samples.iter().filter(|s| s.name == name).collect() };
        for (id, name, by_id, by_type) in &keys {
            let info: Vec<_> = of("anthropic_api_key_info")
                .into_iter()
                .filter(|s| s.labels.get("api_key_id") == Some(id))
                .collect();
            prop_assert_eq!(info.len(), 1, "key {:?}", id);
            prop_assert_eq!(
                &info[0].labels,
                &labels(&[
                    ("organization", organization.as_str()),
                    ("api_key_id", id),
                    ("api_key_name", name),
                    ("workspace_id", workspace_id.as_str()),
                    ("workspace_name", workspace_name.as_str()),
                    ("status", "active"),
                    ("created_by_id", by_id),
                    ("created_by_type", by_type),
                    // No users listing in this snapshot: the creator is not resolved.
                    ("created_by_name", ""),
                    ("created_by_email", ""),
                    ("created_by_member", "unknown"),
                ])
            );
            let key_labels = labels(&[
                ("organization", organization.as_str()),
                ("api_key_id", id),
                ("api_key_name", name),
                ("workspace_id", workspace_id.as_str()),
                ("workspace_name", workspace_name.as_str()),
            ]);
            for family in [
                "anthropic_api_key_created_timestamp_seconds",
                "anthropic_api_key_expiry_timestamp_seconds",
                "anthropic_api_key_expires_in_seconds",
            ] {
                let found = of(family).into_iter().filter(|s| s.labels == key_labels).count();
                prop_assert_eq!(found, 1, "{} of key {:?}", family, id);
            }
        }
        prop_assert_eq!(of("anthropic_api_key_info").len(), keys.len());
        let organization_info = of("anthropic_organization_info");
        prop_assert_eq!(organization_info.len(), 1);
        prop_assert_eq!(
            &organization_info[0].labels,
            &labels(&[
                ("organization", organization.as_str()),
                ("organization_id", organization_id.as_str()),
                ("organization_name", organization_name.as_str()),
            ])
        );
        let active = of("anthropic_api_keys")
            .into_iter()
            .find(|s| s.labels.get("status").map(String::as_str) == Some("active"))
            .expect("the active count is exported");
        prop_assert_eq!(
            &active.labels,
            &labels(&[
                ("organization", organization.as_str()),
                ("workspace_id", workspace_id.as_str()),
                ("workspace_name", workspace_name.as_str()),
                ("status", "active"),
            ])
        );
        prop_assert_eq!(active.value, keys.len() as f64);
        let polls = of("anthropic_exporter_polls_total");
        prop_assert_eq!(polls.len(), 1);
        prop_assert_eq!(
            &polls[0].labels,
            &labels(&[("organization", organization.as_str()), ("source", "api_keys")])
        );
        let failure_reasons = of("anthropic_exporter_poll_failures_total")
            .into_iter()
            .filter(|s| s.labels.get("organization") == Some(&organization))
            .count();
        prop_assert_eq!(failure_reasons, FailureReason::ALL.len());
    }
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// Builds a snapshot (which may fail, as a decode error) and renders it; the number of keys in the
/// snapshot and the text when it could be built.
fn snapshot_and_render(
    organization: Organization,
    workspaces: Vec<Workspace>,
    api_keys: Vec<ApiKey>,
) -> Option<(usize, String)> {
    let snapshot = Snapshot::from_listing(organization, workspaces, api_keys).ok()?;
    let keys = snapshot.keys.len();
    Some((keys, render("acme", snapshot)))
}

/// What `/metrics` would serve for `snapshot` published under the `organization` label.
fn render(organization: &str, snapshot: Snapshot) -> String {
    let metrics = ExporterMetrics::new().unwrap();
    metrics.add_organization(
        organization,
        &[(SourceKind::ApiKeys, std::time::Duration::from_secs(300))],
    );
    let store = Arc::new(SnapshotStore::new([organization]));
    store.publish(
        organization,
        Arc::new(RenderedOrganization::render(organization, &snapshot)),
    );
    let exposition = Exposition::new(&metrics, store).unwrap();
    String::from_utf8(exposition.render().unwrap()).expect("the exposition is UTF-8")
}

#[test]
fn the_parser_understands_every_escape_and_refuses_broken_lines() {
    // Arrange
    let good = r#"m{a="q\"b\\s\nn",b="",c="x=y,z}"} 1.5"#;
    let broken = [
        r#"m{a="unterminated} 1"#,
        r#"m{a="bad \t escape"} 1"#,
        r#"m{a="1",a="2"} 1"#,
        r#"m{a="1"}1"#,
        "m 1 2 3",
        "1m 1",
    ];

    // Act
    let parsed = parse_sample(good);

    // Assert
    let sample = parsed.unwrap();
    assert_eq!(sample.labels["a"], "q\"b\\s\nn");
    assert_eq!(sample.labels["b"], "");
    assert_eq!(sample.labels["c"], "x=y,z}");
    assert_eq!(sample.value, 1.5);
    for line in broken {
        assert!(parse_sample(line).is_err(), "{line}");
    }
}
