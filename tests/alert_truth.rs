//! The shipped alert rules, measured on a simulated stretch of an organization's life: no missed expiry,
//! no false page, no page twice (`scripts/simulate-alerts`, see docs/alert-truth.md). The short run
//! covers every situation the full year has (an outage, restarts, renames, dormant keys), at 60 days.
//!
//! Needs `python3`, `promtool` and `prometheus` (Debian packages python3 and prometheus;
//! `scripts/test` installs them). It fails, never skips, when one is missing.

// A failed check should panic right where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

const RULES: &str = "dashboards/anthropic-keys-exporter.rules.yml";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(tool: &str, package: &str) {
    let found = Command::new(tool).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`{tool}` is required (Debian package {package}; scripts/test installs it)"
    );
}

fn simulate(args: &[&str]) -> (Output, String) {
    require("python3", "python3");
    require("promtool", "prometheus");
    require("prometheus", "prometheus");
    let output = Command::new("python3")
        .arg(repository().join("scripts/simulate-alerts"))
        .args(args)
        .current_dir(repository())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

/// The count in the table row `| <measure> | <count> | ... |`.
fn count(table: &str, measure: &str) -> u64 {
    table
        .lines()
        .find_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[1] == measure).then(|| cells[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no row {measure:?} in:\n{table}"))
}

#[test]
fn the_shipped_rules_miss_no_expiry_and_page_neither_falsely_nor_twice() {
    let (output, table) = simulate(&["--days", "60"]);
    assert!(output.status.success(), "simulate-alerts:\n{table}");
    assert_eq!(count(&table, "missed expiries"), 0, "{table}");
    assert_eq!(count(&table, "false pages"), 0, "{table}");
    assert_eq!(count(&table, "repeated pages"), 0, "{table}");
    // The run did exercise the rules: pages for the keys that needed one, including the fail-safe page
    // of the dormant key expiring while the usage data is stale (docs/alert-truth.md).
    assert!(count(&table, "correct pages") >= 5, "{table}");
    assert_eq!(count(&table, "fail-safe pages"), 1, "{table}");
    // The key rotated during the Admin API outage, which the exporter cannot see until it is over.
    assert_eq!(count(&table, "stale-data pages"), 1, "{table}");
}

#[test]
fn the_measurement_catches_rules_that_page_twice_after_a_restart() {
    // The shipped rules without keep_firing_for: a key paging while the exporter restarts pages again.
    let rules = std::fs::read_to_string(repository().join(RULES)).unwrap();
    let weakened: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with("keep_firing_for:"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(
        rules, weakened,
        "the rules have no keep_firing_for any more"
    );
    let path = std::env::temp_dir().join(format!("ake-weakened-rules-{}.yml", std::process::id()));
    std::fs::write(&path, weakened).unwrap();
    let (output, table) = simulate(&["--days", "30", "--rules", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(output.status.code(), Some(1), "simulate-alerts:\n{table}");
    assert!(count(&table, "repeated pages") >= 1, "{table}");
}
