//! The shipped alert rules: valid, unit-tested with `promtool test rules`, and every runbook link
//! pointing at a section that exists.
//!
//! Needs `promtool` (Debian package `prometheus`; `scripts/test` installs it). It fails, never skips,
//! when the tool is missing.

// A failed check should panic right where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

const RULES: &str = "dashboards/anthropic-keys-exporter.rules.yml";
const RULE_TESTS: &str = "dashboards/anthropic-keys-exporter.rules.test.yml";
const RUNBOOK: &str = "docs/runbook.md";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repository())
        .output()
        .expect("promtool is required (Debian package prometheus; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn promtool_accepts_the_rules_file() {
    let (ok, output) = promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool check rules:\n{output}");
}

#[test]
fn the_rule_unit_tests_pass() {
    let (ok, output) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules:\n{output}");
    assert!(output.contains("SUCCESS"), "{output}");
}

/// GitHub's heading anchors: lower case, spaces to dashes, punctuation other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_and_annotations_and_its_runbook_section_exists() {
    let rules: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(repository().join(RULES)).unwrap())
            .unwrap();
    let runbook = std::fs::read_to_string(repository().join(RUNBOOK)).unwrap();
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{name} has no valid severity"
            );
            for field in ["summary", "description", "runbook_url"] {
                assert!(
                    rule["annotations"][field]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name} lacks {field}"
                );
            }
            let url = rule["annotations"]["runbook_url"].as_str().unwrap();
            let (page, fragment) = url
                .split_once('#')
                .unwrap_or_else(|| panic!("{name}: {url} has no section"));
            assert!(
                page.ends_with(RUNBOOK),
                "{name}: {url} does not point at {RUNBOOK}"
            );
            assert!(
                anchors.iter().any(|a| a == fragment),
                "{name}: no section #{fragment} in {RUNBOOK}"
            );
        }
    }
    assert!(alerts >= 6, "only {alerts} alerts");
}

/// Minutes of a Prometheus duration such as `30m` or `1h`.
fn minutes(duration: &str) -> u64 {
    let (number, unit) = duration.split_at(duration.len() - 1);
    let number: u64 = number.parse().unwrap();
    match unit {
        "m" => number,
        "h" => number * 60,
        "d" => number * 24 * 60,
        _ => panic!("unexpected duration {duration}"),
    }
}

#[test]
fn every_per_key_alert_is_one_alert_per_key_that_survives_restarts_and_renames() {
    let rules: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(repository().join(RULES)).unwrap())
            .unwrap();
    let mut per_key = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let description = rule["annotations"]["description"].as_str().unwrap();
            if !description.contains("$labels.api_key_id") {
                continue;
            }
            per_key += 1;
            let expr = rule["expr"].as_str().unwrap();
            // The outermost aggregation decides the alert's labels: only labels a key cannot change.
            for by in expr.split("by (").skip(1) {
                let labels = by.split(')').next().unwrap();
                for mutable in [
                    "api_key_name",
                    "workspace_name",
                    "status",
                    "instance",
                    "job",
                ] {
                    assert!(
                        !labels.split(',').any(|l| l.trim() == mutable),
                        "{name} keeps the label {mutable}, which changes under a firing alert"
                    );
                }
            }
            assert!(
                expr.contains("group_left (workspace_id, created_by_id, created_by_type)")
                    || expr.trim_start().starts_with(
                        "max by (organization, api_key_id, workspace_id, created_by_id, created_by_type)"
                    ),
                "{name} does not take its labels from the deduplicated key info"
            );
            let keep = rule["keep_firing_for"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no keep_firing_for"));
            assert!(
                minutes(keep) >= 15,
                "{name}: keep_firing_for {keep} does not cover an exporter restart"
            );
            assert!(
                !description.contains("$labels.api_key_name")
                    && !description.contains("$labels.workspace_name"),
                "{name} reads a name from its labels, which do not have it"
            );
        }
    }
    assert!(per_key >= 7, "only {per_key} per-key alerts");
}
