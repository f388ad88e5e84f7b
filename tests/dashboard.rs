//! The Grafana dashboard is importable and provisionable as shipped: a stable uid, a current schema, a
//! data source variable every panel uses, the organization and workspace variables, unique panel ids,
//! panels that do not overlap, and provisioning files that point at it. Its grafana.com gallery version is
//! generated from it, current, and asks for its data source on import. (That every query returns data
//! from a real Prometheus is proven by `tests/e2e.rs`.)
//!
//! The gallery check needs `python3` (`scripts/test` installs it); it fails, never skips, without it.

// A failed check should panic right where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repository_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repository_file("dashboards/anthropic-keys-exporter.json"))
            .unwrap(),
    )
    .expect("the dashboard is valid JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

#[test]
fn the_dashboard_has_a_stable_identity_and_a_current_schema() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "anthropic-keys-exporter");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);
    assert!(
        dashboard["id"].is_null(),
        "an exported id would clash on import"
    );
    assert!(
        dashboard.get("__inputs").is_none(),
        "the data source is a variable, not an import input"
    );
}

#[test]
fn the_variables_select_data_source_organization_and_workspace() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let by_name = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name}"))
    };
    assert_eq!(by_name("datasource")["type"], "datasource");
    assert_eq!(by_name("datasource")["query"], "prometheus");
    for name in ["organization", "workspace"] {
        let variable = by_name(name);
        assert_eq!(variable["type"], "query", "{name}");
        assert_eq!(variable["includeAll"], true, "{name}");
        assert_eq!(variable["multi"], true, "{name}");
        assert!(
            variable["datasource"].to_string().contains("${datasource}"),
            "{name}"
        );
    }
}

#[test]
fn every_panel_uses_the_data_source_variable_and_has_a_place_of_its_own() {
    let dashboard = dashboard();
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id on {title:?}"
        );
        let grid = &panel["gridPos"];
        let (x, y, w, h) = ["x", "y", "w", "h"]
            .map(|k| grid[k].as_u64().unwrap())
            .into();
        assert!(x + w <= 24, "{title:?} is wider than the dashboard");
        for cell_x in x..x + w {
            for cell_y in y..y + h {
                assert!(
                    cells.insert((cell_x, cell_y)),
                    "{title:?} overlaps another panel"
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["datasource"].to_string().contains("${datasource}"),
            "{title:?} has a fixed data source"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title:?} has no queries"));
        assert!(!targets.is_empty(), "{title:?} has no queries");
        for target in targets {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title:?} has an empty query"
            );
            assert!(
                target["datasource"].to_string().contains("${datasource}"),
                "{title:?}: a query has a fixed data source"
            );
        }
    }
    assert!(ids.len() >= 12, "only {} panels", ids.len());
}

#[test]
fn the_operator_facing_panels_are_all_there() {
    let dashboard = dashboard();
    let titles: Vec<String> = panels(&dashboard)
        .iter()
        .map(|p| p["title"].as_str().unwrap_or_default().to_lowercase())
        .collect();
    for wanted in [
        "active keys",
        "14 days",
        "3 days",
        "expired",
        "without expiry",
        "rotate next",
        "by status",
        "per workspace",
        "age",
        "poll duration",
        "failures",
        "requests",
        "sources",
        "configuration reload",
        "source state",
        "unused",
        "orphaned",
        "by creator",
        "by role",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted:?} in {titles:?}"
        );
    }
    let rotate_next = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Rotate next")
        .unwrap();
    assert_eq!(rotate_next["type"], "table");
    let steps = rotate_next.to_string();
    assert!(
        steps.contains("\"red\"") && steps.contains("\"green\""),
        "colour thresholds"
    );
}

#[test]
fn rotate_next_shows_last_use_and_the_creator() {
    let dashboard = dashboard();
    let rotate_next = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Rotate next")
        .unwrap();
    let exprs = rotate_next["targets"].to_string();
    assert!(exprs.contains("anthropic_api_key_last_used_timestamp_seconds"));
    for label in ["created_by_name", "created_by_email", "created_by_member"] {
        assert!(exprs.contains(label), "Rotate next does not query {label}");
    }
    // Two queries (days left, last use) merged into one row per key, under readable column names.
    assert!(
        rotate_next["transformations"]
            .to_string()
            .contains("\"merge\"")
    );
    let renames = rotate_next["transformations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "organize")
        .unwrap()["options"]["renameByName"]
        .clone();
    let columns: Vec<&str> = renames
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_str)
        .collect();
    for column in [
        "Days left",
        "Last used (days ago)",
        "Creator",
        "Creator e-mail",
        "Member",
    ] {
        assert!(
            columns.contains(&column),
            "no column {column:?} in {columns:?}"
        );
    }
}

#[test]
fn the_health_row_shows_every_source_over_time() {
    let dashboard = dashboard();
    let timeline = panels(&dashboard)
        .into_iter()
        .find(|p| p["type"] == "state-timeline")
        .expect("a state timeline of the sources");
    let target = &timeline["targets"][0];
    let expr = target["expr"].as_str().unwrap();
    assert!(expr.contains("anthropic_exporter_source_up"), "{expr}");
    assert!(expr.contains("by (organization, source)"), "{expr}");
    assert_eq!(target["range"], true, "a timeline needs a range query");
    let legend = target["legendFormat"].as_str().unwrap();
    assert!(legend.contains("{{source}}") && legend.contains("{{organization}}"));
    // It sits in the exporter-health row, below the row's header.
    let health_row = panels(&dashboard)
        .into_iter()
        .find(|p| p["type"] == "row" && p["title"] == "Exporter health")
        .unwrap();
    assert!(timeline["gridPos"]["y"].as_u64() > health_row["gridPos"]["y"].as_u64());
}

