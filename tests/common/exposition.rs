//! The Prometheus text exposition format (version 0.0.4): a strict parser, and a parsed scrape to query.

use std::collections::BTreeMap;

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// A strict parser of the Prometheus text format (version 0.0.4): every line is a well-formed comment
/// or sample, label values use only the escapes `\\`, `\"` and `\n`, and no label appears twice.
pub(crate) fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let body = text
        .strip_suffix('\n')
        .ok_or("the exposition does not end with a newline")?;
    let mut samples = Vec::new();
    for (number, line) in body.split('\n').enumerate() {
        if line.starts_with('#') {
            let mut words = line.splitn(4, ' ');
            let (hash, kind, name) = (words.next(), words.next(), words.next());
            let well_formed = hash == Some("#")
                && matches!(kind, Some("HELP" | "TYPE"))
                && name.is_some_and(is_metric_name);
            if !well_formed {
                return Err(format!("line {}: malformed comment {line:?}", number + 1));
            }
            continue;
        }
        samples.push(parse_sample(line).map_err(|error| format!("line {}: {error}", number + 1))?);
    }
    Ok(samples)
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// One sample line: a metric name, optional labels, a value and an optional timestamp.
pub(crate) fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut chars = line.chars().peekable();
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if !(c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            break;
        }
        name.push(c);
        chars.next();
    }
    if !is_metric_name(&name) {
        return Err(format!("bad metric name in {line:?}"));
    }
    let mut labels = BTreeMap::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            if chars.peek() == Some(&'}') {
                chars.next();
                break;
            }
            let mut label = String::new();
            while let Some(&c) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                label.push(c);
                chars.next();
            }
            if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("bad label name in {line:?}"));
            }
            if chars.next() != Some('=') || chars.next() != Some('"') {
                return Err(format!("expected =\" after {label} in {line:?}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated value of {label} in {line:?}")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => {
                            return Err(format!("invalid escape \\{other:?} in {line:?}"));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
            if labels.insert(label.clone(), value).is_some() {
                return Err(format!("label {label} twice in {line:?}"));
            }
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => return Err(format!("expected , or }} but found {other:?} in {line:?}")),
            }
        }
    }
    if chars.next() != Some(' ') {
        return Err(format!("no space before the value in {line:?}"));
    }
    let rest: String = chars.collect();
    let mut fields = rest.split(' ');
    let value = match fields.next() {
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some("NaN") => f64::NAN,
        Some(number) => number
            .parse()
            .map_err(|_| format!("bad value {number:?} in {line:?}"))?,
        None => return Err(format!("no value in {line:?}")),
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp in {line:?}"))?;
    }
    if fields.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A parsed scrape: its text, and its samples to query.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) text: String,
    pub(crate) samples: Vec<Sample>,
}

impl Metrics {
    /// Parses `text` with the strict parser; panics with the error, which names the line, if any line
    /// is malformed.
    pub(crate) fn parse(text: &str) -> Self {
        let samples =
            parse_exposition(text).unwrap_or_else(|error| panic!("unparseable scrape: {error}"));
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// All samples named `name` whose labels include `labels`.
    pub(crate) fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the only sample named `name` with `labels`; panics if several match.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples",
            found.len()
        );
        found.first().map(|sample| sample.value)
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .iter()
            .map(|sample| sample.value)
            .sum()
    }

    /// `anthropic_up`, of the only organization.
    pub(crate) fn up(&self) -> Option<f64> {
        self.value("anthropic_up", &[])
    }

    /// Failed polls of the key inventory counted under `reason`.
    pub(crate) fn failures(&self, reason: &str) -> f64 {
        self.sum(
            "anthropic_exporter_poll_failures_total",
            &[("source", "api_keys"), ("reason", reason)],
        )
    }

    /// The ids of the keys exported, sorted.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .find("anthropic_api_key_info", &[])
            .iter()
            .filter_map(|sample| sample.labels.get("api_key_id").cloned())
            .collect();
        ids.sort();
        ids
    }

    /// Samples of the API-key families except the one computed at scrape time, for comparing two
    /// scrapes.
    pub(crate) fn key_samples(&self) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name.starts_with("anthropic_api_key") || s.name == "anthropic_organization_info"
            })
            .filter(|s| s.name != "anthropic_api_key_expires_in_seconds")
            .cloned()
            .collect()
    }

    /// The exporter's own health series and the keys, for failure messages.
    pub(crate) fn excerpt(&self) -> String {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with("anthropic_exporter_") || s.name == "anthropic_up")
            .filter(|s| s.value != 0.0 || s.name == "anthropic_up")
            .map(|s| format!("  {}{:?} {}", s.name, s.labels, s.value))
            .chain(std::iter::once(format!("  keys: {:?}", self.keys())))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
