//! The README must not drift from the code: every metric family and every flag is documented.

use std::path::PathBuf;

use crate::helpers::run_to_completion;

fn read(relative: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

#[test]
fn every_metric_family_in_the_golden_output_is_in_the_readme_table() {
    let readme = read("README.md");
    let golden = read("tests/fixtures/metrics.golden.txt");
    let families: Vec<&str> = golden
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(families.len() >= 14, "{families:?}");
    for family in families {
        assert!(
            readme.contains(&format!("| `{family}` |")),
            "{family} is not in the README's metrics table"
        );
    }
}

#[test]
fn every_flag_in_help_is_in_the_readme_table() {
    let readme = read("README.md");
    let output = run_to_completion(&["--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.trim_end_matches([',', '.']))
        .filter(|flag| !matches!(*flag, "--help" | "--version"))
        .collect();
    assert!(flags.len() >= 12, "{flags:?}");
    for flag in flags {
        assert!(
            readme.contains(&format!("`{flag}")),
            "{flag} is not documented in the README"
        );
    }
}