/// Every query of every panel, with the panel's title.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_owned())))
        })
        .collect()
}

#[test]
fn several_organizations_can_be_selected_and_every_query_honours_the_selection() {
    let dashboard = dashboard();
    let organization = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "organization")
        .unwrap();
    assert_eq!(organization["multi"], true);
    assert_eq!(organization["includeAll"], true);
    // "All" must be a regex matching every organization, not Grafana's list of the values it knows.
    assert_eq!(organization["allValue"], ".*");
    // Series without an organization label: the exporter's own build and configuration.
    let global = [
        "anthropic_exporter_build_info",
        "anthropic_exporter_config_",
    ];
    for (title, expr) in queries(&dashboard) {
        assert!(
            !expr.contains("organization=\"$organization\"")
                && !expr.contains("organization=\"${organization}\""),
            "{title:?} matches a multi-value variable with =: {expr}"
        );
        if global.iter().any(|g| expr.contains(g)) {
            continue;
        }
        assert!(
            expr.contains("organization=~\"$organization\""),
            "{title:?} ignores the organization selection: {expr}"
        );
    }
}

#[test]
fn the_sources_table_shows_every_source_of_every_organization() {
    let dashboard = dashboard();
    let sources = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Sources")
        .expect("a Sources panel");
    assert_eq!(sources["type"], "table");
    let exprs: Vec<&str> = sources["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    for metric in [
        "anthropic_exporter_source_up",
        "anthropic_exporter_source_last_success_timestamp_seconds",
        "anthropic_exporter_source_interval_seconds",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "the Sources table does not show {metric}"
        );
    }
    // One row per (organization, source): the queries are merged on their labels, none aggregates
    // the source away.
    assert!(
        exprs
            .iter()
            .all(|e| !e.contains("sum") && !e.contains("max by"))
    );
    let text = sources.to_string();
    assert!(
        text.contains("\"merge\""),
        "queries are merged into one table"
    );
    assert!(text.contains("\"Source\"") && text.contains("\"Organization\""));
    // The age of the last success is coloured, so a stale source stands out.
    assert!(text.contains("\"Last success\"") && text.contains("\"red\""));
}

#[test]
fn provisioning_points_at_the_dashboard_and_a_prometheus_data_source() {
    let datasources: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(repository_file(
            "dashboards/grafana/provisioning/datasources/prometheus.yml",
        ))
        .unwrap(),
    )
    .unwrap();
    let first = &datasources["datasources"][0];
    assert_eq!(first["type"].as_str(), Some("prometheus"));
    let providers: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(repository_file(
            "dashboards/grafana/provisioning/dashboards/anthropic-keys-exporter.yml",
        ))
        .unwrap(),
    )
    .unwrap();
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert!(
        provider["options"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/'))
    );
}

#[test]
fn the_gallery_dashboard_is_generated_from_the_dashboard_and_asks_for_its_data_source() {
    let check = Command::new("python3")
        .arg(repository_file("dashboards/generate-gallery-dashboard.py"))
        .arg("--check")
        .output()
        .expect("python3 is required (scripts/test installs it)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let text = std::fs::read_to_string(repository_file(
        "dashboards/anthropic-keys-exporter.gallery.json",
    ))
    .unwrap();
    let gallery: Value = serde_json::from_str(&text).expect("the gallery dashboard is valid JSON");
    assert!(gallery["id"].is_null());
    assert_eq!(gallery["uid"], dashboard()["uid"]);
    assert!(
        !text.contains("${datasource}") && !text.contains("$datasource"),
        "a reference to the data source variable is left"
    );

    let inputs = gallery["__inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0]["name"], "DS_PROMETHEUS");
    assert_eq!(inputs[0]["type"], "datasource");
    assert_eq!(inputs[0]["pluginId"], "prometheus");

    let variables = gallery["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().all(|v| v["type"] != "datasource"),
        "the data source variable is replaced by the import input"
    );
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            variable["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            variable["name"]
        );
    }

    let mut used = BTreeSet::new();
    for panel in panels(&gallery) {
        let title = panel["title"].as_str().unwrap_or_default();
        if panel["type"] == "row" {
            continue;
        }
        used.insert(panel["type"].as_str().unwrap().to_owned());
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title:?} does not use the imported data source"
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title:?}: a query does not use the imported data source"
            );
        }
    }
    // The same panels as the dashboard itself, nothing lost on the way.
    assert_eq!(panels(&gallery).len(), panels(&dashboard()).len());

    let requires = gallery["__requires"].as_array().unwrap();
    let required =
        |kind: &str, id: &str| requires.iter().any(|r| r["type"] == kind && r["id"] == id);
    assert!(required("grafana", "grafana"), "{requires:?}");
    assert!(required("datasource", "prometheus"), "{requires:?}");
    for panel_type in &used {
        assert!(
            required("panel", panel_type),
            "__requires does not list the panel type {panel_type}"
        );
    }
    let listed: BTreeSet<String> = requires
        .iter()
        .filter(|r| r["type"] == "panel")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, used, "__requires lists panel types no panel uses");
}
