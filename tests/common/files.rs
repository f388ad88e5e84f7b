//! Files of the repository and their YAML, for the tests of deployment files and the Helm chart.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

pub(crate) fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub(crate) fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// `text` (named `what` in the failure) as one YAML document.
pub(crate) fn parse_yaml(text: &str, what: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|error| panic!("{what} is not valid YAML: {error}"))
}

/// Every non-empty document of a text that may hold several, separated by `---`.
pub(crate) fn parse_documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{what} is not valid YAML: {error}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

pub(crate) fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, found {value:?}"))
}

pub(crate) fn sequence<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} should be a list, found {value:?}"))
}

pub(crate) fn strings(value: &Value, what: &str) -> Vec<String> {
    sequence(value, what)
        .iter()
        .map(|item| text(item, what).to_owned())
        .collect()
}

/// A full (anchored) match of `text` by a regular expression made of literal text and `.*` only, as
/// Prometheus matches the job selectors of the shipped rules.
pub(crate) fn matches_wildcards(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split(".*").collect();
    for piece in &pieces {
        assert!(
            piece
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_/:".contains(c)),
            "this test understands job selectors made of text and `.*` only, not {pattern:?}: extend it"
        );
    }
    let (first, rest) = pieces.split_first().unwrap();
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for piece in middle {
        match remaining.find(piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last)
}
