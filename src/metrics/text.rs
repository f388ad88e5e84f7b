//! Writing the Prometheus text exposition format directly: one family header, sample lines with
//! escaped label values. Used for everything rendered from snapshots, so no intermediate encoding is
//! built and parsed back.

use std::fmt::Write as _;

/// `# HELP` and `# TYPE` of a family of type `kind` (`gauge`, `counter`).
pub(crate) fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// `name{label="value",...}` without the value, for series whose value is computed later.
pub(crate) fn write_series(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.push_str(name);
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (index, (label, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(label);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// One complete sample line.
pub(crate) fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    write_series(out, name, labels);
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`; otherwise the shortest decimal
/// that reads back as the same number).
pub(crate) fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped_as_the_format_requires() {
        let mut out = String::new();
        write_header(&mut out, "m", "a\\b\nc", "gauge");
        write_sample(&mut out, "m", &[("a", "x\"y\\z\nw"), ("b", "ü")], 1.5);
        write_sample(&mut out, "m", &[], f64::INFINITY);
        assert_eq!(
            out,
            "# HELP m a\\\\b\\nc\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\nw\",b=\"ü\"} 1.5\nm +Inf\n"
        );
    }
}
